"""Stage 2 (LAS + LWS on frozen features), feature extraction and feature files."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltlib.features import FeatureSet, read_feature_file
from ltlib.losses import LabelAwareSmoothing, las_smoothing_for_imbalance
from ltlib.two_stage import ScaledLinear, Stage2Config, class_aware_indices, retrain_classifier

COUNTS = [100, 40, 16, 6, 2]


def test_las_smoothing_profile_runs_from_head_to_tail():
    loss = LabelAwareSmoothing(COUNTS, smooth_head=0.4, smooth_tail=0.1)
    eps = loss.smoothing
    assert eps[0].item() == pytest.approx(0.4) and eps[-1].item() == pytest.approx(0.1)
    assert torch.all(eps[:-1] >= eps[1:])  # more images, more smoothing
    position = (torch.tensor(COUNTS[2], dtype=torch.float64) - 2) / (100 - 2)
    assert eps[2].item() == pytest.approx(0.1 + 0.3 * math.sin(math.pi / 2 * position.item()), rel=1e-6)
    linear = LabelAwareSmoothing(COUNTS, smooth_head=0.4, smooth_tail=0.1, shape="linear").smoothing
    assert linear[2].item() == pytest.approx(0.1 + 0.3 * position.item(), rel=1e-6)
    assert torch.all(eps[1:-1] > linear[1:-1])  # concave lies above the line


@pytest.mark.parametrize("imbalance,expected", [(200, (0.4, 0.0)), (100, (0.4, 0.1)), (50, (0.3, 0.0)),
                                                (10, (0.2, 0.0))])
def test_las_default_smoothing_follows_the_imbalance_factor(imbalance, expected):
    assert las_smoothing_for_imbalance(imbalance) == expected
    counts = [imbalance * 10, 10]
    loss = LabelAwareSmoothing(counts)
    assert (loss.smooth_head, loss.smooth_tail) == pytest.approx(expected)


@pytest.mark.parametrize("profile", ["cpu-real", "paper"])
def test_stage2_smoothing_follows_the_nominal_imbalance_factor_as_the_official_script_does(profile):
    from ltlib.data import class_counts
    from ltlib.studies import DifficultyNetNotebook

    config = DifficultyNetNotebook.load(profile)
    stages = [p.spec for p in config.plan() if p.role == "stage2"]
    crossing = 0
    for stage in stages:
        data, options = stage.parent.data, dict(stage.options)
        expected = las_smoothing_for_imbalance(data.imbalance)
        assert (options["smooth_head"], options["smooth_tail"]) == expected
        assert f"IF {data.imbalance:g}: ε {expected[0]:g} / {expected[1]:g}" in config.stage2_smoothing()  # as shown
        if data.source.startswith("cifar") and data.protocol == "cdb" and data.imbalance == 100:
            counts = class_counts(data.source, data.imbalance, data.protocol, data.shape)
            # held-out validation images push the realised ratio past 100, into the next row of the table
            assert max(counts) / min(counts) > 100 and expected == (0.4, 0.1)
            assert las_smoothing_for_imbalance(max(counts) / min(counts)) != expected
            crossing += 1
    assert stages and crossing  # the case the rule exists for is in the profile's plan


def test_las_equals_its_formula_and_reduces_to_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(32, 5), torch.randint(0, 5, (32,))
    loss = LabelAwareSmoothing(COUNTS, smooth_head=0.3, smooth_tail=0.05)
    log_p = F.log_softmax(logits, 1)
    eps = loss.smoothing[targets]
    expected = ((1 - eps) * -log_p[torch.arange(32), targets] + eps * -log_p.mean(1)).mean()
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = LabelAwareSmoothing(COUNTS, smooth_head=0.0, smooth_tail=0.0)
    assert plain(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_las_rejects_bad_smoothing_and_shape():
    with pytest.raises(ValueError, match="smoothing must lie in"):
        LabelAwareSmoothing(COUNTS, smooth_head=1.5, smooth_tail=0.0)
    with pytest.raises(ValueError, match="unknown smoothing shape"):
        LabelAwareSmoothing(COUNTS, shape="wavy")


def test_class_aware_sampler_balances_classes_and_stays_inside_each_class():
    labels = torch.repeat_interleave(torch.arange(5), torch.tensor(COUNTS))
    generator = torch.Generator().manual_seed(0)
    indices = class_aware_indices(labels, 5, total=5 * 4 * 30, samples_per_class=4, generator=generator)
    assert indices.numel() == 600 and indices.min() >= 0 and indices.max() < len(labels)
    drawn = labels[indices]
    assert torch.bincount(drawn, minlength=5).tolist() == [120] * 5  # whole cycles: exactly equal shares
    runs = drawn.view(-1, 4)
    assert torch.all(runs == runs[:, :1])  # four in a row from one class
    again = class_aware_indices(labels, 5, 600, 4, torch.Generator().manual_seed(0))
    assert torch.equal(indices, again)


def test_class_aware_sampler_skips_empty_classes():
    labels = torch.tensor([0, 0, 0, 2, 2])
    indices = class_aware_indices(labels, 3, 40, 2, torch.Generator().manual_seed(1))
    assert set(labels[indices].tolist()) == {0, 2}


@pytest.mark.parametrize("trainable", ["fc+scale", "scale", "fc"])
def test_scaled_linear_trains_what_it_says(trainable):
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    head = ScaledLinear(linear, trainable)
    trainable_names = {n for n, p in head.named_parameters() if p.requires_grad}
    assert trainable_names == {"fc+scale": {"fc.weight", "fc.bias", "scale"}, "scale": {"scale"},
                               "fc": {"fc.weight", "fc.bias"}}[trainable]
    x = torch.randn(4, 6)
    if trainable == "fc":
        assert not torch.equal(head.fc.weight, linear.weight)  # cRT starts afresh
    else:
        assert torch.allclose(head(x), linear(x))  # s = 1 at the start: the stage-1 classifier


def synthetic_features(seed: int = 0) -> FeatureSet:
    """Gaussian clusters in 8-d with long-tailed training counts: a stand-in backbone, not data."""
    generator = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(5, 8, generator=generator)

    def draw(counts):
        labels = torch.repeat_interleave(torch.arange(5), torch.tensor(counts))
        return means[labels] + torch.randn(len(labels), 8, generator=generator), labels

    train, train_labels = draw(COUNTS)
    val, val_labels = draw([10] * 5)
    test, test_labels = draw([40] * 5)
    return FeatureSet(train, train_labels, val, val_labels, test, test_labels, COUNTS)


def test_stage2_learns_scales_only_in_lws_and_improves_a_biased_head():
    features = synthetic_features()
    linear = nn.Linear(8, 5)
    with torch.no_grad():  # a head that prefers the largest class
        linear.weight.zero_(); linear.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))
    before = (linear(features.test).argmax(1) == features.test_labels).float().mean().item()
    out = retrain_classifier(features, linear, Stage2Config(epochs=3, trainable="fc+scale", batch_size=32))
    epoch, confusion = out["selections"]["last"]
    after = np.trace(confusion) / confusion.sum()
    assert epoch == 2 and after > before + 0.3
    lws = retrain_classifier(features, linear, Stage2Config(epochs=3, trainable="scale", batch_size=32))
    assert lws["history"][-1]["scale"] != [1.0] * 5
    assert torch.equal(linear.bias, torch.tensor([5.0, 0, 0, 0, 0]))  # the stage-1 layer is never modified


def test_stage2_is_deterministic_and_rejects_bad_config():
    features = synthetic_features()
    linear = nn.Linear(8, 5)
    first = retrain_classifier(features, linear, Stage2Config(epochs=2, batch_size=16))
    second = retrain_classifier(features, linear, Stage2Config(epochs=2, batch_size=16))
    assert first["history"] == [{**h} for h in second["history"]]
    with pytest.raises(TypeError, match="epochs"):
        Stage2Config(epochs=2.5)
    with pytest.raises(ValueError, match="trainable"):
        Stage2Config(trainable="backbone")


def test_feature_file_reader(tmp_path):
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as handle:
        handle["features"] = np.arange(12, dtype=np.float32).reshape(4, 3)
        handle["labels"] = np.array([0, 1, 1, 2])
    features, labels = read_feature_file(good)
    assert features.shape == (4, 3) and features.dtype == torch.float32 and labels.tolist() == [0, 1, 1, 2]

    missing = tmp_path / "missing.h5"
    with h5py.File(missing, "w") as handle:
        handle["feats"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="lacks dataset.*'features'.*'labels'"):
        read_feature_file(missing)
    mismatched = tmp_path / "mismatched.h5"
    with h5py.File(mismatched, "w") as handle:
        handle["features"] = np.zeros((3, 2)); handle["labels"] = np.zeros(2, dtype=int)
    with pytest.raises(ValueError, match="same N"):
        read_feature_file(mismatched)
    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as handle:
        handle["features"] = np.full((2, 2), np.nan); handle["labels"] = np.zeros(2, dtype=int)
    with pytest.raises(ValueError, match="NaN"):
        read_feature_file(nan)
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 feature file"):
        read_feature_file(not_hdf5)
    with pytest.raises(FileNotFoundError, match="feature_set"):
        read_feature_file(tmp_path / "absent.h5")
