"""One training loop for every method.

``fit`` trains ``model`` with ``method`` on device-resident batches, evaluates the validation and
test splits after every epoch, calls the method's epoch hooks, checkpoints every epoch and resumes
from a checkpoint. The only host synchronisations are once per epoch (metrics and the NaN check).

Determinism: on CPU the same seed gives bit-identical metrics (all randomness flows from
``torch.manual_seed(seed)`` for initialisation and one ``torch.Generator`` for data order and
augmentation, whose state is checkpointed). On CUDA, cuDNN's algorithm choice and atomics in some
backward kernels make runs differ in the last bits; ``TrainConfig.deterministic=True`` asks
PyTorch for deterministic kernels (slower) and sets ``CUBLAS_WORKSPACE_CONFIG``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DeviceBatches, LongTailedData, atomic_write_bytes
from .methods import Method
from .metrics import confusion_matrix, per_class_accuracy


@contextlib.contextmanager
def cpu_threads(count: int | None):
    """Run the block with ``count`` intra-op CPU threads (None: leave the setting alone), then restore it.

    Small networks on small tensors (stage-2 classifiers, DLSA flows on 64-d features) run several times
    faster on one thread than on two that spin-wait for each other, most of all when another job shares
    the cores.
    """
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Optimisation schedule. Defaults are LDAM-DRW's CIFAR recipe (kaidic/LDAM-DRW)."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: str = "multistep"            # "multistep" or "cosine"
    milestones: tuple[int, ...] = (160, 180)  # epochs (0-based) from which the lr is multiplied by gamma
    gamma: float = 0.01
    warmup_epochs: int = 5                 # linear warm-up: lr · (epoch+1)/warmup_epochs
    drw_epoch: int | None = 160            # deferred re-weighting starts here (methods with DRW only)
    drw_beta: float = 0.9999
    no_bias_decay: bool = False            # CDB: no weight decay on the classifier bias
    eval_batch_size: int = 1000
    amp: bool = False                      # bfloat16 autocast on CUDA
    channels_last: bool = False
    deterministic: bool = False
    device: str = "cpu"

    def __post_init__(self):
        for name, kind in (("epochs", int), ("batch_size", int), ("warmup_epochs", int), ("eval_batch_size", int)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
        for name in ("lr", "momentum", "weight_decay", "gamma", "drw_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"TrainConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
        if self.schedule not in ("multistep", "cosine"):
            raise ValueError(f"TrainConfig.schedule must be 'multistep' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("TrainConfig.epochs and batch_size must be >= 1")
        self.milestones = tuple(int(m) for m in self.milestones)

    def lr_at(self, epoch: int) -> float:
        warm = (epoch + 1) / self.warmup_epochs if epoch < self.warmup_epochs else 1.0
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            progress = min(max(epoch - self.warmup_epochs, 0) / span, 1.0)
            return self.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * warm * self.gamma ** sum(epoch >= m for m in self.milestones)


@dataclass
class FitResult:
    history: list[dict]                 # one dict per epoch (lr, loss, accuracies, per-class accuracies, weights)
    best_epoch: int                     # best balanced accuracy on the validation split
    confusion_last: np.ndarray          # test confusion after the last epoch
    confusion_best: np.ndarray          # test confusion at best_epoch
    wall_s: float
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def _evaluate(model: nn.Module, batches: DeviceBatches, num_classes: int, batch_size: int, amp: bool) -> torch.Tensor:
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=batches.device)
    with torch.no_grad(), _autocast(batches.device, amp):
        for images, labels in batches.sequential(batch_size):
            confusion += confusion_matrix(model(images).argmax(1), labels, num_classes)
    return confusion


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    if config.no_bias_decay:
        bias = [p for n, p in model.named_parameters() if n == "classifier.bias"]
        rest = [p for n, p in model.named_parameters() if n != "classifier.bias"]
        groups = [{"params": rest}, {"params": bias, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(model.parameters())}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def fit(model: nn.Module, method: Method, data: LongTailedData, config: TrainConfig, *, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, progress: bool = True, stop_after: int | None = None) -> FitResult:
    """Train ``model`` with ``method`` on ``data`` under ``config``.

    ``checkpoint``: path of a file written after every epoch; if it exists and was written for the
    same config and seed, training resumes after its last epoch. ``stop_after``: end after that many
    epochs (to test resumption; the checkpoint stays resumable).
    """
    device = torch.device(config.device)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    num_classes = data.num_classes
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    method.to(device)
    train = DeviceBatches(data.train, data.mean, data.std, device, data.crop_padding, data.flip, config.channels_last)
    val = DeviceBatches(data.val, data.mean, data.std, device, channels_last=config.channels_last)
    test = DeviceBatches(data.test, data.mean, data.std, device, channels_last=config.channels_last)
    optimizer = _optimizer(model, config)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    method.attach(train=train, val=val, generator=generator, config=config)
    identity = {"config": dataclasses.asdict(config), "seed": seed, "method": type(method).__name__}
    history: list[dict] = []
    best = {"epoch": -1, "val": -1.0, "confusion": None}
    start_epoch, resumed_from, elapsed_before = 0, None, 0.0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["identity"] == identity:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            method.load_state_dict(state["method"])
            generator.set_state(state["generator"].cpu())
            history, best, elapsed_before = state["history"], state["best"], state["wall_s"]
            start_epoch = resumed_from = state["epoch"] + 1

    started = time.perf_counter()
    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    bar = _progress(progress, config.epochs, start_epoch)
    for epoch in range(start_epoch, end_epoch):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        method.current_lr = lr
        method.on_epoch_start(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
        steps = 0
        for step, (images, labels) in enumerate(train.epoch(config.batch_size, generator)):
            with _autocast(device, config.amp):
                loss, logits = method.compute_loss(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Record the first non-finite step on the device; it is read once per epoch.
            bad = ~torch.isfinite(loss.detach())
            first_bad_step = torch.where(bad & (first_bad_step < 0), torch.full_like(first_bad_step, step), first_bad_step)
            loss_sum += loss.detach().float() * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            steps += 1
        if int(first_bad_step) >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch} step {int(first_bad_step)} (of {steps}); "
                f"lower the learning rate (now {lr:g}), check the loss inputs, or turn off amp")
        val_confusion = _evaluate(model, val, num_classes, config.eval_batch_size, config.amp)
        test_confusion = _evaluate(model, test, num_classes, config.eval_batch_size, config.amp)
        val_acc = per_class_accuracy(val_confusion)
        test_acc = per_class_accuracy(test_confusion)
        method.on_epoch_end(epoch, val_acc)
        record = {
            "epoch": epoch, "lr": lr, "train_loss": float(loss_sum) / len(train),
            "train_acc": 100.0 * int(correct) / len(train),
            "val_balanced": 100.0 * float(np.nanmean(val_acc)) if len(val) else float("nan"),
            "test_top1": 100.0 * float(test_confusion.diag().sum()) / max(len(test), 1),
            "test_balanced": 100.0 * float(np.nanmean(test_acc)),
            "val_per_class": _listify(val_acc), "test_per_class": _listify(test_acc),
            "class_weight": [round(w, 6) for w in method.class_weight()],
        }
        history.append(record)
        if len(val) and record["val_balanced"] > best["val"]:
            best = {"epoch": epoch, "val": record["val_balanced"], "confusion": test_confusion.cpu().numpy()}
        wall = elapsed_before + time.perf_counter() - started
        if checkpoint:
            state = {"identity": identity, "epoch": epoch, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "method": method.state_dict(),
                     "generator": generator.get_state(), "history": history, "best": best, "wall_s": wall}
            atomic_write_bytes(checkpoint, lambda fh: torch.save(state, fh))
        if bar is not None:
            bar.set_postfix_str(f"loss {record['train_loss']:.3f} val {record['val_balanced']:.1f} "
                                f"test {record['test_top1']:.1f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    if best["confusion"] is None:
        best = {"epoch": history[-1]["epoch"], "val": float("nan"), "confusion": test_confusion.cpu().numpy()}
    return FitResult(history, best["epoch"], test_confusion.cpu().numpy(), np.asarray(best["confusion"]),
                     elapsed_before + time.perf_counter() - started, resumed_from)


def _listify(values: np.ndarray) -> list:
    return [None if np.isnan(v) else round(100.0 * float(v), 4) for v in values]


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    # Plain-text bar on stderr, refreshed at most every 10 s: it never lands in compared output.
    return tqdm(total=total, initial=initial, desc="epochs", file=sys.stderr, mininterval=10,
                ascii=True, dynamic_ncols=False, ncols=100, leave=False)
