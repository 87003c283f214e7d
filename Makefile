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
# test processes (pytest-xdist); a notebook's cells stay together, in order, on one of them (--dist loadfile)
TEST_WORKERS ?= 2
WORKERS      ?= 2
EXECUTOR     ?= local
# reproduce renders cpu-real and paper from their run store (train them with `make runs`); quick trains inline
STORE_ONLY   ?= $(if $(filter quick,$(PROFILE)),,1)

export MPLBACKEND ?= Agg
# glibc hands freed blocks above its mmap/trim thresholds back to the kernel, so every CPU training step
# page-faults its activations in again; keeping them in the heap makes the Difficulty-Net meta step
# ~15 % faster (benchmarks/meta_step.py) and changes no result. Only read by glibc; harmless elsewhere.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: help env test test-unit reproduce notebooks runs report figures-index lab benchmark benchmark-data benchmark-meta \
        clean distclean $(NOTEBOOKS)

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22
	@echo "notebook targets (one per notebook, PROFILE=$(PROFILE)): $(NOTEBOOKS)"
	@echo "profiles: quick (digits, CPU, minutes) | cpu-real (CIFAR-10 JPEG via LTLIB_DATA, CPU) | paper (GPU, papers' recipes)"

env: $(ENV_STAMP)  ## create the virtual environment, install ltlib and register the 'ltlib' Jupyter kernel

$(ENV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned as a matching pair: a torch wheel without its torchvision breaks `import torchvision`.
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[notebooks,test,cluster]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (ltlib)" >/dev/null
	# cffconvert (the CITATION.cff validator) pins an old jsonschema: it lives in a small environment of its own.
	@test -x $(VENV)/cff/bin/cffconvert || { $(PYTHON) -m venv $(VENV)/cff && \
	    $(VENV)/cff/bin/pip install --quiet --disable-pip-version-check cffconvert==2.0.0; }
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
	@touch $@

# The test run trains the quick runs into a scratch store (LTLIB_RUNS), so nbval exercises the whole pipeline,
# training included, however many quick runs runs/quick/ already holds.
test: $(ENV_STAMP)  ## unit tests, the paper-profile smoke test, the report test and nbval over notebooks/ (quick)
	@store=$$(mktemp -d); trap 'rm -rf "$$store"' EXIT; \
	LTLIB_RUNS=$$store LTLIB_CFFCONVERT=$(VENV)/cff/bin/cffconvert $(PY) -m pytest tests notebooks --nbval-lax --nbval-kernel-name $(KERNEL) \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider \
	    -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=12 $(PYTEST_FLAGS)

test-unit: $(ENV_STAMP)  ## unit tests only
	@store=$$(mktemp -d); trap 'rm -rf "$$store"' EXIT; \
	LTLIB_RUNS=$$store $(PY) -m pytest tests -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_FLAGS)

# AVAILABLE=1 (default where STORE_ONLY): a notebook whose runs are not all stored is rendered for the methods that
# are complete, and names the others; AVAILABLE= refuses it instead.
AVAILABLE    ?= $(STORE_ONLY)
RUN_NOTEBOOK := $(PY) -m ltlib notebook --profile $(PROFILE) $(if $(STORE_ONLY),--store-only) $(if $(AVAILABLE),--available)

$(NOTEBOOKS): %: $(ENV_STAMP)  ## (one target per notebook) execute it under PROFILE into executed/PROFILE/
	$(RUN_NOTEBOOK) $@
	@$(PY) -m ltlib index-figures >/dev/null

# STORE_ONLY=1 (default except quick): render only the notebooks whose runs are all in runs/PROFILE/, training
# nothing, and name the others; STORE_ONLY= trains what is missing inside the notebooks.
reproduce: $(ENV_STAMP)  ## execute every notebook under PROFILE (quick | cpu-real | paper); goes on past a failure
	@failed=(); skipped=(); for nb in $(NOTEBOOKS); do \
	    $(RUN_NOTEBOOK) $$nb; rc=$$?; \
	    if [ $$rc -eq 3 ]; then skipped+=($$nb); elif [ $$rc -ne 0 ]; then failed+=($$nb); fi; done; \
	$(PY) -m ltlib index-figures >/dev/null; \
	if [ $${#skipped[@]} -gt 0 ]; then echo "not rendered (runs missing from runs/$(PROFILE)/): $${skipped[*]}" >&2; fi; \
	if [ $${#failed[@]} -gt 0 ]; then echo "FAILED under $(PROFILE): $${failed[*]}" >&2; exit 1; fi; \
	echo "executed notebooks: executed/$(PROFILE)/  figures: figures/$(PROFILE)/  results: results/$(PROFILE)/"

runs: $(ENV_STAMP)  ## train every run the notebooks of PROFILE need into runs/PROFILE/ (WORKERS=2, EXECUTOR=local|ray)
	$(PY) -m ltlib sweep params/$(PROFILE)/*.yaml --workers $(WORKERS) --executor $(EXECUTOR)

notebooks: $(ENV_STAMP)  ## re-execute notebooks/ in place with their quick defaults (the outputs nbval checks)
	@for nb in $(NOTEBOOKS); do $(PY) -m ltlib notebook $$nb --profile quick --output notebooks/$$nb.ipynb || exit $$?; done

report: $(ENV_STAMP)  ## render executed/PROFILE/ into a static site under site/PROFILE/
	$(PY) -m ltlib report --profile $(PROFILE)

figures-index: $(ENV_STAMP)  ## regenerate figures/INDEX.md from the figures' sidecars
	$(PY) -m ltlib index-figures

lab: $(ENV_STAMP)  ## open JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks

benchmark: $(ENV_STAMP)  ## seconds per cpu-real epoch, the old way against the new one (a ratio)
	$(PY) benchmarks/epoch.py

benchmark-data: $(ENV_STAMP)  ## throughput of the device-resident data path against a DataLoader pipeline
	$(PY) benchmarks/throughput.py

benchmark-meta: $(ENV_STAMP)  ## seconds per step of Difficulty-Net's meta step against a plain step
	$(PY) benchmarks/meta_step.py

clean:  ## remove executed quick/paper notebooks, caches and Python bytecode (keeps runs, results, figures, .venv)
	rm -rf executed/quick executed/paper cache site .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also remove the virtual environment
	rm -rf $(VENV)
