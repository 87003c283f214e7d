"""The run store: atomic entries under a lock, checksums, NaN round-trip, run identity, kill at any point."""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ltlib.experiment import TRAIN_VERSION, DataSpec, RunSpec, run
from ltlib.io import CorruptFileError
from ltlib.methods import MethodRef
from ltlib.metrics import ShotThresholds
from ltlib.store import RunStore, StoreError
from ltlib.train import TrainConfig


def tiny_spec(method: str = "ce", seed: int = 0, epochs: int = 2, **train) -> RunSpec:
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, milestones=(), warmup_epochs=0, **train)
    return RunSpec(DataSpec("digits", 10.0, "ldam"), "small_cnn", MethodRef.parse(method, {"drw_epoch": 1}), config,
                   seed)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore("quick", tmp_path / "runs")


def entry(key: str, value) -> dict:
    return {"key": key, "kind": "test", "result": {"value": value}}


# ------------------------------------------------------------------------------------------------ the store

def test_entries_round_trip_exactly_nan_included(store):
    key = "0123456789abcdef"
    store.put(entry(key, [1.5, float("nan"), None, 3, {"few": float("nan")}]))
    back = store.get(key)["result"]["value"]
    assert back[0] == 1.5 and math.isnan(back[1]) and back[2] is None and back[3] == 3 and math.isnan(back[4]["few"])
    assert [p.name for p in store.folder.iterdir()] == [f"{key}.json"]  # no temporary file left


def test_an_entry_edited_by_hand_is_detected_and_named_with_the_fix(store):
    key = "0123456789abcdef"
    path = store.put(entry(key, 1.0))
    text = path.read_text().replace('"value": 1.0', '"value": 2.0')
    path.write_text(text)
    with pytest.raises(StoreError, match=r"0123456789abcdef\.json fails its checksum.*git checkout.*delete it"):
        store.get(key)
    path.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        store.get(key)


def _write_many(root: str, start: int, count: int) -> None:
    store = RunStore("quick", root)
    for i in range(start, start + count):
        store.put(entry(f"{i:016x}", list(range(200))))


def test_two_concurrent_writers_lose_no_entry(tmp_path):
    root = str(tmp_path / "runs")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(root, start, 60)) for start in (0, 1000)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    store = RunStore("quick", root)
    assert len(store.keys()) == 120
    assert all(store.get(key)["result"]["value"] == list(range(200)) for key in store.keys())


# ------------------------------------------------------------------------------------------------ identity

def test_the_key_hashes_what_changes_the_numbers_and_nothing_else():
    base = tiny_spec("ce")
    assert base.key() == tiny_spec("ce").key()
    assert base.identity()["v"] == TRAIN_VERSION
    different = [tiny_spec("ce", seed=1), tiny_spec("focal"), tiny_spec("ce", epochs=3), tiny_spec("ce", amp=True),
                 tiny_spec("ce", test_every=1)]
    assert len({base.key(), *(s.key() for s in different)}) == 1 + len(different)
    # a method that never reads the DRW epoch is not keyed on it; one that does is
    import dataclasses
    assert MethodRef.parse("ce", {"drw_epoch": 1}) == MethodRef.parse("ce", {"drw_epoch": 9})
    assert tiny_spec("ldam_drw").key() != dataclasses.replace(
        tiny_spec("ldam_drw"), method=MethodRef.parse("ldam_drw", {"drw_epoch": 2})).key()
    # the CPU thread count changes a CPU run's numbers, so it is part of the key; on CUDA it is not
    assert dataclasses.replace(base, cpu_threads=2).key() != base.key()
    cuda = dataclasses.replace(base, device="cuda")
    assert cuda.key() != base.key() and dataclasses.replace(cuda, cpu_threads=2).key() == cuda.key()
    assert dataclasses.replace(cuda, device="cuda:1").key() == cuda.key()  # which GPU does not matter


def test_evaluation_thresholds_are_applied_to_records_not_keyed(store):
    result = run(tiny_spec(), store, progress=False)
    default = result.records()
    custom = result.records(ShotThresholds(many_above=80, few_below=30))
    assert {r["run_key"] for r in default + custom} == {result.key}
    assert [r["top1"] for r in default] == [r["top1"] for r in custom]
    assert default[0]["many_above"] == 60 and custom[0]["many_above"] == 80


