"""DLSA: the flow's likelihood, the division, the merge, the feature evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from ltlib.features import FeatureSet
from ltlib.label_space import (
    MADE,
    ClassifierConfig,
    DLSAConfig,
    FlowConfig,
    FlowGMM,
    class_pair_weights,
    cluster_purity,
    draw_pairs,
    fit_dlsa,
    head_tail_separation,
    merge_stage_predictions,
    train_flow,
)


def flow_with_nontrivial_statistics(dim: int = 3, clusters: int = 4) -> FlowGMM:
    torch.manual_seed(0)
    flow = FlowGMM(dim, clusters, center_std=1.0, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        flow.train()
        flow(torch.randn(64, dim, dtype=torch.float64) * 2 + 1)  # running statistics away from (0, 1)
    return flow.eval()


def test_log_likelihood_equals_brute_force_change_of_variables():
    flow = flow_with_nontrivial_statistics()
    x = torch.randn(5, 3, dtype=torch.float64)
    _, log_p_given_k, log_p = flow(x)
    for i in range(len(x)):
        J = jacobian(lambda v: flow.flow(v[None])[0][0], x[i])
        u = flow.flow(x[i][None])[0][0]
        log_normal = torch.stack([-1.5 * math.log(2 * math.pi) - 0.5 * (u - mu).square().sum() for mu in flow.means])
        brute = torch.logsumexp(log_normal, 0) - math.log(4) + torch.linalg.slogdet(J).logabsdet
        assert log_p[i].item() == pytest.approx(brute.item(), rel=1e-9, abs=1e-9)
        assert log_p_given_k[i].argmax() == log_normal.argmax()  # the cluster is the most likely component


def test_made_is_autoregressive():
    torch.manual_seed(0)
    block = MADE(4, 8, 1, torch.arange(4)).double()
    x = torch.randn(4, dtype=torch.float64)
    J = jacobian(lambda v: block(v[None])[0][0], x)
    assert torch.allclose(J, torch.tril(J))  # u_i depends on x_j only for j <= i
    assert torch.allclose(torch.diagonal(J), torch.exp(block(x[None])[1][0]))  # and d u_i/d x_i = exp(-a_i)


def test_pair_sampling_uses_two_classes_uniformly_and_weights_favour_the_tail():
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor([400, 100, 20, 5]))
    positive, negative = draw_pairs(labels, 8000, torch.Generator().manual_seed(0))
    assert torch.all(labels[positive] != labels[negative])
    share = torch.bincount(labels[positive], minlength=4).float() / 8000
    assert torch.allclose(share, torch.full((4,), 0.25), atol=0.03)  # classes, not samples, are uniform
    weights = class_pair_weights([400, 100, 20, 5], q=2)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[3] / weights[0] == pytest.approx((400 / 5) ** 2, rel=1e-5)
    with pytest.raises(ValueError, match="two classes"):
        draw_pairs(torch.zeros(5, dtype=torch.long), 3, torch.Generator())


def test_cluster_purity_counts():
    purity, size = cluster_purity(torch.tensor([0, 0, 0, 2]), torch.tensor([1, 1, 0, 2]), 3, 3)
    assert size.tolist() == [3, 0, 1]
    assert purity.tolist() == pytest.approx([2 / 3, 0.0, 1.0])


def blobs(counts, seed=0, dim=6) -> FeatureSet:
    """Gaussian blobs, one per class, with long-tailed training counts: a stand-in feature space."""
    generator = torch.Generator().manual_seed(seed)
    means = 2.5 * torch.randn(len(counts), dim, generator=generator)

    def draw(per_class):
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(per_class))
        return means[labels] + torch.randn(len(labels), dim, generator=generator), labels

    train, train_labels = draw(counts)
    val, val_labels = draw([8] * len(counts))
    test, test_labels = draw([30] * len(counts))
    return FeatureSet(train, train_labels, val, val_labels, test, test_labels, list(counts))


SMALL = dict(flow=FlowConfig(num_clusters=12, epochs=4, batch_size=64, lr=0.05, min_cluster_size=2),
             classifier=ClassifierConfig(epochs=10, batch_size=32, lr=0.1, eval_every=2))


def test_flow_training_raises_the_likelihood():
    features = blobs([200, 80, 30, 10])
    flow, log = train_flow(features.train, features.train_labels, 4,
                           FlowConfig(num_clusters=8, epochs=6, batch_size=64, lr=0.05, lambda_purity=0.0,
                                      lambda_balance=0.0), torch.Generator().manual_seed(0))
    losses = [entry["likelihood"] for entry in log if "likelihood" in entry]
    assert losses[-1] < losses[0]
    assert "kept_epoch" in log[-1]


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("latent_input", [True, False])
def test_division_puts_every_sample_in_exactly_one_stage(depth, latent_input):
    features = blobs([200, 80, 30, 10])
    out = fit_dlsa(features, DLSAConfig(depth=depth, latent_input=latent_input, **SMALL))
    assert len(out["stages"]) == depth + 1
    for name, total in (("train", 320), ("val", 32), ("test", 120)):
        stage = out["stage"][name]
        assert stage.min() >= 0 and stage.max() <= depth and len(stage) == total
        assert sum(s["sizes"][name] for s in out["stages"]) == total
        assert [int((stage == s).sum()) for s in range(depth + 1)] == [s["sizes"][name] for s in out["stages"]]
    if depth:
        first = out["stages"][0]
        assert first["sizes"]["train"] == 320 - int(320 * 0.7)  # the top 30 % of the training samples
    accuracy = (out["prediction"]["test"] == out["labels"]["test"]).float().mean().item()
    assert accuracy > 0.5  # well-separated blobs: the merged predictions are the stages' real predictions


def test_dlsa_is_deterministic_for_a_seed():
    features = blobs([120, 40, 10])
    first = fit_dlsa(features, DLSAConfig(depth=1, seed=3, **SMALL))
    second = fit_dlsa(features, DLSAConfig(depth=1, seed=3, **SMALL))
    assert torch.equal(first["prediction"]["test"], second["prediction"]["test"])
    assert torch.equal(first["stage"]["test"], second["stage"]["test"])


def test_merge_uses_each_stage_for_its_own_samples_and_rejects_gaps_and_overlaps():
    first = torch.tensor([True, False, True, False])
    prediction, stage = merge_stage_predictions([(first, torch.tensor([7, 8])), (~first, torch.tensor([1, 2]))], 4)
    assert prediction.tolist() == [7, 1, 8, 2] and stage.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="earlier stage"):
        merge_stage_predictions([(first, torch.tensor([7, 8])), (first, torch.tensor([1, 2]))], 4)
    with pytest.raises(ValueError, match="no stage"):
        merge_stage_predictions([(first, torch.tensor([7, 8]))], 4)
    with pytest.raises(ValueError, match="predictions"):
        merge_stage_predictions([(first, torch.tensor([7]))], 4)


def test_bad_configuration_is_named():
    with pytest.raises(TypeError, match="depth"):
        DLSAConfig(depth=1.5)
    with pytest.raises(ValueError, match="proportion"):
        DLSAConfig(proportion=1.2)
    with pytest.raises(ValueError, match="select_on"):
        DLSAConfig(classifier={"select_on": "best"})


def test_head_tail_separation():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    groups = {"many": [0], "medium": [1], "few": [2]}
    perfect = np.where(labels == 0, 10.0, np.where(labels == 1, 0.0, -10.0)) + np.linspace(0, 1, 100)
    out = head_tail_separation(perfect, labels, groups, proportion=0.3)
    assert out["auc_many_vs_few"] == 1.0 and out["head_share_of_taken"] == 1.0
    assert out["taken_many"] == pytest.approx(30 / 50) and out["taken_few"] == 0.0
    noise = np.random.default_rng(0).normal(size=100)
    assert 0.25 < head_tail_separation(noise, labels, groups)["auc_many_vs_few"] < 0.75


def test_standardize_drops_constant_dimensions_that_make_the_likelihood_unbounded():
    features = blobs([200, 80, 30, 10])
    for split in ("train", "val", "test"):  # a dead unit: constant on every split
        getattr(features, split)[:, 2] = 0.5
    out = fit_dlsa(features, DLSAConfig(depth=1, **SMALL))
    assert len(out["stages"]) == 2 and out["stages"][0]["flow_log"][-1]["kept_epoch"] is not None
    log = [entry for entry in out["stages"][0]["flow_log"] if "loss" in entry]
    assert all(math.isfinite(entry["loss"]) for entry in log)


def test_cpu_threads_restores_the_setting():
    from ltlib.runtime import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
