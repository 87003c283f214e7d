"""Computing what the store lacks: in this process, in a local process pool, or as Ray tasks.

:func:`execute` takes plan entries (:class:`Planned`: a training run or a post-hoc stage, with its name and the part
of a notebook that uses it) and computes the ones the store lacks. A stage starts as soon as the run it depends on is
in the store (a missing parent is added). Workers compute and return store entries; this process writes them into the
store, so results made on any machine land in the same ``runs/<profile>/`` folder.

* local, one worker: in this process (what a notebook does by default);
* local, N workers: spawned processes, one thread each on CPU as the runs' identity says; on GPUs, workers are spread
  round-robin over the visible devices (several per GPU when N exceeds their number);
* Ray: tasks on a cluster (``address``; default a local instance), with fractional GPUs (``gpus_per_run``).

At most ``workers`` entries are in flight; a free slot goes to a stage whose run is ready before the next run, so
results reach the store as early as they can. ``admit`` (e.g. the sweep's time budget) is asked before an entry
starts: an entry it refuses, and the stages that start from it, are left for a later call, which finds them missing.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from .experiment import RunSpec, final_weights_cached
from .runtime import device_type
from .stages import StageSpec
from .store import RunStore


@dataclass(frozen=True)
class Planned:
    """One entry a notebook shows: the run or stage, its name in tables, and the part that uses it."""

    spec: RunSpec | StageSpec
    name: str
    role: str = "main"
    meta: tuple = ()

    @cached_property
    def key(self) -> str:
        return self.spec.key()

    @property
    def label(self) -> str:
        """``name seed N (key)``, as messages name an entry."""
        return f"{self.name} seed {getattr(self.spec, 'seed', '-')} ({self.key})"

    @property
    def is_stage(self) -> bool:
        return isinstance(self.spec, StageSpec)

    def info(self, name: str, default=None):
        return dict(self.meta).get(name, default)


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
        os.environ["CUDA_VISIBLE_DEVICES"] = worker_gpu(_GPU_SLOT, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def worker_gpu(slot: int, gpus: int, visible: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of worker ``slot``: one of the devices the sweep itself was given.

    Index i of the sweep's view is the i-th entry of its ``CUDA_VISIBLE_DEVICES`` (``4,5`` → GPUs 4 and 5, not 0
    and 1), so a worker's value is taken from that list; without one, devices are numbered from 0.
    """
    given = [d.strip() for d in (visible or "").split(",") if d.strip()]
    return given[slot % gpus] if len(given) >= gpus else str(slot % gpus)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def execute(items: list[Planned], store: RunStore, *, workers: int = 1, executor: str = "local",
            progress: bool = True, address: str | None = None, gpus_per_run: float = 0.0,
            cpus_per_run: int = 1, admit: Callable[[Planned], bool] | None = None) -> list[str]:
    """Compute every item the store lacks; returns the keys written. Stages wait for their parent runs.

    ``admit(item)`` is asked as each item is about to start; a refused item (and every stage that starts from it)
    is not computed: the store still lacks it afterwards, and a later call computes it.
    """
    todo = [p for p in _with_parents(items, store) if p.key not in store]
    if not todo:
        return []
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; choose 'local' or 'ray'")
    admit = admit or (lambda item: True)
    if executor == "local" and workers <= 1:
        return _execute_inline(todo, store, progress, admit)
    return _execute_pool(todo, store, workers=workers, executor=executor, progress=progress, address=address,
                         gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, admit=admit)


# Models small enough that emulated bf16 costs seconds (the quick profile's CNN on 8x8 digits, its precision check).
LIGHT_MODELS = frozenset({"small_cnn"})


def cpu_bf16_training(items: list[Planned], store: RunStore) -> list[str]:
    """The keys of the runs that ``items`` would train on CPU under bf16 autocast, other than of :data:`LIGHT_MODELS`:
    missing runs, and stored runs whose last-epoch checkpoint is not in this machine's cache when a missing stage
    needs their weights."""
    found: list[str] = []
    for item in items:
        spec = item.spec
        run = spec if isinstance(spec, RunSpec) else getattr(spec, "parent", None)
        if (not isinstance(run, RunSpec) or item.key in store or not run.train.amp or run.model in LIGHT_MODELS
                or device_type(run.device) != "cpu"):
            continue
        if isinstance(spec, StageSpec) and (run.key() not in store or final_weights_cached(run)):
            continue  # its run is trained as an item of its own, or its weights are here
        if run.key() not in found:
            found.append(run.key())
    return found


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", file=sys.stderr, ascii=True, ncols=100, mininterval=5,
                disable=not enabled, leave=False)


class SweepFailed(RuntimeError):
    """Some runs or stages raised; every other one was computed and written. ``failures``: (item, error) pairs."""

    def __init__(self, failures: list, written: list[str]):
        self.failures, self.written = failures, written
        lines = [f"  {item.label}: {type(error).__name__}: {error}" for item, error in failures]
        super().__init__(f"{len(failures)} of the sweep's entries failed ({len(written)} written); run the sweep "
                         "again to retry them (a training run resumes from its last checkpoint):\n" + "\n".join(lines))


