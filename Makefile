# ltlib: `make help` lists the targets. Everything creates the environment first if it is missing.
SHELL        := /bin/bash
PYTHON       ?= python3
VENV         ?= .venv
PY           := $(VENV)/bin/python
PROFILE      ?= quick
KERNEL       := ltlib
NOTEBOOKS    := $(sort $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.ipynb))))
ENV_STAMP    := $(VENV)/.ltlib-env
PYTEST_FLAGS ?=

export MPLBACKEND ?= Agg
# glibc hands freed blocks above its mmap/trim thresholds back to the kernel, so every CPU training step
# page-faults its activations in again; keeping them in the heap makes the Difficulty-Net meta step
# ~15 % faster (benchmarks/meta_step.py) and changes no result. Only read by glibc; harmless elsewhere.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: help env test test-unit reproduce notebooks lab benchmark benchmark-meta clean distclean $(NOTEBOOKS)

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22
	@echo "notebook targets (one per notebook, PROFILE=$(PROFILE)): $(NOTEBOOKS)"
	@echo "profiles: quick (digits, CPU, minutes) | cpu-real (CIFAR-10 JPEG via LTLIB_DATA, CPU) | paper (GPU, papers' recipes)"

env: $(ENV_STAMP)  ## create the virtual environment, install ltlib and register the 'ltlib' Jupyter kernel

$(ENV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned as a matching pair: a torch wheel without its torchvision breaks `import torchvision`.
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (ltlib)" >/dev/null
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
	@touch $@

test: $(ENV_STAMP)  ## unit tests and nbval over notebooks/ (quick profile)
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-kernel-name $(KERNEL) \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider $(PYTEST_FLAGS)

test-unit: $(ENV_STAMP)  ## unit tests only
	$(PY) -m pytest tests -p no:cacheprovider $(PYTEST_FLAGS)

executed/$(PROFILE) results/$(PROFILE):
	@mkdir -p $@

$(NOTEBOOKS): %: $(ENV_STAMP) | executed/$(PROFILE)  ## (one target per notebook) run it under PROFILE
	$(PY) -m papermill notebooks/$@.ipynb executed/$(PROFILE)/$@.ipynb -k $(KERNEL) --cwd notebooks \
	    -f params/$(PROFILE)/$@.yaml --request-save-on-cell-execute

reproduce: $(ENV_STAMP)  ## run every notebook under PROFILE (quick | cpu-real | paper)
	@for nb in $(NOTEBOOKS); do $(MAKE) --no-print-directory $$nb PROFILE=$(PROFILE) || exit $$?; done
	@echo "executed notebooks: executed/$(PROFILE)/  figures: figures/$(PROFILE)/  results: results/$(PROFILE)/"

notebooks: $(ENV_STAMP)  ## re-execute notebooks/ in place with their quick defaults (the outputs nbval checks)
	@for nb in $(NOTEBOOKS); do $(PY) -m papermill notebooks/$$nb.ipynb notebooks/$$nb.ipynb -k $(KERNEL) --cwd notebooks || exit $$?; done

lab: $(ENV_STAMP)  ## open JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks

benchmark: $(ENV_STAMP)  ## throughput of the device-resident data path against a DataLoader pipeline
	$(PY) benchmarks/throughput.py

benchmark-meta: $(ENV_STAMP)  ## seconds per step of Difficulty-Net's meta step against a plain step
	$(PY) benchmarks/meta_step.py

clean:  ## remove executed quick/paper notebooks, caches and Python bytecode (keeps results, figures, .venv)
	rm -rf executed/quick executed/paper cache .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also remove the virtual environment
	rm -rf $(VENV)