def test_a_group_without_classes_is_nan_and_survives_the_store(store):
    result = run(tiny_spec(), store, progress=False)
    record = result.record("val", ShotThresholds(many_above=1000, few_below=1))  # no class above 1000 images
    assert math.isnan(record["many"]) and math.isnan(record["few"])
    again = RunStore("quick", store.folder.parent)
    assert run(tiny_spec(), again, train=False).record("val", ShotThresholds(1000, 1))["few"] != 0


def test_a_stored_run_is_read_back_not_trained(store):
    first = run(tiny_spec(), store, progress=False)
    assert first.trained_now
    second = run(tiny_spec(), store, progress=False)
    assert not second.trained_now and second.entry == first.entry
    with pytest.raises(LookupError, match="not in .*python -m ltlib sweep"):
        run(tiny_spec(seed=5), store, train=False)


def test_an_entry_holds_config_history_confusions_and_provenance(store):
    stored = run(tiny_spec("cdb_ce", epochs=3, test_every=2), store, progress=False).entry
    assert stored["spec"]["method"] == "cdb_ce" and stored["spec"]["train"]["epochs"] == 3
    assert set(stored["result"]["confusion"]) == {"val", "last"}
    assert len(stored["result"]["history"]) == 3 and "test_top1" in stored["result"]["history"][1]
    assert {"git_commit", "versions", "device", "threads", "wall_s", "cpu"} <= set(stored["provenance"])
    cpu = stored["provenance"]["cpu"]  # the masked model name alone does not tell two machines' bf16 kernels apart
    assert cpu["model_name"] in stored["provenance"]["device"]
    if Path("/proc/cpuinfo").exists():
        assert {"vendor", "family", "model", "stepping", "isa"} <= set(cpu)
    assert len(json.dumps(stored)) < 100_000


def test_an_entry_names_the_code_it_started_with_not_an_edit_made_while_it_trained(store, monkeypatch):
    from ltlib import experiment, provenance

    state = {"edited": False}
    real_fit, real_commit = experiment.fit, provenance.git_commit

    def fit_then_edit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        state["edited"] = True  # as if a source file were changed while the run trained
        return result

    monkeypatch.setattr(experiment, "fit", fit_then_edit)
    monkeypatch.setattr(provenance, "git_commit", lambda: real_commit() + ("-edited" if state["edited"] else ""))
    stored = run(tiny_spec(epochs=1), store, progress=False).entry
    assert state["edited"] and not stored["provenance"]["git_commit"].endswith("-edited")


# ------------------------------------------------------------------------------------------------ kills

