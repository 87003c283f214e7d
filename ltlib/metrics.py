"""Evaluation metrics: per-class accuracy, many / medium / few groups, balanced accuracy, confusion.

Group accuracies are class-averaged (the mean of the per-class accuracies of the group), as in
Liu et al. (OLTR) and Kang et al.; the default groups follow the ImageNet-LT convention on the
*training* counts: many > 100, medium 20–100, few < 20 images. The thresholds belong to the data set
(:func:`shot_thresholds`): CIFAR-10-LT IF 100 has no class under 20 images (its tail class has 50), so
CIFAR-10 uses > 1000 / 200–1000 / < 200 (4 / 3 / 3 classes at IF 100), and the 8×8 digits (at most ~140
images per class) > 60 / < 20. A group with no class has accuracy NaN, printed "–".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ShotThresholds:
    many_above: int = 100  # many: n_c > many_above
    few_below: int = 20    # few:  n_c < few_below; medium: the rest

    def groups(self, train_counts: Sequence[int]) -> dict[str, list[int]]:
        counts = np.asarray(train_counts)
        return {"many": np.flatnonzero(counts > self.many_above).tolist(),
                "medium": np.flatnonzero((counts <= self.many_above) & (counts >= self.few_below)).tolist(),
                "few": np.flatnonzero(counts < self.few_below).tolist()}


DATASET_THRESHOLDS = {"cifar10": (1000, 200), "cifar10-jpeg": (1000, 200), "digits": (60, 20)}


def shot_thresholds(source: str, many_above: int | None = None, few_below: int | None = None) -> ShotThresholds:
    """The data set's many / few thresholds (ImageNet-LT's 100 / 20 unless it has its own), either overridable."""
    default_many, default_few = DATASET_THRESHOLDS.get(source, (100, 20))
    return ShotThresholds(default_many if many_above is None else int(many_above),
                          default_few if few_below is None else int(few_below))


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true class, columns: predicted class (counts, int64, on the input's device)."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """Recall of every class; NaN for a class with no samples."""
    confusion = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.float64)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.where(totals > 0, totals, 1), np.nan)


def summarize(confusion, train_counts: Sequence[int], thresholds: ShotThresholds = ShotThresholds()) -> dict:
    """Overall top-1, balanced accuracy and many / medium / few (in %), from a confusion matrix."""
    confusion_np = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.float64)
    per_class = per_class_accuracy(confusion_np)
    out = {"top1": 100.0 * np.trace(confusion_np) / max(confusion_np.sum(), 1),
           "balanced": 100.0 * float(np.nanmean(per_class))}
    for name, classes in thresholds.groups(train_counts).items():
        out[name] = 100.0 * float(np.nanmean(per_class[classes])) if classes else float("nan")
    out["per_class"] = [None if np.isnan(a) else round(100.0 * float(a), 4) for a in per_class]
    return out
