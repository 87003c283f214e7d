"""GHM-C and the intra-/inter-category balance reconstruction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltlib.methods import build_method, parse_method
from ltlib.methods.intra_inter import GradientHarmonizedLoss, adaptive_bins, gradient_norm, intra_inter_method

COUNTS = [500, 120, 30, 8]


def batch(seed=0, n=64, classes=4):
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, classes, generator=generator)
    targets = torch.arange(n) % classes
    return logits, targets


def test_gradient_norm_is_the_target_gradient_of_cross_entropy():
    logits, targets = batch()
    logits.requires_grad_(True)
    F.cross_entropy(logits, targets, reduction="sum").backward()
    assert torch.allclose(gradient_norm(logits, targets), -logits.grad[torch.arange(64), targets], atol=1e-6)


def test_plain_ghm_gives_every_occupied_region_the_same_total_weight():
    logits, targets = batch()
    loss = GradientHarmonizedLoss(COUNTS, bins=10, momentum=0.0)
    weights = loss.sample_weights(logits, targets)
    regions = torch.minimum((gradient_norm(logits, targets) * 10).long(), torch.tensor(9))
    totals = torch.stack([weights[regions == r].sum() for r in regions.unique()])
    assert torch.allclose(totals, totals[0].expand_as(totals), rtol=1e-5)
    assert weights.sum().item() == pytest.approx(64, rel=1e-5)


def test_intra_histograms_are_per_class_and_keep_each_class_total():
    logits, targets = batch(1)
    loss = intra_inter_method(COUNTS, inter=False, adaptive=False, bins=8, momentum=0.0).loss
    weights = loss.sample_weights(logits, targets)
    g = gradient_norm(logits, targets)
    for c in range(4):
        members = targets == c
        regions = torch.minimum((g[members] * 8).long(), torch.tensor(7))
        totals = torch.stack([weights[members][regions == r].sum() for r in regions.unique()])
        assert torch.allclose(totals, totals[0].expand_as(totals), rtol=1e-5)  # regions equal within the class
        assert weights[members].sum().item() == pytest.approx(16, rel=1e-5)  # the class keeps its N_c
    counts = loss.density.clone()
    assert counts.shape == (4, 8) and counts.sum(1).tolist() == [16.0] * 4  # one histogram per class


def test_adaptive_precision_rule():
    bins = adaptive_bins([4975, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 30)
    assert bins[0] == 30 and bins[-1] == 15
    assert torch.all(bins[:-1] >= bins[1:])
    assert adaptive_bins([1, 1000], 30, min_bins=3).tolist() == [3, 30]
    loss = intra_inter_method(COUNTS).loss
    assert loss.group_bins.tolist() == adaptive_bins(COUNTS, 30).tolist()
    logits, targets = batch(2)
    loss.sample_weights(logits, targets)
    for c, regions in enumerate(loss.group_bins.tolist()):
        assert torch.all(loss.density[c, regions:] == 0)  # a class never uses regions beyond its own M_c


@pytest.mark.parametrize("intra", [True, False])
def test_inter_part_equalises_the_gradient_mass_of_classes(intra):
    logits = batch(3)[0][:40]
    targets = torch.tensor([0] * 25 + [1] * 9 + [2] * 4 + [3] * 2)  # head-heavy
    loss = intra_inter_method(COUNTS, intra=intra, momentum=0.0, class_momentum=0.0).loss
    weights = loss.sample_weights(logits, targets)
    g = gradient_norm(logits, targets)
    mass = torch.stack([(weights * g)[targets == c].sum() for c in range(4)])
    assert torch.allclose(mass, mass.mean().expand(4), rtol=1e-4)
    unbalanced = intra_inter_method(COUNTS, intra=intra, inter=False, momentum=0.0).loss.sample_weights(logits, targets)
    raw = torch.stack([(unbalanced * g)[targets == c].sum() for c in range(4)])
    assert raw.std() > 10 * mass.std()  # it was not equal before
    assert mass.sum().item() == pytest.approx(raw.sum().item(), rel=1e-5)  # the total mass is kept


def test_inter_ema_counts_absent_classes_as_zero_so_rare_classes_gain():
    loss = intra_inter_method(COUNTS, intra=False, momentum=0.0, class_momentum=0.9).loss
    logits, _ = batch(7, n=32)
    head_only = torch.zeros(32, dtype=torch.long)
    for _ in range(20):
        loss.sample_weights(logits, head_only)
    mixed = torch.tensor([0] * 31 + [3])
    weights = loss.sample_weights(logits, mixed)
    assert loss.class_mass[3] < loss.class_mass[0] / 5  # seen once: a small expected mass per batch
    assert weights[31] > 5 * weights[:31].mean()


def test_the_ema_remembers_earlier_batches_and_only_in_training():
    logits, targets = batch(4)
    loss = GradientHarmonizedLoss(COUNTS, bins=5, momentum=0.75)
    loss.sample_weights(logits, targets)
    after_one = loss.density.clone()
    assert after_one.sum().item() == pytest.approx(0.25 * 64)  # (1 − momentum) · counts from zero
    loss.eval()
    loss.sample_weights(*batch(5))
    assert torch.equal(loss.density, after_one)
    loss.train()
    loss.sample_weights(*batch(5))
    assert not torch.equal(loss.density, after_one)


@pytest.mark.parametrize("name", ["ghm", "intra_inter", "intra_inter:inter=false", "intra_inter:intra=false"])
def test_gradient_is_the_weighted_cross_entropy_gradient(name):
    method_name, options = parse_method(name)
    method = build_method(method_name, COUNTS, **options)
    logits, targets = batch(6)
    logits = logits.double().requires_grad_(True)
    loss = method.loss(logits, targets)
    loss.backward()
    weights = method.loss.last_weights.double()
    expected = weights[:, None] * (F.softmax(logits.detach(), 1) - F.one_hot(targets, 4)) / 64
    assert torch.allclose(logits.grad, expected, atol=1e-10)
    assert torch.isfinite(loss)
    if "inter" not in method.loss.__dict__ or not method.loss.inter:
        assert weights.sum().item() == pytest.approx(64)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="needs intra=True"):
        GradientHarmonizedLoss(COUNTS, adaptive=True, intra=False)
    with pytest.raises(ValueError, match="momentum"):
        GradientHarmonizedLoss(COUNTS, momentum=1.0)
    with pytest.raises(ValueError, match="class_momentum"):
        GradientHarmonizedLoss(COUNTS, class_momentum=-0.1)
    with pytest.raises(ValueError, match="bins"):
        GradientHarmonizedLoss(COUNTS, bins=0)
