"""The sweep runner: every run the notebooks of a profile need, trained where missing, in parallel.

``python -m ltlib sweep params/<profile>/*.yaml`` reads the notebooks' parameter files, builds each
notebook's plan (:mod:`ltlib.studies`), merges them (a run two notebooks share is trained once), prints
the list with a cost estimate (``--dry-run`` stops there) and computes what the store lacks:

* ``--executor local`` (default): ``--workers N`` processes on this machine (one thread each on CPU, as
  the runs' identity says; on GPUs, workers are spread round-robin over the visible devices, several per
  GPU if N exceeds their number); ``--workers 1`` runs in this process;
* ``--executor ray``: tasks on a Ray cluster (``--address``, default a local instance), with fractional
  GPUs (``--gpus-per-run 0.25``: four ResNet-32 runs share a GPU). Requires ``pip install ltlib[cluster]``.

Workers compute and return store entries; this process writes them into the store, so results made on
any machine land in the same ``runs/<profile>/`` folder, ready to commit. A stage starts as soon as the
run it depends on is in the store. Killing the sweep loses at most the runs in flight, and those resume
from their checkpoints on the next call.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .experiment import RunSpec
from .notebook import read_params_file
from .stages import StageSpec
from .store import RunStore
from .studies import Planned, config_class

# Training throughput, images per second, by (device type, model, bf16 autocast, CPU threads).
# CPU rows: measured on this project's 2-core CPU machine (AVX-512 BF16), ResNet-32 batch 128, channels-last,
# idle machine (benchmarks/throughput.py). CUDA rows are estimates (no GPU run yet): a ResNet-32 at batch 128
# moves ~45,000 img/s eager on an H100-class GPU (a 200-epoch CIFAR-10-LT run in about a minute).
THROUGHPUT = {
    ("cpu", "resnet32", False, 1): (226.0, "measured"), ("cpu", "resnet32", False, 2): (420.0, "measured"),
    ("cpu", "resnet32", True, 1): (438.0, "measured"), ("cpu", "resnet32", True, 2): (726.0, "measured"),
    ("cuda", "resnet32", False, None): (45000.0, "estimated"), ("cuda", "resnet32", True, None): (60000.0, "estimated"),
}
SMALL_MODEL_THROUGHPUT = (20000.0, "estimated")       # small CNN on 8x8 digits, CPU
METHOD_COST = {"difficulty_net": 3.8, "difficulty_net_as_released": 1.03}  # x a plain step (benchmarks/meta_step.py)
STAGE_SECONDS = {"cpu": 60.0, "cuda": 20.0}           # rough, per stage (classifier re-training, DLSA, analyses)


@dataclass
class Estimate:
    seconds: float
    basis: str    # "measured" or "estimated"


def _train_images(spec: RunSpec) -> int:
    from .data import class_counts, long_tailed_counts

    data = spec.data
    if data.source in ("cifar10", "cifar100", "cifar10-jpeg"):
        return sum(class_counts(data.source, data.imbalance, data.protocol, data.shape))
    if data.source == "mnist":
        return sum(long_tailed_counts(5400, 10, data.imbalance, data.shape))
    return sum(long_tailed_counts(130, 10, data.imbalance, data.shape))


def estimate(item: Planned) -> Estimate:
    """Seconds of one worker for ``item``, from the throughput table (its basis: measured or estimated)."""
    spec = item.spec
    if isinstance(spec, StageSpec):
        device = "cuda" if spec.device.startswith("cuda") else "cpu"
        return Estimate(STAGE_SECONDS[device], "estimated")
    device = "cuda" if spec.device.startswith("cuda") else "cpu"
    threads = min(spec.cpu_threads, 2) if device == "cpu" else None
    if spec.model == "resnet32":
        rate, basis = THROUGHPUT.get((device, "resnet32", spec.train.amp, threads), (300.0, "estimated"))
    else:
        rate, basis = SMALL_MODEL_THROUGHPUT
    images = _train_images(spec) * spec.train.epochs
    evaluation = 0.15 * images / rate  # validation every epoch + test at the reported epochs (~15 %)
    return Estimate(METHOD_COST.get(spec.method.name, 1.0) * images / rate + evaluation, basis)


def collect(paths: Iterable[str | Path], overrides: dict | None = None,
            only: Iterable[str] = ()) -> tuple[str, list[Planned]]:
    """The merged plan of the notebooks whose parameter files are ``paths`` (one profile).

    ``only``: keep the entries some notebook wants under a role or name containing one of these words (an entry
    two parts share, e.g. a run of the schedule study that is also a main run, is kept if either matches).
    """
    items: dict[str, Planned] = {}
    wanted: set[str] = set()
    words = [w for w in only if w]
    profiles = set()
    for path in map(Path, paths):
        values = read_params_file(path)
        profile = values.get("profile", path.parent.name)
        profiles.add(profile)
        config = config_class(path.stem).load(profile, overrides, params_dir=path.parent.parent)
        for item in config.plan():
            items.setdefault(item.key, item)
            if not words or any(w in item.role or w in item.name for w in words):
                wanted.add(item.key)
    if len(profiles) > 1:
        raise ValueError(f"a sweep covers one profile; these files are of {sorted(profiles)}")
    if not profiles:
        raise ValueError("no parameter files given")
    return profiles.pop(), [item for key, item in items.items() if key in wanted]


def _with_parents(items: list[Planned], store: RunStore) -> list[Planned]:
    """Add the runs that stages start from and that neither the store nor the list holds."""
    keys = {p.key for p in items}
    extra = []
    for item in items:
        if item.is_stage and isinstance(item.spec.parent, RunSpec):
            parent = item.spec.parent
            if parent.key() not in keys and parent.key() not in store:
                extra.append(Planned(parent, str(parent.method), "parent"))
                keys.add(parent.key())
    return extra + items


def _parent_ready(item: Planned, store: RunStore) -> bool:
    return not isinstance(item.spec.parent, RunSpec) or item.spec.parent.key() in store


class _DetachedStore(RunStore):
    """A worker's view of the store: reads the folder (and entries handed over), keeps what it writes."""

    def __init__(self, profile: str, root: str, handed: dict[str, dict]):
        super().__init__(profile, Path(root).parent)
        self.handed, self.written = dict(handed), []

    def __contains__(self, key: str) -> bool:
        return key in self.handed or super().__contains__(key)

    def get(self, key: str):
        return self.handed.get(key) or super().get(key)

    def put(self, entry: dict) -> Path:
        from .store import FORMAT, checksum

        entry = {**entry, "format": FORMAT}
        entry["checksum"] = checksum(entry)
        self.handed[entry["key"]] = entry
        self.written.append(entry)
        return self.path(entry["key"])


