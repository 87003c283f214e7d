"""Difficulty-Net: network and weights, driver targets, the exact meta-gradient, the released code's
detached weights, BatchNorm statistics, and training through ``fit`` with resumption."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ltlib.data import DeviceBatches, load_long_tailed
from ltlib.methods import build_method, parse_method
from ltlib.methods.difficulty_net import DifficultyNet, DifficultyNetMethod, difficulty_target
from ltlib.models import build_model
from ltlib.runtime import autocast
from ltlib.train import TrainConfig, fit

ACC = [0.9, 0.6, 0.3]


@pytest.fixture(scope="module")
def digits():
    return load_long_tailed("digits", 10, "cdb")


def tiny_mlp(num_classes: int) -> nn.Module:
    """BatchNorm in train mode couples the samples of a batch: the exact gradient must include that."""
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes)).double().train()


def float64_method(num_classes: int, **options) -> DifficultyNetMethod:
    method = DifficultyNetMethod([50, 20, 8, 3][:num_classes], hidden=16, **options)
    method.net.double()
    method.on_epoch_end(0, np.array([0.9, 0.5, np.nan, 0.2][:num_classes]))
    return method


def create_graph_meta_gradient(method, model, images, targets, meta_images, meta_targets, lr, detach_weights):
    """The official formulation, written independently: a differentiable virtual step (create_graph=True)
    and the meta cross-entropy back-propagated to the meta-net. ``detach_weights`` builds the weights
    as the released code does, with ``torch.tensor(weights)``."""
    params = dict(model.named_parameters())

    def buffers():
        return {name: b.clone() for name, b in model.named_buffers()}

    difficulty = method.net(method.val_accuracy[None])[0]
    weights = difficulty * (len(difficulty) / difficulty.sum())
    if detach_weights:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch.tensor(tensor): exactly what the code does
            weights = torch.tensor(weights).double()
    losses = F.cross_entropy(functional_call(model, (params, buffers()), (images,)), targets, reduction="none")
    grads = torch.autograd.grad((weights[targets] * losses).mean(), tuple(params.values()), create_graph=True)
    virtual = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    meta_ce = F.cross_entropy(functional_call(model, (virtual, buffers()), (meta_images,)), meta_targets)
    return torch.autograd.grad(meta_ce, tuple(method.net.parameters()), allow_unused=True)


def random_batches(num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randint(0, num_classes, (12,), generator=g),
            torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randint(0, num_classes, (10,), generator=g))


def test_registry_builds_both_modes_and_variants():
    exact = build_method("difficulty_net", [100, 10, 1])
    released = build_method("difficulty_net_as_released", [100, 10, 1])
    assert isinstance(exact, DifficultyNetMethod) and exact.mode == "exact" and exact.head == "linear"
    assert isinstance(released, DifficultyNetMethod) and released.mode == "as_released"
    assert exact.driver_weight == 0.3 and exact.meta_batch_size == 100 and exact.target == "relative"
    name, kwargs = parse_method("difficulty_net:target=absolute,driver_weight=0,meta_lr=0.001")
    variant = build_method(name, [5, 3], **kwargs)
    assert variant.target == "absolute" and variant.driver_weight == 0.0
    assert variant.optimizer.param_groups[0]["lr"] == 0.001
    with pytest.raises(ValueError, match="mode"):
        build_method("difficulty_net", [5, 3], mode="first_order")
    with pytest.raises(ValueError, match="target"):
        build_method("difficulty_net", [5, 3], target="inverse")


def test_network_shape_and_uniform_start():
    net = DifficultyNet(5, hidden=7, bias=False)
    assert [tuple(p.shape) for p in net.parameters()] == [(7, 5), (7, 7), (5, 7)]
    assert len(list(DifficultyNet(5, hidden=7, bias=True).parameters())) == 6
    method = build_method("difficulty_net", [9, 5, 3, 2, 1])
    # all-zero input and no bias: d̂ = σ(0) = 0.5 for every class, so the first epoch is uniform
    np.testing.assert_allclose(method.current_difficulty().numpy(), 0.5)
    assert method.class_weight() == [1.0] * 5
    # the class weights keep float32 precision under a run's bf16 autocast
    method.on_epoch_end(0, np.array([0.91, 0.62, 0.33, 0.14, 0.05]))
    with autocast(torch.device("cpu"), True):
        assert method.current_difficulty().dtype == torch.float32


def test_building_the_method_leaves_the_global_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_method("difficulty_net", [5, 3, 1])
    assert torch.equal(torch.rand(4), expected)


def test_weights_sum_to_number_of_classes_and_absent_classes_read_as_zero():
    method = build_method("difficulty_net", [9, 5, 3, 2], bias=True, hidden=32)
    method.on_epoch_end(0, np.array([0.8, np.nan, 0.1, 0.55]))
    assert method.val_accuracy.tolist() == pytest.approx([0.8, 0.0, 0.1, 0.55])
    weights = method.class_weight()
    assert sum(weights) == pytest.approx(4.0, rel=1e-6) and min(weights) > 0
    with pytest.raises(ValueError, match="validation"):
        method.on_epoch_end(1, np.array([np.nan] * 4))


def test_relative_and_absolute_targets_by_hand():
    acc = torch.tensor(ACC, dtype=torch.float64)
    np.testing.assert_allclose(difficulty_target(acc, "relative").numpy(),
                               [1 - 0.9 / 1.8, 1 - 0.6 / 1.8, 1 - 0.3 / 1.8])
    np.testing.assert_allclose(difficulty_target(acc, "absolute").numpy(), [0.1, 0.4, 0.7])
    np.testing.assert_array_equal(difficulty_target(torch.zeros(3), "relative").numpy(), [1.0, 1.0, 1.0])
    for target, by_hand in (("relative", [0.5, 2 / 3, 5 / 6]), ("absolute", [0.1, 0.4, 0.7])):
        method = float64_method(3, target=target, mode="as_released")
        method.on_epoch_end(0, np.array(ACC))
        step = method.meta_gradient(None, None, None)  # as_released needs no model: only the driver loss trains
        d = step.difficulty.numpy()
        assert float(step.driver_loss) == pytest.approx(np.mean((d - np.array(by_hand)) ** 2), rel=1e-12)


def test_meta_cross_entropy_reaches_the_net_only_in_exact_mode():
    model = tiny_mlp(4)
    images, targets, meta_images, meta_targets = random_batches()
    exact = float64_method(4, driver_weight=0.0)
    released = float64_method(4, driver_weight=0.0, mode="as_released")
    released.net.load_state_dict(exact.net.state_dict())
    grads_exact = exact.meta_gradient(model, images, targets, meta_images, meta_targets, lr=0.5).gradients
    grads_released = released.meta_gradient(model, images, targets, meta_images, meta_targets, lr=0.5).gradients
    assert all(float(g.abs().max()) > 1e-8 for g in grads_exact)
    assert all(torch.count_nonzero(g) == 0 for g in grads_released)
    # ... which is what the released construction gives: torch.tensor(weights) cuts the path
    reference = create_graph_meta_gradient(released, model, images, targets, meta_images, meta_targets, 0.5, True)
    assert all(g is None for g in reference)


def test_exact_meta_gradient_matches_create_graph_in_float64():
    model = tiny_mlp(4)
    images, targets, meta_images, meta_targets = random_batches(seed=1)
    method = float64_method(4, driver_weight=0.0)
    reference = create_graph_meta_gradient(method, model, images, targets, meta_images, meta_targets, 0.5, False)
    stateless = method.meta_gradient(model, images, targets, meta_images, meta_targets, lr=0.5).gradients
    # the path compute_loss takes: the per-sample losses of the real forward, graph alive
    real_losses = F.cross_entropy(model(images), targets, reduction="none")
    reused = method.meta_gradient(model, images, targets, meta_images, meta_targets,
                                  per_sample_losses=real_losses, lr=0.5).gradients
    for ours in (stateless, reused):
        for a, b in zip(ours, reference):
            assert float((a - b).norm() / b.norm()) < 1e-6
    # with the driver loss on, its gradient simply adds
    driven = float64_method(4, driver_weight=0.3)
    driven.net.load_state_dict(method.net.state_dict())
    difficulty = driven.net(driven.val_accuracy[None])[0]
    driver = F.mse_loss(difficulty, difficulty_target(driven.val_accuracy))
    driver_grads = torch.autograd.grad(0.3 * driver, tuple(driven.net.parameters()))
    total = driven.meta_gradient(model, images, targets, meta_images, meta_targets, lr=0.5).gradients
    for a, b, c in zip(total, reference, driver_grads):
        assert float((a - (b + c)).norm() / (b + c).norm()) < 1e-6


def test_exact_meta_gradient_runs_under_bf16_autocast_and_agrees_with_float32(digits):
    """cpu-real and paper train under bf16 autocast; forward-mode AD does not pass through autocast, so a
    convolutional model is where a mixed-precision meta step would break."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=1).train()
    images = DeviceBatches(digits.train, digits.mean, digits.std, "cpu")._normalise(digits.train.images[:32])
    meta = DeviceBatches(digits.val, digits.mean, digits.std, "cpu")
    meta_images, meta_targets = meta._normalise(digits.val.images[:30]), digits.val.labels[:30]
    method = build_method("difficulty_net", digits.train_counts, driver_weight=0.0)
    method.on_epoch_end(0, np.linspace(0.1, 0.9, 10))
    gradients = {}
    for amp in (False, True):
        with autocast(torch.device("cpu"), amp):
            step = method.meta_gradient(model, images, digits.train.labels[:32], meta_images, meta_targets, lr=0.1)
        gradients[amp] = torch.cat([g.flatten() for g in step.gradients])
    assert gradients[False].norm() > 0
    assert float((gradients[True] - gradients[False]).norm() / gradients[False].norm()) < 0.05


