"""A training run as data: its specification, its identity (the run key) and its store entry.

A :class:`RunSpec` is everything that determines a run's numbers: the data (:class:`DataSpec`), the model,
the method and its options (:class:`ltlib.methods.MethodRef`), the schedule (:class:`ltlib.train.TrainConfig`),
the seed, the device type and, on CPU, the number of threads (a reduction split over two threads adds in
another order than over one). Its :meth:`RunSpec.key` hashes exactly that, plus :data:`TRAIN_VERSION`, which
is bumped whenever a change to ltlib changes what a run computes. Evaluation-only settings (many / medium
/ few thresholds, names in tables) are not part of it: they are applied when records are made.

:func:`run` returns the run's :class:`Run`, read from the store (``runs/<profile>/<key>.json``) when it is
there, trained and stored otherwise; a per-epoch checkpoint in the cache lets a killed run resume, here or, once
``python -m ltlib sweep --park`` has put it beside the entries (:func:`unpark`), on another machine.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .data import LongTailedData, load_long_tailed, resolve_val_per_class
from .io import CorruptFileError, atomic_write_bytes, sha256_hex
from .methods import MethodRef
from .metrics import ShotThresholds, shot_thresholds, summarize
from .models import build_model
from .paths import cache_dir
from .provenance import machine, provenance, trained_on
from .runtime import cpu_threads, device_type, resolve_device
from .store import RunStore
from .train import TrainConfig, fit

# Bump when a change to ltlib changes what a run with the same specification computes (training loop,
# losses, methods, data selection, augmentation). Version 2: bf16 autocast on CPU, test split evaluated
# only at reported epochs, final evaluation from the kept weights.
TRAIN_VERSION = 2


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"
    imbalance: float = 10.0
    protocol: str = "ldam"
    shape: str = "exp"                 # long-tail shape: "exp" or "step"
    val_per_class: int | None = None   # None: the data set's default (25; digits 10)

    def identity(self) -> dict:
        return {"source": self.source, "imbalance": float(self.imbalance), "protocol": self.protocol,
                "shape": self.shape, "val_per_class": resolve_val_per_class(self.source, self.val_per_class)}


@dataclass(frozen=True)
class RunSpec:
    data: DataSpec
    model: str
    method: MethodRef
    train: TrainConfig
    seed: int = 0
    device: str = "cpu"
    cpu_threads: int = 1

    def identity(self) -> dict:
        device = device_type(self.device)
        identity = {"v": TRAIN_VERSION, "data": self.data.identity(), "model": self.model,
                    "method": {"name": self.method.name, "options": self.method.kwargs},
                    "train": self.train.identity(), "seed": int(self.seed), "device": device}
        if device == "cpu":
            identity["cpu_threads"] = int(self.cpu_threads)
        return identity

    def key(self) -> str:
        return sha256_hex(json.dumps(self.identity(), sort_keys=True, default=str))[:16]

    def describe(self) -> dict:
        """The full specification (defaults included), for the store entry and records."""
        return {"data": dataclasses.asdict(self.data), "model": self.model, "method": str(self.method),
                "train": dataclasses.asdict(self.train), "seed": self.seed, "device": self.device,
                "cpu_threads": self.cpu_threads}


@dataclass
class Entry:
    """A store entry and the specification it answers (a run or a stage)."""

    spec: object
    entry: dict
    trained_now: bool = False

    @property
    def key(self) -> str:
        return self.entry["key"]

    @property
    def result(self) -> dict:
        return self.entry["result"]


@dataclass
class Run(Entry):
    """A finished training run as its store entry holds it."""

    @property
    def history(self) -> list[dict]:
        return self.result["history"]

    @property
    def train_counts(self) -> list[int]:
        return self.result["train_counts"]

    @property
    def wall_s(self) -> float:
        return self.entry["provenance"]["wall_s"]

    def confusion(self, selected_on: str = "val") -> np.ndarray:
        return np.asarray(self.result["confusion"][selected_on])

    def records(self, thresholds: ShotThresholds | None = None, *, name: str | None = None) -> list[dict]:
        thresholds = thresholds or shot_thresholds(self.spec.data.source)
        return make_records(self.entry, name or str(self.spec.method), thresholds)

    def record(self, selected_on: str = "val", thresholds: ShotThresholds | None = None) -> dict:
        return next(r for r in self.records(thresholds) if r["selected_on"] == selected_on)


def make_records(entry: dict, name: str, thresholds: ShotThresholds) -> list[dict]:
    """One flat record per model selection (``val``, ``last``, and ``test`` where a stage keeps it)."""
    result, spec = entry["result"], entry["spec"]
    data = spec.get("data") or spec["parent"]["data"]
    common = {"method": name, "dataset": data["source"], "protocol": data["protocol"],
              "imbalance": float(data["imbalance"]), "seed": entry["seed"], "run_key": entry["key"],
              "kind": entry["kind"], "epochs": entry["epochs"], "wall_s": entry["provenance"]["wall_s"],
              "git_commit": entry["provenance"]["git_commit"], "device": trained_on(entry["provenance"]),
              "many_above": thresholds.many_above, "few_below": thresholds.few_below}
    records = []
    for selected_on, confusion in result["confusion"].items():
        records.append({**common, "selected_on": selected_on, "epoch_selected": result["selected"].get(selected_on),
                        **summarize(np.asarray(confusion), result["train_counts"], thresholds)})
    return records


@lru_cache(maxsize=4)
def cached_data(spec: DataSpec) -> LongTailedData:
    return load_long_tailed(spec.source, spec.imbalance, spec.protocol, shape=spec.shape,
                            val_per_class=spec.val_per_class)


def checkpoint_path(key: str) -> Path:
    return cache_dir() / "runs" / key / "checkpoint.pt"


def checkpoint_epoch(path: Path) -> int:
    """The last epoch a checkpoint file holds (-1 when there is none)."""
    from .train import load_checkpoint

    state = load_checkpoint(path, torch.device("cpu"))
    return -1 if state is None else int(state["epoch"])


def copy_checkpoint(source: Path, destination: Path) -> None:
    with open(source, "rb") as fh:
        atomic_write_bytes(destination, lambda out: shutil.copyfileobj(fh, out))


def epochs_trained(spec: RunSpec, store: RunStore) -> int:
    """Epochs a run has behind it before its entry exists: its cached or its parked checkpoint's, whichever is
    further (what ``run`` resumes after; 0 without a checkpoint)."""
    last = -1
    for path in (checkpoint_path(spec.key()), store.parked_path(spec.key())):
        try:
            last = max(last, checkpoint_epoch(path))
        except CorruptFileError:  # run() names the file and asks for it to be deleted: the run then starts over
            pass
    return last + 1


def unpark(key: str, store: RunStore) -> int | None:
    """Put the run's parked checkpoint (``store.parked_path``) into this machine's cache when it is further along
    than the cache's own; returns the epoch it resumes after, or None when the cache is kept."""
    parked = store.parked_path(key)
    if not parked.exists():
        return None
    epoch = checkpoint_epoch(parked)
    if epoch <= checkpoint_epoch(checkpoint_path(key)):
        return None
    copy_checkpoint(parked, checkpoint_path(key))
    return epoch


