"""What made an artefact: git commit, library versions, device and thread count."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from .paths import ROOT

OUTPUTS = ("runs", "results", "figures", "executed", "README.md")  # what ltlib writes: never makes code "dirty"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code: the last commit that changed anything but ltlib's outputs, ``-dirty`` when a
    tracked source file differs from it.

    Outputs (run store, results, figures, executed notebooks, the README's generated results) are not code, so
    committing them does not change the commit an artefact names, and re-making an artefact from a fresh clone
    gives the same bytes. A notebook counts as changed only when a cell's source differs from HEAD's, not when its
    outputs do (re-executing it rewrites them).
    """
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        excluded = [f":(exclude){path}" for path in OUTPUTS]
        commit = git("log", "-1", "--format=%H", "--", ".", *excluded).strip() or git("rev-parse", "HEAD").strip()
        changed = [line[3:].strip() for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = [path for path in changed if path.split("/", 1)[0] not in OUTPUTS
             and not (path.endswith(".ipynb") and _same_notebook_sources(path, git))]
    return commit + ("-dirty" if dirty else "")


def _same_notebook_sources(path: str, git) -> bool:
    import json

    try:
        head = json.loads(git("show", f"HEAD:{path}"))
        now = json.loads((ROOT / path).read_text())
    except (OSError, ValueError, subprocess.CalledProcessError):
        return False
    def sources(nb):
        return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    return sources(head) == sources(now)


@lru_cache(maxsize=1)
def versions() -> dict:
    import numpy
    import sklearn
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


# Instruction-set flags that decide which CPU kernels run (bf16 autocast in particular): a masked model name such as
# "Intel(R) Xeon(R) Processor" covers machines whose bf16 speed and last digits differ.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


@lru_cache(maxsize=1)
def cpu_identity() -> dict:
    """The CPU beyond its model name: vendor, family/model/stepping and the ISA flags that pick kernels (Linux)."""
    fields = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    found: dict = {"model_name": cpu_model()}
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return found
    for line in lines:
        name, _, value = (part.strip() for part in line.partition(":"))
        if name in fields:
            found[fields[name]] = value
        elif name == "flags":
            flags = set(value.split())
            found["isa"] = [flag for flag in ISA_FLAGS if flag in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:  # a cap on oneDNN's kernels changes bf16 numbers as much as another CPU model does
        found["onednn_max_cpu_isa"] = cap
    return found


def native_bf16_in(cpuinfo: str) -> bool | None:
    """Whether the first CPU of a ``/proc/cpuinfo`` text has bfloat16 matrix instructions (x86: AVX-512 BF16 or
    AMX; Arm: BF16); None when the text lists no flags."""
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():
        name, _, value = (part.strip() for part in line.partition(":"))
        if name in ("flags", "Features"):  # x86, Arm
            return bool(set(value.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU has bfloat16 matrix instructions; None when unknown (no ``/proc/cpuinfo``).

    Without them PyTorch's CPU autocast still runs in bfloat16, through emulation, an order of magnitude slower than
    float32 (``benchmarks/epoch.py``).
    """
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda)"
    return f"{cpu_model()} (cpu, {torch.get_num_threads()} threads)"


def provenance(device: str) -> dict:
    import torch

    found = {"git_commit": git_commit(), "versions": versions(), "device": device_name(device),
             "threads": torch.get_num_threads()}
    if not str(device).startswith("cuda"):
        found["cpu"] = cpu_identity()
    return found


MACHINE_FIELDS = ("device", "cpu", "versions", "git_commit")  # what a segment of a resumed run records


def machine(found: dict) -> dict:
    """The part of a :func:`provenance` that says where and with what code a range of epochs trained."""
    return {name: found[name] for name in MACHINE_FIELDS if name in found}


def trained_on(found: dict) -> str:
    """The device of an entry's provenance; for a run whose epochs ran on more than one machine, each with its
    epochs (1-based), e.g. "AMD EPYC (cpu, 1 threads) epochs 1-40, Intel(R) Xeon(R) Processor (cpu, 1 threads)
    epochs 41-90". A segment whose machine was not recorded says so."""
    segments = found.get("segments") or []
    if len(segments) < 2:
        return found["device"]
    def device(segment):
        return (segment["machine"] or {}).get("device", "a machine not recorded")
    return ", ".join(f"{device(s)} epochs {s['epochs'][0] + 1}-{s['epochs'][1] + 1}" for s in segments)
