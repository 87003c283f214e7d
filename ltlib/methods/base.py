"""The method contract: a loss plus whatever state changes while a model trains.

:class:`ltlib.train.Trainer` calls, in this order: ``attach`` once before training (the device batches of
the training and validation splits, the run's random generator and its ``TrainConfig``), then per epoch
``on_epoch_start(epoch, lr)``, ``compute_loss`` for every batch, and ``on_epoch_end(epoch,
val_per_class_accuracy)`` with the accuracies of the *validation* split only. It knows no method by name.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..losses import WeightedLoss, effective_number_weights


class Method:
    """A loss plus whatever per-epoch state the method keeps."""

    head: str = "linear"

    def __init__(self, loss: WeightedLoss):
        self.loss = loss
        self.current_lr = 0.0  # the learning rate of the running epoch (meta-learning steps with it)

    def attach(self, *, train, val, generator: torch.Generator, config) -> None:
        """Called once before training; meta-learning methods draw meta batches from ``val`` with ``generator``."""

    def to(self, device) -> "Method":
        self.loss.to(device)
        return self

    def compute_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scalar training loss, logits). May update method state (a meta-network) on the way."""
        logits = model(images)
        return self.loss(logits, targets), logits

    def on_epoch_start(self, epoch: int, lr: float | None = None) -> None:
        if lr is not None:
            self.current_lr = float(lr)

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
        if isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int) or drw_epoch < 0:
            raise ValueError(f"drw_epoch must be an int >= 0 (the epoch re-weighting starts), got {drw_epoch!r}")
        if not 0 < float(beta) < 1:
            raise ValueError(f"drw_beta must lie in (0, 1), got {beta!r}")
        self.drw_epoch, self.beta = int(drw_epoch), float(beta)

    def on_epoch_start(self, epoch: int, lr: float | None = None) -> None:
        super().on_epoch_start(epoch, lr)
        if epoch == self.drw_epoch or (epoch > self.drw_epoch and bool((self.loss.class_weight == 1).all())):
            weights = effective_number_weights(self.loss.class_counts.cpu(), self.beta)
            self.loss.set_class_weight(weights, reduction="weighted_mean")
