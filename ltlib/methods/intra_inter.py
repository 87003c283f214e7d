"""Gradient-harmonized losses: GHM-C and a reconstruction of intra- and inter-category balance.

GHM-C (Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019) down-weights examples
whose gradient norm is common. For softmax cross-entropy the gradient with respect to the logits of
sample i has the target component p_{y_i} − 1, so ltlib takes

    g_i = 1 − p_{y_i} ∈ [0, 1]       (the sigmoid GHM-C's |p − p*| for the target class)

splits [0, 1] into M unit regions of width 1/M, counts the samples in each (an EMA over batches with
momentum 0.75, updated for non-empty regions only, as the GHM reference code does) and weights

    β_i = N / (GD(g_i)),   GD(g) = R_{bin(g)} · n_nonempty,     L = (1/N) Σ_i β_i ℓ_i

so every occupied region carries the same total weight (with M = 30).

**Intra- and inter-category balance (Zhang, Lin, Zhang, Xu, ICASSP 2022, arXiv 2204.09234) — a
reconstruction.** No code is public and only the abstract and introduction could be read; what follows
is ltlib's reading of the mechanism they name, every choice marked as ours:

* *Intra-category balance* (ours: per-class GHM). The histogram is kept per class: sample i is weighted
  by its own class's density, β_i = N_c / (R^c_{bin(g_i)} · n^c_nonempty), so inside a class the many
  easy examples no longer swamp its few hard ones, and each class keeps the total weight N_c it has
  under cross-entropy (the hard examples of head classes gain, which the paper says re-weighting
  methods under-fit).
* *Category-wise adaptive precision* (ours: Sturges' rule scaled to M). Class c gets
  M_c = clip(round(M · (1 + log₂ n_c) / (1 + log₂ n_max)), ``min_bins``, M) regions, n_c its training
  count: a histogram's resolution should grow with the number of samples it summarises (Sturges:
  1 + log₂ n bins), and the largest class keeps the GHM reference M = 30. A tail class of 50 images
  gets 15 regions on CIFAR-10-LT IF 100, the head class 30.
* *Inter-category balance* (ours: equal gradient mass per class). Each class is one unit with gradient
  mass G_c = Σ_{i∈c} β_i g_i per batch (after the intra weights). Ĝ_c is its EMA over *every* batch
  (a class absent from a batch adds 0), so Ĝ_c estimates the class's expected mass per batch, rare
  classes included; its momentum ``class_momentum`` = 0.99 (ours) spans ~100 batches, long enough to
  see the rarest class of CIFAR-10-LT IF 100 several times. Class c's samples are multiplied by
  u_c = mean_{c'} Ĝ_{c'} / Ĝ_c: in expectation every class then contributes the same gradient mass,
  and the total Σ_c u_c Ĝ_c = Σ_c Ĝ_c is unchanged. With ``class_momentum=0`` it is exact per batch:
  every class present contributes the same Σ_{i∈c} β_i g_i. This counters the head-ward shift of the
  decision boundary that the abstract describes.
* The weights are constants (no gradient flows through them). Without ``inter`` they sum to N, so the
  loss has the scale of cross-entropy; ``inter`` keeps the expected gradient mass instead.

``ghm`` is plain GHM-C; ``intra_inter`` has all three parts, each switchable (``intra``, ``adaptive``,
``inter``) for the ablation: ``intra_inter:inter=false`` is intra only, ``intra_inter:intra=false``
inter only (on the unweighted samples).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..losses import WeightedLoss
from .base import Method


def adaptive_bins(class_counts: Sequence[int], bins: int = 30, min_bins: int = 2) -> torch.Tensor:
    """M_c = clip(round(M · (1 + log₂ n_c) / (1 + log₂ n_max)), min_bins, M): Sturges' rule scaled to M."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1)
    sturges = 1 + torch.log2(counts)
    return torch.round(bins * sturges / sturges.max()).clamp(min_bins, bins).long()


