"""One figure style and one way to save a figure: PDF + PNG + sidecar JSON, byte-stable.

* seaborn's "paper" theme with ticks, no top/right spines;
* TrueType (Type 42) fonts embedded in PDF, as submission systems require;
* no timestamps in the files, so the same inputs give the same bytes;
* provenance (commit, profile, notebook, parameter hash) in the PDF/PNG metadata and, in full,
  in ``<name>.json`` beside them. All three files are written atomically.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from .data import atomic_write_bytes
from .paths import figures_dir
from .records import git_commit, write_json

RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "axes.spines.top": False,
      "axes.spines.right": False, "savefig.bbox": "tight", "savefig.dpi": 300, "figure.dpi": 110}


def set_theme() -> None:
    """Apply ltlib's figure style globally (call once per notebook)."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind", rc=RC)


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_figure(fig: plt.Figure, name: str, *, profile: str, notebook: str, params: dict,
                sources: list[str] | None = None) -> dict[str, Path]:
    """Write ``figures/<profile>/<notebook>/<name>.{pdf,png,json}`` and return their paths."""
    folder = figures_dir(profile, notebook)
    commit = git_commit()
    digest = params_hash(params)
    subject = f"ltlib {notebook} profile={profile} commit={commit} params={digest}"
    paths = {"pdf": folder / f"{name}.pdf", "png": folder / f"{name}.png", "json": folder / f"{name}.json"}
    blobs = {}
    for fmt, metadata in (("pdf", {"Subject": subject, "Creator": "ltlib", "CreationDate": None, "Producer": None}),
                          ("png", {"Source": subject, "Software": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata)
        blobs[fmt] = buffer.getvalue()
        atomic_write_bytes(paths[fmt], lambda fh, data=blobs[fmt]: fh.write(data))
    write_json(paths["json"], {"name": name, "notebook": notebook, "profile": profile, "git_commit": commit,
                               "params": params, "params_hash": digest, "sources": sources or [],
                               "sha256": {fmt: hashlib.sha256(b).hexdigest() for fmt, b in blobs.items()}})
    return paths
