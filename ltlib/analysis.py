"""Tables and verdicts computed from records: mean ± std over seeds, paired differences, claim checks.

A *claim* compares a method with a baseline on one metric, over the seeds both were trained with. The
paired differences d_s = method_s − baseline_s give a mean and a two-sided 95 % confidence interval
(Student's t with n − 1 degrees of freedom). The verdict:

* ``holds``           the interval lies entirely on the claimed side of 0;
* ``does not hold``   it lies entirely on the other side;
* ``not separable``   it contains 0, or there is a single seed (no spread to judge by).

Sentences in the notebooks are built from these numbers, so a notebook reads truthfully at any profile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

GROUPS = ("top1", "many", "medium", "few")


def fmt(value, digits: int = 2) -> str:
    """A number for a table or sentence; "–" for NaN / None (an empty class group)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def select(records: Iterable[dict], **where) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def summary_table(records: Sequence[dict], selected_on: str = "val", group_by: Sequence[str] = ("method",),
                  columns: Sequence[str] = GROUPS, order: Sequence[str] | None = None):
    """Mean ± std over seeds as a pandas DataFrame of strings (``n`` = number of seeds)."""
    import pandas as pd

    chosen = [r for r in records if r["selected_on"] == selected_on]
    if not chosen:
        return pd.DataFrame(columns=[*group_by, *columns, "n"])
    frame = pd.DataFrame(chosen)
    rows = []
    for key, group in frame.groupby(list(group_by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(group_by, key))
        for column in columns:
            row[column] = mean_std(group[column].astype(float).tolist())
        row["n"] = int(group["seed"].nunique())
        rows.append(row)
    table = pd.DataFrame(rows)
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        table = table.sort_values(list(group_by)[0], key=lambda s: s.map(lambda v: rank.get(v, len(rank))),
                                  kind="stable")
    return table.reset_index(drop=True)


@dataclass
class Comparison:
    method: str
    baseline: str
    metric: str
    differences: list[float]      # paired by seed
    method_mean: float
    baseline_mean: float
    direction: int = +1           # +1: the claim is "method > baseline"; -1: "method < baseline"
    threshold: float = 0.0        # the claim is "difference > threshold" (direction +1), e.g. -2: "at most 2 lower"

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences)) if self.differences else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.differences, ddof=1)) if self.n > 1 else float("nan")

    @property
    def half_width(self) -> float:
        """Half-width of the two-sided 95 % confidence interval of the mean paired difference."""
        if self.n < 2:
            return float("inf")
        from scipy.stats import t

        return float(t.ppf(0.975, self.n - 1) * self.std / math.sqrt(self.n))

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no paired seeds"
        if self.n < 2 or any(math.isnan(d) for d in self.differences):
            return "not separable"
        low, high = self.mean - self.half_width, self.mean + self.half_width
        below, above = (low, high) if self.direction > 0 else (-high, -low)
        threshold = self.threshold * self.direction
        if below > threshold:
            return "holds"
        if above < threshold:
            return "does not hold"
        return "not separable"

    def sentence(self, what: str | None = None) -> str:
        """``few-shot: balanced_softmax 30.9 vs ce 0.0, paired difference +30.9 ± 4.2 (95 % CI ±10.4, 3 seeds)``."""
        label = what or self.metric
        if self.n == 0:
            return f"{label}: no paired seeds of {self.method} and {self.baseline}"
        spread = (f"{self.mean:+.2f} ± {self.std:.2f} (95 % CI ±{self.half_width:.2f}, {self.n} seeds)"
                  if self.n > 1 else f"{self.mean:+.2f} (1 seed: no spread to judge by)")
        return (f"{label}: {self.method} {fmt(self.method_mean)} vs {self.baseline} {fmt(self.baseline_mean)}, "
                f"paired difference {spread}")


def compare(records: Sequence[dict], method: str, baseline: str, metric: str = "top1", *, selected_on: str = "val",
            direction: int = +1, threshold: float = 0.0, **where) -> Comparison:
    """Pair ``method`` with ``baseline`` by (dataset, imbalance, seed, stage seed) on ``metric``."""
    def by_pair(name, with_stage_seed):
        return {(r["dataset"], r["imbalance"], r["seed"], r.get("stage_seed") if with_stage_seed else None): r[metric]
                for r in select(records, method=name, selected_on=selected_on, **where)}
    mine, theirs = by_pair(method, True), by_pair(baseline, True)
    if not set(mine) & set(theirs):  # a stage against the run it starts from: paired by the run's seed alone
        mine, theirs = by_pair(method, False), by_pair(baseline, False)
    common = sorted(set(mine) & set(theirs))
    differences = [float(mine[k]) - float(theirs[k]) for k in common]
    def mean_of(values):
        values = [float(v) for v in values]
        return float(np.mean(values)) if values else float("nan")
    return Comparison(method, baseline, metric, differences, mean_of(mine[k] for k in common),
                      mean_of(theirs[k] for k in common), direction, threshold)


def comparison_table(comparisons: Sequence[Comparison]):
    import pandas as pd

    def claim(c):
        relation = ">" if c.direction > 0 else "<"
        shift = f" {c.threshold:+g}" if c.threshold else ""
        return f"{c.method} {relation} {c.baseline}{shift}"

    return pd.DataFrame([{"claim": claim(c), "metric": c.metric,
                          "method": fmt(c.method_mean), "baseline": fmt(c.baseline_mean),
                          "paired diff": f"{c.mean:+.2f}" if c.n else "–",
                          "95% CI": f"±{c.half_width:.2f}" if c.n > 1 else "–", "seeds": c.n, "verdict": c.verdict}
                         for c in comparisons])
