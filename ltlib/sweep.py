"""The sweep runner: every run the notebooks of a profile need, trained where missing, in parallel (``ltlib.executor``).

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
from their checkpoints on the next call (on the same machine: checkpoints live in the cache, not the store).
A run longer than a sitting moves between machines with ``--park``: it copies the cached checkpoints of the
sweep's unfinished runs to ``runs/<profile>/in-progress/`` (git-ignored: weights travel beside the repository,
e.g. with rsync); a sweep elsewhere resumes from them
and the entry, once written, replaces its parked checkpoint.
A stage on a stored run whose checkpoint is not in this machine's cache trains the run again first; its
estimate counts that training.

``--hours H`` fits a sweep into a time slot (a batch job's limit, a working session): an entry starts only if
its estimate says it ends within H hours of the sweep's start; the runs in flight finish, the entries left are
listed and the sweep exits with status 3, so a later sweep picks them up from the committed store. Once runs of
the sweep have finished, estimates are scaled by their measured wall time over their estimate (the throughput
table is one machine's).

bf16 autocast (``amp: true``, the cpu-real profile) is fast only on CPUs with bf16 instructions (AVX-512 BF16, AMX);
elsewhere PyTorch emulates it, an order of magnitude slower than fp32. There the estimates say so, and the sweep
refuses to train such ResNet runs (exit 2, naming the ways out) unless ``--allow-emulated-bf16`` is given; a notebook
that trains them itself warns and goes on.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .executor import Planned, SweepFailed, cpu_bf16_training, execute
from .experiment import (RunSpec, checkpoint_epoch, checkpoint_path, copy_checkpoint, epochs_trained,
                         final_weights_cached)
from .notebook import ParameterError, read_params_file
from .runtime import ALLOW_EMULATED_BF16, EMULATED_BF16_SLOWDOWN, cpu_emulates_bf16, emulated_bf16_problem
from .stages import StageSpec
from .store import RunStore
from .studies import config_class

# Training throughput, images per second, by (device type, model, bf16 autocast, CPU threads).
# CPU rows: measured on this project's 2-core CPU machine (AVX-512 BF16), ResNet-32 batch 128, channels-last,
# idle machine (benchmarks/throughput.py). CUDA rows are estimates (no GPU run yet): a ResNet-32 at batch 128
# moves ~45,000 img/s eager on an H100-class GPU (a 200-epoch CIFAR-10-LT run in about a minute).
THROUGHPUT = {
    ("cpu", "resnet32", False, 1): (247.0, "measured"), ("cpu", "resnet32", False, 2): (441.0, "measured"),
    ("cpu", "resnet32", True, 1): (478.0, "measured"), ("cpu", "resnet32", True, 2): (788.0, "measured"),
    ("cuda", "resnet32", False, None): (45000.0, "estimated"), ("cuda", "resnet32", True, None): (60000.0, "estimated"),
}
SMALL_MODEL_THROUGHPUT = (20000.0, "estimated")       # small CNN on 8x8 digits, CPU
# A step of these methods in plain steps, by (batch size, bf16 autocast): benchmarks/meta_step.py, CPU, ResNet-32, meta
# batch 100 (results/benchmarks/meta_step-*.json; a test keeps the two in step). The meta batch does not shrink with
# the training batch and the forward-mode derivative stays in float32, so cpu-real's batch 32 under bf16 costs more.
# Timed on an idle machine: timed beside other jobs the batch-32 ratio came out 6.33 and the sweep under-planned.
METHOD_COST = {
    "difficulty_net": {(128, False): 3.82, (32, True): 7.56},
    "difficulty_net_as_released": {(128, False): 1.03, (32, True): 1.03},
}


def method_cost(name: str, batch_size: int, amp: bool) -> float:
    """Plain steps per step of ``name``: the measurement of the same precision and the nearest batch size."""
    table = METHOD_COST.get(name)
    if not table:
        return 1.0
    candidates = [key for key in table if key[1] == amp] or list(table)
    return table[min(candidates, key=lambda key: abs(math.log(key[0] / batch_size)))]
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


def weights_missing(spec: StageSpec) -> bool:
    """Whether a stage on a training run finds no last-epoch checkpoint of it in this machine's cache, and so trains
    it (again, or on from where an interrupted training stopped)."""
    return isinstance(spec.parent, RunSpec) and not final_weights_cached(spec.parent)


def estimate(item: Planned, retrains: bool | None = None, epochs_done: int = 0) -> Estimate:
    """Seconds of one worker for ``item``, from the throughput table (its basis: measured or estimated).

    A stage whose backbone's checkpoint is not in the cache costs the backbone's training as well (``retrains``:
    None looks in the cache now). A run that resumes after ``epochs_done`` epochs costs the epochs left.
    """
    spec = item.spec
    if isinstance(spec, StageSpec):
        device = "cuda" if spec.device.startswith("cuda") else "cpu"
        if retrains if retrains is not None else weights_missing(spec):
            backbone = estimate(Planned(spec.parent, "backbone"))
            return Estimate(STAGE_SECONDS[device] + backbone.seconds, backbone.basis)
        return Estimate(STAGE_SECONDS[device], "estimated")
    device = "cuda" if spec.device.startswith("cuda") else "cpu"
    threads = min(spec.cpu_threads, 2) if device == "cpu" else None
    if spec.model == "resnet32":
        emulated = device == "cpu" and spec.train.amp and cpu_emulates_bf16()
        rate, basis = THROUGHPUT.get((device, "resnet32", spec.train.amp and not emulated, threads),
                                     (300.0, "estimated"))
        rate /= EMULATED_BF16_SLOWDOWN if emulated else 1.0
    else:
        rate, basis = SMALL_MODEL_THROUGHPUT
    images = _train_images(spec) * (spec.train.epochs - min(epochs_done, spec.train.epochs))
    evaluation = 0.15 * images / rate  # validation every epoch + test at the reported epochs (~15 %)
    cost = method_cost(spec.method.name, spec.train.batch_size, spec.train.amp)
    return Estimate(cost * images / rate + evaluation, basis)


def collect(paths: Iterable[str | Path], overrides: dict | None = None,
            only: Iterable[str] = ()) -> tuple[str, list[Planned]]:
    """The merged plan of the notebooks whose parameter files are ``paths`` (one profile).

    ``overrides``: parameter values for every file whose notebook declares the name; a name none declares is refused.

    ``only``: keep the entries some notebook wants under a role or name containing one of these words (an entry
    two parts share, e.g. a run of the schedule study that is also a main run, is kept if either matches).
    """
    items: dict[str, Planned] = {}
    wanted: set[str] = set()
    words = [w for w in only if w]
    profiles = set()
    overrides = overrides or {}
    declared: set[str] = set()
    for path in map(Path, paths):
        values = read_params_file(path)
        profile = values.get("profile", path.parent.name)
        profiles.add(profile)
        cls = config_class(path.stem)
        names = set(cls.names())
        declared |= names  # an override applies where declared: `-p seeds "[0]"` over *.yaml leaves 00 and 06 alone
        config = cls.load(profile, {k: v for k, v in overrides.items() if k in names}, params_dir=path.parent.parent)
        for item in config.plan():
            items.setdefault(item.key, item)
            if not words or any(w in item.role or w in item.name for w in words):
                wanted.add(item.key)
    if len(profiles) > 1:
        raise ValueError(f"a sweep covers one profile; these files are of {sorted(profiles)}")
    if not profiles:
        raise ValueError("no parameter files given")
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} given with -p: no notebook of these files declares "
                             f"them; theirs are {sorted(declared)}")
    return profiles.pop(), [item for key, item in items.items() if key in wanted]


def describe(items: list[Planned], store: RunStore) -> str:
    """The sweep's list: one line per run or stage, with its state and estimated cost (what is left of a run that
    resumes from a checkpoint), and the totals."""
    lines, total, missing_total, bases = [], 0.0, 0.0, set()
    retrained: set[str] = set()  # stored backbones without weights here: the first stage on each trains it again
    for item in items:
        spec = item.spec
        retrains = (isinstance(spec, StageSpec) and item.key not in store and spec.parent.key() in store
                    and spec.parent.key() not in retrained and weights_missing(spec))
        if retrains:
            retrained.add(spec.parent.key())
        there = item.key in store
        resumes = 0 if there or isinstance(spec, StageSpec) else epochs_trained(spec, store)
        cost = estimate(item, retrains, resumes)
        total += cost.seconds
        if not there:
            missing_total += cost.seconds
        bases.add(cost.basis)
        seed = getattr(spec, "seed", "-")
        if isinstance(spec, StageSpec):
            # the seed column names the run a stage starts from; the stage's own seed follows its kind
            seed = getattr(spec.parent, "seed", "-")
            what = f"stage {spec.kind + f' (own seed {spec.seed})':<24} on {spec.parent.key()}" + (
                " (trains it again: no weights here)" if retrains else "")
        else:
            what = (f"{spec.data.source}/IF{spec.data.imbalance:g} {spec.model} {spec.train.epochs:>3} ep "
                    f"{'bf16' if spec.train.amp else 'fp32'}" + (f" (resumes after epoch {resumes})" if resumes else ""))
        lines.append(f"{'done ' if there else 'to do'}  {item.key}  {item.role:<14} {item.name:<34} "
                     f"seed {seed:<2} {what}  ~{cost.seconds / 60:.1f} min ({cost.basis})")
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
    parser.add_argument("--allow-emulated-bf16", action="store_true", help="train bf16-autocast runs on a CPU "
                        f"without bf16 instructions (~{EMULATED_BF16_SLOWDOWN:g}x slower than fp32) instead of "
                        f"refusing; the same as {ALLOW_EMULATED_BF16}=1")
    parser.add_argument("--park", action="store_true", help="train nothing: copy the cached checkpoints of the "
                        "sweep's unfinished runs to runs/<profile>/in-progress/ (copy that folder to the next "
                        "machine: a sweep there resumes from it, and each file is removed when its entry is written)")
    parser.add_argument("--hours", type=float, default=None, help="start only entries whose estimate ends within "
                        "this many hours of the sweep's start; exit 3 listing the ones left")
    args = parser.parse_args(argv)
    if args.hours is not None and args.hours <= 0:
        parser.error(f"--hours must be a positive number of hours, not {args.hours:g}")
    absent = [name for name in args.files if not Path(name).is_file()]
    if absent:
        parser.error(f"no parameter file {', '.join(absent)}: give params/<profile>/<notebook>.yaml files")
    try:
        overrides = {name: parse_value(value) for name, value in args.p}
        profile, items = collect(args.files, overrides or None, (args.only or "").split(","))
    except (ParameterError, ValueError) as error:  # a bad file or override: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    store = RunStore(profile)
    print(describe(items, store), flush=True)
    emulated = cpu_bf16_training(items, store) if cpu_emulates_bf16() else []
    # Ray tasks run on other machines' CPUs
    problem = None if args.allow_emulated_bf16 or args.executor != "local" else emulated_bf16_problem(len(emulated))
    if emulated:
        print(f"this CPU has no bf16 instructions: {len(emulated)} run(s) would train under emulated bf16 autocast, "
              f"~{EMULATED_BF16_SLOWDOWN:g}x slower than fp32 (their estimates count it)"
              + ("; the sweep refuses them unless --allow-emulated-bf16 is given" if problem else ""), flush=True)
    if args.dry_run:
        return 0
    if args.park:
        print(park(items, store))
        return 0
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    items = longest_first(items)
    there = {item.key for item in items if item.key in store}
    try:
        written = execute(items, store, workers=args.workers, executor=args.executor, address=args.address,
                          gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                          admit=None if args.hours is None else
                          within(args.hours, started, lambda: observed_scale(items, store, there)))
    except SweepFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} entries to {store.folder} in {(time.perf_counter() - started) / 60:.1f} min")
    left = [item for item in items if item.key not in store]
    if left:
        hours = sum(estimate(item).seconds for item in left) / 3600
        print(f"left for a later sweep (past the {args.hours:g} h budget): {len(left)} entries, ~{hours:.2f} h of one "
              "worker:\n" + "\n".join(f"  {item.label}" for item in left))
        return 3
    return 0


def park(items: Iterable[Planned], store: RunStore) -> str:
    """Copy the cache's checkpoints of the training runs in ``items`` that are not in ``store`` to
    ``store.parked_path`` where they are further along than what is parked there; returns what was done."""
    lines = []
    for item in items:
        if item.is_stage or item.key in store:
            continue
        cached, parked = checkpoint_path(item.key), store.parked_path(item.key)
        epoch = checkpoint_epoch(cached)
        if epoch < 0:
            continue
        of = f"epoch {epoch + 1} of {item.spec.train.epochs}"
        if epoch <= checkpoint_epoch(parked):
            lines.append(f"kept    {item.label}: the parked checkpoint is as far ({of})")
            continue
        copy_checkpoint(cached, parked)
        lines.append(f"parked  {item.label}: {of}, {parked.stat().st_size / 2**20:.1f} MiB")
    if not lines:
        return "nothing to park: no unfinished run of this sweep has a checkpoint in this machine's cache"
    return "\n".join(lines + [f"copy {store.folder / 'in-progress'} to the machine that goes on (it is not committed)"])


def longest_first(items: list[Planned]) -> list[Planned]:
    """Runs by the length of their chain (the run and the stages that wait for it), longest first: with several
    workers the sweep then ends soonest, and under ``--hours`` what is left is what no result waits for."""
    waiting: dict[str, float] = {}
    for item in items:
        if item.is_stage and isinstance(item.spec.parent, RunSpec):
            parent = item.spec.parent.key()
            waiting[parent] = waiting.get(parent, 0.0) + estimate(item).seconds
    return sorted(items, key=lambda p: -(estimate(p).seconds + waiting.get(p.key, 0.0)))


def observed_scale(items: Iterable[Planned], store: RunStore, before: set[str]) -> float:
    """Measured wall time over estimate of the training runs in ``items`` that reached the store since ``before``
    was taken (1 when none has): the throughput table is one machine's, and this one may be slower or faster."""
    finished = [p for p in items if not p.is_stage and p.key not in before and p.key in store]
    if not finished:
        return 1.0
    wall = sum(store.get(p.key)["provenance"]["wall_s"] for p in finished)
    return wall / sum(estimate(p).seconds for p in finished)


def within(hours: float, started: float, scale=lambda: 1.0):
    """``admit`` for :func:`~ltlib.executor.execute`: the item's estimate, times ``scale()`` (e.g. the
    :func:`observed_scale` of the runs finished so far), ends within ``hours`` of ``started``."""
    def admit(item: Planned) -> bool:
        return time.perf_counter() - started + scale() * estimate(item).seconds <= hours * 3600
    return admit