def is_final_checkpoint(state: dict | None, spec: RunSpec) -> bool:
    """Whether a loaded checkpoint state is the run's last epoch (not an interrupted training's)."""
    return state is not None and state.get("epoch") == spec.train.epochs - 1


def final_weights_cached(spec: RunSpec) -> bool:
    """Whether this machine's cache holds the run's last-epoch checkpoint (a stage on it then trains nothing); the
    checkpoint of an interrupted run, or one that does not load, does not count: the run would be trained on."""
    from .train import load_checkpoint

    try:
        state = load_checkpoint(checkpoint_path(spec.key()), torch.device("cpu"))
    except CorruptFileError:
        return False
    return is_final_checkpoint(state, spec)


def _round(values, digits: int = 4):
    return [None if v is None else round(float(v), digits) for v in values]


def _compact_history(history: list[dict]) -> list[dict]:
    """Per-epoch history with rounded numbers (a store entry stays small)."""
    out = []
    for h in history:
        row = {"epoch": h["epoch"], "lr": float(f"{h['lr']:.6g}"), "train_loss": round(h["train_loss"], 5),
               "train_acc": round(h["train_acc"], 3), "val_balanced": round(h["val_balanced"], 3),
               "val_per_class": _round(h["val_per_class"], 2), "class_weight": _round(h["class_weight"], 5)}
        if "test_top1" in h:
            row.update(test_top1=round(h["test_top1"], 3), test_balanced=round(h["test_balanced"], 3),
                       test_per_class=_round(h["test_per_class"], 2))
        out.append(row)
    return out


