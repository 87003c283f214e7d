"""Stage 2: re-train the classifier on a frozen backbone with class-balanced sampling.

Difficulty-Net's official pipeline (like MiSLAS, Zhong et al. CVPR 2021, and the decoupling study of
Kang et al. ICLR 2020) follows the weighted stage-1 training with a short classifier re-training:

* the backbone is frozen (eval mode); the classifier is the stage-1 linear layer times a learnable
  per-class scale, logits = s ⊙ (W f + b), s initialised to 1 (learnable weight scaling, LWS);
* batches come from a class-aware sampler: a class is drawn from a shuffled cycle over the classes,
  then ``samples_per_class`` (4) of its images; an epoch has n_max · C samples;
* the loss is label-aware smoothing (:class:`ltlib.losses.LabelAwareSmoothing`), ε by the nominal imbalance factor;
* SGD (momentum 0.9), lr 0.05 with a per-epoch cosine to 0 over 50 epochs, weight decay 1e-4, batch 128.

``trainable="fc+scale"`` is the official CIFAR code (its ``DotProduct_Classifier`` trains W, b and s);
``"scale"`` is the ImageNet/Places code (only s, LWS proper); ``"fc"`` with ``loss="ce"`` is cRT
(new W, b from scratch, s fixed). Differences from the official code, all written down:

* features are extracted once (``ltlib.features.feature_set``, cached by :mod:`ltlib.stages`); augmentation enters only through
  extra augmented *views* of the training set (``views``), not AutoAugment + Cutout at every step;
* the sampler draws a class's images with replacement, where the official one cycles through a
  shuffled list per class; both give each class the same expected share;
* the stage-1 model is the run's last epoch (ltlib keeps that checkpoint), not its best-validation one;
* the official CIFAR script keeps the stage-2 epoch with the best *test* accuracy; ltlib selects on the
  validation split and also records the last epoch and, only to show what that choice is worth, the
  test-selected epoch (``selected_on="test"``, never a result to report).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .features import FeatureSet
from .losses import build_loss
from .metrics import confusion_matrix, per_class_accuracy
from .runtime import cpu_threads

TRAINABLE = ("fc+scale", "scale", "fc")


@dataclass
class Stage2Config:
    """Stage-2 schedule; defaults are Difficulty-Net's CIFAR stage 2."""

    trainable: str = "fc+scale"
    loss: str = "las"
    smooth_head: float | None = None     # None: by the counts' n_max / n_min (LAS only)
    smooth_tail: float | None = None
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    samples_per_class: int = 4
    views: int = 1
    seed: int = 0
    cpu_threads: int | None = 1          # intra-op threads for the (tiny) classifier training
    device: str = "cpu"

    def __post_init__(self):
        if self.cpu_threads is not None and (isinstance(self.cpu_threads, bool) or not isinstance(self.cpu_threads, int)
                                             or self.cpu_threads < 1):
            raise TypeError(f"Stage2Config.cpu_threads must be a positive int or None, got {self.cpu_threads!r}")
        for name in ("epochs", "batch_size", "samples_per_class", "views", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise TypeError(f"Stage2Config.{name} must be a positive int, got {value!r}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Stage2Config.{name} must be a number, got {value!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"Stage2Config.trainable must be one of {TRAINABLE}, got {self.trainable!r}")

    def lr_at(self, epoch: int) -> float:
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def loss_kwargs(self) -> dict:
        if self.loss != "las":
            return {}
        return {k: v for k, v in (("smooth_head", self.smooth_head), ("smooth_tail", self.smooth_tail)) if v is not None}


class ScaledLinear(nn.Module):
    """logits = s ⊙ (W f + b): a linear classifier with a learnable per-class scale s (LWS)."""

    def __init__(self, linear: nn.Linear, trainable: str = "fc+scale"):
        super().__init__()
        self.fc = nn.Linear(linear.in_features, linear.out_features)
        if trainable == "fc":  # cRT: a fresh classifier
            self.scale = nn.Parameter(torch.ones(linear.out_features), requires_grad=False)
        else:
            self.fc.load_state_dict(linear.state_dict())
            self.scale = nn.Parameter(torch.ones(linear.out_features))
        self.fc.requires_grad_(trainable != "scale")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features) * self.scale


def class_aware_indices(labels: torch.Tensor, num_classes: int, total: int, samples_per_class: int,
                        generator: torch.Generator) -> torch.Tensor:
    """``total`` indices: classes in shuffled cycles, ``samples_per_class`` random members of each in a row."""
    device = labels.device
    counts = torch.bincount(labels, minlength=num_classes)
    present = torch.nonzero(counts > 0).flatten()
    if present.numel() == 0:
        raise ValueError("class-aware sampling needs at least one labelled sample")
    visits = -(-total // samples_per_class)
    cycles = -(-visits // present.numel())
    classes = torch.cat([present[torch.randperm(present.numel(), device=device, generator=generator)]
                         for _ in range(cycles)])[:visits]
    members = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    offsets = (torch.rand(visits, samples_per_class, device=device, generator=generator)
               * counts[classes][:, None]).long()
    return members[(starts[classes][:, None] + offsets).flatten()[:total]]


def _confusion(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    with torch.no_grad():
        return confusion_matrix(classifier(features).argmax(1), labels, num_classes)


def retrain_classifier(features: FeatureSet, linear: nn.Linear, config: Stage2Config) -> dict:
    """Stage-2 training on ``features``; returns the history and the val / last / test-selected confusions."""
    with cpu_threads(config.cpu_threads if torch.device(config.device).type == "cpu" else None):
        return _retrain_classifier(features, linear, config)


def _retrain_classifier(features: FeatureSet, linear: nn.Linear, config: Stage2Config) -> dict:
    device = torch.device(config.device)
    features = features.to(device)
    torch.manual_seed(config.seed)
    classifier = ScaledLinear(linear, config.trainable).to(device)
    loss = build_loss(config.loss, features.train_counts, **config.loss_kwargs()).to(device)
    parameters = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    num_classes = features.num_classes
    per_epoch = max(features.train_counts) * num_classes
    history, best = [], {"val": {"score": -1.0}, "test": {"score": -1.0}}
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(epoch)
        order = class_aware_indices(features.train_labels, num_classes, per_epoch, config.samples_per_class, generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, per_epoch, config.batch_size):
            index = order[start: start + config.batch_size]
            batch_loss = loss(classifier(features.train[index]), features.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            loss_sum += batch_loss.detach() * index.numel()
        train_loss = float(loss_sum) / per_epoch
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"stage 2: non-finite loss at epoch {epoch}; lower Stage2Config.lr (now {config.lr})")
        val_confusion = _confusion(classifier, features.val, features.val_labels, num_classes)
        test_confusion = _confusion(classifier, features.test, features.test_labels, num_classes)
        val_balanced = 100.0 * float(np.nanmean(per_class_accuracy(val_confusion)))
        test_top1 = 100.0 * float(test_confusion.diag().sum()) / max(int(test_confusion.sum()), 1)
        history.append({"epoch": epoch, "lr": config.lr_at(epoch), "train_loss": train_loss,
                        "val_balanced": val_balanced, "test_top1": test_top1,
                        "scale": [round(float(s), 6) for s in classifier.scale.detach()]})
        for rule, score in (("val", val_balanced), ("test", test_top1)):
            if score > best[rule]["score"]:
                best[rule] = {"score": score, "epoch": epoch, "confusion": test_confusion.cpu().numpy()}
    return {"history": history, "wall_s": time.perf_counter() - started,
            "selections": {"last": (config.epochs - 1, test_confusion.cpu().numpy()),
                           "val": (best["val"]["epoch"], best["val"]["confusion"]),
                           "test": (best["test"]["epoch"], best["test"]["confusion"])}}
