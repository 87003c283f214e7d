"""Where and how a computation runs: device strings, CPU threads, mixed precision, batch sizes per device.

A run's numbers depend on the device type and, on CPU, on the number of intra-op threads (a reduction
split over two threads sums in another order than over one), so both are part of a run's identity
(:mod:`ltlib.experiment`). Everything here is checked before anything runs: an unknown device string or
a device this machine lacks is one clear error, never a silent fall-back to the CPU.
"""
from __future__ import annotations

import contextlib
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
