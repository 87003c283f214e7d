"""The paper profile end to end, on tiny torchvision-format CIFAR files written by the test.

Every notebook runs with its ``params/paper/*.yaml`` where only the device, the epochs, the seeds and the sizes (the
validation split's among them) are overridden, through the code path the paper profile takes on a GPU; then a second
time, from the store alone.
"""
from __future__ import annotations

import json

import pytest
from fakedata import write_cifar

from ltlib.paths import ROOT
from ltlib.runner import execute
from ltlib.store import RunStore
from ltlib.summary import CLAIMS

# small stand-ins (training is most of this test's time): 5 validation images per class, not the data sets' 25
COMMON = {"device": "cpu", "epochs": 1, "seeds": [0], "imbalances": [10.0], "val_per_class": 5, "workers": 1}
OVERRIDES = {
    "00_long_tailed_data": {"imbalances": [10.0], "val_per_class": 5},
    "01_baselines": {**COMMON, "schedule_epochs": [1], "precision_epochs": 1, "precision_seeds": [0]},
    "02_cdb_loss": COMMON,
    "03_difficulty_net": {**COMMON, "stage2_epochs": 1, "stage2_views": 1},
    "04_dlsa": {**COMMON, "num_clusters": 5, "flow_epochs": 1, "flow_batch_size": 128, "classifier_epochs": 1,
                "crt_epochs": 1},
    "05_intra_inter_balance": COMMON,
    "06_summary": {},
}


@pytest.fixture
def paper_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    # 16 training images per class: 5 go to the validation split, and no class of the long tail is left empty (cdb:
    # n_max = 11, so the IF-10 tail keeps one image)
    write_cifar(data, "cifar10", per_class_train=16, per_class_test=5)
    write_cifar(data, "cifar100", per_class_train=16, per_class_test=3)
    monkeypatch.setenv("LTLIB_DATA", str(data))
    monkeypatch.setenv("LTLIB_VERIFY_MD5", "0")  # the stand-ins are not torchvision's files
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path / "runs"))
    return tmp_path


def markdown_outputs(path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(o["data"]["text/markdown"]) for c in nb["cells"] for o in c.get("outputs", [])
                     if "text/markdown" in o.get("data", {}))


def test_every_paper_notebook_runs_on_stand_in_data_twice_the_second_time_from_the_store(paper_data):
    store = RunStore("paper", paper_data / "runs")
    outputs = {}
    for notebook, overrides in OVERRIDES.items():
        outputs[notebook] = execute(notebook, "paper", overrides, output=paper_data / "first" / f"{notebook}.ipynb")
    entries = {key: store.path(key).stat().st_mtime_ns for key in store.keys()}
    assert len(entries) > 50
    for notebook, overrides in OVERRIDES.items():
        second = execute(notebook, "paper", overrides, output=paper_data / "second" / f"{notebook}.ipynb")
        if notebook not in ("00_long_tailed_data", "06_summary"):
            assert " 0 computed in this execution" in markdown_outputs(second), notebook
    assert {key: store.path(key).stat().st_mtime_ns for key in store.keys()} == entries  # nothing trained again
    # CIFAR-10-LT under the ImageNet-LT thresholds has no few-shot class: shown as "–", never a crash
    assert "–" in (paper_data / "first" / "01_baselines.ipynb").read_text()
    summary = json.loads((ROOT / "results" / "paper" / "06_summary.json").read_text())
    assert {row["paper"] for row in summary["claims"]} == {row[0] for row in CLAIMS}
    dlsa = markdown_outputs(outputs["04_dlsa"])
    assert "DLSA on the features of" in dlsa  # the CIFAR backbones stand in for the absent feature files
    assert "is **skipped**" in markdown_outputs(outputs["02_cdb_loss"])  # no MNIST training files here
    groups = markdown_outputs(outputs["05_intra_inter_balance"])
    assert "groups_cifar10_IF10.pdf" in groups and "groups_cifar100_IF10.pdf" in groups  # one figure per setting