def attached(method, data, seed=0):
    val = DeviceBatches(data.val, data.mean, data.std, "cpu")
    method.attach(train=None, val=val, generator=torch.Generator().manual_seed(seed), config=None)
    method.current_lr = 0.1
    return method


def test_meta_step_leaves_batchnorm_statistics_as_a_plain_forward_does(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=1).train()
    twin = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = DeviceBatches(digits.train, digits.mean, digits.std, "cpu")._normalise(digits.train.images[:32])
    targets = digits.train.labels[:32]
    method = attached(build_method("difficulty_net", digits.train_counts), digits)
    method.on_epoch_end(0, np.linspace(0.1, 0.9, 10))
    net_before = [p.detach().clone() for p in method.net.parameters()]
    loss, logits = method.compute_loss(model, images, targets)
    twin_logits = twin(images)  # one plain training forward: the only update the statistics may see
    for (name, buffer), (_, expected) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(buffer, expected), name
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    torch.testing.assert_close(logits, twin_logits)
    # the returned loss is weighted by the *updated* network; the network did move
    assert any(not torch.equal(a, b) for a, b in zip(net_before, method.net.parameters()))
    weights = method.current_weights()
    expected_loss = (weights[targets] * F.cross_entropy(twin_logits, targets, reduction="none")).mean()
    torch.testing.assert_close(loss, expected_loss)
    assert method.last_difficulty == pytest.approx(method.current_difficulty().tolist())
    assert method.last_driver_loss > 0


