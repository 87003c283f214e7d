"""DLSA: label-space adjustment by flow-based filtering (Xu et al., "Constructing Balance from Imbalance
for Long-tailed Image Recognition", ECCV 2022, arXiv 2208.02567; official code ``silicx/DLSA``).

DLSA works on the features of a trained backbone. A *flow filter* models them with a normalizing flow
under a Gaussian-mixture prior; the samples the flow finds most likely (the well-clustered ones) are split
off to a *cluster-aided classifier*, the rest go on to a new flow, and a regular classifier takes what is
left, so that each classifier faces its own, smaller label distribution. Which classes the first filter
takes depends on the features and on the flow's class-uniform, tail-weighted training; ltlib measures it
(:func:`head_tail_separation`) rather than assuming it.

Flow filter (:class:`FlowGMM`)
    u = f(x) with f a masked autoregressive flow (:class:`MAF`: ``n_blocks`` MADE blocks of one hidden
    layer as wide as the feature, sequential order flipped between blocks, each followed by a RealNVP
    batch-norm layer). The prior is a mixture of K unit Gaussians with fixed random means μ_k ~ N(0, 0.05²)
    and equal weights:

        log p(x | k) = −D/2 · log 2π − ½ ‖f(x) − μ_k‖² + log |det ∂f/∂x|
        log p(x) = logsumexp_k log p(x | k) − log K,      cluster(x) = argmax_k log p(x | k)

Flow training (:func:`train_flow`), on pairs (x⁺, x⁻) of samples of two different classes, each class
drawn uniformly:

    L = −λ_lh · mean(w_{y⁺} log p(x⁺))                                       class-weighted likelihood,
        + λ_pur · mean Σ_k softmax(log p(x⁺|·))_k · log softmax(log p(x⁻|·))_k     purity contrast (x⁺ side frozen),
        + λ_bal · (Σ_k p̄_k log p̄_k + log K)                                   cluster-usage balance,

w_c = (n_max / n_c)^q normalised to sum 1 over classes (q = 2); p̄ is the batch-mean cluster posterior of
x⁺, smoothed by an EMA (momentum 0.7) with bias correction. Plain SGD, constant learning rate. The epoch
kept is the one with the most clusters of purity > 0.7 and size > 10 whose largest cluster stays under
``max_cluster_size``.

Division and classifiers (:func:`fit_dlsa`)
    The threshold α is the (1 − 0.3) quantile of log p(x) over the training samples still in play; those
    at or above it, and the validation and test samples above the same α, go to a cluster-aided
    classifier, logit = FC_x(x) + FC_zp([z; P]), where P is the class histogram of the sample's cluster
    (counted over all training samples), trained with Balanced Softmax on its own samples. The rest go to
    the next depth; after the last one a regular classifier FC_x(x) + FC_z(z) takes the remainder. Every
    sample is predicted by the stage that took it.

Choices, written down
    * ``standardize=True`` (ours): features are z-scored with training statistics and constant dimensions
      dropped before anything else; a constant dimension makes the flow's likelihood unbounded (seen on
      ResNet-32 CIFAR features, where the official learning rate then diverges). The code uses raw features.
    * ``latent_input=True`` (default, the paper's figure): z is the flow latent f(x). The official code
      passes the backbone feature itself as z (``divide_and_conquer(features, features, ...)``);
      ``latent_input=False`` does that.
    * Model selection: the official classifiers keep the epoch with the best *test* accuracy on their
      test subset; ltlib selects on the validation samples routed to the same stage (``select_on="val"``),
      and offers ``"last"`` and ``"test"`` (the released behaviour, for comparison only).
    * The regular classifier's Balanced Softmax uses the class counts of the whole training set, as the
      official code passes them; the cluster-aided one uses the counts of its own subset (+1e-6 in the log).
    * ‖u − μ_k‖² is computed as ‖u‖² − 2 u·μ_k + ‖μ_k‖² (a (B, K) matrix) rather than from a (B, K, D)
      tensor: the same numbers up to rounding, at a fraction of the memory.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .runtime import cpu_threads

LOG_2PI = math.log(2 * math.pi)
SELECTIONS = ("val", "last", "test")


# ------------------------------------------------------------------------------------------------
# The flow
# ------------------------------------------------------------------------------------------------

def made_masks(dim: int, hidden: int, n_hidden: int, input_degrees: torch.Tensor) -> list[torch.Tensor]:
    """Masks of a MADE (Germain et al. 2015) with sequential hidden degrees: output i sees inputs of lower degree."""
    degrees = [input_degrees] + [torch.arange(hidden) % max(dim - 1, 1) for _ in range(n_hidden)]
    masks = [(later[:, None] >= earlier[None, :]).float() for earlier, later in zip(degrees[:-1], degrees[1:])]
    masks.append((input_degrees[:, None] - 1 >= degrees[-1][None, :]).float())  # strictly lower degree
    return masks


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """One MAF block: u = (x − m(x)) · exp(−a(x)), log |det| = −Σ a(x), with m, a autoregressive in x."""

    def __init__(self, dim: int, hidden: int, n_hidden: int, input_degrees: torch.Tensor):
        super().__init__()
        masks = made_masks(dim, hidden, n_hidden, input_degrees)
        self.input_degrees = input_degrees
        layers: list[nn.Module] = [MaskedLinear(dim, hidden, masks[0])]
        for mask in masks[1:-1]:
            layers += [nn.ReLU(), MaskedLinear(hidden, hidden, mask)]
        layers += [nn.ReLU(), MaskedLinear(hidden, 2 * dim, masks[-1].repeat(2, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self.net(x).chunk(2, dim=1)
        return (x - shift) * torch.exp(-log_scale), -log_scale


class FlowBatchNorm(nn.Module):
    """RealNVP batch normalisation as a flow layer: y = e^γ (x − mean)/√(var + ε) + β (unbiased batch
    variance in training, running statistics with momentum 0.9 otherwise)."""

    def __init__(self, dim: int, momentum: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean, var = x.mean(0), x.var(0)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        else:
            mean, var = self.running_mean, self.running_var
        y = self.log_gamma.exp() * (x - mean) / torch.sqrt(var + self.eps) + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var + self.eps)).expand_as(x)


class MAF(nn.Module):
    """Masked autoregressive flow (Papamakarios et al. 2017): x -> (u, per-dimension log |det J|)."""

    def __init__(self, dim: int, n_blocks: int = 2, hidden: int | None = None, n_hidden: int = 1,
                 batch_norm: bool = True):
        super().__init__()
        layers, degrees = [], torch.arange(dim)
        for _ in range(n_blocks):
            layers.append(MADE(dim, hidden or dim, n_hidden, degrees))
            degrees = degrees.flip(0)
            if batch_norm:
                layers.append(FlowBatchNorm(dim))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros_like(x)
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det
        return x, log_det


class FlowGMM(nn.Module):
    """MAF under a K-component Gaussian mixture with fixed means (std ``center_std``), identity covariance."""

    def __init__(self, dim: int, num_clusters: int = 500, center_std: float = 0.05, n_blocks: int = 2,
                 n_hidden: int = 1, batch_norm: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        self.flow = MAF(dim, n_blocks, dim, n_hidden, batch_norm)
        device = generator.device if generator is not None else None
        self.register_buffer("means", torch.randn(num_clusters, dim, generator=generator, device=device) * center_std)

    @property
    def num_clusters(self) -> int:
        return int(self.means.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latent u (B, D), log p(x | k) (B, K), log p(x) (B,))."""
        u, log_det = self.flow(x)
        squared = (u.square().sum(1, keepdim=True) - 2 * u @ self.means.T + self.means.square().sum(1)[None])
        log_p_given_k = -0.5 * x.shape[1] * LOG_2PI - 0.5 * squared + log_det.sum(1, keepdim=True)
        return u, log_p_given_k, torch.logsumexp(log_p_given_k, 1) - math.log(self.num_clusters)


