"""Run one configured training run, or reuse its cached result.

A :class:`RunSpec` is everything that determines a run (data, model, method, schedule, seed).
Its hash keys a folder ``<cache>/runs/<key>/`` holding the per-epoch checkpoint (a killed run
resumes from it) and ``result.json`` (history, confusions, records). A notebook asks for runs;
those already done are read back, the rest are trained.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .data import LongTailedData, load_long_tailed
from .methods import build_method
from .metrics import ShotThresholds, summarize
from .models import build_model
from .paths import cache_dir
from .records import provenance, write_json
from .train import TrainConfig, fit

CACHE_VERSION = 1  # bump when a change to ltlib changes what a cached run would produce


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"
    imbalance: float = 10
    protocol: str = "ldam"
    profile: str = "exp"
    val_per_class: int | None = None


@dataclass
class RunSpec:
    method: str
    data: DataSpec
    model: str
    train: TrainConfig
    seed: int = 0
    method_kwargs: dict = field(default_factory=dict)
    thresholds: ShotThresholds = ShotThresholds()
    label: str | None = None  # name in tables; defaults to the method

    @property
    def name(self) -> str:
        return self.label or self.method

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        payload = {"v": CACHE_VERSION, **self.as_dict()}
        payload.pop("label")
        payload["train"].pop("device")  # where it ran does not change what is asked for
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunResult:
    spec: RunSpec
    history: list[dict]
    records: list[dict]
    confusion_last: np.ndarray
    confusion_best: np.ndarray
    train_counts: list[int]
    wall_s: float
    cached: bool
    folder: Path

    def record(self, selected_on: str = "val") -> dict:
        return next(r for r in self.records if r["selected_on"] == selected_on)


@lru_cache(maxsize=8)
def cached_data(spec: DataSpec) -> LongTailedData:
    return load_long_tailed(spec.source, spec.imbalance, spec.protocol, profile=spec.profile,
                            val_per_class=spec.val_per_class)


def run(spec: RunSpec, *, profile: str, use_cache: bool = True, progress: bool = True) -> RunResult:
    """Train ``spec`` (or load its cached result) and return history and records."""
    folder = cache_dir() / "runs" / spec.key()
    result_file = folder / "result.json"
    if use_cache and result_file.exists():
        stored = json.loads(result_file.read_text())
        return RunResult(spec, stored["history"], stored["records"], np.asarray(stored["confusion_last"]),
                         np.asarray(stored["confusion_best"]), stored["train_counts"], stored["wall_s"], True, folder)

    data = cached_data(spec.data)
    torch.manual_seed(spec.seed)
    method = build_method(spec.method, data.train_counts, drw_epoch=spec.train.drw_epoch,
                          drw_beta=spec.train.drw_beta, **spec.method_kwargs)
    model = build_model(spec.model, data.num_classes, in_channels=data.train.images.shape[1], head=method.head)
    started = time.perf_counter()
    result = fit(model, method, data, spec.train, seed=spec.seed, checkpoint=folder / "checkpoint.pt",
                 progress=progress)
    wall = result.wall_s if result.resumed_from is not None else time.perf_counter() - started
    common = {"method": spec.name, "dataset": spec.data.source, "protocol": spec.data.protocol,
              "imbalance": spec.data.imbalance, "seed": spec.seed, "epochs": spec.train.epochs,
              "profile": profile, "params": spec.as_dict(), "wall_s": round(wall, 2), "run_key": spec.key(),
              **provenance(spec.train.device)}
    records = []
    for selected_on, epoch, confusion in (("last", result.history[-1]["epoch"], result.confusion_last),
                                          ("val", result.best_epoch, result.confusion_best)):
        records.append({**common, "selected_on": selected_on, "epoch_selected": epoch,
                        **summarize(confusion, data.train_counts, spec.thresholds)})
    write_json(result_file, {"history": result.history, "records": records, "train_counts": data.train_counts,
                             "confusion_last": result.confusion_last.tolist(),
                             "confusion_best": result.confusion_best.tolist(), "wall_s": wall})
    return RunResult(spec, result.history, records, result.confusion_last, result.confusion_best,
                     data.train_counts, wall, False, folder)
