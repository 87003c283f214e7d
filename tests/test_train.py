"""The training loop: determinism, resumption, NaN detection, schedules, model selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ltlib.data import load_long_tailed
from ltlib.methods import Method, build_method
from ltlib.models import build_model
from ltlib.train import ConfigError, NonFiniteLossError, TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_long_tailed("digits", 10, "ldam")


def small_config(**overrides) -> TrainConfig:
    values = dict(epochs=3, batch_size=64, lr=0.05, weight_decay=5e-4, warmup_epochs=1, milestones=(2,),
                  gamma=0.1, test_every=1)
    values.update(overrides)
    return TrainConfig(**values)


def train(data, method_name="ce", seed=0, config=None, drw_epoch=2, **kwargs):
    torch.manual_seed(seed)
    options = {"drw_epoch": drw_epoch} if method_name.endswith("_drw") else {}
    method = build_method(method_name, data.train_counts, **options)
    model = build_model("small_cnn", data.num_classes, in_channels=1, head=method.head)
    return fit(model, method, data, config or small_config(), seed=seed, progress=False, **kwargs), model


def comparable(history):
    return [{k: v for k, v in h.items()} for h in history]


def test_same_seed_is_bit_identical_on_cpu(digits):
    first, model_a = train(digits, "ldam_drw", seed=3)
    second, model_b = train(digits, "ldam_drw", seed=3)
    assert comparable(first.history) == comparable(second.history)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_different_seed_differs(digits):
    first, _ = train(digits, seed=0)
    second, _ = train(digits, seed=1)
    assert comparable(first.history) != comparable(second.history)


def test_killed_run_resumes_to_the_same_numbers(digits, tmp_path):
    config = small_config(epochs=4, milestones=(3,))
    uninterrupted, model_full = train(digits, "ldam_drw", config=config)
    checkpoint = tmp_path / "run.pt"
    partial, _ = train(digits, "ldam_drw", config=config, checkpoint=checkpoint, stop_after=2)
    assert len(partial.history) == 2 and checkpoint.exists()
    # a fresh process would rebuild model and method from scratch: do the same, then resume
    resumed, model_resumed = train(digits, "ldam_drw", config=config, checkpoint=checkpoint)
    assert resumed.resumed_from == 2
    assert comparable(resumed.history) == comparable(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    np.testing.assert_array_equal(resumed.confusion_last, uninterrupted.confusion_last)
    for a, b in zip(model_full.state_dict().values(), model_resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_config_is_not_resumed(digits, tmp_path):
    checkpoint = tmp_path / "run.pt"
    train(digits, config=small_config(epochs=2), checkpoint=checkpoint)
    result, _ = train(digits, config=small_config(epochs=2, lr=0.01), checkpoint=checkpoint)
    assert result.resumed_from is None and len(result.history) == 2


class ExplodingMethod(Method):
    """Cross-entropy that turns into NaN from a given global step on."""

    def __init__(self, loss, bad_step):
        super().__init__(loss)
        self.step, self.bad_step = 0, bad_step

    def compute_loss(self, model, images, targets):
        loss, logits = super().compute_loss(model, images, targets)
        self.step += 1
        return (loss * float("nan") if self.step > self.bad_step else loss), logits


def test_nan_loss_stops_with_epoch_and_step(digits):
    steps_per_epoch = -(-len(digits.train) // 64)
    method = ExplodingMethod(build_method("ce", digits.train_counts).loss, bad_step=steps_per_epoch + 2)
    model = build_model("small_cnn", 10, in_channels=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 2\b"):
        fit(model, method, digits, small_config(), progress=False)


def test_best_epoch_is_chosen_on_validation_not_test(digits):
    result, _ = train(digits, config=small_config(epochs=4, milestones=(3,)))
    val = [h["val_balanced"] for h in result.history]
    assert result.best_epoch == int(np.argmax(val))
    best = result.history[result.best_epoch]
    per_class = np.diag(result.confusion_best) / result.confusion_best.sum(1)
    assert np.allclose(100 * per_class, best["test_per_class"], atol=1e-3)


def test_drw_weights_switch_on_at_drw_epoch(digits):
    result, _ = train(digits, "ldam_drw", config=small_config(epochs=3), drw_epoch=2)
    weights = [h["class_weight"] for h in result.history]
    assert weights[0] == weights[1] == [1.0] * 10
    assert weights[2] != [1.0] * 10 and weights[2][-1] > weights[2][0]


def test_learning_rate_schedule():
    config = TrainConfig(epochs=200, lr=0.1, warmup_epochs=5, milestones=(160, 180), gamma=0.01)
    assert config.lr_at(0) == pytest.approx(0.02)
    assert config.lr_at(4) == pytest.approx(0.1)
    assert config.lr_at(159) == pytest.approx(0.1)
    assert config.lr_at(160) == pytest.approx(0.001)
    assert config.lr_at(180) == pytest.approx(0.00001)
    cosine = TrainConfig(epochs=10, lr=1.0, warmup_epochs=0, schedule="cosine")
    assert cosine.lr_at(0) == pytest.approx(1.0) and cosine.lr_at(5) == pytest.approx(0.5)


@pytest.mark.parametrize("field,value", [("epochs", "10"), ("epochs", 2.5), ("lr", "0.1"), ("batch_size", True)])
def test_config_rejects_wrong_types(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_unknown_schedule_is_rejected():
    with pytest.raises(ConfigError, match="multistep"):
        TrainConfig(schedule="step")


@pytest.mark.parametrize("field,value", [("warmup_epochs", -1), ("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0),
                                         ("momentum", -0.5), ("test_every", -2), ("milestones", "10"),
                                         ("milestones", [10, "x"]), ("compile", "yes"), ("amp", "true")])
def test_config_rejects_values_out_of_range(field, value):
    with pytest.raises(ConfigError, match=field.rstrip("s") if field == "milestones" else field):
        TrainConfig(**{field: value})


def test_run_killed_after_its_last_checkpoint_finishes_with_the_same_numbers(digits, tmp_path):
    """The final evaluation comes from the checkpoint's weights, so a run that died after saving its last epoch
    (before its result was written) ends with the same confusions when called again."""
    config = small_config(epochs=3)
    checkpoint = tmp_path / "run.pt"
    full, _ = train(digits, "ce", config=config, checkpoint=checkpoint)  # its last checkpoint is the final state
    # a fresh process, as after a kill between the last checkpoint and the result: no epoch is left to train
    finished, _ = train(digits, "ce", config=config, checkpoint=checkpoint)
    assert finished.resumed_from == 3
    np.testing.assert_array_equal(finished.confusion_last, full.confusion_last)
    np.testing.assert_array_equal(finished.confusion_best, full.confusion_best)
    assert finished.best_epoch == full.best_epoch and comparable(finished.history) == comparable(full.history)


def test_test_split_is_evaluated_only_at_reported_epochs(digits):
    result, _ = train(digits, config=small_config(epochs=5, test_every=2, milestones=(4,)))
    assert [("test_top1" in h) for h in result.history] == [False, True, False, True, True]
    assert all("val_balanced" in h for h in result.history)


def test_a_corrupt_checkpoint_is_named_with_the_fix(digits, tmp_path):
    from ltlib.io import CorruptFileError

    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match=r"checkpoint .*run\.pt cannot be read.*delete it"):
        train(digits, config=small_config(epochs=1), checkpoint=checkpoint)


def test_the_compiled_step_equals_the_eager_step(digits):
    """torch.compile of the plain step (opt-in) gives the eager numbers within float tolerance."""
    config = small_config(epochs=1, test_every=0)
    data = digits
    results = {}
    for mode in ("none", "default"):
        torch.manual_seed(0)
        from ltlib.train import Trainer

        trainer = Trainer(build_model("small_cnn", 10, in_channels=1), build_method("ce", data.train_counts), data,
                          TrainConfig(**{**config.__dict__, "compile": mode}), seed=0)
        trainer.set_epoch(0)
        trainer.model.train()
        losses = [trainer.step(images, labels)[0] for _, (images, labels) in
                  zip(range(3), trainer.batches["train"].epoch(64, trainer.generator))]
        results[mode] = (torch.stack(losses), [p.detach().clone() for p in trainer.model.parameters()])
    torch.testing.assert_close(results["default"][0], results["none"][0], rtol=1e-4, atol=1e-5)
    for compiled, eager in zip(results["default"][1], results["none"][1]):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)


def test_compiling_a_meta_learning_step_is_refused(digits):
    from ltlib.train import Trainer

    with pytest.raises(ConfigError, match="plain step only"):
        Trainer(build_model("small_cnn", 10, in_channels=1), build_method("difficulty_net", digits.train_counts),
                digits, small_config(compile="default"))