def gradient_norm(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """g_i = 1 − p_{y_i}: the target component of ∂CE/∂z, in [0, 1]."""
    with torch.no_grad():
        return (1.0 - F.softmax(logits.float(), 1).gather(1, targets[:, None]).squeeze(1)).clamp(0.0, 1.0)


class GradientHarmonizedLoss(WeightedLoss):
    """GHM-C for softmax cross-entropy, with optional per-class histograms and class-mass balance.

    See the module docstring. ``intra``: one histogram per class (False: one shared histogram, plain
    GHM-C); ``adaptive``: per-class region counts M_c (only with ``intra``); ``inter``: equal gradient
    mass per class; ``bins`` M, ``momentum`` of the region-count EMA and ``class_momentum`` of the
    class-mass EMA (0: batch statistics only).
    """

    def __init__(self, class_counts, bins: int = 30, momentum: float = 0.75, intra: bool = False,
                 adaptive: bool = False, inter: bool = False, min_bins: int = 2, class_momentum: float = 0.99,
                 reduction: str = "mean"):
        super().__init__(class_counts, reduction)
        if isinstance(bins, bool) or int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        if not (0 <= momentum < 1 and 0 <= class_momentum < 1):
            raise ValueError(f"momentum and class_momentum must lie in [0, 1), got {momentum!r}, {class_momentum!r}")
        if adaptive and not intra:
            raise ValueError("adaptive precision sets per-class histograms: it needs intra=True")
        self.bins, self.momentum, self.class_momentum = int(bins), float(momentum), float(class_momentum)
        self.intra, self.adaptive, self.inter = bool(intra), bool(adaptive), bool(inter)
        groups = self.num_classes if self.intra else 1
        per_group = adaptive_bins(self.class_counts.tolist(), self.bins, min_bins) if self.adaptive \
            else torch.full((groups,), self.bins, dtype=torch.long)
        self.register_buffer("group_bins", per_group)
        self.register_buffer("density", torch.zeros(groups, self.bins))       # EMA of region counts R
        self.register_buffer("class_mass", torch.zeros(self.num_classes))      # EMA of G_c
        self.last_weights: torch.Tensor | None = None

    def per_sample(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")

    def _ema(self, state: torch.Tensor, update: torch.Tensor, occupied: torch.Tensor, momentum: float) -> torch.Tensor:
        if momentum > 0:
            update = torch.where(occupied, momentum * state + (1 - momentum) * update, state)
        if self.training:
            state.copy_(update)
        return update

    def sample_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """β_i (constants; summing to N without ``inter``); updates the EMAs in training mode."""
        g = gradient_norm(logits, targets)
        n = targets.numel()
        group = targets if self.intra else torch.zeros_like(targets)
        regions = self.group_bins[group]
        index = torch.minimum((g * regions).long(), regions - 1)
        counts = torch.zeros_like(self.density).index_put_((group, index), torch.ones_like(g), accumulate=True)
        density = self._ema(self.density, counts, counts > 0, self.momentum)  # occupied regions only, as GHM
        group_size = torch.zeros(self.density.shape[0], device=g.device).index_add_(0, group, torch.ones_like(g))
        nonempty = (counts > 0).sum(1).clamp_min(1)
        weights = group_size[group] / (density[group, index] * nonempty[group])
        weights = weights * (n / weights.sum().clamp_min(1e-12))
        if self.inter:
            mass = torch.zeros(self.num_classes, device=g.device).index_add_(0, targets, weights * g)
            every_class = torch.ones_like(mass, dtype=torch.bool)  # absent classes add 0: expected mass per batch
            mass = self._ema(self.class_mass, mass, every_class, self.class_momentum)
            seen = mass > 0  # every class of this batch has been seen now
            # mean over the seen classes without boolean indexing, which would sync with the host every step
            seen_mean = (mass * seen).sum() / seen.sum().clamp_min(1)
            balance = torch.where(seen, seen_mean / mass.clamp_min(1e-30), torch.ones_like(mass))
            weights = weights * balance[targets]
        self.last_weights = weights
        return weights

    def forward(self, logits, targets):
        weights = self.sample_weights(logits, targets) * self.class_weight[targets]
        losses = self.per_sample(logits, targets)
        if self.reduction == "weighted_mean":
            return (weights * losses).sum() / weights.sum()
        return (weights * losses).mean()


def ghm_method(class_counts, bins: int = 30, momentum: float = 0.75, reduction: str = "mean") -> Method:
    """Plain GHM-C: one histogram shared by all classes."""
    return Method(GradientHarmonizedLoss(class_counts, bins=bins, momentum=momentum, reduction=reduction))


def intra_inter_method(class_counts, intra: bool = True, adaptive: bool | None = None, inter: bool = True,
                       bins: int = 30, momentum: float = 0.75, min_bins: int = 2, class_momentum: float = 0.99,
                       reduction: str = "mean") -> Method:
    """All three parts on by default; adaptive precision follows ``intra`` unless set."""
    return Method(GradientHarmonizedLoss(class_counts, bins=bins, momentum=momentum, intra=intra,
                                         adaptive=intra if adaptive is None else adaptive, inter=inter,
                                         min_bins=min_bins, class_momentum=class_momentum, reduction=reduction))
