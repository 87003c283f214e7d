"""A notebook whose sweep is half done: what ``--available`` renders, what it names, and what 06 reports."""
from __future__ import annotations

import pytest

from ltlib.executor import execute
from ltlib.runner import MissingRuns, available_overrides
from ltlib.store import RunStore
from ltlib.studies import DifficultyNetNotebook, Study, config_class, trained_method
from ltlib.summary import NOTEBOOKS, claim_rows
from ltlib.views import context

SMALL = {"seeds": [0, 1], "epochs": 3, "milestones": [2], "stage2_epochs": 2}
METHODS = ["ce", "difficulty_net_as_released"]


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """CE complete (2 seeds with stage 2); Difficulty-Net as released: seed 0 with its stage 2, seed 1 not run."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LTLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
        config = DifficultyNetNotebook.load("quick", {**SMALL, "methods": METHODS})
        done = [p for p in config.plan() if trained_method(p.spec).name == "ce" or
                (p.spec.parent.seed if p.is_stage else p.spec.seed) == 0]
        execute(done, RunStore("quick", root), progress=False)
    return root


def test_available_renders_the_complete_methods_and_names_the_others(half_done, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(half_done))
    narrowed = available_overrides("03_difficulty_net", "quick", {**SMALL, "methods": METHODS})
    assert narrowed == {**SMALL, "methods": ["ce"]}
    study = Study(DifficultyNetNotebook.load("quick", narrowed), RunStore("quick", half_done))
    assert not study.missing()
    line = context(study)
    assert "**This rendering leaves out**" in line and "`difficulty_net_as_released` (2 of its 4 runs and stages" in line
    # the exact mode was never trained: the profile plans it, the line counts none of it
    assert "`difficulty_net` (0 of its 4 runs and stages" in line


def test_a_complete_notebook_is_rendered_whole_and_names_nothing(half_done, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(half_done))
    overrides = {**SMALL, "methods": ["ce"]}
    assert available_overrides("03_difficulty_net", "quick", overrides) == overrides
    profile_methods = DifficultyNetNotebook.load("quick").methods
    study = Study(DifficultyNetNotebook.load("quick", {**SMALL, "methods": profile_methods}), RunStore("quick", half_done))
    assert "leaves out" not in context(study)


def test_available_refuses_when_no_method_is_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path))
    with pytest.raises(MissingRuns, match="no method can be rendered without them"):
        available_overrides("03_difficulty_net", "quick", {**SMALL, "methods": METHODS})


def test_the_summary_reads_the_seeds_in_the_store_and_says_how_many(half_done):
    store = RunStore("quick", half_done)
    studies = {nb: Study(config_class(nb).load("quick"), store) for nb in NOTEBOOKS}
    studies["03_difficulty_net"] = Study(DifficultyNetNotebook.load("quick", {**SMALL, "methods": METHODS}), store)
    rows = {row["claim"]: row for row in claim_rows(studies).to_dict("records")}
    released = next(row for claim, row in rows.items() if claim.startswith("Difficulty-Net as released"))
    assert released["seeds"] == 1 and released["ours"].startswith("top1 ") and "1 seed" in released["paired diff"]
    exact = next(row for claim, row in rows.items() if claim.startswith("Difficulty-Net (+ stage 2)"))
    assert exact["ours"] == "not run" and exact["seeds"] == 0