def test_as_released_draws_the_same_random_stream_as_exact(digits):
    states = []
    for name in ("difficulty_net", "difficulty_net_as_released"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, in_channels=1).train()
        method = attached(build_method(name, digits.train_counts, meta_batch_size=30), digits)
        images = DeviceBatches(digits.train, digits.mean, digits.std, "cpu")._normalise(digits.train.images[:16])
        for _ in range(5):  # 100 validation images / 30: crosses a reshuffle
            method.compute_loss(model, images, digits.train.labels[:16])
        states.append(method.generator.get_state())
    assert torch.equal(states[0], states[1])


def test_without_a_validation_split_no_meta_step_is_taken():
    method = build_method("difficulty_net", [5, 3, 1])
    net_before = [p.detach().clone() for p in method.net.parameters()]
    model = nn.Linear(4, 3)
    with pytest.warns(RuntimeWarning, match="attach"):
        loss, _ = method.compute_loss(model, torch.randn(6, 4), torch.arange(6) % 3)
    assert torch.isfinite(loss) and all(torch.equal(a, b) for a, b in zip(net_before, method.net.parameters()))
    with pytest.raises(ValueError, match="validation"):
        method.attach(train=None, val=[], generator=torch.Generator(), config=None)


def run(data, method_name, **kwargs):
    torch.manual_seed(0)
    method = build_method(method_name, data.train_counts)
    model = build_model("small_cnn", data.num_classes, in_channels=1, head=method.head)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=0, milestones=(1,), gamma=0.1)
    return fit(model, method, data, config, progress=False, **kwargs), method


