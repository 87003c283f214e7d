"""One figure style and one way to save a figure: PDF + PNG + sidecar JSON, byte-stable, shown inline.

* seaborn's "paper" theme with ticks, no top/right spines;
* TrueType (Type 42) fonts embedded in PDF, as submission systems require;
* no timestamps in the files, so the same inputs give the same bytes;
* a sidecar ``<name>.json`` that describes the files beside it: caption, notebook, profile, the commit of
  the code that drew it, the run keys and results file the data came from, the seeds shown, and the
  files' sha256. The set is written so that a sidecar, when present, always matches its files
  (:func:`ltlib.io.atomic_write_set`); stale temporary files of killed writers are removed first;
* in a notebook, the figure is displayed where it is made, with its caption and the paths to cite.

``figures/INDEX.md`` (:func:`write_index`) lists every figure with its caption, notebook and profile.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import seaborn as sns

from .io import atomic_write_set, atomic_write_text, dumps, remove_stale_temporaries
from .paths import ROOT, figures_dir
from .provenance import git_commit

RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "axes.spines.top": False,
      "axes.spines.right": False, "savefig.bbox": "tight", "savefig.dpi": 300, "figure.dpi": 110}
INLINE_DPI = 100  # the copy shown in the notebook; the citable PNG is 300 dpi


def set_theme() -> None:
    """Apply ltlib's figure style globally (call once per notebook)."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind", rc=RC)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


class SavedFigure(dict):
    """The paths of a saved figure set (``pdf``, ``png``, ``json``). It shows nothing when it ends a notebook cell:
    the figure and its citation line are already displayed, and absolute paths do not belong in a notebook."""

    def _repr_pretty_(self, printer, cycle) -> None:
        pass

    def _ipython_display_(self) -> None:
        pass


def save_figure(fig: plt.Figure, name: str, *, profile: str, notebook: str, caption: str,
                run_keys: Sequence[str] = (), seeds: Sequence[int] | None = None, results: str | None = None,
                display: bool = True) -> SavedFigure:
    """Write ``figures/<profile>/<notebook>/<name>.{pdf,png,json}`` as one set and show the figure inline.

    ``caption``: one line saying what the figure shows, with the profile, data and seeds it was drawn from;
    ``run_keys``: the store entries whose numbers it draws; ``results``: the results file holding them.
    """
    folder = figures_dir(profile, notebook)
    remove_stale_temporaries(folder)
    commit = git_commit()
    keys = sorted(set(run_keys))
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:12]
    subject = f"ltlib {notebook} {name} profile={profile} commit={commit} runs={digest}"
    paths = SavedFigure(pdf=folder / f"{name}.pdf", png=folder / f"{name}.png", json=folder / f"{name}.json")
    blobs = {}
    for fmt, metadata in (("pdf", {"Subject": subject, "Creator": "ltlib", "CreationDate": None, "Producer": None}),
                          ("png", {"Source": subject, "Software": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata)
        blobs[fmt] = buffer.getvalue()
    sidecar = {"name": name, "caption": caption, "notebook": notebook, "profile": profile, "git_commit": commit,
               "run_keys": keys, "seeds": sorted(set(seeds)) if seeds is not None else None,
               "results": results or f"results/{profile}/{notebook}.json",
               "files": {fmt: str(paths[fmt].relative_to(ROOT)) if paths[fmt].is_relative_to(ROOT) else str(paths[fmt])
                         for fmt in ("pdf", "png")},
               "sha256": {fmt: hashlib.sha256(b).hexdigest() for fmt, b in blobs.items()}}
    atomic_write_set({paths["pdf"]: blobs["pdf"], paths["png"]: blobs["png"],
                      paths["json"]: (dumps(sidecar) + "\n").encode()})
    if display and _in_notebook():
        _show(fig, caption, sidecar["files"])
    plt.close(fig)
    return paths


def _show(fig: plt.Figure, caption: str, files: dict) -> None:
    from IPython.display import Image, Markdown, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=INLINE_DPI, metadata={"Software": None})
    display(Image(data=buffer.getvalue()))
    display(Markdown(f"*{caption}* — cite: `{files['pdf']}` (PDF), `{files['png']}` (PNG)"))


def sidecar_is_current(json_path: Path) -> bool:
    """Whether the PDF and PNG beside a sidecar are the files it describes."""
    sidecar = json.loads(Path(json_path).read_text())
    folder = Path(json_path).parent
    for fmt, digest in sidecar["sha256"].items():
        path = folder / f"{sidecar['name']}.{fmt}"
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


COMMITTED_PROFILES = ("cpu-real",)  # quick and paper figures are made locally and not committed


def index_text(root: Path | None = None, profiles: Sequence[str] = COMMITTED_PROFILES) -> str:
    """The text of ``figures/INDEX.md``: every figure of ``profiles`` with its caption, notebook, profile and files."""
    root = Path(root or ROOT / "figures")
    rows = []
    for sidecar_path in sorted(p for profile in profiles for p in (root / profile).glob("*/*.json")):
        sidecar = json.loads(sidecar_path.read_text())
        base = sidecar_path.with_suffix("")
        rel = base.relative_to(root)
        rows.append(f"| `{rel}` | {sidecar.get('caption', '').replace('|', '/')} | {sidecar['notebook']} | "
                    f"{sidecar['profile']} | [PDF]({rel}.pdf) · [PNG]({rel}.png) |")
    return ("# Figures\n\nGenerated by `python -m ltlib index-figures` from the sidecar of every figure (its JSON file "
            "holds the commit, the run keys of the store entries it was drawn from, the seeds shown and the files' "
            "hashes); the committed profiles only (" + ", ".join(profiles) + "): `make reproduce` writes the others "
            "locally.\n\n| figure | caption | notebook | profile | files |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def write_index(root: Path | None = None, profiles: Sequence[str] = COMMITTED_PROFILES) -> Path:
    """Write ``figures/INDEX.md`` (:func:`index_text`)."""
    root = Path(root or ROOT / "figures")
    path = root / "INDEX.md"
    atomic_write_text(path, index_text(root, profiles))
    return path
