"""Notebook parameters: one declaration per parameter, profile files and overrides validated, cells in sync."""
from __future__ import annotations

import ast
import json

import pytest
import yaml

from ltlib.notebook import PROFILES, ParameterError, injected_names
from ltlib.paths import ROOT
from ltlib.studies import (
    CONFIGS,
    RECIPES,
    BaselinesNotebook,
    CDBNotebook,
    DataNotebook,
    DifficultyNetNotebook,
    DLSANotebook,
    Study,
)

NOTEBOOKS = {cls.NOTEBOOK: cls for cls in CONFIGS}


def parameters_cell(notebook: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook}: exactly one cell must be tagged 'parameters'"
    return "".join(tagged[0]["source"])


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_the_parameters_cell_is_generated_from_the_configuration(notebook):
    """papermill recognises every parameter, because the cell declares exactly the configuration's fields."""
    cls = NOTEBOOKS[notebook]
    assert parameters_cell(notebook) == cls.parameters_cell(), \
        f"{notebook}: run `python -m ltlib sync-parameters` after changing {cls.__name__}"
    declared = [node.target.id for node in ast.parse(cls.parameters_cell()).body]
    assert declared == cls.names() and cls.defaults()["profile"] == "quick"


def test_every_notebook_has_a_configuration_and_every_configuration_a_notebook():
    files = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert files == sorted(NOTEBOOKS)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_every_profile_file_validates(notebook, profile):
    path = ROOT / "params" / profile / f"{notebook}.yaml"
    assert path.exists(), f"missing {path.relative_to(ROOT)}"
    config = NOTEBOOKS[notebook].load(profile)
    assert config.profile == profile
    config.plan()  # every run and stage of the plan can be specified


@pytest.mark.parametrize("notebook", ["01_baselines", "02_cdb_loss", "03_difficulty_net", "05_intra_inter_balance"])
@pytest.mark.parametrize("profile", ["cpu-real", "paper"])
def test_schedules_are_their_recipe_scaled(notebook, profile):
    config = NOTEBOOKS[notebook].load(profile)
    scaled = RECIPES[config.recipe].scaled(config.epochs)
    assert config.milestones == scaled["milestones"] and config.warmup_epochs == scaled["warmup_epochs"]
    if "drw_epoch" in scaled and any(m.endswith("_drw") for m in config.methods):
        assert config.drw_epoch == scaled["drw_epoch"]


def test_recipe_scaling_keeps_the_proportions():
    assert RECIPES["ldam_drw"].scaled(200) == {"epochs": 200, "milestones": [160, 180], "warmup_epochs": 5,
                                               "drw_epoch": 160}
    assert RECIPES["ldam_drw"].scaled(50) == {"epochs": 50, "milestones": [40, 45], "warmup_epochs": 1, "drw_epoch": 40}
    assert RECIPES["cdb"].scaled(60) == {"epochs": 60, "milestones": [40, 53], "warmup_epochs": 0}


@pytest.mark.parametrize("overrides, message", [
    ({"epoch": 2}, r"unknown parameter\(s\) \['epoch'\].*valid ones are \['profile'"),
    ({"seeds": ["a"]}, r"'seeds' must list int values, got 'a'"),
    ({"seeds": [0.5]}, r"'seeds' must list int values, got 0.5"),
    ({"methods": []}, r"'methods' is an empty list"),
    ({"methods": ["cdb_ce:tua=1"]}, r"has no option\(s\) \['tua'\]; it accepts .*'tau'"),
    ({"methods": ["bogus"]}, r"unknown method 'bogus'"),
    ({"warmup_epochs": -1}, r"'warmup_epochs' must be >= 0"),
    ({"lr": float("nan")}, r"'lr' must be finite"),
    ({"lr": float("inf")}, r"'lr' must be finite"),
    ({"epochs": "10"}, r"'epochs' must be int"),
    ({"device": "tpu"}, r"unknown device 'tpu'"),
    ({"sources": ["imagenet"]}, r"unknown data set 'imagenet'"),
])
def test_bad_parameters_are_one_clear_error(overrides, message):
    with pytest.raises(ParameterError, match=message):
        BaselinesNotebook.load("quick", overrides)


