"""Published numbers: which setting of a run a published row is set beside, and what differs."""
from __future__ import annotations

import pytest

from ltlib.reference import closest_setting, comparability, for_paper

ROW = {"dataset": "cifar100", "imbalance": 50, "protocol": "cdb", "model": "resnet32", "epochs": 200}


def test_a_published_row_is_set_beside_the_setting_it_was_run_at():
    settings = [("cifar10", 10.0), ("cifar100", 10.0), ("cifar100", 50.0), ("cifar100", 100.0)]
    assert closest_setting(ROW, settings) == ("cifar100", 50.0)
    assert closest_setting(ROW, settings[:2]) == ("cifar100", 10.0)  # the data set before the IF
    assert closest_setting(ROW, [("cifar10-jpeg", 100.0)]) == ("cifar10-jpeg", 100.0)  # nothing closer: the first
    assert closest_setting({**ROW, "dataset": "cifar10", "imbalance": 100}, [("cifar10-jpeg", 100.0)]) == \
        ("cifar10-jpeg", 100.0)
    with pytest.raises(ValueError, match="no \\(data set, IF\\) setting"):
        closest_setting(ROW, [])


def test_comparability_names_each_difference_and_the_jpeg_data():
    d, i = closest_setting(ROW, [("cifar100", 50.0)])
    assert comparability(ROW, dataset=d, imbalance=i, protocol="cdb", model="resnet32", epochs=200) == "comparable"
    text = comparability({**ROW, "dataset": "cifar10", "imbalance": 100}, dataset="cifar10-jpeg", imbalance=100.0,
                         protocol="ldam", model="resnet32", epochs=90)
    assert text.startswith("not comparable: ") and "JPEG re-encoding" in text
    assert "protocol ldam vs cdb" in text and "90 vs 200 epochs" in text and "IF" not in text


@pytest.mark.parametrize("paper", ["cdb", "difficulty_net"])
def test_every_published_row_of_the_notebooks_papers_finds_a_setting_of_the_paper_profile(paper):
    from ltlib.studies import CDBNotebook, DifficultyNetNotebook

    config = {"cdb": CDBNotebook, "difficulty_net": DifficultyNetNotebook}[paper].load("paper")
    settings = [(s, float(i)) for s in config.sources for i in config.imbalances]
    matched = 0
    for row in for_paper(paper):
        if row["dataset"] in config.sources and float(row["imbalance"]) in [i for _, i in settings]:
            assert closest_setting(row, settings) == (row["dataset"], float(row["imbalance"]))
            matched += 1
    assert matched  # the paper profile runs some of the published settings