def test_a_run_killed_after_its_last_checkpoint_finishes_on_the_next_call(store, monkeypatch):
    reference = run(tiny_spec(epochs=3), RunStore("quick", store.folder.parent / "ref"), progress=False)
    original = RunStore.put

    def killed(self, entry):  # the process dies once the last checkpoint is written, before the entry is
        raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "put", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec(epochs=3), store, progress=False)
    monkeypatch.setattr(RunStore, "put", original)
    finished = run(tiny_spec(epochs=3), store, progress=False)
    assert finished.entry["provenance"]["resumed"]
    assert finished.result["confusion"] == reference.result["confusion"]
    assert finished.result["history"] == reference.result["history"]


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_run_store import tiny_spec
from ltlib.experiment import run
from ltlib.store import RunStore
run(tiny_spec(epochs=6), RunStore("quick", {root!r}), progress=False)
"""


@pytest.mark.parametrize("kill_after_epoch", [0, 3])
def test_a_run_killed_mid_training_resumes_to_the_same_numbers(tmp_path, kill_after_epoch, isolated_cache):
    import torch

    from ltlib.experiment import checkpoint_path

    reference = run(tiny_spec(epochs=6), RunStore("quick", tmp_path / "ref"), progress=False)
    root = str(tmp_path / "runs")
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), root=root)
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "LTLIB_CACHE": str(isolated_cache)})
    checkpoint = checkpoint_path(tiny_spec(epochs=6).key())
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                if torch.load(checkpoint, weights_only=False)["epoch"] >= kill_after_epoch:
                    break
            except Exception:  # caught mid-rename: try again
                pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = RunStore("quick", root)
    resumed = run(tiny_spec(epochs=6), store, progress=False)
    assert resumed.result["confusion"] == reference.result["confusion"]
    assert resumed.result["history"] == reference.result["history"]
    assert np.array_equal(resumed.confusion("val"), reference.confusion("val"))


def test_a_parked_checkpoint_carries_an_unfinished_run_to_another_machine(tmp_path, monkeypatch, capsys):
    import ltlib.experiment
    from ltlib.executor import Planned
    from ltlib.paths import ROOT
    from ltlib.sweep import describe, epochs_trained, estimate, main, park

    spec = tiny_spec(epochs=4)
    reference = run(spec, RunStore("quick", tmp_path / "ref"), progress=False)
    store, item = RunStore("quick", tmp_path / "runs"), Planned(spec, "ce")
    # machine A: the session ends after two of four epochs
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache-a"))
    assert park([item], store).startswith("nothing to park")
    here = ltlib.experiment.provenance
    monkeypatch.setattr(ltlib.experiment, "provenance", lambda device: {**here(device), "device": "machine A"})
    ltlib.experiment.train_entry(spec, progress=False, stop_after=2)
    monkeypatch.setattr(ltlib.experiment, "provenance", here)
    said = park([item], store)
    assert "parked" in said and "epoch 2 of 4" in said and store.parked_path(spec.key()).exists()
    assert "kept" in park([item], store)  # parking again copies nothing older or equal
    # machine B: an empty cache and the committed folder; the list says the run resumes, and it goes on from
    # epoch 3 to the same numbers
    monkeypatch.setenv("LTLIB_CACHE", str(tmp_path / "cache-b"))
    full = describe([item], RunStore("quick", tmp_path / "nothing-parked"))
    listed = describe([item], store)
    assert "resumes after epoch" not in full and "4 ep fp32 (resumes after epoch 2)" in listed
    assert epochs_trained(spec, store) == 2 and estimate(item, epochs_done=2).seconds == pytest.approx(
        estimate(item).seconds / 2)
    resumed = run(spec, store, progress=False)
    assert resumed.history == reference.history and resumed.result["confusion"] == reference.result["confusion"]
    assert resumed.entry["provenance"]["resumed"] is True
    # the entry names both machines with their epochs, not the last one alone
    segments = resumed.entry["provenance"]["segments"]
    assert [s["epochs"] for s in segments] == [[0, 1], [2, 3]]
    machine_b = resumed.entry["provenance"]["device"]
    assert [s["machine"]["device"] for s in segments] == ["machine A", machine_b]
    assert resumed.record()["device"] == f"machine A epochs 1-2, {machine_b} epochs 3-4"
    assert not store.parked_path(spec.key()).exists()  # the entry replaces its parked checkpoint
    # the command line: nothing of the quick plan is in this cache
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path / "runs-cli"))
    assert main([str(ROOT / "params" / "quick" / "02_cdb_loss.yaml"), "--park"]) == 0
    assert "nothing to park" in capsys.readouterr().out


def test_a_resumed_run_names_each_machine_its_epochs_ran_on():
    from ltlib.provenance import trained_on
    from ltlib.train import add_segment

    a, b = {"device": "A"}, {"device": "B"}
    one_machine = add_segment(add_segment([], 0, 4, a), 5, 9, a)
    assert one_machine == [{"epochs": [0, 9], "machine": a}]  # resumed where it stopped: one segment
    two = add_segment(one_machine, 10, 14, b)
    assert trained_on({"device": "B", "segments": two}) == "A epochs 1-10, B epochs 11-15"
    # a checkpoint written before segments were kept
    older = add_segment([{"epochs": [0, 3], "machine": None}], 4, 7, b)
    assert trained_on({"device": "B", "segments": older}) == "a machine not recorded epochs 1-4, B epochs 5-8"
    assert trained_on({"device": "B"}) == "B"
