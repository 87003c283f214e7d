"""One training loop for every method, in three parts: the step, the evaluation, the checkpoint.

:class:`Trainer` owns a run's model, optimiser, method, device batches and random generator; its
:meth:`Trainer.step` is one optimisation step (benchmarks time exactly this), :meth:`Trainer.train_epoch`
a pass over the training split, :meth:`Trainer.evaluate` a confusion matrix on a split. :func:`fit` ties
them together: validation after every epoch (model selection, CDB and Difficulty-Net need it), the test
split only where a number is reported — every ``test_every``-th epoch for the curves, the last epoch,
and, once at the end, the epoch with the best balanced validation accuracy, whose weights the checkpoint
keeps. A checkpoint is written after every epoch; a run killed at any point, also after its last
checkpoint, resumes from it and ends with the same numbers.

Host synchronisation happens once per epoch (metrics and the NaN check), never per step.

Determinism: on CPU the same seed and thread count give bit-identical metrics (all randomness flows from
``torch.manual_seed(seed)`` for initialisation and one ``torch.Generator`` for data order and
augmentation, whose state is checkpointed). On CUDA, cuDNN's algorithm choice and atomics in some backward
kernels make runs differ in the last bits; ``TrainConfig.deterministic=True`` asks for deterministic kernels.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DeviceBatches, LongTailedData
from .io import CorruptFileError, atomic_write_bytes
from .methods import Method
from .metrics import confusion_matrix, per_class_accuracy
from .runtime import autocast, configure_backends, eval_batch_size, resolve_device

SCHEDULES = ("multistep", "cosine")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class ConfigError(TypeError):
    """A training setting of the wrong type or out of range; the message names it."""


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{owner}.{name} must be >= {minimum}, got {value}")


def _check_number(owner: str, name: str, value, minimum: float | None = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}.{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}.{name} must be >= {minimum}, got {value}")


@dataclass
class TrainConfig:
    """Optimisation schedule. Defaults are LDAM-DRW's CIFAR recipe (kaidic/LDAM-DRW).

    A run's identity lists the fields that differ from these defaults, so a new field with a
    behaviour-preserving default keeps every existing run key; changing a default changes what old keys
    mean and needs a bump of ``ltlib.experiment.TRAIN_VERSION``.
    """

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
    no_bias_decay: bool = False            # CDB: no weight decay on the classifier bias
    amp: bool = False                      # bfloat16 autocast (CPU with AVX-512 BF16 and CUDA)
    channels_last: bool = False
    test_every: int = 0                    # also evaluate the test split every k-th epoch (0: last and selected only)
    compile: str = "none"                  # torch.compile mode for the plain step ("reduce-overhead": CUDA graphs)
    deterministic: bool = False

    def __post_init__(self):
        owner = "TrainConfig"
        _check_int(owner, "epochs", self.epochs, 1)
        _check_int(owner, "batch_size", self.batch_size, 1)
        _check_int(owner, "warmup_epochs", self.warmup_epochs, 0)
        _check_int(owner, "test_every", self.test_every, 0)
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            _check_number(owner, name, getattr(self, name))
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        for name in ("nesterov", "no_bias_decay", "amp", "channels_last", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TrainConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"TrainConfig.compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if isinstance(self.milestones, (str, bytes)) or not hasattr(self.milestones, "__iter__"):
            raise ConfigError(f"TrainConfig.milestones must be a list of epochs, got {self.milestones!r}")
        for m in self.milestones:
            _check_int(owner, "milestones[]", m, 0)
        self.milestones = tuple(int(m) for m in self.milestones)

    def lr_at(self, epoch: int) -> float:
        warm = (epoch + 1) / self.warmup_epochs if epoch < self.warmup_epochs else 1.0
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            progress = min(max(epoch - self.warmup_epochs, 0) / span, 1.0)
            return self.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * warm * self.gamma ** sum(epoch >= m for m in self.milestones)

    def tests_at(self, epoch: int) -> bool:
        """Whether the test split is evaluated after ``epoch`` (0-based) for the curves."""
        return epoch == self.epochs - 1 or (self.test_every > 0 and (epoch + 1) % self.test_every == 0)

    def identity(self) -> dict:
        defaults = TrainConfig.__dataclass_fields__
        values = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
                if v != _default(defaults[k])}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class FitResult:
    history: list[dict]                 # one dict per epoch
    best_epoch: int                     # best balanced accuracy on the validation split
    confusion_last: np.ndarray          # test confusion after the last epoch
    confusion_best: np.ndarray          # test confusion at best_epoch
    wall_s: float
    resumed_from: int | None = None
    method_log: list = field(default_factory=list)
    segments: list = field(default_factory=list)   # which epochs ran where: see :func:`add_segment`


def add_segment(segments: list[dict], first: int, last: int, machine: dict | None) -> list[dict]:
    """``segments`` with epochs ``first``..``last`` trained on ``machine`` appended, merged into the previous segment
    when that ran on the same machine. ``machine`` None: not recorded (a checkpoint older than segments).

    A run resumed from a checkpoint that another machine wrote (a parked run) is trained on both; bf16 kernels
    differ between CPU models, so its entry names each machine and its epochs rather than the last one alone.
    """
    if segments and segments[-1]["machine"] == machine and segments[-1]["epochs"][1] == first - 1:
        return [*segments[:-1], {"epochs": [segments[-1]["epochs"][0], last], "machine": machine}]
    return [*segments, {"epochs": [first, last], "machine": machine}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    if config.no_bias_decay:
        bias = [p for n, p in model.named_parameters() if n == "classifier.bias"]
        rest = [p for n, p in model.named_parameters() if n != "classifier.bias"]
        groups = [{"params": rest}, {"params": bias, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(model.parameters())}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


class Trainer:
    """A run's training state and its three operations: step, epoch, evaluation."""

    def __init__(self, model: nn.Module, method: Method, data: LongTailedData, config: TrainConfig, *,
                 device: str = "cpu", seed: int = 0):
        self.device = resolve_device(device)
        configure_backends(self.device, config.deterministic)
        self.config, self.method, self.data, self.seed = config, method, data, seed
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, memory_format=memory_format)
        method.to(self.device)
        self.batches = {
            "train": DeviceBatches(data.train, data.mean, data.std, self.device, data.crop_padding, data.flip,
                                   config.channels_last),
            "val": DeviceBatches(data.val, data.mean, data.std, self.device, channels_last=config.channels_last),
            "test": DeviceBatches(data.test, data.mean, data.std, self.device, channels_last=config.channels_last),
        }
        self.optimizer = build_optimizer(self.model, config)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        method.attach(train=self.batches["train"], val=self.batches["val"], generator=self.generator, config=config)
        self.forward = self._compiled_forward() if config.compile != "none" else self.model

    def _compiled_forward(self):
        if type(self.method).compute_loss is not Method.compute_loss:
            raise ConfigError(f"TrainConfig.compile applies to the plain step only; {type(self.method).__name__} "
                              "has its own step (meta-learning): use compile='none'")
        return torch.compile(self.model, mode=None if self.config.compile == "default" else self.config.compile)

    def set_epoch(self, epoch: int) -> float:
        lr = self.config.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.method.on_epoch_start(epoch, lr)
        return lr

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a batch; returns the (device) loss and logits, detached."""
        with autocast(self.device, self.config.amp):
            loss, logits = self.method.compute_loss(self.forward, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; returns loss, accuracy and the first non-finite step (host values)."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        first_bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        steps = 0
        for step, (images, labels) in enumerate(self.batches["train"].epoch(self.config.batch_size, self.generator)):
            loss, logits = self.step(images, labels)
            # The first non-finite step is recorded on the device and read once per epoch.
            bad = ~torch.isfinite(loss)
            first_bad_step = torch.where(bad & (first_bad_step < 0), torch.full_like(first_bad_step, step),
                                         first_bad_step)
            loss_sum += loss.float() * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            steps += 1
        if int(first_bad_step) >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch} step {int(first_bad_step)} (of {steps}); lower the "
                f"learning rate (now {self.config.lr_at(epoch):g}), check the loss inputs, or turn off amp")
        n = len(self.batches["train"])
        return {"train_loss": float(loss_sum) / n, "train_acc": 100.0 * int(correct) / n}

    def evaluate(self, split: str, model: nn.Module | None = None) -> torch.Tensor:
        """Confusion matrix (rows true, columns predicted) of ``model`` (default: the trained one) on a split."""
        model = self.model if model is None else model
        batches, num_classes = self.batches[split], self.data.num_classes
        model.eval()
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=self.device)
        with torch.no_grad(), autocast(self.device, self.config.amp):
            for images, labels in batches.sequential(eval_batch_size(self.device)):
                confusion += confusion_matrix(model(images).argmax(1), labels, num_classes)
        return confusion

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "method": self.method.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"].cpu())


def _round_percent(values: np.ndarray) -> list:
    return [None if np.isnan(v) else round(100.0 * float(v), 4) for v in values]


def load_checkpoint(path: Path, device: torch.device):
    """The checkpoint's state, or None if absent; a file that does not load is named with the fix."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # truncated or foreign file: torch raises several kinds
        raise CorruptFileError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); delete it "
                               "to train the run from the start") from None


