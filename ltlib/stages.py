"""Post-hoc stages: computations on a finished training run, stored as entries of the same run store.

A stage (:class:`ltlib.experiment.StageSpec`) is keyed by its kind, its options, its seed and the key of
the run it starts from. :func:`run_stage` reads it from the store, or computes it on the trained model:
the backbone's weights come from the run's cached checkpoint, or the run is trained again when the cache
lacks them (so a stage trains its backbone only when its own entry is missing); the entry records whether
those weights are the stored run's (``backbone_weights``: bf16 training on another CPU model ends elsewhere). Kinds:

``classifier``      classifier re-training on frozen features (:mod:`ltlib.two_stage`): Difficulty-Net's stage
                    2 (LAS + LWS), LWS alone, cRT;
``dlsa``            DLSA's flow filters and classifiers on the features (:mod:`ltlib.label_space`);
``gradient_norms``  g = 1 − p_y of every training image under the final model, per class (notebook 05);
``weight_sharing``  how gradient-harmonised losses share the weight among classes over one epoch of the
                    model's logits (notebook 05).

Each stores what its notebook shows and nothing larger: per-class histograms instead of per-sample values.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .experiment import (Entry, Run, RunSpec, cached_data, checkpoint_path, is_final_checkpoint, make_records,
                         model_from_state, run, trained_state, weights_origin)
from .features import FeatureSet, feature_set, load_feature_set, save_feature_set, split_logits
from .io import sha256_hex
from .metrics import ShotThresholds, confusion_matrix, shot_thresholds
from .provenance import provenance
from .runtime import cpu_threads, device_type
from .store import RunStore
from .train import load_checkpoint


class Backbone:
    """The finished run a stage starts from: its store entry, data, final model and features (all lazy)."""

    def __init__(self, spec: RunSpec, store: RunStore, device: str = "cpu"):
        self.spec, self.store, self.device = spec, store, device
        self._model = None
        self.origin: dict | None = None   # whose weights these are (see weights_origin); None until they are read

    @property
    def run(self) -> Run:
        return run(self.spec, self.store, progress=False)

    @property
    def data(self):
        return cached_data(self.spec.data)

    def model(self) -> nn.Module:
        if self._model is None:
            state, self.origin = trained_state(self.spec, self.store, self.device)
            self._model = model_from_state(self.spec, state, self.device)
        return self._model

    def features(self, views: int = 1, seed: int = 0) -> FeatureSet:
        seed = seed if views > 1 else 0  # one view is the clean images: no random draw, one cache file
        path = checkpoint_path(self.spec.key()).parent / f"features-{views}v-{seed}.pt"
        cached = load_feature_set(path, self.device)
        if cached is not None:
            if self.origin is None:  # the features were computed from the checkpoint beside them
                state = load_checkpoint(checkpoint_path(self.spec.key()), torch.device("cpu"))
                if is_final_checkpoint(state, self.spec):
                    self.origin = weights_origin(state, self.store.get(self.spec.key()), retrained=False)
            return cached
        features = feature_set(self.model(), self.data, views=views, seed=seed, device=self.device)
        save_feature_set(path, features)
        return features.to(self.device)


@dataclass(frozen=True)
class FeatureSource:
    """Features from files instead of a trained run (``feature_{train,val,test}.h5``, e.g. the official DLSA
    ImageNet-LT features): the parent of stages that need features only. Its key is a fingerprint of the files."""

    folder: str
    source: str = "features"   # the data set they describe (many / few thresholds are the data set's)
    seed: int = 0
    cpu_threads: int | None = None

    def fingerprint(self) -> dict:
        out = {}
        for path in sorted(Path(self.folder).glob("feature_*.h5")):
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(size - (1 << 20), 0))
                tail = fh.read()
            out[path.name] = {"size": size, "sha256_ends": sha256_hex(head + tail)[:16]}
        if not out:
            raise FileNotFoundError(f"no feature_*.h5 files in {self.folder}; a feature folder holds feature_train.h5, "
                                    "feature_val.h5 and feature_test.h5 with datasets 'features' and 'labels'")
        return out

    def key(self) -> str:
        return sha256_hex(json.dumps({"features": self.fingerprint(), "source": self.source}, sort_keys=True))[:16]

    @property
    def train_counts(self) -> list[int]:
        return _feature_train_counts(str(Path(self.folder) / "feature_train.h5"))

    @property
    def data(self):
        from .experiment import DataSpec

        counts = [c for c in self.train_counts if c > 0]
        return DataSpec(self.source, float(max(counts) / min(counts)), "feature files")

    def features(self) -> FeatureSet:
        from .features import load_feature_folder

        return load_feature_folder(self.folder)

    def describe(self) -> dict:
        data = self.data
        return {"data": {"source": data.source, "imbalance": data.imbalance, "protocol": data.protocol},
                "feature_folder": self.folder, "files": self.fingerprint()}


@lru_cache(maxsize=8)
def _feature_train_counts(path: str) -> list[int]:
    import h5py

    with h5py.File(path, "r") as handle:
        labels = np.asarray(handle["labels"])
    return np.bincount(labels).tolist()


class FeatureBackbone:
    """The :class:`Backbone` of a :class:`FeatureSource`: features, and no model."""

    def __init__(self, source: FeatureSource, device: str = "cpu"):
        self.spec, self.device = source, device

    def features(self, views: int = 1, seed: int = 0) -> FeatureSet:
        if views != 1:
            raise ValueError("feature files hold one view of the training set")
        return self.spec.features()

    def model(self):
        raise ValueError(f"stage needs a trained model, but its parent is a folder of feature files ({self.spec.folder})")


@dataclass(frozen=True)
class StageKind:
    compute: Callable[[Backbone, dict, int], dict]
    version: int
    records: bool = True   # whether the result holds test confusions to summarise


def _confusions(result: dict) -> dict:
    return {rule: confusion.tolist() for rule, confusion in result.items()}


# ------------------------------------------------------------------------------------------------ classifier

def _classifier(backbone: Backbone, options: dict, seed: int) -> dict:
    from .two_stage import Stage2Config, retrain_classifier

    config = Stage2Config(**options, seed=seed, device=backbone.device)
    model = backbone.model()
    if not isinstance(model.classifier, nn.Linear):
        raise ValueError(f"classifier re-training needs a linear head; run {backbone.spec.method} has a "
                         f"{type(model.classifier).__name__} head")
    features = backbone.features(config.views, seed)
    out = retrain_classifier(features, model.classifier, config)
    history = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items() if k != "scale"}
               for h in out["history"]]
    return {"history": history, "final_scale": out["history"][-1]["scale"],
            "selected": {rule: int(epoch) for rule, (epoch, _) in out["selections"].items()},
            "confusion": {rule: np.asarray(c).tolist() for rule, (_, c) in out["selections"].items()}}


# ------------------------------------------------------------------------------------------------ DLSA

def _histograms(values: torch.Tensor, labels: torch.Tensor, num_classes: int, edges: np.ndarray) -> list[list[int]]:
    v, y = values.numpy(), labels.numpy()
    clipped = np.clip(v, edges[0], edges[-1])
    return [np.histogram(clipped[y == c], bins=edges)[0].tolist() for c in range(num_classes)]


def pairwise_more_likely(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[float]]:
    """P[c, d] = P(a sample of class c is more likely than one of class d), ties counted half (NaN if empty).

    From it the AUC of any two groups of classes follows exactly: Σ n_c n_d P[c, d] / (Σ n_c · Σ n_d).
    """
    v, y = values.numpy().astype(np.float64), labels.numpy()
    sorted_by_class = [np.sort(v[y == c]) for c in range(num_classes)]
    table = np.full((num_classes, num_classes), np.nan)
    for c, mine in enumerate(sorted_by_class):
        for d, theirs in enumerate(sorted_by_class):
            if len(mine) and len(theirs):
                below = np.searchsorted(theirs, mine, side="left")
                at_most = np.searchsorted(theirs, mine, side="right")
                table[c, d] = float((below + 0.5 * (at_most - below)).sum() / (len(mine) * len(theirs)))
    return np.round(table, 6).tolist()


def _dlsa(backbone: Backbone, options: dict, seed: int) -> dict:
    from .label_space import DLSAConfig, fit_dlsa

    config = DLSAConfig(**options, seed=seed)
    features = backbone.features()
    out = fit_dlsa(features, config, device=backbone.device)
    num_classes = features.num_classes
    confusion = confusion_matrix(out["prediction"]["test"], out["labels"]["test"], num_classes)
    stages = []
    for info in out["stages"]:
        entry = {k: v for k, v in info.items() if k not in ("llh", "flow_log")}
        if "flow_log" in info:
            entry["flow_log"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                                 for row in info["flow_log"]]
        for name in ("train", "test"):
            taken = out["stage"][name] == info["stage"]
            labels = out["labels"][name][taken]
            entry[f"{name}_classes"] = torch.bincount(labels, minlength=num_classes).tolist()
            if name == "test":
                correct = out["prediction"][name][taken] == labels
                entry["test_accuracy"] = 100.0 * float(correct.float().mean()) if bool(taken.any()) else None
        if "llh" in info and info["stage"] == 0:  # the first flow's likelihoods: histograms and class-pair ranks
            train_llh = info["llh"]["train"].numpy()
            edges = np.linspace(*np.percentile(train_llh, [0.5, 99.5]), 61)
            entry["llh_edges"] = np.round(edges, 4).tolist()
            entry["llh_histogram"] = {name: _histograms(info["llh"][name], out["labels"][name], num_classes, edges)
                                      for name in ("train", "test")}
            if num_classes <= 100:
                entry["llh_pairwise"] = {name: pairwise_more_likely(info["llh"][name], out["labels"][name], num_classes)
                                         for name in ("train", "test")}
            entry["llh_threshold_taken"] = {  # per class: samples at or above the threshold
                name: torch.bincount(out["labels"][name][info["llh"][name] >= info["threshold"]],
                                     minlength=num_classes).tolist() for name in ("train", "test")}
            entry["class_sizes"] = {name: torch.bincount(out["labels"][name], minlength=num_classes).tolist()
                                    for name in ("train", "test")}
        stages.append(entry)
    rule = config.classifier.select_on
    return {"selected": {rule: None}, "confusion": {rule: confusion.tolist()}, "stages": stages}


# ------------------------------------------------------------------------------------------------ analyses

def _gradient_norms(backbone: Backbone, options: dict, seed: int) -> dict:
    from .methods.intra_inter import gradient_norm

    bins = int(options.get("bins", 40))
    data = backbone.data
    logits, labels = split_logits(backbone.model(), data, "train", backbone.device)
    g = gradient_norm(logits, labels).cpu()
    labels = labels.cpu()
    edges = np.linspace(0.0, 1.0, bins + 1)
    summary = []
    for c in range(data.num_classes):
        values = g[labels == c].numpy()
        q = np.percentile(values, [25, 50, 75]) if len(values) else [np.nan] * 3
        summary.append({"count": int(len(values)), "mean": round(float(values.mean()), 5) if len(values) else None,
                        "q25": round(float(q[0]), 5), "median": round(float(q[1]), 5), "q75": round(float(q[2]), 5)})
    return {"edges": np.round(edges, 6).tolist(), "histogram": _histograms(g, labels, data.num_classes, edges),
            "per_class": summary}


def _weight_sharing(backbone: Backbone, options: dict, seed: int) -> dict:
    """Per class: the share of the total weight each variant gives over one training epoch of the model's logits.

    The batches are drawn as the training sampler draws them (a shuffled pass, ``batch_size`` images each), and
    each variant's loss runs in training mode, so its histograms' EMAs evolve as they would in training; every
    class, the rarest included, is seen. Per-sample (g, weight) pairs of the largest and the smallest class are
    kept (at most ``points`` each) for the scatter plot.
    """
    from .methods import MethodRef
    from .methods.intra_inter import gradient_norm

    data = backbone.data
    logits, labels = split_logits(backbone.model(), data, "train", backbone.device)
    logits, labels = logits.cpu(), labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    batch_size, points = int(options.get("batch_size", 128)), int(options.get("points", 150))
    shown = [0, data.num_classes - 1]
    out = {"shown_classes": shown, "variants": {}}
    for name, reference in options["variants"].items():
        loss = None if reference is None else MethodRef.parse(reference).build(data.train_counts).loss.train()
        totals = torch.zeros(data.num_classes, dtype=torch.float64)
        pairs = {c: [] for c in shown}
        for start in range(0, len(order), batch_size):
            index = order[start: start + batch_size]
            batch_logits, batch_labels = logits[index], labels[index]
            weights = torch.ones(len(index)) if loss is None else loss.sample_weights(batch_logits, batch_labels)
            totals.index_add_(0, batch_labels, weights.double())
            g = gradient_norm(batch_logits, batch_labels)
            for c in shown:
                mask = batch_labels == c
                pairs[c] += list(zip(g[mask].tolist(), weights[mask].tolist()))
        sampler = np.random.default_rng(seed)
        kept = {}
        for c, rows in pairs.items():
            if len(rows) > points:
                rows = [rows[i] for i in sorted(sampler.choice(len(rows), points, replace=False))]
            kept[str(c)] = [[round(a, 4), round(b, 4)] for a, b in rows]
        out["variants"][name] = {"share": np.round((totals / totals.sum()).numpy(), 6).tolist(), "samples": kept}
    return out


@dataclass(frozen=True)
class StageSpec:
    """A post-hoc computation on a finished run: its kind, its options (JSON values), its seed and its parent."""

    kind: str
    options: tuple = field(default=())
    parent: RunSpec | FeatureSource | None = None
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def make(cls, kind: str, options: dict, parent: RunSpec | FeatureSource, seed: int = 0,
             device: str = "cpu") -> "StageSpec":
        return cls(kind, tuple(sorted(options.items())), parent, int(seed), device)

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    def identity(self) -> dict:
        if self.kind not in STAGES:
            raise ValueError(f"unknown stage {self.kind!r}; choose one of {sorted(STAGES)}")
        return {"v": STAGES[self.kind].version, "kind": self.kind, "options": _jsonable(self.kwargs),
                "parent": self.parent.key(), "seed": self.seed, "device": device_type(self.device)}

    def key(self) -> str:
        return sha256_hex(json.dumps(self.identity(), sort_keys=True, default=str))[:16]

    def describe(self) -> dict:
        return {"kind": self.kind, "options": _jsonable(self.kwargs), "seed": self.seed, "device": self.device,
                "parent_key": self.parent.key(), "parent": self.parent.describe()}


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


STAGES: dict[str, StageKind] = {
    "classifier": StageKind(_classifier, version=1),
    "dlsa": StageKind(_dlsa, version=1),
    "gradient_norms": StageKind(_gradient_norms, version=1, records=False),
    "weight_sharing": StageKind(_weight_sharing, version=1, records=False),
}


@dataclass
class StageRun(Entry):
    """A finished stage as its store entry holds it."""

    def records(self, name: str, thresholds: ShotThresholds | None = None) -> list[dict]:
        thresholds = thresholds or shot_thresholds(self.spec.parent.data.source)
        records = make_records(self.entry, name, thresholds)
        # paired by the seed of the run the stage starts from; the stage's own seed is kept beside it
        return [{**r, "seed": self.spec.parent.seed, "stage_seed": self.spec.seed, "stage1_run_key": self.spec.parent.key(),
                 "stage": self.spec.kind} for r in records]


def stage_entry(spec: StageSpec, store: RunStore) -> dict:
    kind = STAGES[spec.kind]
    if isinstance(spec.parent, FeatureSource):
        backbone = FeatureBackbone(spec.parent, spec.device)
        train_counts, epochs = spec.parent.train_counts, None
    else:
        parent = run(spec.parent, store, progress=False)
        backbone = Backbone(spec.parent, store, spec.device)
        train_counts, epochs = parent.train_counts, spec.parent.train.epochs
    started = time.perf_counter()
    with cpu_threads(spec.parent.cpu_threads if torch.device(spec.device).type == "cpu" else None):
        prov = provenance(spec.device)  # before computing: the code loaded now is the code that runs
        result = kind.compute(backbone, spec.kwargs, spec.seed)
    result["train_counts"] = train_counts
    if getattr(backbone, "origin", None) is not None:
        result["backbone_weights"] = backbone.origin
    return {"key": spec.key(), "kind": f"stage:{spec.kind}", "identity": spec.identity(), "spec": spec.describe(),
            "seed": spec.seed, "epochs": epochs, "parent_key": spec.parent.key(),
            "result": result, "provenance": {**prov, "wall_s": round(time.perf_counter() - started, 1)}}


def run_stage(spec: StageSpec, store: RunStore, *, train: bool = True) -> StageRun:
    """The stage's entry: from the store, or computed now (training its backbone only if need be)."""
    key = spec.key()
    entry = store.get(key)
    if entry is not None:
        return StageRun(spec, entry)
    if not train:
        raise LookupError(f"stage {key} ({spec.kind} on run {spec.parent.key()}) is not in {store.folder}")
    with store.run_lock(key):
        entry = store.get(key)
        if entry is None:
            store.put(stage_entry(spec, store))
            return StageRun(spec, store.get(key), trained_now=True)
    return StageRun(spec, entry)


def stage_options(config) -> dict:
    """A stage configuration dataclass as options (its seed and device travel in the StageSpec)."""
    values = dataclasses.asdict(config)
    for name in ("seed", "device"):
        values.pop(name, None)
    return values
