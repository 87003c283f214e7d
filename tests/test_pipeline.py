"""The notebook pipeline: kernels, papermill injection, validation inside the kernel, outputs written on success."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ltlib.paths import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_the_ltlib_kernel(notebook):
    assert json.loads(notebook.read_text())["metadata"]["kernelspec"]["name"] == "ltlib"


@pytest.mark.parametrize("notebook", ["02_cdb_loss", "05_intra_inter_balance"])
def test_papermill_injects_the_profile_file_and_command_line_overrides(notebook, tmp_path):
    """papermill -f (YAML) and -p together: the file is read and -p wins (papermill#724 was a regression here), and
    papermill recognises every parameter (no 'unknown parameter' warning for method variants such as 'x:a=b')."""
    out = tmp_path / "prepared.ipynb"
    run = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{notebook}.ipynb"), str(out),
                          "--prepare-only", "-f", str(ROOT / "params" / "cpu-real" / f"{notebook}.yaml"),
                          "-p", "epochs", "3", "-k", "ltlib"], check=True, capture_output=True, text=True)
    assert "unknown parameter" not in run.stderr.lower() and "unable to parse" not in run.stderr.lower(), run.stderr
    cells = json.loads(out.read_text())["cells"]
    injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(injected["source"]), namespace)
    assert namespace["profile"] == "cpu-real" and namespace["sources"] == ["cifar10-jpeg"]
    assert namespace["epochs"] == 3 and any(":" in m and "=" in m for m in namespace["methods"])


def test_a_parameter_passed_to_papermill_under_a_wrong_name_fails_inside_the_kernel(tmp_path):
    out = tmp_path / "out.ipynb"
    run = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "00_long_tailed_data.ipynb"),
                          str(out), "-p", "samples_per_clas", "3", "-k", "ltlib", "--cwd", str(ROOT / "notebooks")],
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "unknown parameter(s) ['samples_per_clas']" in run.stdout + run.stderr + out.read_text()


@pytest.mark.parametrize("name, value, said", [("epoch", "2", "unknown parameter(s) ['epoch']"),
                                               ("seeds", "[0, 1", "the value '[0, 1' is not valid YAML")])
def test_the_runner_refuses_bad_parameters_before_a_kernel_starts(name, value, said, tmp_path):
    run = subprocess.run([sys.executable, "-m", "ltlib", "notebook", "01_baselines", "--profile", "quick",
                          "-p", name, value, "--output", str(tmp_path / "x.ipynb")], capture_output=True, text=True)
    assert run.returncode == 2 and said in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.ipynb").exists()


def test_store_only_rendering_names_the_missing_runs_and_the_sweep_that_trains_them(tmp_path):
    env = {**os.environ, "LTLIB_RUNS": str(tmp_path / "empty-store")}
    run = subprocess.run([sys.executable, "-m", "ltlib", "notebook", "01_baselines", "--profile", "quick",
                          "--store-only", "--output", str(tmp_path / "x.ipynb")], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 3, run.stderr
    assert "runs are not in the store" in run.stderr and "python -m ltlib sweep params/quick/01_baselines.yaml" in run.stderr
    assert not (tmp_path / "x.ipynb").exists()


def test_a_killed_execution_leaves_the_previous_notebook_in_place(tmp_path):
    output = tmp_path / "00.ipynb"
    previous = '{"previous": "complete"}'
    output.write_text(previous)
    process = subprocess.Popen([sys.executable, "-m", "ltlib", "notebook", "00_long_tailed_data", "--profile", "quick",
                                "--output", str(output)], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".00.running.ipynb")):
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert output.read_text() == previous
    rerun = subprocess.run([sys.executable, "-m", "ltlib", "notebook", "00_long_tailed_data", "--profile", "quick",
                            "--output", str(output)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(output.read_text())["cells"]


@pytest.mark.parametrize("command", ["readme", "index-figures", "sync-parameters"])
def test_commands_without_arguments_answer_help_and_refuse_arguments_without_writing(command, capsys):
    from ltlib.__main__ import main

    before = {path: path.read_bytes() for path in [ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]}
    assert main([command, "--help"]) == 0 and capsys.readouterr().out.startswith(f"python -m ltlib {command} ")
    assert main([command, "results/cpu-real"]) == 2
    assert "takes no arguments, not 'results/cpu-real'" in capsys.readouterr().err
    assert before == {path: path.read_bytes() for path in before}
