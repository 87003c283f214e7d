"""The sweep runner: the same store entries through a notebook's path, a local process pool and Ray."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ltlib.paths import ROOT
from ltlib.stages import StageSpec
from ltlib.store import RunStore
from ltlib.studies import BaselinesNotebook, DifficultyNetNotebook, Study, config_class
from ltlib.executor import execute
from ltlib.sweep import collect, describe, estimate


def small_configs():
    baselines = BaselinesNotebook.load("quick", {"methods": ["ce", "balanced_softmax"], "seeds": [0],
                                                 "schedule_epochs": [], "precision_epochs": 0, "epochs": 3,
                                                 "milestones": [2], "drw_epoch": 2})
    difficulty = DifficultyNetNotebook.load("quick", {"methods": ["ce"], "seeds": [0], "epochs": 3, "milestones": [2],
                                                      "stage2_epochs": 2})
    return [baselines, difficulty]


def results_of(store: RunStore) -> dict:
    return {key: store.get(key)["result"] for key in store.keys()}


def test_pool_and_ray_sweeps_write_what_notebook_execution_writes(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    configs = small_configs()
    items = [item for config in configs for item in config.plan()]
    stores = {}
    for name in ("notebook", "pool", "ray"):
        monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / f"cache-{name}"))  # no checkpoint is shared between paths
        store = stores[name] = RunStore("quick", tmp_path / name)
        if name == "notebook":
            for config in configs:
                Study(config, store).ensure(workers=1, progress=False)
        else:
            execute(items, store, workers=2, executor="local" if name == "pool" else "ray", progress=False)
    assert len(stores["notebook"].keys()) == len({item.key for item in items}) == 4  # 3 runs (ce shared) + 1 stage
    reference = results_of(stores["notebook"])
    assert results_of(stores["pool"]) == reference
    assert results_of(stores["ray"]) == reference


def test_a_sweep_skips_what_the_store_holds(tmp_path):
    config = small_configs()[0]
    store = RunStore("quick", tmp_path)
    first = execute(config.plan(), store, progress=False)
    assert len(first) == 2
    assert execute(config.plan(), store, progress=False) == []


def test_a_stage_whose_parent_is_missing_trains_the_parent_first(tmp_path):
    stage = [p for p in small_configs()[1].plan() if p.is_stage]
    store = RunStore("quick", tmp_path)
    written = execute(stage, store, progress=False)
    assert set(written) == {stage[0].key, stage[0].spec.parent.key()}


def test_the_dry_run_lists_every_run_with_a_cost_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "ltlib", "sweep", *sorted(map(str, (ROOT / "params" / "cpu-real").glob("0[1-5]*.yaml"))),
                          "--dry-run"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    profile, items = collect(sorted((ROOT / "params" / "cpu-real").glob("0[1-5]*.yaml")))
    assert profile == "cpu-real"
    assert out.count("to do") == len(items) and "h of one worker" in out
    assert all(estimate(p).seconds > 0 for p in items)
    keys = [p.key for p in items]
    assert len(keys) == len(set(keys))  # a run two notebooks share is listed once
    # a stage's line names the seed of the run it starts from, not only its own (always 0 here)
    lines = {line.split()[2]: line for line in out.splitlines() if line.startswith("to do")}
    stages = [p for p in items if isinstance(p.spec, StageSpec) and hasattr(p.spec.parent, "seed")]
    assert {p.spec.parent.seed for p in stages} == {0, 1, 2}
    for p in stages:
        assert f" seed {p.spec.parent.seed} " in lines[p.key] and f"(own seed {p.spec.seed})" in lines[p.key]


@pytest.mark.parametrize("visible,expected", [(None, ["0", "1", "0"]), ("4,5", ["4", "5", "4"]),
                                              ("GPU-a1, GPU-b2", ["GPU-a1", "GPU-b2", "GPU-a1"])])
def test_sweep_workers_are_spread_over_the_gpus_the_sweep_was_given(visible, expected):
    from ltlib.executor import worker_gpu

    assert [worker_gpu(slot, 2, visible) for slot in range(3)] == expected


def test_an_override_applies_to_the_files_that_declare_it_and_a_name_none_declares_is_refused():
    from ltlib.notebook import ParameterError

    files = sorted((ROOT / "params" / "cpu-real").glob("*.yaml"))
    assert any(not hasattr(config_class(f.stem).load("cpu-real"), "seeds") for f in files)  # 00 and 06 have none
    _, items = collect(files, {"seeds": [1]})
    runs = [p.spec for p in items if p.role == "main"]  # the schedule and precision studies have their own seeds
    assert runs and {spec.seed for spec in runs} == {1}
    with pytest.raises(ParameterError, match="sedes.*no notebook of these files"):
        collect(files, {"sedes": [1]})


def test_a_sweep_covers_one_profile():
    with pytest.raises(ValueError, match="one profile"):
        collect([ROOT / "params" / "quick" / "01_baselines.yaml", ROOT / "params" / "cpu-real" / "01_baselines.yaml"])


def test_describe_marks_what_is_done(tmp_path):
    config = small_configs()[0]
    store = RunStore("quick", tmp_path)
    execute(config.plan()[:1], store, progress=False)
    text = describe(config.plan(), store)
    assert text.count("done ") == 1 and text.count("to do") == 1


@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "pool"])
def test_a_failing_run_is_named_and_the_others_are_still_written(tmp_path, monkeypatch, workers):
    from ltlib.executor import SweepFailed

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    good = BaselinesNotebook.load("quick", {"methods": ["ce"], "seeds": [0], "schedule_epochs": [],
                                            "precision_epochs": 0, "epochs": 2, "milestones": [1]})
    diverging = BaselinesNotebook.load("quick", {"methods": ["focal"], "seeds": [0], "schedule_epochs": [],
                                                 "precision_epochs": 0, "epochs": 2, "milestones": [1], "lr": 1e30,
                                                 "warmup_epochs": 0})
    store = RunStore("quick", tmp_path / "runs")
    bad = diverging.plan()[0]
    with pytest.raises(SweepFailed) as failed:
        execute(diverging.plan() + good.plan(), store, workers=workers, progress=False)
    assert [item.key for item, _ in failed.value.failures] == [bad.key] and bad.key in str(failed.value)
    assert all(item.key in store for item in good.plan()) and bad.key not in store


@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "pool"])
def test_an_entry_refused_by_admit_is_left_with_its_stages_for_a_later_call(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    baselines, difficulty = small_configs()
    plan = difficulty.plan() + [p for p in baselines.plan() if p.name == "balanced_softmax"]
    refused = next(p for p in plan if not p.is_stage and p.name == "ce")
    stage = next(p for p in plan if p.is_stage)
    assert stage.spec.parent.key() == refused.key
    store = RunStore("quick", tmp_path / "runs")
    asked = []
    written = execute(plan, store, workers=workers, progress=False,
                      admit=lambda item: asked.append(item.key) or item.key != refused.key)
    assert written == [p.key for p in plan if p.name == "balanced_softmax"]
    assert refused.key not in store and stage.key not in store and refused.key in asked
    assert set(execute(plan, store, workers=workers, progress=False)) == {refused.key, stage.key}


def test_inline_execution_runs_a_runs_stages_before_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    baselines, difficulty = small_configs()
    run, *stages = difficulty.plan()
    other = next(p for p in baselines.plan() if p.name == "balanced_softmax")
    assert not run.is_stage and stages and all(p.spec.parent.key() == run.key for p in stages)
    asked = []
    execute([run, other, *stages], RunStore("quick", tmp_path / "runs"), workers=1, progress=False,
            admit=lambda item: asked.append(item.key) or item.key == run.key)
    assert asked == [run.key, *(p.key for p in stages), other.key]


def test_a_sweep_past_its_time_budget_lists_what_is_left_and_exits_3(tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path))
    params = str(ROOT / "params" / "quick" / "01_baselines.yaml")
    done = subprocess.run([sys.executable, "-m", "ltlib", "sweep", params, "--hours", "1e-9"],
                          capture_output=True, text=True, cwd=ROOT)
    _, items = collect([params])
    assert done.returncode == 3, done.stderr
    assert f"left for a later sweep (past the 1e-09 h budget): {len(items)} entries" in done.stdout
    assert all(item.key in done.stdout for item in items) and not list(tmp_path.rglob("*.json"))
    refused = subprocess.run([sys.executable, "-m", "ltlib", "sweep", params, "--hours", "0"],
                             capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "--hours must be a positive number of hours" in refused.stderr


def test_runs_that_stages_wait_for_start_before_equally_long_runs_nothing_waits_for():
    from ltlib.sweep import longest_first

    params = ROOT / "params" / "cpu-real"
    _, baselines = collect([params / "01_baselines.yaml"], {"methods": ["ldam_drw", "balanced_softmax"], "seeds": [1]})
    _, dlsa = collect([params / "04_dlsa.yaml"], {"methods": ["balanced_softmax"], "seeds": [1]})
    items = [p for p in baselines if p.role == "main"] + [p for p in dlsa if p.is_stage]
    runs = [p.name for p in longest_first(items) if not p.is_stage]
    assert runs == ["balanced_softmax", "ldam_drw"]  # the same estimate; DLSA's stages wait for balanced_softmax


def test_the_time_budget_scales_estimates_by_the_runs_this_sweep_finished(tmp_path, monkeypatch):
    import time

    from ltlib.sweep import observed_scale, within

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    plan = [p for p in small_configs()[0].plan() if p.role == "main"]
    first, second = plan
    store = RunStore("quick", tmp_path / "runs")
    assert observed_scale(plan, store, set()) == 1.0
    execute([first], store, progress=False)
    scale = observed_scale(plan, store, set())
    assert scale == pytest.approx(store.get(first.key)["provenance"]["wall_s"] / estimate(first).seconds)
    assert observed_scale(plan, store, {first.key}) == 1.0  # runs that were there before the sweep do not count
    budget = 60 * estimate(second).seconds  # fits unscaled; not at 100 times the estimate
    assert within(budget / 3600, time.perf_counter())(second)
    assert not within(budget / 3600, time.perf_counter(), lambda: 100.0)(second)
    assert within(budget / 3600, time.perf_counter(), lambda: observed_scale(plan, store, set()))(second) == (
        scale * estimate(second).seconds <= budget)


def test_a_stage_on_a_stored_run_without_its_weights_is_estimated_with_the_runs_training(tmp_path, monkeypatch):
    import shutil

    from ltlib.experiment import checkpoint_path

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    config = DifficultyNetNotebook.load("quick", {"methods": ["ce"], "seeds": [0], "epochs": 3, "milestones": [2],
                                                  "stage2_epochs": 2, "stage2_trainable": "scale"})
    plan = config.plan()
    (run,) = [p for p in plan if not p.is_stage]
    stage = next(p for p in plan if p.is_stage)
    twin = type(stage)(type(stage.spec).make(stage.spec.kind, {**stage.spec.kwargs, "epochs": 3}, run.spec),
                       stage.name + " (3 epochs)", stage.role)
    store = RunStore("quick", tmp_path / "runs")
    execute([run], store, progress=False)
    assert estimate(stage).seconds == estimate(stage, retrains=False).seconds  # the weights are in the cache
    assert "trains it again" not in describe([run, stage, twin], store)
    shutil.rmtree(checkpoint_path(run.key).parent)  # another machine: the store entry, no weights
    assert estimate(stage).seconds == pytest.approx(estimate(stage, retrains=False).seconds + estimate(run).seconds)
    listing = describe([run, stage, twin], store)
    assert listing.count("trains it again") == 1  # the first stage on it trains it; the next finds its weights


@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: avx512_bf16\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ("processor\t: 0\nmodel name\t: something\n", None),
])
def test_bf16_instructions_are_read_from_the_first_cpu_of_cpuinfo(cpuinfo, native):
    from ltlib.provenance import native_bf16_in

    assert native_bf16_in(cpuinfo) is native


def bf16_plan(model: str = "resnet32") -> list:
    config = DifficultyNetNotebook.load("quick", {"methods": ["ce"], "seeds": [0], "epochs": 2, "milestones": [1],
                                                  "stage2_epochs": 1, "amp": True, "model": model})
    return config.plan()


def test_bf16_training_on_a_cpu_without_bf16_instructions_is_named_with_the_ways_out(tmp_path, monkeypatch):
    import ltlib.provenance
    import ltlib.studies
    from ltlib.executor import cpu_bf16_training
    from ltlib.runtime import ALLOW_EMULATED_BF16, emulated_bf16_problem

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ALLOW_EMULATED_BF16, raising=False)
    monkeypatch.setattr(ltlib.provenance, "cpu_has_native_bf16", lambda: False)
    store = RunStore("quick", tmp_path / "runs")
    plan = bf16_plan()
    (run,) = [p for p in plan if not p.is_stage]
    assert cpu_bf16_training(plan, store) == [run.key]  # the stages' run is trained once, as an item of its own
    assert emulated_bf16_problem(0) is None
    assert re.search(f"1 run.*avx512_bf16.*{ALLOW_EMULATED_BF16}=1.*-p amp false", emulated_bf16_problem(1))
    assert cpu_bf16_training(bf16_plan("small_cnn"), store) == []  # seconds even emulated: quick's precision check
    assert cpu_bf16_training([p for p in small_configs()[0].plan() if p.role == "main"], store) == []  # fp32

    # a notebook trains what its store lacks: it warns with the same words and goes on
    config = DifficultyNetNotebook.load("quick", {"methods": ["ce"], "seeds": [0], "epochs": 2, "milestones": [1],
                                                  "stage2_epochs": 1, "amp": True, "model": "resnet32"})
    trained = []
    monkeypatch.setattr(ltlib.studies, "execute", lambda items, *args, **kwargs: trained.extend(items) or [])
    with pytest.warns(RuntimeWarning, match="03_difficulty_net: 1 run.*emulates bf16"):
        Study(config, store).ensure(progress=False)
    assert trained

    monkeypatch.setenv(ALLOW_EMULATED_BF16, "1")
    assert emulated_bf16_problem(1) is None
    monkeypatch.delenv(ALLOW_EMULATED_BF16)
    for native in (True, None):  # a CPU with bf16 instructions, or one that cannot be told, trains as asked
        monkeypatch.setattr(ltlib.provenance, "cpu_has_native_bf16", lambda: native)
        assert emulated_bf16_problem(1) is None


def test_a_stage_needs_its_runs_last_epoch_checkpoint_or_counts_as_training_it(tmp_path, monkeypatch):
    import torch

    import ltlib.executor
    from ltlib.executor import cpu_bf16_training
    from ltlib.experiment import checkpoint_path, final_weights_cached

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    plan = [p for p in small_configs()[0].plan() if p.role == "main"][:1]
    store = RunStore("quick", tmp_path / "runs")
    execute(plan, store, progress=False)
    spec = plan[0].spec
    assert final_weights_cached(spec)
    path = checkpoint_path(spec.key())
    state = torch.load(path, weights_only=False)
    torch.save({**state, "epoch": state["epoch"] - 1}, path)  # an interrupted training: a stage would train it on
    assert not final_weights_cached(spec)
    path.write_bytes(b"not a checkpoint")
    assert not final_weights_cached(spec)

    bf16 = bf16_plan()
    (run,) = [p for p in bf16 if not p.is_stage]

    class RunOnly(RunStore):  # the run is stored, its stages are not
        def __contains__(self, key):
            return key == run.key

    stored = RunOnly("quick", tmp_path / "runs-bf16")
    for cached, expected in ((True, []), (False, [run.key])):
        monkeypatch.setattr(ltlib.executor, "final_weights_cached", lambda spec: cached)
        assert cpu_bf16_training(bf16, stored) == expected


def test_the_sweep_refuses_emulated_bf16_unless_allowed(tmp_path, monkeypatch, capsys):
    import ltlib.provenance
    from ltlib.runtime import ALLOW_EMULATED_BF16
    from ltlib.sweep import main

    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv(ALLOW_EMULATED_BF16, raising=False)
    monkeypatch.setattr(ltlib.provenance, "cpu_has_native_bf16", lambda: False)
    params = str(ROOT / "params" / "quick" / "03_difficulty_net.yaml")
    overrides = ["-p", "methods", "[ce]", "-p", "seeds", "[0]", "-p", "epochs", "2", "-p", "milestones", "[1]",
                 "-p", "stage2_epochs", "1", "-p", "amp", "true", "-p", "model", "resnet32"]
    assert main([params, *overrides, "--dry-run"]) == 0
    assert "1 run(s) would train under emulated bf16" in capsys.readouterr().out
    assert main([params, *overrides]) == 2
    assert "--allow-emulated-bf16" in capsys.readouterr().err
    assert not list((tmp_path / "runs").rglob("*.json"))  # nothing was computed
    # allowed, the sweep goes on to its time budget (too small here for anything to start): exit 3, not 2
    assert main([params, *overrides, "--allow-emulated-bf16", "--hours", "1e-9"]) == 3


def test_the_emulated_bf16_slowdown_is_the_benchmarks():
    import json

    from ltlib.runtime import EMULATED_BF16_SLOWDOWN

    measured = json.loads((ROOT / "results" / "benchmarks" / "epoch-cpu-avx2.json").read_text())
    one_thread = measured["by_threads"]["1"]
    assert not {"avx512_bf16", "amx_bf16"} & set(measured["cpu"]["isa"])  # measured where bf16 is emulated
    assert EMULATED_BF16_SLOWDOWN == pytest.approx(
        one_thread["old"]["train_img_per_s"] / one_thread["new"]["train_img_per_s"], rel=0.05)


def test_the_meta_step_costs_are_the_benchmarks():
    import json

    from ltlib.sweep import METHOD_COST, method_cost

    measured = {}
    for path in sorted((ROOT / "results" / "benchmarks").glob("meta_step-*.json")):
        result = json.loads(path.read_text())
        for name, ratio in result["ratio_to_plain"].items():
            measured[name, result["batch_size"], result.get("amp", False)] = ratio  # files before --amp: float32
    table = {(name, *key): cost for name, costs in METHOD_COST.items() for key, cost in costs.items()}
    assert table.keys() <= measured.keys()
    for key, cost in table.items():
        assert cost == pytest.approx(measured[key], rel=0.01), key
    # a configuration between the measured ones takes the same precision's nearest batch size
    assert method_cost("difficulty_net", 48, True) == METHOD_COST["difficulty_net"][32, True]
    assert method_cost("difficulty_net", 256, False) == METHOD_COST["difficulty_net"][128, False]
    assert method_cost("ce", 32, True) == 1.0


@pytest.mark.parametrize("arguments, said", [
    (["params/cpu-real/02_cdb_loss.yaml", "-p", "methodz", "[ce]"], "unknown parameter(s) ['methodz']"),
    (["params/cpu-real/02_cdb_loss.yaml", "-p", "methods", '["cdb_ce:tau=1"]', "-p", "weight_methods", "[cdb_ce]"],
     "weight_methods ['cdb_ce'] must be among methods ['cdb_ce:tau=1']"),
    (["params/cpu-real/02_cdb_loss.yaml", "-p", "seeds", "[0"], "the value '[0' is not valid YAML"),
    (["params/cpu-real/02_cdb_loss.yaml", "params/quick/02_cdb_loss.yaml"], "a sweep covers one profile"),
    (["params/cpu-real/02_cdb.yaml"], "no parameter file params/cpu-real/02_cdb.yaml"),
])
def test_a_sweep_given_bad_parameters_says_so_in_one_line_and_exits_2(arguments, said, tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "ltlib", "sweep", *arguments, "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr and not done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith(("error: ", "python -m ltlib sweep: error: "))


def test_the_bf16_kernel_check_tells_a_reproduced_first_epoch_from_another(tmp_path, monkeypatch):
    import importlib.util

    from ltlib.experiment import run

    spec = importlib.util.spec_from_file_location("bf16_kernels", ROOT / "benchmarks" / "bf16_kernels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache"))
    # a quick-profile CE run of notebook 01's plan (fp32: no bf16 kernels involved), trained into an empty store
    planned = [item for item in collect([ROOT / "params" / "quick" / "01_baselines.yaml"])[1]
               if item.name == "ce" and not hasattr(item.spec, "parent")][0]
    store, key = RunStore("quick"), planned.key
    run(planned.spec, store, progress=False)
    assert script.main([key, "--profile", "quick", "--isa", "default", "--out", str(tmp_path / "same.json")]) == 0
    found = json.loads((tmp_path / "same.json").read_text())
    assert [cap["same_as_entry"] for cap in found["caps"]] == [True] and found["key"] == key
    # an entry whose first epoch came out otherwise is told apart
    entry = store.get(key)
    entry["result"]["history"][0]["train_loss"] += 1e-5
    (store.folder / f"{key}.json").unlink()
    store.put(entry)
    assert script.main([key, "--profile", "quick", "--isa", "default", "--out", str(tmp_path / "other.json")]) == 0
    assert not json.loads((tmp_path / "other.json").read_text())["caps"][0]["same_as_entry"]
    with pytest.raises(SystemExit, match="holds no training run"):
        script.main(["0000000000000000", "--profile", "quick"])