@pytest.mark.parametrize("cls, overrides, message", [
    (DataNotebook, {"samples_per_class": "six"}, r"'samples_per_class' must be int"),
    (DataNotebook, {"source": "cifar11"}, r"unknown data set 'cifar11'"),
    (DLSANotebook, {"depths": 1}, r"'depths' must be list\[int\]"),
    (DLSANotebook, {"flow_lr": "x"}, r"'flow_lr' must be float"),
    (DLSANotebook, {"num_clusters": 0}, r"'num_clusters' must be >= 2"),
    (CDBNotebook, {"methods": ["ce", "focal"], "weight_methods": ["ce"]}, r"hold no CDB variant"),
    (CDBNotebook, {"methods": ["ce", "cdb_ce"], "weight_methods": ["cdb_ce:tau=1"]}, r"must be among methods"),
    (DifficultyNetNotebook, {"stage2_trainable": "all"}, r"choose one of \('fc\+scale'"),
])
def test_notebook_specific_parameters_are_checked(cls, overrides, message):
    with pytest.raises(ParameterError, match=message):
        cls.load("quick", overrides)


def test_an_unknown_profile_is_refused_by_every_notebook():
    for cls in CONFIGS:
        with pytest.raises(ParameterError, match="unknown profile 'foo'"):
            cls.load("foo")
        with pytest.raises(ParameterError, match="'profile' is 'foo'"):
            cls(profile="foo")


def test_a_profile_file_with_an_unknown_name_is_refused(tmp_path):
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "01_baselines.yaml").write_text(yaml.safe_dump({"profile": "quick", "epoch": 2}))
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['epoch'\] in .*01_baselines.yaml"):
        BaselinesNotebook.load("quick", params_dir=tmp_path)


def test_a_cuda_run_on_a_machine_without_cuda_fails_before_anything_runs(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from ltlib.runtime import DeviceError
    from ltlib.store import RunStore

    study = Study(BaselinesNotebook.load("quick", {"device": "cuda", "methods": ["ce"], "seeds": [0],
                                                   "schedule_epochs": [], "precision_epochs": 0}),
                  RunStore("quick", tmp_path))
    with pytest.raises(DeviceError, match="would be trained here, but.*no CUDA GPU"):
        study.ensure()
    assert not list(tmp_path.rglob("*.json"))  # nothing was served from a CPU-made entry, nothing written


def test_thresholds_do_not_change_which_runs_a_notebook_needs():
    a = BaselinesNotebook.load("quick")
    b = BaselinesNotebook.load("quick", {"many_above": 80, "few_below": 5})
    assert [p.key for p in a.plan()] == [p.key for p in b.plan()]


def test_papermills_injected_names_are_read_from_the_history():
    history = ["import x", "profile: str = 'quick'\nepochs: int = 15", "# Parameters\nprofile = \"quick\"\nepoch = 2\n"]
    assert injected_names(history) == {"profile", "epoch"}
    assert injected_names(["a = 1"]) == set()


def test_the_validation_split_size_is_part_of_every_run_a_notebook_needs():
    default = BaselinesNotebook.load("quick", {"sources": ["cifar10"]})
    explicit = BaselinesNotebook.load("quick", {"sources": ["cifar10"], "val_per_class": 25})
    smaller = BaselinesNotebook.load("quick", {"sources": ["cifar10"], "val_per_class": 5})
    assert [p.key for p in default.plan()] == [p.key for p in explicit.plan()]  # None is the data set's 25
    keys = {p.key for p in smaller.plan()}
    assert keys and not keys & {p.key for p in default.plan()}
    assert {p.spec.data.identity()["val_per_class"] for p in smaller.plan()} == {5}
    with pytest.raises(ParameterError, match=r"'val_per_class' must be >= 1"):
        BaselinesNotebook.load("quick", {"val_per_class": 0})
