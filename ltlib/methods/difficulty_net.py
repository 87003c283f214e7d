"""Difficulty-Net (Sinha & Ohashi, "Difficulty-Net: Learning to Predict Difficulty for Long-Tailed
Recognition", WACV 2023; arXiv 2209.02960): a small meta-learned network predicts class difficulties.

The network (the paper's Difficulty-Net, a meta-net with parameters φ) reads the vector a ∈ [0, 1]^C of
per-class accuracies on the held-out, balanced validation split (all zeros before the first epoch)
and predicts difficulties

    d̂ = σ(W₃ ReLU(W₂ ReLU(W₁ a)))  ∈ (0, 1)^C        (C → h → h → C; biases optional)

which become class weights summing to C:

    w_c = C · d̂_c / Σ_j d̂_j,      L_train(θ; φ) = (1/B) Σ_i w_{y_i} ℓ(f_θ(x_i), y_i)

with ℓ cross-entropy (or Balanced Softmax, the paper's ImageNet-LT setting). Every training step is
bi-level:

1. virtual step of the model:  θ'(φ) = θ − α ∇_θ L_train(θ; φ),  α = the current main learning rate;
2. meta loss on a meta batch of M validation images, with the driver loss pulling d̂ towards the
   relative difficulty r:

       r_c = 1 − a_c / (Σ_j a_j + 1e-12),      L_drv = (1/C) Σ_c (d̂_c − r_c)²
       L_meta(φ) = (1/M) Σ_m CE(f_{θ'(φ)}(x_m), y_m) + λ L_drv,      λ = 0.3

   and one Adam step on φ (CIFAR code: learning rate 1e-5, weight decay 1e-4);
3. the real update of θ with L_train under the weights of the updated φ (``fit`` does the step).

After each epoch a becomes the new validation accuracies (absent classes count as 0).

Modes
-----
``exact`` (``difficulty_net``): the paper's bi-level meta-gradient, second order. It is computed
exactly but without a double backward. Since φ reaches θ' only
through the per-sample weights,

    ∂CE_meta/∂w_{y_i} = −(α/B) ⟨v, ∇_θ ℓ_i(θ)⟩,     v = ∇_{θ'} CE_meta(θ')

so the whole per-sample vector is one forward-mode Jacobian-vector product of ℓ(θ) along v, and
∇_φ CE_meta = Σ_i s_i ∂w_{y_i}/∂φ with s = −(α/B) J_θℓ(θ) v. The step costs one real forward (whose
graph serves the virtual step's gradient and, later, the real update), one backward for the virtual
gradient, a forward and backward of the meta batch at θ', and one JVP (about two to three forwards).
The official ``create_graph=True`` virtual step instead differentiates the backward graph itself
(a double backward through every layer) plus a separate forward of a model copy, which costs more;
``benchmarks/meta_step.py`` measures the cost of a step against a plain one.
Both are exact; tests check the JVP form against ``create_graph`` in float64.

``as_released`` (``difficulty_net_as_released``): what hitachi-rd-cv/Difficulty_Net does. It builds the
per-sample weights with ``torch.tensor(weights)``, which detaches them, so the meta cross-entropy has no
path to φ and the network is trained by λ·L_drv alone (plus Adam's weight decay). The virtual step and
the meta forward are therefore dead computation, and ltlib skips them: the only difference from running
them is the skipped work. The meta batch's indices are still drawn, so the random stream, and with it
the data order and augmentation, is the same as in ``exact`` mode under the same seed.

With the Balanced-Softmax base (the released ImageNet-LT / Places-LT stage 1, ``bal_softmax: True``) the
released loss multiplies the (B,) weight vector by its ``BalancedSoftmax`` output of shape (B, 1, 1); the
product broadcasts to (B, 1, B) and its mean is mean(w)·mean(ℓ), not mean(w·ℓ): every sample gets the
batch's mean weight. ``as_released`` reproduces that value; ``exact`` computes mean(w·ℓ).

Choices that follow the official CIFAR code
-------------------------------------------
* The virtual step is plain SGD on every trainable parameter (no momentum, no weight decay).
* Meta batches come from the validation split, un-augmented, like its ``metaloader``
  (``DataLoader(val, shuffle=True, batch_size=100)``, re-created every epoch): a shuffled pass over
  the validation split, reshuffled when exhausted and at every epoch start; the last batch of a pass
  may be smaller.
* The virtual model and the meta forward run in the model's current mode (train: batch statistics),
  as its ``model_cpy.train()`` does, on copies of the buffers: the real model's BatchNorm running
  statistics see each training batch exactly once, as in a plain step, and never the meta batch.

Outside ``fit``, before ``attach`` hands over the validation split and the run's generator,
``compute_loss`` applies the current weights, takes no meta step and warns once.

Departures and limits: the real forward is reused for the virtual step instead of a second forward of
a copy; with BatchNorm in train mode the two are identical, but a model with dropout would draw
different masks in the JVP pass than in the real forward, which would make the gradient inexact
(ltlib's models have no dropout). The network is initialised from its own random stream (seed
``init_seed``, default ``torch.initial_seed()``), so building the method leaves the global stream, and
hence the model's initialisation, as it is for every other method under the same seed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from ..losses import build_loss
from .base import Method

MODES = ("exact", "as_released")
TARGETS = ("relative", "absolute")
BASE_LOSSES = ("ce", "balanced_softmax")
RELATIVE_EPS = 1e-12  # the official code's guard against Σ a = 0 (all zeros before the first epoch)


class DifficultyNet(nn.Module):
    """C → h → h → C perceptron with ReLU and a sigmoid output: accuracies (N, C) -> difficulties (N, C).

    The official CIFAR network has no biases and h = 128 (so all-zero accuracies give d̂ = 0.5 for
    every class); the ImageNet-LT and Places-LT networks have biases, h = 1024 and 512.
    """

    def __init__(self, num_classes: int, hidden: int = 128, bias: bool = False):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_classes, hidden, bias=bias), nn.ReLU(),
            nn.Linear(hidden, hidden, bias=bias), nn.ReLU(),
            nn.Linear(hidden, num_classes, bias=bias))

    def forward(self, accuracy: torch.Tensor) -> torch.Tensor:
        # In the parameters' precision: under a run's bf16 autocast its output (the class weights) would keep
        # ~3 significant digits and its Adam steps of lr 1e-5 would mostly round away; it costs nothing either way.
        with torch.autocast(accuracy.device.type, enabled=False):
            return torch.sigmoid(self.layers(accuracy.to(self.layers[0].weight.dtype)))


def difficulty_target(accuracy: torch.Tensor, target: str = "relative") -> torch.Tensor:
    """Driver-loss target: r_c = 1 − a_c / (Σ_j a_j + 1e-12) ("relative") or 1 − a_c ("absolute")."""
    if target == "relative":
        return 1.0 - accuracy / (accuracy.sum(-1, keepdim=True) + RELATIVE_EPS)
    if target == "absolute":
        return 1.0 - accuracy
    raise ValueError(f"unknown difficulty target {target!r}; choose one of {TARGETS}")


def difficulty_weights(difficulty: torch.Tensor) -> torch.Tensor:
    """w_c = C · d̂_c / Σ_j d̂_j (sums to C along the last dimension)."""
    return difficulty * (difficulty.shape[-1] / difficulty.sum(-1, keepdim=True))


def _stateless_forward(model: nn.Module, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    # Fresh copies of the buffers take BatchNorm's running-stat updates, so virtual passes leave the
    # real model's statistics alone; cloning here (not outside) also keeps torch.func.jvp from
    # refusing an in-place update of a tensor captured from outside the transform.
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    return functional_call(model, (params, buffers), (images,))


@dataclass
class MetaGradient:
    """∇_φ L_meta for every meta-net parameter, and what the step saw."""

    gradients: tuple[torch.Tensor, ...]
    difficulty: torch.Tensor                  # d̂ before the meta update, (C,)
    driver_loss: torch.Tensor                 # L_drv before the meta update (unweighted)
    meta_cross_entropy: torch.Tensor | None   # CE of the meta batch at θ'; None where it is not computed


class DifficultyNetMethod(Method):
    """Class weights from a Difficulty-Net that is meta-trained alongside the model (see module docstring).

    Options: ``mode`` ("exact" or "as_released"), ``target`` ("relative" or "absolute" driver target),
    ``driver_weight`` λ (0 turns the driver loss off), ``hidden`` and ``bias`` of the network,
    ``meta_lr`` and ``meta_weight_decay`` of its Adam optimiser, ``meta_batch_size``, ``base`` loss
    ("ce" or "balanced_softmax") and ``init_seed`` of the network's initialisation.
    """

    def __init__(self, class_counts: Sequence[int], mode: str = "exact", target: str = "relative",
                 driver_weight: float = 0.3, hidden: int = 128, bias: bool = False, meta_lr: float = 1e-5,
                 meta_weight_decay: float = 1e-4, meta_batch_size: int = 100, base: str = "ce",
                 init_seed: int | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown Difficulty-Net mode {mode!r}; choose one of {MODES}")
        if target not in TARGETS:
            raise ValueError(f"unknown difficulty target {target!r}; choose one of {TARGETS}")
        if base not in BASE_LOSSES:
            raise ValueError(f"unknown base loss {base!r} for Difficulty-Net; choose one of {BASE_LOSSES}")
        if driver_weight < 0 or meta_lr < 0 or meta_weight_decay < 0:
            raise ValueError("driver_weight, meta_lr and meta_weight_decay must be >= 0")
        if int(meta_batch_size) < 1 or int(hidden) < 1:
            raise ValueError("meta_batch_size and hidden must be >= 1")
        # The base loss gives per-sample losses only; its class_weight buffer stays uniform.
        super().__init__(build_loss(base, class_counts))
        self.mode, self.target, self.base = mode, target, base
        self.driver_weight, self.meta_batch_size = float(driver_weight), int(meta_batch_size)
        num_classes = self.loss.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() if init_seed is None else int(init_seed))
            self.net = DifficultyNet(num_classes, int(hidden), bool(bias))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=float(meta_lr),
                                          weight_decay=float(meta_weight_decay))
        self.val_accuracy = torch.zeros(num_classes)  # the network's input, updated after every epoch
        self.val = None
        self.generator: torch.Generator | None = None
        self._meta_order: torch.Tensor | None = None
        self._meta_cursor = 0
        self._last_difficulty: torch.Tensor | None = None
        self._last_driver_loss: torch.Tensor | None = None
        self.epoch_log: list[dict] = []
        self._warned_unattached = False
        self._reset_epoch_sums()

    # ----------------------------------------------------------------------------- Method hooks

    def attach(self, *, train, val, generator: torch.Generator, config) -> None:
        if val is None or len(val) == 0:
            raise ValueError("Difficulty-Net needs a validation split (its input accuracies and meta batches); "
                             "this data set has none")
        self.val, self.generator = val, generator

    def to(self, device) -> "DifficultyNetMethod":
        super().to(device)
        self.net.to(device)
        self.val_accuracy = self.val_accuracy.to(device)
        self._reset_epoch_sums()
        return self

    def on_epoch_start(self, epoch: int, lr: float | None = None) -> None:
        super().on_epoch_start(epoch, lr)
        self._meta_order = None  # the official meta loader is re-created every epoch
        self._reset_epoch_sums()

    def compute_loss(self, model: nn.Module, images: torch.Tensor,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The real forward: its graph gives the virtual step's gradient now and the real update later.
        logits = model(images)
        losses = self.loss.per_sample(logits, targets)
        if self.val is None:
            if not self._warned_unattached:
                warnings.warn("Difficulty-Net is not attached to a validation split (fit calls attach()): "
                              "the current weights apply, but no meta step is taken", RuntimeWarning, stacklevel=2)
                self._warned_unattached = True
            return self._weighted_mean(self.current_weights()[targets], losses), logits
        meta_indices = self._next_meta_indices()
        if self.mode == "exact":
            meta_images = self.val._normalise(self.val.images[meta_indices])
            meta_targets = self.val.labels[meta_indices]
        else:
            meta_images = meta_targets = None
        step = self.meta_gradient(model, images, targets, meta_images, meta_targets, per_sample_losses=losses)
        for parameter, gradient in zip(self.net.parameters(), step.gradients):
            parameter.grad = gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            difficulty = self.net(self.val_accuracy[None])[0]
        weights = difficulty_weights(difficulty)
        self._last_difficulty, self._last_driver_loss = difficulty, step.driver_loss
        self._driver_loss_sum += step.driver_loss
        if step.meta_cross_entropy is not None:
            self._meta_ce_sum += step.meta_cross_entropy
        self._steps += 1
        return self._weighted_mean(weights[targets], losses), logits

    def _weighted_mean(self, sample_weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """mean(w·ℓ); as released with Balanced Softmax, mean(w)·mean(ℓ) (module docstring)."""
        if self.mode == "as_released" and self.base == "balanced_softmax":
            return sample_weights.mean() * losses.mean()
        return (sample_weights * losses).mean()

    def on_epoch_end(self, epoch: int, val_per_class_accuracy: np.ndarray) -> None:
        accuracy = np.asarray(val_per_class_accuracy, dtype=np.float64)
        if accuracy.size == 0 or np.all(np.isnan(accuracy)):
            raise ValueError("Difficulty-Net needs per-class accuracies on a validation split; this data set has none")
        if self._steps:
            steps = self._steps
            entry = {"epoch": int(epoch), "input_accuracy": self.val_accuracy.tolist(),
                     "difficulty": self._last_difficulty.tolist(),
                     "driver_loss": float(self._driver_loss_sum) / steps,
                     "meta_cross_entropy": float(self._meta_ce_sum) / steps if self.mode == "exact" else None}
            self.epoch_log.append(entry)
        parameter = next(self.net.parameters())
        self.val_accuracy = torch.as_tensor(np.nan_to_num(accuracy, nan=0.0), dtype=parameter.dtype,
                                            device=parameter.device)

    def class_weight(self) -> list[float]:
        """The weights the network gives the current input accuracies (after ``on_epoch_end``: the next epoch's)."""
        return self.current_weights().tolist()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "val_accuracy": self.val_accuracy.clone(), "last_difficulty": self._last_difficulty,
                "last_driver_loss": self._last_driver_loss, "epoch_log": [dict(e) for e in self.epoch_log]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        # A checkpoint loaded onto CUDA puts Adam's step counters there too; non-capturable Adam reads them
        # on the host every step (a sync per step), so they go back to the CPU where Adam keeps them.
        for parameter_state in self.optimizer.state.values():
            if torch.is_tensor(parameter_state.get("step")) and parameter_state["step"].device.type != "cpu":
                parameter_state["step"] = parameter_state["step"].cpu()
        parameter = next(self.net.parameters())
        self.val_accuracy = state["val_accuracy"].to(device=parameter.device, dtype=parameter.dtype)
        self._last_difficulty, self._last_driver_loss = state["last_difficulty"], state["last_driver_loss"]
        self.epoch_log = [dict(e) for e in state["epoch_log"]]

    # ----------------------------------------------------------------------------- what notebooks read

    def current_difficulty(self) -> torch.Tensor:
        """d̂ = Net(a) for the current network and input accuracies, (C,)."""
        with torch.no_grad():
            return self.net(self.val_accuracy[None])[0]

    def current_weights(self) -> torch.Tensor:
        return difficulty_weights(self.current_difficulty())

    @property
    def last_difficulty(self) -> list[float] | None:
        """d̂ that weighted the last real update (after that step's meta update); None before training."""
        return None if self._last_difficulty is None else self._last_difficulty.tolist()

    @property
    def last_driver_loss(self) -> float | None:
        """L_drv of the last training step (before its meta update); None before training."""
        return None if self._last_driver_loss is None else float(self._last_driver_loss)

    # ----------------------------------------------------------------------------- the meta step

    def meta_gradient(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                      meta_images: torch.Tensor | None = None, meta_targets: torch.Tensor | None = None, *,
                      per_sample_losses: torch.Tensor | None = None, lr: float | None = None) -> MetaGradient:
        """∇_φ [CE_meta(θ'(φ)) + λ L_drv(φ)] at the current φ, without stepping anything.

        ``per_sample_losses``: ℓ_i of ``images`` from a forward of ``model`` whose graph is still alive
        (``compute_loss`` passes the real forward's); without it a forward on copies of the buffers is
        done here. ``lr``: α of the virtual step, default ``current_lr``. In ``as_released`` mode the
        meta batch is not needed and may be None.
        """
        alpha = self.current_lr if lr is None else float(lr)
        difficulty = self.net(self.val_accuracy[None])[0]
        driver_loss = F.mse_loss(difficulty, difficulty_target(self.val_accuracy, self.target))
        objective = self.driver_weight * driver_loss
        meta_cross_entropy = None
        if self.mode == "exact":
            if meta_images is None or meta_targets is None:
                raise ValueError("exact Difficulty-Net needs a meta batch (meta_images, meta_targets)")
            if per_sample_losses is None:
                params = {name: p for name, p in model.named_parameters()}
                per_sample_losses = self.loss.per_sample(_stateless_forward(model, params, images), targets)
            weights = difficulty_weights(difficulty)
            sensitivity, meta_cross_entropy = self._weight_sensitivity(
                model, images, targets, per_sample_losses, weights.detach(), meta_images, meta_targets, alpha)
            objective = objective + (weights[targets] * sensitivity).sum()
        gradients = torch.autograd.grad(objective, tuple(self.net.parameters()))
        return MetaGradient(gradients, difficulty.detach(), driver_loss.detach(), meta_cross_entropy)

    def _weight_sensitivity(self, model, images, targets, per_sample_losses, weights, meta_images, meta_targets,
                            alpha) -> tuple[torch.Tensor, torch.Tensor]:
        """s_i = ∂CE_meta(θ')/∂w_{y_i} = −(α/B) ⟨∇_{θ'} CE_meta(θ'), ∇_θ ℓ_i(θ)⟩ for every sample i, and CE_meta."""
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        names = tuple(trainable)
        batch_loss = (weights[targets] * per_sample_losses).mean()
        # retain_graph: the same graph carries the real update once the new weights are known.
        gradients = torch.autograd.grad(batch_loss, tuple(trainable.values()), retain_graph=True, allow_unused=True)
        virtual = {name: (trainable[name].detach() - alpha * g if g is not None else trainable[name].detach())
                   .requires_grad_() for name, g in zip(names, gradients)}
        meta_cross_entropy = F.cross_entropy(_stateless_forward(model, virtual, meta_images), meta_targets)
        direction = torch.autograd.grad(meta_cross_entropy, tuple(virtual.values()), allow_unused=True)
        tangents = {name: torch.zeros_like(virtual[name]) if v is None else v for name, v in zip(names, direction)}
        primals = {name: p.detach() for name, p in trainable.items()}

        def per_sample(params):
            return self.loss.per_sample(_stateless_forward(model, params, images), targets)

        # Forward-mode AD does not pass through autocast (under bf16 autocast the dual weights are cast and the
        # input is not, and the convolution refuses the mix), so the directional derivative runs in float32, as
        # the official code runs its whole meta step; the rest of the step keeps the run's precision.
        with warnings.catch_warnings(), torch.autocast(images.device.type, enabled=False):
            # torch's first forward-mode call loads its JVP decompositions through torch.jit.script,
            # which warns of its own deprecation: internal to torch, nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
            _, loss_derivative = jvp(per_sample, (primals,), (tangents,))
        return (-alpha / targets.shape[0]) * loss_derivative.detach(), meta_cross_entropy.detach()

    def _next_meta_indices(self) -> torch.Tensor:
        if self._meta_order is None or self._meta_cursor >= self._meta_order.numel():
            self._meta_order = torch.randperm(len(self.val), device=self.val.device, generator=self.generator)
            self._meta_cursor = 0
        indices = self._meta_order[self._meta_cursor: self._meta_cursor + self.meta_batch_size]
        self._meta_cursor += self.meta_batch_size
        return indices

    def _reset_epoch_sums(self) -> None:
        # Summed on the device and read once per epoch: no host synchronisation per step.
        self._driver_loss_sum = torch.zeros((), device=self.val_accuracy.device)
        self._meta_ce_sum = torch.zeros((), device=self.val_accuracy.device)
        self._steps = 0

