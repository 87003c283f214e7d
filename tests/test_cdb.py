"""CDB loss: weights from validation difficulty, every τ mode, edge cases, epoch-end updates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltlib.data import load_long_tailed
from ltlib.methods import build_method, parse_method
from ltlib.methods.cdb import CDBMethod, cdb_weights, class_difficulty, dynamic_tau
from ltlib.models import build_model
from ltlib.train import TrainConfig, fit

ACC = [0.9, 0.6, 0.3]  # per-class validation accuracies


def hand_weights(acc, tau):
    d = [1 - a for a in acc]
    raw = [x ** tau for x in d]
    return [len(acc) * r / sum(raw) for r in raw]


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5, 2.0, 5.0])
def test_fixed_tau_weights_equal_hand_computed(tau):
    np.testing.assert_allclose(cdb_weights(ACC, tau), hand_weights(ACC, tau), rtol=1e-12)


def test_dynamic_tau_formulas():
    b = 0.9 / (0.3 + 0.01)
    assert dynamic_tau(ACC, "sigmoid") == pytest.approx(sig(b))
    assert dynamic_tau(ACC, "2sigmoid") == pytest.approx(2 * sig(b - 1))
    np.testing.assert_allclose(cdb_weights(ACC, "sigmoid"), hand_weights(ACC, sig(b)), rtol=1e-12)
    np.testing.assert_allclose(cdb_weights(ACC, "2sigmoid"), hand_weights(ACC, 2 * sig(b - 1)), rtol=1e-12)
    with pytest.raises(ValueError, match="sigmoid"):
        dynamic_tau(ACC, "softmax")


def test_weights_sum_to_number_of_classes_and_follow_difficulty():
    w = cdb_weights([0.95, 0.5, 0.1, 0.7], 1.5)
    assert w.sum() == pytest.approx(4)
    assert list(np.argsort(w)) == [0, 3, 1, 2]


def test_perfect_class_gets_weight_zero_as_in_official_code_and_floor_keeps_it():
    w = cdb_weights([1.0, 0.5, 0.0], 1.0)
    assert w[0] == 0.0 and w.sum() == pytest.approx(3)
    floored = cdb_weights([1.0, 0.5, 0.0], 1.0, min_difficulty=0.05)
    np.testing.assert_allclose(floored, np.array([0.05, 0.5, 1.0]) * 3 / 1.55)


def test_all_perfect_falls_back_to_uniform_instead_of_nan():
    np.testing.assert_array_equal(cdb_weights([1.0, 1.0, 1.0], "sigmoid"), [1.0, 1.0, 1.0])


def test_all_zero_accuracy_gives_uniform_weights():
    assert dynamic_tau([0.0, 0.0], "sigmoid") == pytest.approx(0.5)
    np.testing.assert_allclose(cdb_weights([0.0, 0.0, 0.0], "sigmoid"), [1.0, 1.0, 1.0])


def test_class_missing_from_validation_counts_as_hardest():
    np.testing.assert_array_equal(class_difficulty([0.5, np.nan]), [0.5, 1.0])
    w = cdb_weights([0.5, np.nan, 0.8], 1.0)
    assert np.isfinite(w).all() and w[1] == w.max()


def test_method_starts_uniform_and_updates_at_epoch_end():
    method = build_method("cdb_ce", [100, 10, 1])
    assert method.class_weight() == [1.0, 1.0, 1.0]
    method.on_epoch_end(0, np.array(ACC))
    np.testing.assert_allclose(method.class_weight(), cdb_weights(ACC, "sigmoid"), rtol=1e-6)
    with pytest.raises(ValueError, match="validation"):
        method.on_epoch_end(1, np.array([np.nan, np.nan, np.nan]))


def test_variants_by_name_and_bad_tau():
    name, kwargs = parse_method("cdb_ce:tau=1.5,min_difficulty=0.01")
    method = build_method(name, [5, 3], **kwargs)
    assert isinstance(method, CDBMethod) and method.tau == 1.5 and method.min_difficulty == 0.01
    assert type(build_method("cdb_focal", [5, 3]).loss).__name__ == "FocalLoss"
    with pytest.raises(ValueError, match="tau"):
        build_method("cdb_ce", [5, 3], tau="dynamic")
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("cdb:tau=1")


def test_weights_come_from_the_validation_split_every_epoch_never_the_test_split():
    data = load_long_tailed("digits", 10, "cdb")
    torch.manual_seed(0)
    method = build_method("cdb_ce:tau=1.5".split(":")[0], data.train_counts, tau=1.5)
    model = build_model("small_cnn", 10, in_channels=1)
    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, warmup_epochs=0, milestones=(3,), gamma=0.1, test_every=1)
    result = fit(model, method, data, config, progress=False)
    history = result.history
    weights = [np.asarray(h["class_weight"]) for h in history]
    assert len({tuple(w) for w in weights}) == len(weights), "weights must change every epoch"
    for h, w in zip(history, weights):
        from_val = cdb_weights(np.asarray(h["val_per_class"], dtype=float) / 100, 1.5)
        from_test = cdb_weights(np.asarray(h["test_per_class"], dtype=float) / 100, 1.5)
        np.testing.assert_allclose(w, from_val, atol=1e-5)
        assert not np.allclose(w, from_test, atol=1e-3)


def test_difficulty_nets_cdb_baseline_normalises_the_difficulty_before_the_dynamic_tau():
    """hitachi-rd-cv/Difficulty_Net feeds CDB_loss d' = C·d/Σd: fixed τ gives the same weights, the dynamic τ not."""
    accuracy = np.array([0.9, 0.6, 0.3, 0.1])
    difficulty = 1 - accuracy
    normalised = difficulty * 4 / difficulty.sum()
    np.testing.assert_allclose(cdb_weights(accuracy, 1.5, difficulty_input="normalised"), cdb_weights(accuracy, 1.5))
    bias = (1 - normalised.min()) / (1 - normalised.max() + 0.01)
    tau = 1 / (1 + np.exp(-bias))
    expected = normalised ** tau
    np.testing.assert_allclose(cdb_weights(accuracy, "sigmoid", difficulty_input="normalised"),
                               expected * 4 / expected.sum(), rtol=1e-12)
    assert not np.allclose(cdb_weights(accuracy, "sigmoid", difficulty_input="normalised"), cdb_weights(accuracy))
    method = build_method("cdb_ce_normalised", [5, 3, 2, 1])
    method.on_epoch_end(0, accuracy)
    np.testing.assert_allclose(method.class_weight(), cdb_weights(accuracy, "sigmoid", difficulty_input="normalised"),
                               rtol=1e-6)