# ------------------------------------------------------------------------------------------------
# Flow training
# ------------------------------------------------------------------------------------------------

@dataclass
class FlowConfig:
    """Flow-filter training; defaults are the official ImageNet-LT (CE features) configuration."""

    num_clusters: int = 500
    center_std: float = 0.05
    n_blocks: int = 2
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 0.2
    weight_q: float = 2.0
    lambda_lh: float = 2.0
    lambda_purity: float = 0.02
    lambda_balance: float = 1.0
    posterior_momentum: float = 0.7
    min_purity: float = 0.7
    min_cluster_size: int = 10
    max_cluster_size: int = 5000

    def __post_init__(self):
        for name in ("num_clusters", "n_blocks", "epochs", "batch_size", "min_cluster_size", "max_cluster_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlowConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("center_std", "lr", "weight_q", "lambda_lh", "lambda_purity", "lambda_balance",
                     "posterior_momentum", "min_purity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"FlowConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"FlowConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.posterior_momentum < 1:
            raise ValueError(f"FlowConfig.posterior_momentum must lie in [0, 1), got {self.posterior_momentum}")


def class_pair_weights(train_counts, q: float) -> torch.Tensor:
    """w_c = (n_max / n_c)^q / Σ_j (n_max / n_j)^q over the classes present (absent classes: 0)."""
    counts = torch.as_tensor(list(train_counts), dtype=torch.float64)
    weights = torch.where(counts > 0, (counts.max() / counts.clamp_min(1)) ** q, torch.zeros_like(counts))
    return (weights / weights.sum()).float()


def draw_pairs(labels: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` index pairs (i⁺, i⁻): two different classes, each uniform over the classes present, then a
    uniform member of each."""
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise ValueError("the flow's pair sampling needs samples of at least two classes")
    members = torch.argsort(labels, stable=True)
    counts = torch.stack([(labels == c).sum() for c in classes])
    starts = torch.cumsum(counts, 0) - counts
    device = labels.device
    first = torch.randint(0, classes.numel(), (count,), generator=generator, device=device)
    second = (first + torch.randint(1, classes.numel(), (count,), generator=generator, device=device)) % classes.numel()

    def member(which):
        return members[starts[which] + (torch.rand(count, generator=generator, device=device) * counts[which]).long()]

    return member(first), member(second)


def cluster_purity(clusters: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int):
    """(purity, size) per cluster: the share of its largest class, and its number of samples (0, 0 if empty)."""
    table = torch.zeros(num_clusters, num_classes, dtype=torch.long)
    table.index_put_((clusters.cpu(), labels.cpu()), torch.ones_like(labels.cpu()), accumulate=True)
    size = table.sum(1)
    purity = torch.where(size > 0, table.max(1).values / size.clamp_min(1), torch.zeros(num_clusters))
    return purity, size


@torch.no_grad()
def flow_outputs(flow: FlowGMM, features: torch.Tensor, batch_size: int = 4096):
    """(latent, cluster, log p(x)) of every row, eval mode."""
    flow.eval()
    latents, clusters, llh = [], [], []
    for start in range(0, len(features), batch_size):
        u, log_p_given_k, log_p = flow(features[start: start + batch_size])
        latents.append(u); clusters.append(log_p_given_k.argmax(1)); llh.append(log_p)
    if not latents:
        return features.new_zeros(0, features.shape[1]), torch.zeros(0, dtype=torch.long), features.new_zeros(0)
    return torch.cat(latents), torch.cat(clusters), torch.cat(llh)


def train_flow(features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: FlowConfig,
               generator: torch.Generator) -> tuple[FlowGMM, list[dict]]:
    """Train a flow filter on ``features`` (see module docstring); returns it at the kept epoch and a log."""
    device = features.device
    flow = FlowGMM(features.shape[1], config.num_clusters, config.center_std, config.n_blocks,
                   generator=generator).to(device)
    optimizer = torch.optim.SGD(flow.parameters(), lr=config.lr, momentum=0.0)
    weights = class_pair_weights(torch.bincount(labels, minlength=num_classes).tolist(), config.weight_q).to(device)
    ema, step = torch.zeros(config.num_clusters, device=device), 1
    best = {"remaining": -1, "state": None, "epoch": None}
    log = []
    for epoch in range(config.epochs):
        flow.train()
        sums = torch.zeros(4, device=device)
        positive, negative = draw_pairs(labels, len(labels), generator)
        for start in range(0, len(labels), config.batch_size):
            pos, neg = positive[start: start + config.batch_size], negative[start: start + config.batch_size]
            if pos.numel() < 2:  # batch statistics need two samples
                continue
            _, log_p_pos_k, log_p_pos = flow(features[pos])
            _, log_p_neg_k, _ = flow(features[neg])
            likelihood = -(log_p_pos * weights[labels[pos]]).mean() * config.lambda_lh
            purity = (F.softmax(log_p_pos_k.detach(), 1) * F.log_softmax(log_p_neg_k, 1)).sum(1).mean()
            posterior = F.softmax(log_p_pos_k, 1).mean(0) + 1e-7
            posterior = ema * config.posterior_momentum + posterior * (1 - config.posterior_momentum)
            ema = posterior.detach()
            posterior = posterior / (1 - config.posterior_momentum ** step)
            step += 1
            balance = (posterior * posterior.log()).sum() + math.log(config.num_clusters)
            loss = likelihood + config.lambda_purity * purity + config.lambda_balance * balance
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), likelihood.detach(), purity.detach(), balance.detach()])
        if not torch.isfinite(sums).all():
            raise FloatingPointError(f"flow training: non-finite loss at epoch {epoch}; lower FlowConfig.lr "
                                     f"(now {config.lr}); with standardize=False, try standardize=True")
        _, clusters, _ = flow_outputs(flow, features)
        purity_k, size_k = cluster_purity(clusters, labels, config.num_clusters, num_classes)
        remaining = int(((purity_k > config.min_purity) & (size_k > config.min_cluster_size)).sum())
        steps = max(1, math.ceil(len(labels) / config.batch_size))
        log.append({"epoch": epoch, "loss": float(sums[0]) / steps, "likelihood": float(sums[1]) / steps,
                    "purity": float(sums[2]) / steps, "balance": float(sums[3]) / steps,
                    "remaining_clusters": remaining, "largest_cluster": int(size_k.max())})
        if remaining > best["remaining"] and int(size_k.max()) < config.max_cluster_size:
            best = {"remaining": remaining, "state": copy.deepcopy(flow.state_dict()), "epoch": epoch}
    if best["state"] is not None:  # the official code keeps the last epoch when none qualifies
        flow.load_state_dict(best["state"])
    log.append({"kept_epoch": best["epoch"]})
    return flow.eval(), log


# ------------------------------------------------------------------------------------------------
# Classifiers
# ------------------------------------------------------------------------------------------------

class ClusterAidedClassifier(nn.Module):
    """logit = FC_x(x) + FC_zp([z; P]) (cluster-aided) or FC_x(x) + FC_z(z) (regular, ``prior_dim=0``)."""

    def __init__(self, feature_dim: int, latent_dim: int, num_classes: int, prior_dim: int):
        super().__init__()
        self.fc_x = nn.Linear(feature_dim, num_classes)
        self.fc_zp = nn.Linear(latent_dim + prior_dim, num_classes)

    def forward(self, x: torch.Tensor, z: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        zp = z if prior is None else torch.cat([z, prior], 1)
        return self.fc_x(x) + self.fc_zp(zp)


@dataclass
class ClassifierConfig:
    """Stage classifiers; defaults are the official CE/CBS-feature configuration (SGD, no momentum)."""

    epochs: int = 150
    batch_size: int = 128
    lr: float = 1e-2
    eval_every: int = 5
    select_on: str = "val"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ClassifierConfig.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) \
                or self.lr <= 0:
            raise ValueError(f"ClassifierConfig.lr must be a finite number > 0, got {self.lr!r}")


def balanced_softmax_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.log(torch.bincount(labels, minlength=num_classes).float() + 1e-6)


def train_classifier(inputs: dict, num_classes: int, log_prior: torch.Tensor, config: ClassifierConfig,
                     generator: torch.Generator) -> ClusterAidedClassifier:
    """Train on ``inputs["train"]`` = (x, z, P or None, y) with Balanced Softmax; keep the epoch chosen by
    ``config.select_on`` (accuracy on ``inputs["val"]`` or ``inputs["test"]``, checked every ``eval_every``)."""
    x, z, prior, y = inputs["train"]
    model = ClusterAidedClassifier(x.shape[1], z.shape[1], num_classes, 0 if prior is None else prior.shape[1]).to(x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.0)
    judge = inputs.get(config.select_on) if config.select_on != "last" else None
    best_score, best_state = -1.0, None
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=generator, device=y.device)
        for start in range(0, len(y), config.batch_size):
            i = order[start: start + config.batch_size]
            logits = model(x[i], z[i], None if prior is None else prior[i])
            loss = F.cross_entropy(logits + log_prior, y[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if judge is not None and len(judge[3]) and (epoch % config.eval_every == 0 or epoch == config.epochs):
            score = float((predict(model, judge) == judge[3]).float().mean())
            if score > best_score:
                best_score, best_state = score, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def predict(model: ClusterAidedClassifier, split: tuple) -> torch.Tensor:
    x, z, prior, _ = split
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return model(x, z, prior).argmax(1)


# ------------------------------------------------------------------------------------------------
# DLSA
# ------------------------------------------------------------------------------------------------

@dataclass
class DLSAConfig:
    depth: int = 1                 # number of flow filters; 0: the regular classifier alone (a BSM baseline)
    proportion: float = 0.3        # share of the remaining training samples each flow filter takes
    latent_input: bool = True      # z = flow latent (paper's figure); False: z = the feature (official code)
    standardize: bool = True       # z-score the features and drop constant dimensions first (ours; see fit_dlsa)
    cpu_threads: int | None = 1    # intra-op threads while fitting (tiny networks: one thread is fastest)
    flow: FlowConfig = None
    classifier: ClassifierConfig = None
    seed: int = 0

    def __post_init__(self):
        self.flow = FlowConfig(**self.flow) if isinstance(self.flow, dict) else (self.flow or FlowConfig())
        self.classifier = (ClassifierConfig(**self.classifier) if isinstance(self.classifier, dict)
                           else (self.classifier or ClassifierConfig()))
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise TypeError(f"DLSAConfig.depth must be an int >= 0, got {self.depth!r}")
        if not 0 < float(self.proportion) < 1:
            raise ValueError(f"DLSAConfig.proportion must lie in (0, 1), got {self.proportion!r}")
        if self.classifier.select_on not in SELECTIONS:
            raise ValueError(f"ClassifierConfig.select_on must be one of {SELECTIONS}, got {self.classifier.select_on!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def fit_dlsa(features, config: DLSAConfig, device: str | torch.device = "cpu") -> dict:
    """Run DLSA on a :class:`ltlib.features.FeatureSet` (clean training view) on ``device``. Returns predictions
    and the stage of every validation and test sample (on the CPU), and per-stage details (threshold, sizes,
    flow logs, the first flow's log-likelihoods)."""
    device = torch.device(device)
    with cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        return _fit_dlsa(features.to(device), config, device)


def _fit_dlsa(features, config: DLSAConfig, device: torch.device) -> dict:
    num_classes = features.num_classes
    generator = torch.Generator(device=device).manual_seed(config.seed)
    torch.manual_seed(config.seed)
    train_x, train_y = features.clean_train()
    splits = {"train": (train_x.float(), train_y), "val": (features.val.float(), features.val_labels),
              "test": (features.test.float(), features.test_labels)}
    if config.standardize:
        # A feature dimension that is constant on the training set (a dead ReLU unit, common in small backbones)
        # makes the flow's likelihood unbounded: the MADE scale of that dimension grows without limit and training
        # diverges. Such dimensions carry no information; they are dropped and the rest z-scored with training
        # statistics. The official code feeds raw features (``standardize=False``).
        mean, std = splits["train"][0].mean(0), splits["train"][0].std(0)
        keep = std > 1e-6 * std.max().clamp_min(1e-12)
        splits = {name: ((x[:, keep] - mean[keep]) / std[keep], y) for name, (x, y) in splits.items()}
    remaining = {name: torch.ones(len(y), dtype=torch.bool, device=device) for name, (_, y) in splits.items()}
    parts: dict[str, list] = {name: [] for name in splits}  # per split: (mask, predictions) of every stage
    stages = []
    for depth in range(config.depth):
        x_in, y_in = splits["train"][0][remaining["train"]], splits["train"][1][remaining["train"]]
        if torch.unique(y_in).numel() < 2 or len(y_in) < 4:
            break  # nothing left to divide
        flow, flow_log = train_flow(x_in, y_in, num_classes, config.flow, generator)
        outputs = {name: flow_outputs(flow, x) for name, (x, _) in splits.items()}
        llh_in = outputs["train"][2][remaining["train"]]
        threshold = torch.sort(llh_in).values[int(len(llh_in) * (1 - config.proportion))]
        taken = {name: remaining[name] & (outputs[name][2] >= threshold) for name in splits}
        # cluster prior: class histogram of every training sample assigned to the cluster
        counts = torch.zeros(config.flow.num_clusters, num_classes, device=device)
        counts.index_put_((outputs["train"][1], splits["train"][1]), torch.ones(len(splits["train"][1]), device=device),
                          accumulate=True)
        prior = counts / counts.sum(1, keepdim=True).clamp_min(1)
        inputs = {name: (x[taken[name]], (outputs[name][0] if config.latent_input else x)[taken[name]],
                         prior[outputs[name][1][taken[name]]], y[taken[name]])
                  for name, (x, y) in splits.items()}
        classifier = train_classifier(inputs, num_classes, balanced_softmax_log_prior(inputs["train"][3], num_classes),
                                      config.classifier, generator)
        for name in splits:
            parts[name].append((taken[name], predict(classifier, inputs[name])))
            remaining[name] = remaining[name] & ~taken[name]
        stages.append({"stage": depth, "kind": "cluster-aided", "threshold": float(threshold),
                       "sizes": {name: int(taken[name].sum()) for name in splits}, "flow_log": flow_log,
                       "llh": {name: outputs[name][2].cpu() for name in ("train", "test")}})
    last = len(stages)
    # the regular classifier's z: the last flow's latent, as for the stages (the feature itself if no flow ran)
    use_latent = config.latent_input and bool(stages)
    inputs = {name: (x[remaining[name]], (outputs[name][0] if use_latent else x)[remaining[name]], None,
                     y[remaining[name]])
              for name, (x, y) in splits.items()}
    if len(inputs["train"][3]):
        classifier = train_classifier(inputs, num_classes, balanced_softmax_log_prior(splits["train"][1], num_classes),
                                      config.classifier, generator)
        for name in splits:
            parts[name].append((remaining[name], predict(classifier, inputs[name])))
    stages.append({"stage": last, "kind": "regular", "sizes": {name: int(remaining[name].sum()) for name in splits}})
    merged = {name: merge_stage_predictions([(m.cpu(), p.cpu()) for m, p in parts[name]], len(y))
              for name, (_, y) in splits.items()}
    return {"prediction": {name: m[0] for name, m in merged.items()}, "stage": {name: m[1] for name, m in merged.items()},
            "stages": stages, "labels": {name: y.cpu() for name, (_, y) in splits.items()}}


def merge_stage_predictions(parts: list[tuple[torch.Tensor, torch.Tensor]], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, stage) per sample from the stages' (boolean mask, predictions of the masked samples).

    Every sample must be taken by exactly one stage; anything else is a bug in the division and raises.
    """
    prediction = torch.full((count,), -1, dtype=torch.long)
    stage = torch.full((count,), -1, dtype=torch.long)
    for index, (mask, predicted) in enumerate(parts):
        if int(mask.sum()) != len(predicted):
            raise ValueError(f"stage {index}: {int(mask.sum())} samples but {len(predicted)} predictions")
        if (stage[mask] >= 0).any():
            raise ValueError(f"stage {index} takes samples that an earlier stage took")
        prediction[mask], stage[mask] = predicted, index
    if (stage < 0).any():
        raise ValueError(f"{int((stage < 0).sum())} samples were taken by no stage")
    return prediction, stage


# ------------------------------------------------------------------------------------------------
# Feature evaluation
# ------------------------------------------------------------------------------------------------

def head_tail_separation(log_likelihood, labels, groups: dict[str, list[int]], proportion: float = 0.3) -> dict:
    """How a flow's likelihood separates class groups in one feature space.

    ``taken_<group>``: share of the group's samples among the top ``proportion`` by likelihood;
    ``head_share_of_taken``: share of the taken samples from the first group (many-shot);
    ``auc_many_vs_few``: probability that a many-shot sample is more likely than a few-shot one
    (0.5: no separation, 1: complete). Comparable across backbones on the same data.
    """
    from sklearn.metrics import roc_auc_score

    llh, labels = np.asarray(log_likelihood, dtype=np.float64), np.asarray(labels)
    threshold = np.sort(llh)[int(len(llh) * (1 - proportion))]
    taken = llh >= threshold
    out = {}
    members = {name: np.isin(labels, classes) for name, classes in groups.items()}
    for name, mask in members.items():
        out[f"taken_{name}"] = float(taken[mask].mean()) if mask.any() else float("nan")
    first = next(iter(groups))
    out["head_share_of_taken"] = float(members[first][taken].mean()) if taken.any() else float("nan")
    many, few = members.get("many"), members.get("few")
    if many is not None and few is not None and many.any() and few.any():
        both = many | few
        out["auc_many_vs_few"] = float(roc_auc_score(many[both].astype(int), llh[both]))
    return out


def separation_from_summary(pairwise, sizes, taken, groups: dict[str, list[int]]) -> dict:
    """:func:`head_tail_separation` from a stored summary instead of per-sample values (exact, not binned).

    ``pairwise[c][d]``: P(a class-c sample is more likely than a class-d one), ties half; ``sizes[c]``: samples of
    class c; ``taken[c]``: those at or above the threshold. AUC(G₁, G₂) = Σ n_c n_d P[c, d] / (Σ n_c · Σ n_d).
    """
    sizes, taken = np.asarray(sizes, dtype=np.float64), np.asarray(taken, dtype=np.float64)
    out = {}
    for name, classes in groups.items():
        out[f"taken_{name}"] = float(taken[classes].sum() / sizes[classes].sum()) if classes and sizes[classes].sum() \
            else float("nan")
    first = next(iter(groups))
    out["head_share_of_taken"] = float(taken[groups[first]].sum() / taken.sum()) if taken.sum() else float("nan")
    many, few = groups.get("many", []), groups.get("few", [])
    if pairwise is not None and many and few:
        table = np.asarray(pairwise, dtype=np.float64)
        weight = np.outer(sizes[many], sizes[few])
        out["auc_many_vs_few"] = float((weight * table[np.ix_(many, few)]).sum() / weight.sum())
    else:
        out["auc_many_vs_few"] = float("nan")
    return out
