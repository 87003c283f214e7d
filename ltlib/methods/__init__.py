"""Training methods: what owns state that changes while a model trains.

A :class:`Method` computes the training loss of a batch and updates itself through two hooks
that :func:`ltlib.train.fit` calls: ``on_epoch_start(epoch)`` (deferred re-weighting switches
on here) and ``on_epoch_end(epoch, val_per_class_accuracy)`` (difficulty-based methods recompute
their class weights here, from the *validation* split only). ``fit`` knows no method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..losses import WeightedLoss, build_loss, effective_number_weights


class Method:
    """A loss plus whatever per-epoch state the method keeps."""

    head: str = "linear"

    def __init__(self, loss: WeightedLoss):
        self.loss = loss

    def attach(self, *, train, val, generator: torch.Generator, config) -> None:
        """Called once by ``fit`` before training: the device batches of the training and validation
        splits, the run's random generator and its ``TrainConfig`` (meta-learning methods draw meta
        batches from ``val`` with ``generator``). ``fit`` also sets ``self.current_lr`` every epoch."""

    current_lr: float = 0.0

    def to(self, device) -> "Method":
        self.loss.to(device)
        return self

    def compute_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scalar training loss, logits)."""
        logits = model(images)
        return self.loss(logits, targets), logits

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, val_per_class_accuracy: np.ndarray) -> None:
        pass

    def class_weight(self) -> list[float]:
        return self.loss.class_weight.tolist()

    def state_dict(self) -> dict:
        return {"loss": self.loss.state_dict(), "reduction": self.loss.reduction}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.loss.reduction = state["reduction"]


class DeferredReweighting(Method):
    """DRW (Cao et al. 2019): uniform weights, then effective-number weights from ``drw_epoch`` on.

    As in kaidic/LDAM-DRW the re-weighted loss is the weighted mean Σ w_y ℓ / Σ w_y.
    """

    def __init__(self, loss: WeightedLoss, drw_epoch: int, beta: float = 0.9999):
        super().__init__(loss)
        self.drw_epoch, self.beta = int(drw_epoch), float(beta)

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.drw_epoch or (epoch > self.drw_epoch and bool((self.loss.class_weight == 1).all())):
            weights = effective_number_weights(self.loss.class_counts.cpu(), self.beta)
            self.loss.set_class_weight(weights, reduction="weighted_mean")


@dataclass(frozen=True)
class MethodSpec:
    """How to build a method by name: its loss, loss options, head and whether DRW applies."""

    loss: str
    loss_kwargs: dict = field(default_factory=dict)
    head: str = "linear"
    drw: bool = False
    factory: Callable[..., Method] | None = None  # for methods with their own class (CDB, ...)


METHODS: dict[str, MethodSpec] = {
    "ce": MethodSpec("ce"),
    "focal": MethodSpec("focal"),
    "cb": MethodSpec("cb"),
    "cb_focal": MethodSpec("cb_focal"),
    "ce_drw": MethodSpec("ce", drw=True),
    "ldam": MethodSpec("ldam", head="normed"),
    "ldam_drw": MethodSpec("ldam", head="normed", drw=True),
    "balanced_softmax": MethodSpec("balanced_softmax"),
    "logit_adjust": MethodSpec("logit_adjust"),
}


def register_method(name: str, spec: MethodSpec) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered already")
    METHODS[name] = spec


def build_method(name: str, class_counts: Sequence[int], *, drw_epoch: int | None = None,
                 drw_beta: float = 0.9999, **overrides) -> Method:
    """Build method ``name`` for a training set with ``class_counts``; ``overrides`` go to the loss."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    spec = METHODS[name]
    if spec.factory is not None:
        method = spec.factory(class_counts, **{**spec.loss_kwargs, **overrides})
        method.head = spec.head
        return method
    loss = build_loss(spec.loss, class_counts, **{**spec.loss_kwargs, **overrides})
    if spec.drw:
        if drw_epoch is None:
            raise ValueError(f"method {name!r} uses deferred re-weighting: set TrainConfig.drw_epoch")
        method: Method = DeferredReweighting(loss, drw_epoch, drw_beta)
    else:
        method = Method(loss)
    method.head = spec.head
    return method


def parse_method(entry: str) -> tuple[str, dict]:
    """``"cdb_ce:tau=1.5,min_difficulty=0.01"`` -> ("cdb_ce", {"tau": 1.5, "min_difficulty": 0.01}).

    Lets a notebook's ``methods`` parameter (a list of strings) name variants of one method.
    """
    import yaml

    name, _, options = entry.partition(":")
    kwargs = {}
    for option in filter(None, options.split(",")):
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"method variant {entry!r}: options are written key=value, got {option!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {entry!r}; choose one of {sorted(METHODS)}")
    return name, kwargs


from . import cdb  # noqa: E402,F401  (registers cdb_ce and cdb_focal)
from . import difficulty_net  # noqa: E402,F401
from . import intra_inter  # noqa: E402,F401