def fit(model: nn.Module, method: Method, data: LongTailedData, config: TrainConfig, *, device: str = "cpu",
        seed: int = 0, checkpoint: str | Path | None = None, progress: bool = True,
        stop_after: int | None = None, machine: dict | None = None) -> FitResult:
    """Train ``model`` with ``method`` on ``data`` under ``config``.

    ``checkpoint``: a file written after every epoch; if it exists and was written for the same config,
    method and seed, training resumes after its last epoch (a finished checkpoint goes straight to the final
    evaluation). ``stop_after``: end after that many epochs (to test resumption; the checkpoint stays
    resumable) and return the partial history. ``machine``: what describes where this call trains (device, CPU,
    versions, commit); the checkpoint keeps it per range of epochs, in ``FitResult.segments``.
    """
    trainer = Trainer(model, method, data, config, device=device, seed=seed)
    identity = {"config": dataclasses.asdict(config), "seed": seed, "method": type(method).__name__}
    history: list[dict] = []
    best = {"epoch": -1, "val": -math.inf, "weights": None}
    start_epoch, resumed_from, elapsed_before, earlier = 0, None, 0.0, []
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, trainer.device)
        if state is not None and state.get("identity") == identity:
            trainer.load_state_dict(state["trainer"])
            history, best, elapsed_before = state["history"], state["best"], state["wall_s"]
            start_epoch = resumed_from = state["epoch"] + 1
            earlier = state.get("segments") or [{"epochs": [0, state["epoch"]], "machine": None}]
    segments = earlier

    started = time.perf_counter()
    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    bar = _progress(progress, config.epochs, start_epoch)
    has_val = len(trainer.batches["val"]) > 0
    for epoch in range(start_epoch, end_epoch):
        lr = trainer.set_epoch(epoch)
        record = {"epoch": epoch, "lr": lr, **trainer.train_epoch(epoch)}
        val_acc = per_class_accuracy(trainer.evaluate("val")) if has_val else np.zeros(0)
        method.on_epoch_end(epoch, val_acc)
        record["val_balanced"] = 100.0 * float(np.nanmean(val_acc)) if has_val else float("nan")
        record["val_per_class"] = _round_percent(val_acc)
        record["class_weight"] = [round(w, 6) for w in method.class_weight()]
        if config.tests_at(epoch):
            test_confusion = trainer.evaluate("test")
            test_acc = per_class_accuracy(test_confusion)
            record["test_top1"] = 100.0 * float(test_confusion.diag().sum()) / max(len(trainer.batches["test"]), 1)
            record["test_balanced"] = 100.0 * float(np.nanmean(test_acc))
            record["test_per_class"] = _round_percent(test_acc)
        history.append(record)
        if has_val and record["val_balanced"] > best["val"]:
            best = {"epoch": epoch, "val": record["val_balanced"],
                    "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}}
        wall = elapsed_before + time.perf_counter() - started
        segments = add_segment(earlier, start_epoch, epoch, machine)
        if checkpoint is not None:
            state = {"identity": identity, "epoch": epoch, "trainer": trainer.state_dict(), "history": history,
                     "best": best, "wall_s": wall, "segments": segments}
            atomic_write_bytes(checkpoint, lambda fh: torch.save(state, fh))
        if bar is not None:
            bar.set_postfix_str(f"loss {record['train_loss']:.3f} val {record['val_balanced']:.1f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = elapsed_before + time.perf_counter() - started
    done = len(history)
    if done < config.epochs:  # stopped early on purpose: no final evaluation
        return FitResult(history, best["epoch"], np.zeros((0, 0)), np.zeros((0, 0)), wall, resumed_from,
                         segments=segments)
    # Final evaluation from the weights themselves, so a run resumed after its last checkpoint ends the same.
    confusion_last = trainer.evaluate("test").cpu().numpy()
    if best["weights"] is None:  # no validation split: the last epoch is the selected one
        best_epoch, confusion_best = history[-1]["epoch"], confusion_last
    else:
        selected = copy.deepcopy(trainer.model)
        selected.load_state_dict(best["weights"])
        best_epoch, confusion_best = best["epoch"], trainer.evaluate("test", selected).cpu().numpy()
    method_log = list(getattr(method, "epoch_log", []))
    return FitResult(history, best_epoch, confusion_last, confusion_best, wall, resumed_from, method_log, segments)


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    # Plain-text bar on stderr, refreshed at most every 10 s: it never lands in compared output.
    return tqdm(total=total, initial=initial, desc="epochs", file=sys.stderr, mininterval=10,
                ascii=True, dynamic_ncols=False, ncols=100, leave=False)
