"""Published numbers (``ltlib/published.yaml``) and whether a run of ltlib can be set beside them.

A published number is comparable with a record only when the setting matches: data set (the JPEG
re-encoding of CIFAR-10 is *not* the original PNG data), imbalance factor, long-tail protocol, backbone and
schedule length. :func:`comparability` says which of these differ, so a table can print "comparable" or the
list of differences instead of a bare number next to a bare number.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PUBLISHED = Path(__file__).with_name("published.yaml")
NOT_AVAILABLE = {"dlsa": "DLSA's result tables (arXiv 2208.02567) could not be read: not available",
                 "intra_inter": "the ICASSP 2022 paper's tables (arXiv 2204.09234) could not be read: not available"}


@lru_cache(maxsize=1)
def published() -> list[dict]:
    rows = yaml.safe_load(PUBLISHED.read_text())
    for row in rows:
        missing = {"paper", "method", "dataset", "imbalance", "protocol", "model", "epochs", "top1", "source",
                   "kind"} - set(row)
        if missing:
            raise ValueError(f"{PUBLISHED}: entry {row} lacks {sorted(missing)}")
    return rows


def for_paper(paper: str) -> list[dict]:
    return [row for row in published() if row["paper"] == paper]


def comparability(row: dict, *, dataset: str, imbalance: float, protocol: str, model: str, epochs: int) -> str:
    """"comparable", or the differences between a published setting and a run's (e.g. "data: cifar10-jpeg vs …")."""
    differences = []
    if row["dataset"] != dataset:
        note = " (JPEG re-encoding of the PNG data)" if dataset == f"{row['dataset']}-jpeg" else ""
        differences.append(f"data {dataset} vs {row['dataset']}{note}")
    if float(row["imbalance"]) != float(imbalance):
        differences.append(f"IF {imbalance:g} vs {row['imbalance']:g}")
    if row["protocol"] != protocol:
        differences.append(f"protocol {protocol} vs {row['protocol']}")
    if row["model"] != model:
        differences.append(f"backbone {model} vs {row['model']}")
    if int(row["epochs"]) != int(epochs):
        differences.append(f"{epochs} vs {row['epochs']} epochs")
    return "comparable" if not differences else "not comparable: " + "; ".join(differences)


def closest_setting(row: dict, settings) -> tuple[str, float]:
    """Of an execution's (data set, IF) settings, the one to set a published row beside: the same data set (JPEG or
    not) and IF where it was run, else the same data set, else the first setting."""
    settings = list(settings)
    if not settings:
        raise ValueError("no (data set, IF) setting to compare a published row with")
    return sorted(settings, key=lambda s: _mismatch(row, *s))[0]


def _mismatch(row: dict, dataset: str, imbalance: float) -> tuple[bool, bool]:
    """Sort key of a published row against a setting: another data set (JPEG or not) first, then another IF."""
    return dataset.replace("-jpeg", "") != row["dataset"], float(row["imbalance"]) != float(imbalance)


def best_match(paper: str, method: str, dataset: str, imbalance: float) -> dict | None:
    """The published row of ``method`` closest to the setting: same data set base and IF first."""
    rows = [r for r in for_paper(paper) if r["method"] == method]
    if not rows:
        return None
    return sorted(rows, key=lambda r: (*_mismatch(r, dataset, imbalance), -float(r["imbalance"])))[0]