def train_entry(spec: RunSpec, *, progress: bool = True, checkpoint: Path | None = None,
                stop_after: int | None = None) -> dict:
    """Train ``spec`` (resuming from its checkpoint if one exists) and return its store entry.

    ``checkpoint``: another file than the run's cached checkpoint; ``stop_after``: train that many epochs only (the
    entry of a partial run, for checks: never stored).
    """
    data = cached_data(spec.data)
    key = spec.key()
    with cpu_threads(spec.cpu_threads if resolve_device(spec.device).type == "cpu" else None):
        torch.manual_seed(spec.seed)
        method = spec.method.build(data.train_counts)
        model = build_model(spec.model, data.num_classes, in_channels=data.train.images.shape[1], head=method.head)
        # the code that trains is the code loaded now: a commit or an edit made while the run trains is not its own
        prov = provenance(spec.device)
        started = time.perf_counter()
        result = fit(model, method, data, spec.train, device=spec.device, seed=spec.seed,
                     checkpoint=checkpoint or checkpoint_path(key), progress=progress, stop_after=stop_after,
                     machine=machine(prov))
        wall = result.wall_s if result.resumed_from is not None else time.perf_counter() - started
    method_log = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in e.items()
                   if k in ("epoch", "driver_loss", "meta_cross_entropy")} for e in result.method_log]
    return {"key": key, "kind": "train", "identity": spec.identity(), "spec": spec.describe(),
            "seed": spec.seed, "epochs": spec.train.epochs,
            "result": {"history": _compact_history(result.history), "train_counts": data.train_counts,
                       "class_names": data.class_names, "val_size": len(data.val), "test_size": len(data.test),
                       "selected": {"val": result.best_epoch, "last": result.history[-1]["epoch"]},
                       "confusion": {"val": result.confusion_best.tolist(), "last": result.confusion_last.tolist()},
                       "method_log": method_log},
            "provenance": {**prov, "wall_s": round(wall, 1), "resumed": result.resumed_from is not None,
                           # a resumed run: which epochs trained where (a parked run resumes on another machine)
                           **({"segments": result.segments} if result.resumed_from is not None else {})}}


def run(spec: RunSpec, store: RunStore, *, progress: bool = True, train: bool = True) -> Run:
    """The run of ``spec``: from ``store`` if it holds it, else trained now (``train=False``: raise instead)."""
    key = spec.key()
    entry = store.get(key)
    if entry is not None:
        return Run(spec, entry)
    if not train:
        raise LookupError(f"run {key} ({spec.method}, seed {spec.seed}) is not in {store.folder}; train it with "
                          f"`python -m ltlib sweep params/{store.profile}/*.yaml`")
    with store.run_lock(key):
        entry = store.get(key)  # another process may have finished it while this one waited
        if entry is not None:
            return Run(spec, entry)
        unpark(key, store)
        entry = train_entry(spec, progress=progress)
        store.put(entry)
    return Run(spec, store.get(key), trained_now=True)


def _training_trace(history: list[dict]) -> list:
    """What identifies a run's weights in its (compacted) history: per epoch the training loss and the balanced
    validation accuracy, and the last test top-1."""
    return [(h["epoch"], h["train_loss"], h["val_balanced"]) for h in history] + [history[-1].get("test_top1")]


def weights_origin(state: dict, entry: dict | None, retrained: bool) -> dict:
    """Whether a checkpoint's weights are those of the store entry of the same key: a run retrained on another CPU
    model or library version in bf16 ends elsewhere, and a stage computed on it describes the new weights."""
    last = state["history"][-1].get("test_top1")
    origin = {"retrained": retrained, "last_test_top1": None if last is None else round(float(last), 3)}
    if entry is not None:
        stored = entry["result"]["history"]
        origin["entry_last_test_top1"] = stored[-1].get("test_top1")
        origin["same_as_entry"] = _training_trace(_compact_history(state["history"])) == _training_trace(stored)
    return origin


def trained_state(spec: RunSpec, store: RunStore, device: str = "cpu", *, progress: bool = False) -> tuple[dict, dict]:
    """The run's final checkpoint state, from the cache or trained again when the cache lacks it, and its
    :func:`weights_origin`.

    A retrained run reproduces its store entry bit for bit on CPU with the same thread count and CPU model;
    a difference is warned about, and the origin says so, since a stage computed on the new weights does not
    describe the stored run.
    """
    from .train import load_checkpoint

    key = spec.key()
    path = checkpoint_path(key)
    state = load_checkpoint(path, torch.device(device))
    stored = store.get(key)
    retrained = not is_final_checkpoint(state, spec)
    if retrained:
        fresh = train_entry(spec, progress=progress)
        if stored is None:
            store.put(fresh)
        state = load_checkpoint(path, torch.device(device))
    origin = weights_origin(state, stored, retrained)
    if not origin.get("same_as_entry", True):
        warnings.warn(f"the weights of run {key} ({'retrained now' if retrained else 'cached checkpoint'}, last test "
                      f"top-1 {origin['last_test_top1']}) are not its store entry's ({origin['entry_last_test_top1']}; "
                      "another CPU model, thread count or library version? bf16 kernels differ between AMX and "
                      "AVX-512 BF16 CPUs: benchmarks/bf16_kernels.py finds the ONEDNN_MAX_CPU_ISA that reproduces a "
                      "run): stages use these weights and record it",
                      RuntimeWarning, stacklevel=2)
    return state, origin


def model_from_state(spec: RunSpec, state: dict, device: str = "cpu"):
    """The run's model (eval mode) with the checkpoint's final weights."""
    data = cached_data(spec.data)
    model = build_model(spec.model, data.num_classes, in_channels=data.train.images.shape[1], head=spec.method.head)
    model.load_state_dict(state["trainer"]["model"])
    return model.to(device).eval()