def _compute(spec, profile: str, folder: str, handed: dict) -> list[dict]:
    """In a worker: compute ``spec`` (a run or a stage) and return the store entries it made."""
    from .experiment import run
    from .stages import run_stage

    store = _DetachedStore(profile, folder, handed)
    if isinstance(spec, StageSpec):
        run_stage(spec, store)
    else:
        run(spec, store, progress=False)
    return store.written


_GPU_SLOT = None


def _init_worker(counter, gpus: int) -> None:
    """Give each local worker one visible GPU, round-robin, before torch initialises CUDA."""
    global _GPU_SLOT
    with counter.get_lock():
        _GPU_SLOT = counter.value
        counter.value += 1
    if gpus > 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(_GPU_SLOT % gpus)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def execute(items: list[Planned], store: RunStore, *, workers: int = 1, executor: str = "local",
            progress: bool = True, address: str | None = None, gpus_per_run: float = 0.0,
            cpus_per_run: int = 1) -> list[str]:
    """Compute every item the store lacks; returns the keys written. Stages wait for their parent runs."""
    todo = [p for p in _with_parents(items, store) if p.key not in store]
    if not todo:
        return []
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; choose 'local' or 'ray'")
    if executor == "local" and workers <= 1:
        return _execute_inline(todo, store, progress)
    return _execute_pool(todo, store, workers=workers, executor=executor, progress=progress, address=address,
                         gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run)


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", file=sys.stderr, ascii=True, ncols=100, mininterval=5,
                disable=not enabled, leave=False)


def _execute_inline(todo: list[Planned], store: RunStore, progress: bool) -> list[str]:
    from .experiment import run
    from .stages import run_stage

    written = []
    ordered = [p for p in todo if not p.is_stage] + [p for p in todo if p.is_stage]
    with _bar(len(ordered), progress) as bar:
        for item in ordered:
            bar.set_postfix_str(f"{item.name} seed {getattr(item.spec, 'seed', '')}", refresh=False)
            run_stage(item.spec, store) if item.is_stage else run(item.spec, store, progress=False)
            written.append(item.key)
            bar.update(1)
    return written


