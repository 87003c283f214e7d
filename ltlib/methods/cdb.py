"""Class-wise Difficulty-Balanced loss (Sinha, Ohashi, Nakamura, ACCV 2020; arXiv 2010.01824).

Class difficulty d_c = 1 − A_c, with A_c the accuracy of class c on the held-out, balanced
validation split, recomputed after every epoch. Class weights

    w_c = d_c^τ,   normalised so that Σ_c w_c = C,

start uniform (d = 1 before the first update) and scale the per-sample loss: L = mean_i w_{y_i} ℓ_i
(CIFAR code: plain batch mean; the ImageNet-LT code uses the weighted mean Σ w ℓ / Σ w instead,
``reduction="weighted_mean"``).

τ is fixed, or *dynamic* from the spread of the accuracies, with b = max_c A_c / (min_c A_c + 0.01):

* ``"sigmoid"``  τ = σ(b)          — hitachi-rd-cv/CDB-loss CIFAR-LT and EGTEA code;
* ``"2sigmoid"`` τ = 2·σ(b − 1)    — its ImageNet-LT code and the unused CIFAR helper ``compute_weights``.

ltlib's default is ``"sigmoid"``: it is the formula of the code that produced the paper's CIFAR
numbers, which are what this companion compares against. The paper's own text could not be read
here, so which formula it prints is not confirmed; notebook 02 trains both and shows the difference.

Edge cases, on purpose:
* a class at 100 % validation accuracy gets weight 0, as in the official code; ``min_difficulty``
  (e.g. 0.01) keeps such classes in training instead;
* all classes at 100 %: the official weights are 0/0 = NaN; ltlib falls back to uniform weights;
* all accuracies 0: every difficulty is 1, the weights are uniform, and b = 0 (τ = σ(0) = 0.5);
* a class absent from the validation split (accuracy NaN) keeps difficulty 1, its initial value:
  with no evidence it is treated as hard rather than dropped.

Difficulty-Net's own CDB-CE baseline (hitachi-rd-cv/Difficulty_Net, ``cifar_train_exaugment.py``) feeds the
loss a *normalised* difficulty d' = C · d / Σ_j d_j instead of d, and its dynamic τ reads the bias from d':
b' = (1 − min d') / (1 − max d' + 0.01). The weights of a fixed τ are the same (w is scale-invariant), the
dynamic τ is not (b' can be negative or huge, since max d' may exceed 1). ``difficulty="normalised"``
(method ``cdb_ce_normalised``) reproduces that baseline; the default ``"raw"`` is the CDB-loss code.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..losses import build_loss
from .base import Method

DYNAMIC_TAUS = ("sigmoid", "2sigmoid")
DIFFICULTY_INPUTS = ("raw", "normalised")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def class_difficulty(val_accuracy: Sequence[float]) -> np.ndarray:
    """d_c = 1 − A_c (accuracies in [0, 1]); a class with no validation samples (NaN) gets 1."""
    accuracy = np.asarray(val_accuracy, dtype=np.float64)
    return np.where(np.isnan(accuracy), 1.0, 1.0 - np.clip(accuracy, 0.0, 1.0))


def dynamic_tau(val_accuracy: Sequence[float], formula: str = "sigmoid") -> float:
    """τ from b = max A / (min A + 0.01): σ(b) ("sigmoid") or 2σ(b − 1) ("2sigmoid")."""
    if formula not in DYNAMIC_TAUS:
        raise ValueError(f"unknown dynamic tau formula {formula!r}; choose one of {DYNAMIC_TAUS}")
    accuracy = 1.0 - class_difficulty(val_accuracy)
    bias = float(accuracy.max() / (accuracy.min() + 0.01))
    return _sigmoid(bias) if formula == "sigmoid" else 2.0 * _sigmoid(bias - 1.0)


def normalised_dynamic_tau(difficulty: Sequence[float], formula: str = "sigmoid") -> float:
    """τ of Difficulty-Net's CDB-CE baseline: b' = (1 − min d') / (1 − max d' + 0.01) on the given d'."""
    if formula not in DYNAMIC_TAUS:
        raise ValueError(f"unknown dynamic tau formula {formula!r}; choose one of {DYNAMIC_TAUS}")
    difficulty = np.asarray(difficulty, dtype=np.float64)
    bias = float((1.0 - difficulty.min()) / (1.0 - difficulty.max() + 0.01))
    return _sigmoid(bias) if formula == "sigmoid" else 2.0 * _sigmoid(bias - 1.0)


def cdb_weights(val_accuracy: Sequence[float], tau: float | str = "sigmoid", min_difficulty: float = 0.0,
                difficulty_input: str = "raw") -> np.ndarray:
    """Class weights w_c ∝ d_c^τ, summing to C. ``tau``: a number or a dynamic formula name.

    ``difficulty_input="normalised"``: Difficulty-Net's CDB-CE baseline, d' = C·d/Σd (τ from d', see module).
    """
    if difficulty_input not in DIFFICULTY_INPUTS:
        raise ValueError(f"unknown difficulty input {difficulty_input!r}; choose one of {DIFFICULTY_INPUTS}")
    difficulty = np.maximum(class_difficulty(val_accuracy), float(min_difficulty))
    if difficulty_input == "normalised":
        total = difficulty.sum()
        difficulty = difficulty * (len(difficulty) / total) if total > 0 else np.ones_like(difficulty)
        exponent = normalised_dynamic_tau(difficulty, tau) if isinstance(tau, str) else float(tau)
    else:
        exponent = dynamic_tau(val_accuracy, tau) if isinstance(tau, str) else float(tau)
    weights = difficulty ** exponent
    total = weights.sum()
    if not np.isfinite(total) or total <= 0:  # every class perfect: no class is harder than another
        return np.ones_like(weights)
    return weights * (len(weights) / total)


class CDBMethod(Method):
    """A base loss (CE or focal) whose class weights follow the validation difficulty every epoch."""

    def __init__(self, class_counts: Sequence[int], base: str = "ce", tau: float | str = "sigmoid",
                 min_difficulty: float = 0.0, reduction: str = "mean", gamma: float = 1.0,
                 difficulty: str = "raw"):
        kwargs = {"gamma": gamma} if base == "focal" else {}
        super().__init__(build_loss(base, class_counts, reduction=reduction, **kwargs))
        if isinstance(tau, str) and tau not in DYNAMIC_TAUS:
            raise ValueError(f"tau must be a number or one of {DYNAMIC_TAUS}, got {tau!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float, str)):
            raise TypeError(f"tau must be a number or one of {DYNAMIC_TAUS}, got {tau!r}")
        if difficulty not in DIFFICULTY_INPUTS:
            raise ValueError(f"difficulty must be one of {DIFFICULTY_INPUTS}, got {difficulty!r}")
        if base not in ("ce", "focal"):
            raise ValueError(f"CDB base loss must be 'ce' or 'focal', got {base!r}")
        self.tau, self.min_difficulty, self.difficulty = tau, float(min_difficulty), difficulty

    def on_epoch_end(self, epoch: int, val_per_class_accuracy: np.ndarray) -> None:
        if len(val_per_class_accuracy) == 0 or np.all(np.isnan(val_per_class_accuracy)):
            raise ValueError("CDB needs per-class accuracies on a validation split; this data set has none")
        self.loss.set_class_weight(cdb_weights(val_per_class_accuracy, self.tau, self.min_difficulty, self.difficulty))