def test_fit_trains_weights_change_and_resume_gives_the_same_history(digits, tmp_path):
    uninterrupted, method = run(digits, "difficulty_net")
    weights = [h["class_weight"] for h in uninterrupted.history]
    assert weights[0] != weights[1]
    assert all(sum(w) == pytest.approx(10, abs=1e-4) for w in weights)
    assert [e["epoch"] for e in method.epoch_log] == [0, 1]
    assert method.epoch_log[0]["input_accuracy"] == [0.0] * 10
    assert all(e["meta_cross_entropy"] > 0 and e["driver_loss"] > 0 for e in method.epoch_log)
    checkpoint = tmp_path / "run.pt"
    partial, _ = run(digits, "difficulty_net", checkpoint=checkpoint, stop_after=1)
    assert len(partial.history) == 1
    resumed, resumed_method = run(digits, "difficulty_net", checkpoint=checkpoint)
    assert resumed.resumed_from == 1
    assert resumed.history == uninterrupted.history
    assert resumed_method.epoch_log == method.epoch_log
    for a, b in zip(method.net.parameters(), resumed_method.net.parameters()):
        assert torch.equal(a, b)


def test_fit_as_released(digits):
    result, method = run(digits, "difficulty_net_as_released")
    assert len(result.history) == 2 and all(e["meta_cross_entropy"] is None for e in method.epoch_log)
    assert result.history[0]["class_weight"] != result.history[1]["class_weight"]


def test_as_released_with_balanced_softmax_reproduces_the_broadcast_of_the_released_loss():
    """The released ImageNet-LT stage 1 multiplies a (B,) weight vector by BalancedSoftmax's (B, 1, 1) output: the
    mean of the (B, 1, B) product is mean(w)·mean(ℓ). as_released reproduces it; exact keeps mean(w·ℓ)."""
    counts = [50, 20, 5]
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    released = build_method("difficulty_net_as_released", counts, base="balanced_softmax")
    exact = build_method("difficulty_net", counts, base="balanced_softmax")
    released.val_accuracy = exact.val_accuracy = torch.tensor([0.9, 0.5, 0.1])
    model = torch.nn.Identity()
    weights = released.current_weights()[targets]
    per_sample = released.loss.per_sample(logits, targets)
    official = (weights * per_sample[:, None, None]).mean()  # the released shapes: (B,) * (B, 1, 1)
    loss, _ = released.compute_loss(model, logits, targets)
    assert torch.allclose(loss, official) and torch.allclose(loss, weights.mean() * per_sample.mean())
    exact_loss, _ = exact.compute_loss(model, logits, targets)
    assert torch.allclose(exact_loss, (exact.current_weights()[targets] * per_sample).mean())
    assert not torch.allclose(loss, exact_loss)
