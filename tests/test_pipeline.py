"""The notebook pipeline: parameters cells, profile files, papermill injection."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltlib.paths import ROOT
from ltlib.profiles import PROFILE_NAMES, ExperimentParams, ParameterError

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def parameters_cell(path: Path) -> dict:
    cells = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    source = "".join(cells[0]["source"])
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: parameters must be typed ('name: type = value')"
        values[node.target.id] = (node.annotation.id, ast.literal_eval(node.value))
    return values


def test_there_are_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS][:2] == ["00", "01"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_the_ltlib_kernel_and_typed_parameters(notebook):
    assert json.loads(notebook.read_text())["metadata"]["kernelspec"]["name"] == "ltlib"
    values = parameters_cell(notebook)
    assert values["profile"] == ("str", "quick"), "the defaults must be the quick profile"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_profile_file_sets_only_declared_parameters_with_their_types(notebook, profile):
    path = ROOT / "params" / profile / f"{notebook.stem}.yaml"
    assert path.exists(), f"missing {path.relative_to(ROOT)}"
    injected = yaml.safe_load(path.read_text()) or {}
    declared = parameters_cell(notebook)
    assert injected.get("profile") == profile
    for name, value in injected.items():
        assert name in declared, f"{path.name} sets {name!r}, which the notebook does not declare"
        kind = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list}[declared[name][0]]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), f"{name}: {value!r}"
    if "methods" in declared:  # training notebooks: the merged parameters must validate
        merged = {name: value for name, (_, value) in declared.items()} | injected
        ExperimentParams.from_namespace(merged)


def test_wrong_parameter_type_names_the_parameter_and_the_fix():
    with pytest.raises(ParameterError, match=r"'epochs' must be int.*params/quick"):
        ExperimentParams(epochs="10")
    with pytest.raises(ParameterError, match="unknown profile"):
        ExperimentParams(profile="fast")


def test_papermill_injects_the_profile_file_and_command_line_overrides(tmp_path):
    """papermill -f (YAML) and -p together: the file is read and -p wins (papermill#724 was a regression here)."""
    out = tmp_path / "prepared.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "01_baselines.ipynb"), str(out),
                    "--prepare-only", "-f", str(ROOT / "params" / "cpu-real" / "01_baselines.yaml"),
                    "-p", "epochs", "3", "-k", "ltlib"], check=True, capture_output=True)
    cells = json.loads(out.read_text())["cells"]
    injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(injected["source"]), namespace)
    assert namespace["profile"] == "cpu-real" and namespace["sources"] == ["cifar10-jpeg"]
    assert namespace["epochs"] == 3
