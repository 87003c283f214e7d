"""ltlib.losses and ltlib.methods: every registered loss, values checked against hand computations.

Reference values are computed here with ``math`` on plain Python floats (double precision), from
the formulas of the papers, never by calling the module under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ltlib.losses import LOSSES, WeightedLoss, build_loss, effective_number_weights
from ltlib.methods import METHODS, DeferredReweighting, Method, MethodRef, build_method, method_options

COUNTS = [100, 30, 10, 3]

# A tiny batch for the hand computations: 3 samples, 3 classes.
LOGITS = [[1.0, -0.5, 0.2],
          [0.3, 0.8, -1.0],
          [-0.2, 0.1, 0.4]]
TARGETS = [0, 2, 2]
SMALL_COUNTS = [100, 10, 1]


def log_softmax(row):
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def ce_terms(logits=LOGITS, targets=TARGETS):
    return [-log_softmax(row)[y] for row, y in zip(logits, targets)]


def focal_terms(gamma, logits=LOGITS, targets=TARGETS):
    out = []
    for row, y in zip(logits, targets):
        log_p = log_softmax(row)[y]
        out.append(-((1.0 - math.exp(log_p)) ** gamma) * log_p)
    return out


def cb_weights(counts, beta):
    raw = [(1.0 - beta) / (1.0 - beta ** n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def mean(values):
    return sum(values) / len(values)


def weighted(terms, weights, targets=TARGETS, reduction="mean"):
    w = [weights[y] for y in targets]
    total = sum(wi * ti for wi, ti in zip(w, terms))
    return total / len(terms) if reduction == "mean" else total / sum(w)


def value(loss, logits=LOGITS, targets=TARGETS) -> float:
    out = loss(torch.tensor(logits), torch.tensor(targets))
    assert out.ndim == 0
    return float(out)


# --------------------------------------------------------------------------------------------
# Every registered loss
# --------------------------------------------------------------------------------------------

def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(12, len(COUNTS), generator=g) * 2 - 1)  # cosine-like range, fine for LDAM too
    targets = torch.arange(12) % len(COUNTS)
    return logits, targets


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_is_finite_scalar_with_gradient(name):
    loss = build_loss(name, COUNTS)
    assert isinstance(loss, WeightedLoss)
    logits, targets = _batch()
    logits.requires_grad_(True)
    out = loss(logits, targets)
    assert out.ndim == 0 and out.dtype == torch.float32
    assert torch.isfinite(out) and float(out.detach()) > 0
    out.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0
    assert (logits.grad.abs().sum(dim=1) > 0).all()  # every sample contributes


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_after_non_uniform_class_weight(name):
    loss = build_loss(name, COUNTS)
    logits, targets = _batch(1)
    before = float(loss(logits, targets))
    weights = torch.tensor([0.25, 0.5, 2.0, 4.0])
    loss.set_class_weight(weights)
    assert torch.equal(loss.class_weight, weights)
    logits.requires_grad_(True)
    after = loss(logits, targets)
    assert torch.isfinite(after)
    assert not math.isclose(float(after.detach()), before, rel_tol=1e-4)
    after.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0
    # Samples of a zero-weight class no longer move the loss.
    loss.set_class_weight([0.0, 1.0, 1.0, 1.0])
    logits2 = logits.detach().clone().requires_grad_(True)
    loss(logits2, targets).backward()
    assert float(logits2.grad[targets == 0].abs().sum()) == 0.0
    assert float(logits2.grad[targets != 0].abs().sum()) > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0] * 5, [[1.0] * 4], []])
def test_wrong_shaped_class_weight_is_rejected(name, bad):
    loss = build_loss(name, COUNTS)
    original = loss.class_weight.clone()
    with pytest.raises(ValueError, match="shape"):
        loss.set_class_weight(bad)
    assert torch.equal(loss.class_weight, original)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_unknown_reduction_is_rejected(name):
    loss = build_loss(name, COUNTS)
    with pytest.raises(ValueError, match="reduction"):
        loss.set_class_weight([1.0] * 4, reduction="sum")
    with pytest.raises(ValueError, match="reduction"):
        build_loss(name, COUNTS, reduction="median")


@pytest.mark.parametrize("counts", [[10], [], [[10, 20]]])
def test_bad_class_counts(counts):
    with pytest.raises(ValueError):
        build_loss("ce", counts)


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="unknown loss") as info:
        build_loss("hinge", COUNTS)
    for name in LOSSES:
        assert repr(name) in str(info.value)


# --------------------------------------------------------------------------------------------
# Values by hand
# --------------------------------------------------------------------------------------------

def test_cross_entropy_value():
    assert value(build_loss("ce", SMALL_COUNTS)) == pytest.approx(mean(ce_terms()), rel=1e-6)
    # first sample by hand: -log(e^1 / (e^1 + e^-0.5 + e^0.2))
    first = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5) + math.exp(0.2)))
    assert value(build_loss("ce", SMALL_COUNTS), LOGITS[:1], TARGETS[:1]) == pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_focal_value(gamma):
    loss = build_loss("focal", SMALL_COUNTS, gamma=gamma)
    assert value(loss) == pytest.approx(mean(focal_terms(gamma)), rel=1e-6)
    assert value(loss) < value(build_loss("ce", SMALL_COUNTS))


def test_focal_default_gamma_is_one():
    assert value(build_loss("focal", SMALL_COUNTS)) == pytest.approx(mean(focal_terms(1.0)), rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
    assert value(build_loss("focal", SMALL_COUNTS, gamma=0.0)) == pytest.approx(mean(ce_terms()), rel=1e-6)


def test_focal_class_weight_is_alpha_outside_the_modulating_factor():
    loss = build_loss("focal", SMALL_COUNTS, gamma=2.0)
    loss.set_class_weight([0.5, 1.0, 3.0])
    assert value(loss) == pytest.approx(weighted(focal_terms(2.0), [0.5, 1.0, 3.0]), rel=1e-6)


def test_effective_number_weights():
    expected = cb_weights(SMALL_COUNTS, 0.99)
    got = effective_number_weights(SMALL_COUNTS, 0.99)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert float(got.sum()) == pytest.approx(3.0, rel=1e-6)
    assert got[0] < got[1] < got[2]


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
@pytest.mark.parametrize("beta", [0.99, 0.9999])
def test_class_balanced_softmax_value(reduction, beta):
    loss = build_loss("cb", SMALL_COUNTS, beta=beta, reduction=reduction)
    weights = cb_weights(SMALL_COUNTS, beta)
    np.testing.assert_allclose(loss.class_weight.numpy(), weights, rtol=1e-6)
    assert value(loss) == pytest.approx(weighted(ce_terms(), weights, reduction=reduction), rel=1e-5)


def test_class_balanced_default_beta_and_reduction():
    loss = build_loss("cb", SMALL_COUNTS)
    assert value(loss) == pytest.approx(weighted(ce_terms(), cb_weights(SMALL_COUNTS, 0.9999)), rel=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
def test_class_balanced_focal_value(reduction):
    loss = build_loss("cb_focal", SMALL_COUNTS, beta=0.99, gamma=2.0, reduction=reduction)
    expected = weighted(focal_terms(2.0), cb_weights(SMALL_COUNTS, 0.99), reduction=reduction)
    assert value(loss) == pytest.approx(expected, rel=1e-5)


def test_class_balanced_rejects_unknown_base():
    with pytest.raises(ValueError, match="base"):
        build_loss("cb", SMALL_COUNTS, base="sigmoid")


def test_reductions_agree_with_uniform_weights():
    a = build_loss("ce", SMALL_COUNTS, reduction="mean")
    b = build_loss("ce", SMALL_COUNTS, reduction="weighted_mean")
    assert value(a) == pytest.approx(value(b), rel=1e-6)
    a.set_class_weight([1.0, 2.0, 5.0])
    b.set_class_weight([1.0, 2.0, 5.0])
    assert value(a) == pytest.approx(weighted(ce_terms(), [1.0, 2.0, 5.0], reduction="mean"), rel=1e-6)
    assert value(b) == pytest.approx(weighted(ce_terms(), [1.0, 2.0, 5.0], reduction="weighted_mean"), rel=1e-6)


def _ldam_terms(counts, max_margin, scale, logits=LOGITS, targets=TARGETS):
    raw = [n ** -0.25 for n in counts]
    margins = [m * max_margin / max(raw) for m in raw]
    terms = []
    for row, y in zip(logits, targets):
        shifted = [scale * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(row)]
        terms.append(-log_softmax(shifted)[y])
    return margins, terms


def test_ldam_value():
    loss = build_loss("ldam", SMALL_COUNTS)
    margins, terms = _ldam_terms(SMALL_COUNTS, 0.5, 30.0)
    # n^-1/4 for 100, 10, 1: 0.316, 0.562, 1 -> scaled so the largest (rarest class) is 0.5
    np.testing.assert_allclose(loss.margins.numpy(), margins, rtol=1e-6)
    assert margins[2] == pytest.approx(0.5) and margins[0] == pytest.approx(0.5 * 100 ** -0.25)
    assert value(loss) == pytest.approx(mean(terms), rel=1e-5)


def test_ldam_custom_margin_scale_and_weights():
    loss = build_loss("ldam", SMALL_COUNTS, max_margin=0.3, scale=10.0)
    _, terms = _ldam_terms(SMALL_COUNTS, 0.3, 10.0)
    assert value(loss) == pytest.approx(mean(terms), rel=1e-5)
    loss.set_class_weight([0.2, 1.0, 4.0])  # default reduction: weighted mean, as LDAM-DRW
    assert value(loss) == pytest.approx(weighted(terms, [0.2, 1.0, 4.0], reduction="weighted_mean"), rel=1e-5)


def test_balanced_softmax_value():
    loss = build_loss("balanced_softmax", SMALL_COUNTS)
    adjusted = [[v + math.log(n) for v, n in zip(row, SMALL_COUNTS)] for row in LOGITS]
    assert value(loss) == pytest.approx(mean(ce_terms(adjusted)), rel=1e-6)
    # Ren et al.'s form: -log(n_y e^{z_y} / sum_j n_j e^{z_j}) for the first sample
    row, y = LOGITS[0], TARGETS[0]
    first = -math.log(SMALL_COUNTS[y] * math.exp(row[y]) / sum(n * math.exp(v) for n, v in zip(SMALL_COUNTS, row)))
    assert value(loss, LOGITS[:1], TARGETS[:1]) == pytest.approx(first, rel=1e-5, abs=1e-6)  # float32


def test_logit_adjust_value():
    loss = build_loss("logit_adjust", SMALL_COUNTS, tau=0.5)
    total = sum(SMALL_COUNTS)
    adjusted = [[v + 0.5 * math.log(n / total) for v, n in zip(row, SMALL_COUNTS)] for row in LOGITS]
    assert value(loss) == pytest.approx(mean(ce_terms(adjusted)), rel=1e-6)
    # tau = 1 is balanced softmax, tau = 0 plain cross-entropy
    assert value(build_loss("logit_adjust", SMALL_COUNTS)) == pytest.approx(
        value(build_loss("balanced_softmax", SMALL_COUNTS)), rel=1e-6)
    assert value(build_loss("logit_adjust", SMALL_COUNTS, tau=0.0)) == pytest.approx(mean(ce_terms()), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_build_every_method(name):
    method = build_method(name, COUNTS, **({"drw_epoch": 2} if "drw_epoch" in method_options(name) else {}))
    assert isinstance(method, Method)
    assert isinstance(method.loss, WeightedLoss)
    assert method.head == ("normed" if name.startswith("ldam") else "linear")
    assert isinstance(method, DeferredReweighting) == name.endswith("_drw")
    torch.manual_seed(0)
    model = nn.Linear(6, len(COUNTS))
    images, targets = torch.randn(8, 6), torch.arange(8) % len(COUNTS)
    loss, logits = method.compute_loss(model, images, targets)
    assert logits.shape == (8, len(COUNTS))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert float(model.weight.grad.abs().sum()) > 0
    assert len(method.class_weight()) == len(COUNTS)
    for epoch in range(4):
        method.on_epoch_start(epoch)
        method.on_epoch_end(epoch, np.full(len(COUNTS), 0.5))


def test_ldam_drw_uses_the_normed_head():
    assert METHODS["ldam_drw"].head == "normed"
    assert build_method("ldam_drw", COUNTS, drw_epoch=5).head == "normed"
    assert build_method("ldam", COUNTS).head == "normed"


@pytest.mark.parametrize("name", ["ce_drw", "ldam_drw"])
def test_drw_needs_its_epoch(name):
    with pytest.raises(ValueError, match="drw_epoch"):
        build_method(name, COUNTS)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method") as info:
        build_method("mixup", COUNTS)
    assert "ldam_drw" in str(info.value)


@pytest.mark.parametrize("name, reduction_before", [("ce_drw", "mean"), ("ldam_drw", "weighted_mean")])
def test_deferred_reweighting_switches_exactly_at_drw_epoch(name, reduction_before):
    method = build_method(name, COUNTS, drw_epoch=3, drw_beta=0.99)
    for epoch in range(3):
        method.on_epoch_start(epoch)
        assert method.class_weight() == [1.0] * len(COUNTS), f"re-weighted before drw_epoch (epoch {epoch})"
        assert method.loss.reduction == reduction_before
    method.on_epoch_start(3)
    np.testing.assert_allclose(method.class_weight(), cb_weights(COUNTS, 0.99), rtol=1e-6)
    assert method.loss.reduction == "weighted_mean"
    method.on_epoch_start(4)
    np.testing.assert_allclose(method.class_weight(), cb_weights(COUNTS, 0.99), rtol=1e-6)
    assert method.loss.reduction == "weighted_mean"


def test_deferred_reweighting_loss_after_switch():
    counts = SMALL_COUNTS
    method = build_method("ce_drw", counts, drw_epoch=1)  # default beta 0.9999
    model = nn.Identity()
    before, _ = method.compute_loss(model, torch.tensor(LOGITS), torch.tensor(TARGETS))
    assert float(before) == pytest.approx(mean(ce_terms()), rel=1e-6)
    method.on_epoch_start(0)
    method.on_epoch_start(1)
    after, _ = method.compute_loss(model, torch.tensor(LOGITS), torch.tensor(TARGETS))
    expected = weighted(ce_terms(), cb_weights(counts, 0.9999), reduction="weighted_mean")
    assert float(after) == pytest.approx(expected, rel=1e-5)


def test_deferred_reweighting_on_resume_after_drw_epoch():
    # A run resumed past drw_epoch with fresh (uniform) weights switches at its first epoch.
    method = build_method("ce_drw", COUNTS, drw_epoch=3, drw_beta=0.99)
    method.on_epoch_start(7)
    np.testing.assert_allclose(method.class_weight(), cb_weights(COUNTS, 0.99), rtol=1e-6)
    assert method.loss.reduction == "weighted_mean"


def test_method_state_round_trip():
    a = build_method("ce_drw", COUNTS, drw_epoch=0, drw_beta=0.99)
    a.on_epoch_start(0)
    b = build_method("ce_drw", COUNTS, drw_epoch=0, drw_beta=0.99)
    b.load_state_dict(a.state_dict())
    assert b.class_weight() == a.class_weight() and b.loss.reduction == "weighted_mean"


def test_schedule_options_belong_to_the_methods_that_read_them():
    """drw_epoch is an option of the DRW methods only: a method that never reads it is never keyed on it."""
    assert "drw_epoch" in method_options("ldam_drw") and "drw_epoch" not in method_options("ce")
    with pytest.raises(ValueError, match=r"no option\(s\) \['drw_epoch'\]"):
        build_method("ce", COUNTS, drw_epoch=3)
    assert MethodRef.parse("ce", {"drw_epoch": 3}) == MethodRef.parse("ce")
    assert MethodRef.parse("ldam_drw", {"drw_epoch": 3}).kwargs == {"drw_epoch": 3}


def test_misspelt_variant_option_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'cdb_ce' has no option\(s\) \['tua'\]; it accepts \[.*'tau'"):
        MethodRef.parse("cdb_ce:tua=1")
    with pytest.raises(ValueError, match="key=value"):
        MethodRef.parse("cdb_ce:tau")


def test_options_equal_to_the_default_name_the_same_run():
    assert MethodRef.parse("cdb_ce:tau=sigmoid") == MethodRef.parse("cdb_ce")
    assert MethodRef.parse("cdb_ce:min_difficulty=0") == MethodRef.parse("cdb_ce")
    assert MethodRef.parse("cdb_ce:tau=1") != MethodRef.parse("cdb_ce")
    assert str(MethodRef.parse("intra_inter:inter=false")) == "intra_inter:inter=false"
