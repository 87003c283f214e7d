"""Result records and figures: atomic, mergeable, with provenance, byte-stable figures."""
from __future__ import annotations

import hashlib
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ltlib import figures, records  # noqa: E402


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """Point results/ and figures/ at a temporary repository root."""
    monkeypatch.setattr(records, "results_dir", lambda profile: tmp_path / "results" / profile)
    monkeypatch.setattr(figures, "figures_dir", lambda profile, nb: tmp_path / "figures" / profile / nb)
    return tmp_path


def record(method, seed, top1, selected_on="val", few=float("nan")):
    return {"method": method, "dataset": "digits", "protocol": "ldam", "imbalance": 10.0, "seed": seed,
            "selected_on": selected_on, "top1": top1, "many": top1, "medium": top1, "few": few}


def test_save_records_replaces_reproduced_and_keeps_the_rest(repo):
    records.save_records("quick", "nb", [record("ce", 0, 50.0), record("ce", 1, 60.0)])
    records.save_records("quick", "nb", [record("ce", 1, 70.0), record("cb", 0, 65.0)])
    stored = records.load_records("quick", "nb")
    by_key = {(r["method"], r["seed"]): r["top1"] for r in stored}
    assert by_key == {("ce", 0): 50.0, ("ce", 1): 70.0, ("cb", 0): 65.0}


def test_nan_is_written_as_null(repo):
    path = records.save_records("quick", "nb", [record("ce", 0, 50.0)])
    assert json.loads(path.read_text())[0]["few"] is None


def test_no_temporary_files_left(repo):
    records.save_records("quick", "nb", [record("ce", 0, 50.0)])
    assert [p.name for p in (repo / "results" / "quick").iterdir()] == ["nb.json"]


def test_summary_table_mean_and_std():
    rows = [record("ce", s, v) for s, v in enumerate([50.0, 52.0, 54.0])] + [record("cb", 0, 61.0)]
    table = records.summary_table(rows, order=["cb", "ce"])
    assert list(table["method"]) == ["cb", "ce"]
    assert table.set_index("method").loc["ce", "top1"] == "52.00 ± 2.00"
    assert table.set_index("method").loc["cb", "top1"] == "61.00"
    assert table.set_index("method").loc["ce", "few"] == "–"
    assert list(table["n"]) == [1, 3]


def test_provenance_has_commit_versions_device():
    prov = records.provenance("cpu")
    assert set(prov) == {"git_commit", "versions", "device"}
    assert {"torch", "torchvision", "numpy", "python"} <= set(prov["versions"])
    assert "cpu" in prov["device"]


def make_figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2, 3], [3, 1, 2], label="a")
    ax.set_title("test")
    return fig


def test_figures_are_byte_identical_with_provenance(repo):
    figures.set_theme()
    params = {"epochs": 3}
    first = figures.save_figure(make_figure(), "fig", profile="quick", notebook="nb", params=params)
    hashes = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in first.items() if k != "json"}
    second = figures.save_figure(make_figure(), "fig", profile="quick", notebook="nb", params=params)
    assert hashes == {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in second.items() if k != "json"}
    pdf = first["pdf"].read_bytes()
    assert b"/FontFile2" in pdf          # TrueType fonts embedded
    assert b"/CreationDate" not in pdf   # no timestamp
    assert f"params={figures.params_hash(params)}".encode() in pdf
    from PIL import Image

    assert "profile=quick" in Image.open(first["png"]).text["Source"]
    sidecar = json.loads(first["json"].read_text())
    assert sidecar["sha256"]["png"] == hashes["png"] and sidecar["params"] == params
    plt.close("all")


def test_different_params_change_the_metadata(repo):
    a = figures.save_figure(make_figure(), "a", profile="quick", notebook="nb", params={"x": 1})
    b = figures.save_figure(make_figure(), "b", profile="quick", notebook="nb", params={"x": 2})
    assert a["pdf"].read_bytes() != b["pdf"].read_bytes()
    plt.close("all")
