"""The verdicts every notebook states: paired differences over seeds and their 95 % confidence interval."""
import math

import pytest

from ltlib.analysis import compare, mean_std, summary_table
from ltlib.views import counted

T_975_2_DOF = 4.302652729911275  # Student's t, two-sided 95 %, 2 degrees of freedom (printed tables)


def record(method, seed, top1, *, selected_on="val", dataset="cifar10-jpeg", imbalance=100.0, **extra):
    return {"method": method, "seed": seed, "top1": top1, "few": top1 / 2, "selected_on": selected_on,
            "dataset": dataset, "imbalance": imbalance, **extra}


def pairs(differences, baseline=50.0):
    return ([record("ce", seed, baseline + seed) for seed in range(len(differences))]
            + [record("cb", seed, baseline + seed + d) for seed, d in enumerate(differences)])


def test_the_confidence_interval_is_students_t_over_the_paired_differences():
    comparison = compare(pairs([1.0, 2.0, 3.0]), "cb", "ce")
    assert comparison.differences == [1.0, 2.0, 3.0]
    assert comparison.mean == pytest.approx(2.0) and comparison.std == pytest.approx(1.0)
    assert comparison.half_width == pytest.approx(T_975_2_DOF / math.sqrt(3))


@pytest.mark.parametrize("differences, direction, threshold, verdict", [
    ([3.0, 3.5, 4.0], +1, 0.0, "holds"),
    ([-3.0, -3.5, -4.0], +1, 0.0, "does not hold"),
    ([-1.0, 2.0, 0.5], +1, 0.0, "not separable"),
    ([-3.0, -3.5, -4.0], -1, 0.0, "holds"),              # "method < baseline"
    ([-1.0, -1.1, -0.9], +1, -2.0, "holds"),              # "at most 2 points lower"
    ([-3.0, -3.1, -2.9], +1, -2.0, "does not hold"),
    ([5.0], +1, 0.0, "not separable"),                    # one seed: no spread to judge by
])
def test_the_verdict_reads_the_interval_against_the_claimed_side(differences, direction, threshold, verdict):
    assert compare(pairs(differences), "cb", "ce", direction=direction, threshold=threshold).verdict == verdict


def test_only_seeds_both_methods_ran_are_paired_and_only_the_selected_epochs_count():
    records = pairs([1.0, 2.0]) + [record("ce", 7, 10.0), record("cb", 0, 99.0, selected_on="last")]
    comparison = compare(records, "cb", "ce")
    assert comparison.differences == [1.0, 2.0]
    assert comparison.baseline_mean == pytest.approx(50.5)
    assert compare(records, "cb", "ce", selected_on="last").n == 0
    assert compare(records, "cb", "ce", dataset="digits").verdict == "no paired seeds"


def test_a_stage_is_paired_with_the_run_it_starts_from_by_the_runs_seed():
    records = ([record("ce", seed, 50.0) for seed in range(3)]
               + [record("ce + crt", seed, 52.0 + seed, stage_seed=0) for seed in range(3)])
    assert compare(records, "ce + crt", "ce").differences == [2.0, 3.0, 4.0]


def test_sentences_and_tables_count_seeds_in_words():
    assert "3 seeds" in compare(pairs([1.0, 2.0, 3.0]), "cb", "ce").sentence()
    assert "1 seed: no spread" in compare(pairs([1.0]), "cb", "ce").sentence()
    assert (counted(1, "seed"), counted(3, "seed"), counted(0, "variant")) == ("1 seed", "3 seeds", "0 variants")
    assert mean_std([1.0, 3.0]) == "2.00 ± 1.41" and mean_std([float("nan")]) == "–"
    table = summary_table(pairs([1.0, 2.0, 3.0]), columns=("top1", "few"), order=["ce", "cb"])
    assert table["method"].tolist() == ["ce", "cb"] and table["n"].tolist() == [3, 3]
    assert table.loc[1, "top1"] == "53.00 ± 2.00"
