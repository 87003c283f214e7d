"""Result records with provenance, written atomically; summary tables over seeds.

A record is a flat dict: ``method, dataset, protocol, imbalance, seed, epochs, top1, balanced,
many, medium, few, selected_on ("val" or "last"), epoch_selected, per_class, git_commit, params,
versions, device, wall_s, profile``. Notebooks and figures read records, never training objects.
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .data import atomic_write_bytes
from .paths import ROOT, results_dir

IDENTITY = ("method", "dataset", "protocol", "imbalance", "seed", "selected_on")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD commit of the repository, with ``-dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    import numpy
    import sklearn
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} (cpu, {torch.get_num_threads()} threads)"


def provenance(device: str) -> dict:
    return {"git_commit": git_commit(), "versions": versions(), "device": device_name(device)}


def write_json(path: Path, payload) -> None:
    text = json.dumps(_clean(payload), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode()))


def _clean(value):
    """JSON has no NaN: write null instead (a missing group, e.g. no few-shot class)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def results_path(profile: str, notebook: str) -> Path:
    return results_dir(profile) / f"{notebook}.json"


def load_records(profile: str, notebook: str) -> list[dict]:
    path = results_path(profile, notebook)
    return json.loads(path.read_text()) if path.exists() else []


def save_records(profile: str, notebook: str, records: Iterable[dict]) -> Path:
    """Merge ``records`` into ``results/<profile>/<notebook>.json``.

    A new record replaces the stored one with the same identity (method, dataset, protocol,
    imbalance, seed, selected_on); all other stored records are kept.
    """
    new = list(records)
    keys = {tuple(r.get(k) for k in IDENTITY) for r in new}
    kept = [r for r in load_records(profile, notebook) if tuple(r.get(k) for k in IDENTITY) not in keys]
    merged = sorted(kept + [_clean(r) for r in new], key=lambda r: tuple(str(r.get(k)) for k in IDENTITY))
    path = results_path(profile, notebook)
    write_json(path, merged)
    return path


def summary_table(records: Sequence[dict], selected_on: str = "val", group_by: Sequence[str] = ("method",),
                  columns: Sequence[str] = ("top1", "many", "medium", "few"), order: Sequence[str] | None = None):
    """Mean ± std over seeds as a pandas DataFrame of strings (``n`` = number of seeds)."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame([r for r in records if r["selected_on"] == selected_on])
    if frame.empty:
        return frame
    rows = []
    for key, group in frame.groupby(list(group_by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(group_by, key))
        for column in columns:
            values = group[column].astype(float).dropna().to_numpy()
            if len(values) == 0:
                row[column] = "–"
            elif len(values) == 1:
                row[column] = f"{values[0]:.2f}"
            else:
                row[column] = f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
        row["n"] = int(group["seed"].nunique())
        rows.append(row)
    table = pd.DataFrame(rows)
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        table = table.sort_values(list(group_by)[0], key=lambda s: s.map(lambda v: rank.get(v, len(rank))))
    return table.reset_index(drop=True)


def to_markdown(table) -> str:
    """A pandas DataFrame as a GitHub markdown table (no extra dependency)."""
    columns = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