def _execute_pool(todo: list[Planned], store: RunStore, *, workers: int, executor: str, progress: bool,
                  address: str | None, gpus_per_run: float, cpus_per_run: int) -> list[str]:
    pending_stages = [p for p in todo if p.is_stage]
    ready = [p for p in todo if not p.is_stage]
    written: list[str] = []
    if executor == "ray":
        submit, wait, shutdown = _ray_backend(workers, address, gpus_per_run, cpus_per_run)
    else:
        submit, wait, shutdown = _local_backend(workers)
    in_flight: dict = {}
    try:
        with _bar(len(todo), progress) as bar:
            def launch(item: Planned) -> None:
                handed = {}
                if item.is_stage and isinstance(item.spec.parent, RunSpec):
                    parent = store.get(item.spec.parent.key())
                    if parent is not None:
                        handed[parent["key"]] = parent
                in_flight[submit(item.spec, store.profile, str(store.folder), handed)] = item

            for item in ready:
                launch(item)
            for item in [p for p in pending_stages if _parent_ready(p, store)]:
                pending_stages.remove(item)
                launch(item)
            while in_flight:
                done = wait(list(in_flight))
                for handle, entries in done:
                    item = in_flight.pop(handle)
                    for entry in entries:
                        if entry["key"] not in store:
                            store.put(entry)
                            written.append(entry["key"])
                    bar.set_postfix_str(f"{item.name} seed {getattr(item.spec, 'seed', '')}", refresh=False)
                    bar.update(1)
                for stage in [p for p in pending_stages if _parent_ready(p, store)]:
                    pending_stages.remove(stage)
                    launch(stage)
            if pending_stages:  # a parent failed to appear: compute the stages here, training it if need be
                for stage in pending_stages:
                    for entry in _compute(stage.spec, store.profile, str(store.folder), {}):
                        store.put(entry)
                        written.append(entry["key"])
                    bar.update(1)
    finally:
        shutdown()
    return written


def _local_backend(workers: int):
    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                       initargs=(counter, _visible_gpus()))

    def submit(spec, profile, folder, handed):
        return pool.submit(_compute, spec, profile, folder, handed)

    def wait(handles):
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    return submit, wait, lambda: pool.shutdown(wait=True, cancel_futures=True)


def _ray_backend(workers: int, address: str | None, gpus_per_run: float, cpus_per_run: int):
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray executor needs Ray: pip install 'ltlib[cluster]' (or pip install ray)") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": max(workers * cpus_per_run, 1)}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    options = {"num_cpus": cpus_per_run}
    if gpus_per_run:
        options["num_gpus"] = gpus_per_run
    remote = ray.remote(**options)(_compute)

    def submit(spec, profile, folder, handed):
        return remote.remote(spec, profile, folder, handed)

    def wait(handles):
        done, _ = ray.wait(handles, num_returns=1)
        return [(h, ray.get(h)) for h in done]

    def shutdown():
        if started_here:
            ray.shutdown()

    return submit, wait, shutdown


def describe(items: list[Planned], store: RunStore) -> str:
    """The sweep's list: one line per run or stage, with its state and estimated cost, and the totals."""
    lines, total, missing_total, bases = [], 0.0, 0.0, set()
    for item in items:
        spec = item.spec
        cost = estimate(item)
        total += cost.seconds
        there = item.key in store
        if not there:
            missing_total += cost.seconds
        bases.add(cost.basis)
        if isinstance(spec, StageSpec):
            what = f"stage {spec.kind:<15} on {spec.parent.key()}"
        else:
            what = (f"{spec.data.source}/IF{spec.data.imbalance:g} {spec.model} {spec.train.epochs:>3} ep "
                    f"{'bf16' if spec.train.amp else 'fp32'}")
        lines.append(f"{'done ' if there else 'to do'}  {item.key}  {item.role:<14} {item.name:<34} "
                     f"seed {getattr(spec, 'seed', '-'):<2} {what}  ~{cost.seconds / 60:.1f} min ({cost.basis})")
    done = sum(p.key in store for p in items)
    lines.append(f"{len(items)} entries: {done} in {store.folder}, {len(items) - done} to compute; estimated "
                 f"{missing_total / 3600:.2f} h of one worker for what is missing ({total / 3600:.2f} h in all; "
                 f"{' and '.join(sorted(bases))} throughput)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    from .notebook import parse_value

    parser = argparse.ArgumentParser(prog="python -m ltlib sweep", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="params/<profile>/<notebook>.yaml files (one profile)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their cost; train nothing")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (local processes or Ray tasks)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPU fraction per run (e.g. 0.25)")
    parser.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs reserved per run")
    parser.add_argument("--only", default=None, help="only entries whose role or name contains one of these "
                        "comma-separated words (e.g. schedule,precision)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter in every file (as papermill -p)")
    args = parser.parse_args(argv)
    overrides = {name: parse_value(value) for name, value in args.p}
    profile, items = collect(args.files, overrides or None, (args.only or "").split(","))
    store = RunStore(profile)
    print(describe(items, store), flush=True)
    if args.dry_run:
        return 0
    started = time.perf_counter()
    written = execute(items, store, workers=args.workers, executor=args.executor, address=args.address,
                      gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run)
    print(f"wrote {len(written)} entries to {store.folder} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0
