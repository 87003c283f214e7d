"""Where and how a computation runs: device strings, CPU threads, mixed precision, batch sizes per device.

A run's numbers depend on the device type and, on CPU, on the number of intra-op threads (a reduction
split over two threads sums in another order than over one), so both are part of a run's identity
(:mod:`ltlib.experiment`). Everything here is checked before anything runs: an unknown device string or
a device this machine lacks is one clear error, never a silent fall-back to the CPU.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class DeviceError(ValueError):
    """A device string that is malformed or names hardware this machine does not have."""


def parse_device(device: str) -> torch.device:
    """A well-formed device string as :class:`torch.device`, whether or not this machine has it."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise DeviceError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return torch.device(device)


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` -> :class:`torch.device`, if this machine has it."""
    resolved = parse_device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for but this machine has no CUDA GPU that PyTorch can use "
                              f"(torch {torch.__version__}); run with device: cpu, or on a machine with a GPU")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r} was asked for but MPS is not available here; use device: cpu")
    return resolved


def device_type(device: str) -> str:
    return parse_device(device).type


@contextlib.contextmanager
def cpu_threads(count: int | None):
    """Run the block with ``count`` intra-op CPU threads (None: leave the setting alone), then restore it.

    Small networks on small tensors (stage-2 classifiers, DLSA flows on 64-d features) run several times
    faster on one thread than on two that spin-wait for each other, most of all when another job shares
    the cores; training runs use the count their identity names.
    """
    if count is None:
        yield
        return
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"cpu thread count must be a positive int or None, got {count!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on CPU and CUDA when ``amp`` (CPUs with AVX-512 BF16 / AMX run it natively)."""
    if amp and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# A ResNet-32 training step (batch 128, one thread) in fp32 over the same step under bf16 autocast on a CPU without
# bf16 instructions: 92.0 / 9.2 img/s on an AMD EPYC (Zen 3, AVX2 only; results/benchmarks/epoch-cpu-avx2.json, made by
# `python benchmarks/epoch.py --threads 1 --steps 3 --no-compile`; a test keeps the two in step).
EMULATED_BF16_SLOWDOWN = 10.0
ALLOW_EMULATED_BF16 = "LTLIB_ALLOW_EMULATED_BF16"


def cpu_emulates_bf16() -> bool:
    """Whether this machine's CPU is known to lack bf16 instructions (unknown CPUs are given the benefit of the doubt)."""
    from .provenance import cpu_has_native_bf16

    return cpu_has_native_bf16() is False


def emulated_bf16_problem(runs: int) -> str | None:
    """What is wrong with training ``runs`` runs under bf16 autocast here, and the ways out; None when nothing is (no
    such run, a CPU with bf16 instructions or one that cannot be told, or ``$LTLIB_ALLOW_EMULATED_BF16`` is 1)."""
    from .provenance import cpu_model

    if not runs or not cpu_emulates_bf16() or os.environ.get(ALLOW_EMULATED_BF16) == "1":
        return None
    return (f"{runs} run(s) would train under bfloat16 autocast (amp: true) on this CPU ({cpu_model()}), which has "
            f"neither AVX-512 BF16 nor AMX: PyTorch emulates bf16 here, about {EMULATED_BF16_SLOWDOWN:g}x slower than "
            "fp32. Train them on a CPU with avx512_bf16 or amx_bf16 among its /proc/cpuinfo flags, or on a GPU; or "
            f"set {ALLOW_EMULATED_BF16}=1 (the sweep's --allow-emulated-bf16) to train them here anyway (the same "
            "runs, slowly); -p amp false trains fp32 runs instead, under other run keys.")


def eval_batch_size(device: torch.device) -> int:
    """Evaluation batch size per device type (inference only: it changes speed, not predictions' meaning).

    Measured on a 2-core AVX-512 CPU with ResNet-32: 633 img/s at batch 1000 but 1,150 at 128-256 (the
    activations of a large batch fall out of cache); a GPU wants large batches.
    """
    return 256 if device.type == "cpu" else 1000


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cuDNN autotuning on CUDA unless determinism is asked for (then deterministic kernels everywhere)."""
    import os

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
