"""Figures and results: byte-stable, sets that stay in step, committed outputs that resolve to the store."""
from __future__ import annotations

import hashlib
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ltlib import figures  # noqa: E402
from ltlib.paths import ROOT  # noqa: E402
from ltlib.store import RunStore  # noqa: E402


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "figures_dir", lambda profile, nb: tmp_path / "figures" / profile / nb)
    return tmp_path / "figures" / "quick" / "nb"


def make_figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2, 3], [3, 1, 2], label="a")
    ax.set_title("test")
    return fig


def save(name="fig", **kwargs):
    return figures.save_figure(make_figure(), name, profile="quick", notebook="nb", caption="a test figure",
                               run_keys=["0123456789abcdef"], seeds=[0], **kwargs)


def test_figures_are_byte_identical_and_carry_their_provenance(folder):
    figures.set_theme()
    first = save()
    hashes = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in first.items() if k != "json"}
    second = save()
    assert hashes == {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in second.items() if k != "json"}
    pdf = first["pdf"].read_bytes()
    assert b"/FontFile2" in pdf and b"/CreationDate" not in pdf  # TrueType embedded, no timestamp
    sidecar = json.loads(first["json"].read_text())
    assert sidecar["run_keys"] == ["0123456789abcdef"] and sidecar["seeds"] == [0]
    assert sidecar["caption"] == "a test figure" and sidecar["results"] == "results/quick/nb.json"
    assert sidecar["sha256"]["png"] == hashes["png"] and figures.sidecar_is_current(first["json"])


def test_a_write_killed_midway_never_leaves_a_sidecar_out_of_step(folder, monkeypatch):
    save()
    real = os.replace
    calls = {"n": 0}

    def dying(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # after the PDF is in place, before the PNG and the sidecar
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    fig = make_figure()
    fig.axes[0].set_title("changed")
    with pytest.raises(KeyboardInterrupt):
        figures.save_figure(fig, "fig", profile="quick", notebook="nb", caption="changed")
    monkeypatch.setattr(os, "replace", real)
    sidecar = folder / "fig.json"
    assert not sidecar.exists() or figures.sidecar_is_current(sidecar)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    save()  # the next write completes the set
    assert figures.sidecar_is_current(sidecar)


def test_stale_temporaries_of_killed_writers_are_removed(folder):
    save()
    stale = folder / ".fig.png.abc.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    save()
    assert not stale.exists()


def test_the_figure_index_lists_every_figure(folder, tmp_path):
    save()
    index = figures.write_index(tmp_path / "figures", profiles=("quick",))
    text = index.read_text()
    assert "| `quick/nb/fig` | a test figure | nb | quick |" in text


COMMITTED = sorted((ROOT / "figures").glob("cpu-real/*/*.json"))


@pytest.mark.parametrize("sidecar", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_figures_come_from_committed_code_and_match_their_files(sidecar):
    meta = json.loads(sidecar.read_text())
    assert not meta["git_commit"].endswith("-dirty"), f"{sidecar}: drawn from uncommitted code"
    assert figures.sidecar_is_current(sidecar)
    assert meta.get("caption"), f"{sidecar}: no caption"


RESULTS = sorted((ROOT / "results" / "cpu-real").glob("0[1-5]*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_committed_record_resolves_in_the_run_store(path):
    payload = json.loads(path.read_text())
    store = RunStore("cpu-real", ROOT / "runs")
    keys = {r["run_key"] for r in payload["records"]}
    assert keys and keys <= set(payload["runs"])
    for key in keys:
        assert store.get(key) is not None, f"{path.name}: record of run {key} has no entry in runs/cpu-real/"


def test_the_figure_index_is_generated_from_the_committed_figures():
    assert (ROOT / "figures" / "INDEX.md").read_text() == figures.index_text(), \
        "run `python -m ltlib index-figures` after the figures change"


def test_the_readme_results_section_is_generated_from_the_committed_results():
    from ltlib.readme import current_block, results_block

    assert current_block() == results_block(), "run `python -m ltlib readme` after the results change"


EXECUTED = sorted((ROOT / "executed" / "cpu-real").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.stem)
def test_every_figure_a_cpu_real_notebook_saves_is_shown_in_it(path):
    nb = json.loads(path.read_text())
    images = sum("image/png" in output.get("data", {}) for cell in nb["cells"] for output in cell.get("outputs", []))
    saved = [p for p in (ROOT / "figures" / "cpu-real" / path.stem).glob("*.json")
             if json.loads(p.read_text())["notebook"] == path.stem]
    assert images == len(saved), f"{path.name}: {images} inline images, {len(saved)} figures saved"
    errors = [o for cell in nb["cells"] for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_a_saved_figure_ending_a_notebook_cell_shows_no_paths(folder):
    from IPython.core.formatters import DisplayFormatter

    saved = save()
    formatted, _ = DisplayFormatter().format(saved)
    assert not any("PosixPath" in str(v) or str(folder) in str(v) for v in formatted.values())
    assert saved["png"].exists()  # still the paths for code that uses them