def _report(bar, item: Planned, error: BaseException) -> None:
    bar.write(f"failed: {item.label}: {type(error).__name__}: {error}")


def _parent_in(stage: Planned, keys: set[str]) -> bool:
    """Whether the run a stage starts from is among `keys` (failed, or left by the budget)."""
    return isinstance(stage.spec.parent, RunSpec) and stage.spec.parent.key() in keys


def _chained(todo: list[Planned]) -> list[Planned]:
    """Runs in order, each followed by the stages that start from it, then the stages whose run the store holds:
    a stage then uses its run's checkpoint while it is fresh, and a budget that stops the sweep leaves no finished
    run's stages behind (its checkpoint lives only in this machine's cache)."""
    stages = [p for p in todo if p.is_stage]
    ordered: list[Planned] = []
    for run in [p for p in todo if not p.is_stage]:
        ordered.append(run)
        ordered += [p for p in stages if _parent_in(p, {run.key})]
    return ordered + [p for p in stages if p not in ordered]


def _execute_inline(todo: list[Planned], store: RunStore, progress: bool,
                    admit: Callable[[Planned], bool]) -> list[str]:
    from .experiment import run
    from .stages import run_stage

    written, failures, failed_keys, left_keys = [], [], set(), set()
    ordered = _chained(todo)
    with _bar(len(ordered), progress) as bar:
        for item in ordered:
            bar.set_postfix_str(f"{item.name} seed {getattr(item.spec, 'seed', '')}", refresh=False)
            if item.is_stage and _parent_in(item, failed_keys):
                failures.append((item, RuntimeError("the run it starts from failed")))
            elif (item.is_stage and _parent_in(item, left_keys)) or not admit(item):
                left_keys.add(item.key)
            else:
                try:
                    run_stage(item.spec, store) if item.is_stage else run(item.spec, store, progress=False)
                    written.append(item.key)
                except Exception as error:  # one failed run does not stop the others
                    _report(bar, item, error)
                    failures.append((item, error))
                    failed_keys.add(item.key)
            bar.update(1)
    if failures:
        raise SweepFailed(failures, written)
    return written


def _execute_pool(todo: list[Planned], store: RunStore, *, workers: int, executor: str, progress: bool,
                  address: str | None, gpus_per_run: float, cpus_per_run: int,
                  admit: Callable[[Planned], bool]) -> list[str]:
    pending_stages = [p for p in todo if p.is_stage]
    waiting_runs = [p for p in todo if not p.is_stage]
    written: list[str] = []
    failures: list = []
    failed_keys: set[str] = set()
    left_keys: set[str] = set()   # refused by ``admit``, or a stage of a refused run
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

            def fill() -> None:  # ready stages first: they are short and finish a result
                while len(in_flight) < workers:
                    for stage in [p for p in pending_stages if _parent_in(p, left_keys)]:
                        pending_stages.remove(stage)
                        left_keys.add(stage.key)
                        bar.update(1)
                    stage = next((p for p in pending_stages if _parent_ready(p, store)), None)
                    item = stage or (waiting_runs[0] if waiting_runs else None)
                    if item is None:
                        return
                    (pending_stages if stage is not None else waiting_runs).remove(item)
                    if admit(item):
                        launch(item)
                    else:
                        left_keys.add(item.key)
                        bar.update(1)

            fill()
            while in_flight:
                done = wait(list(in_flight))
                for handle, entries in done:
                    item = in_flight.pop(handle)
                    if isinstance(entries, BaseException):  # one failed run does not stop the others
                        _report(bar, item, entries)
                        failures.append((item, entries))
                        failed_keys.add(item.key)
                        entries = []
                    for entry in entries:
                        if entry["key"] not in store:
                            store.put(entry)
                            written.append(entry["key"])
                    bar.set_postfix_str(f"{item.name} seed {getattr(item.spec, 'seed', '')}", refresh=False)
                    bar.update(1)
                for stage in [p for p in pending_stages if _parent_in(p, failed_keys)]:
                    pending_stages.remove(stage)
                    failures.append((stage, RuntimeError("the run it starts from failed")))
                    bar.update(1)
                fill()
            if pending_stages:  # a parent not in this sweep's list: compute the stages here, training it if need be
                for stage in pending_stages:
                    for entry in _compute(stage.spec, store.profile, str(store.folder), {}):
                        store.put(entry)
                        written.append(entry["key"])
                    bar.update(1)
    finally:
        shutdown()
    if failures:
        raise SweepFailed(failures, written)
    return written


def _local_backend(workers: int):
    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                       initargs=(counter, _visible_gpus()))

    def submit(spec, profile, folder, handed):
        return pool.submit(_compute, spec, profile, folder, handed)

    def wait(handles):  # (handle, entries or the exception the run raised)
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        return [(h, h.exception() or h.result()) for h in done]

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

    def wait(handles):  # (handle, entries or the exception the run raised)
        done, _ = ray.wait(handles, num_returns=1)
        out = []
        for h in done:
            try:
                out.append((h, ray.get(h)))
            except Exception as error:
                out.append((h, error))
        return out

    def shutdown():
        if started_here:
            ray.shutdown()

    return submit, wait, shutdown
