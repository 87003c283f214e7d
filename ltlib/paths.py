"""Where ltlib reads data and writes artefacts.

Every location is derived here, so a notebook, a test and ``make`` agree on it:

* data root: ``$LTLIB_DATA`` or ``<repo>/data``;
* cache (decoded JPEG folders, run checkpoints): ``$LTLIB_CACHE`` or ``<repo>/cache``;
* run store: ``$LTLIB_RUNS`` or ``<repo>/runs`` (``<store>/<profile>/<run key>.json``, committed);
* results, figures and executed notebooks: ``<repo>/{results,figures,executed}/<profile>/``.
"""
from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    # The repository root is the folder holding pyproject.toml; notebooks run with their own
    # folder as working directory (nbval) or the caller's (papermill), so never trust the cwd.
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").exists():
            return candidate
    return Path.cwd()


ROOT: Path = _find_root()


def data_root() -> Path:
    """The folder that holds every data set (``$LTLIB_DATA``, default ``<repo>/data``)."""
    return Path(os.environ.get("LTLIB_DATA", ROOT / "data")).expanduser().resolve()


def cache_dir() -> Path:
    """Derived, re-creatable files: decoded image caches and run checkpoints."""
    path = Path(os.environ.get("LTLIB_CACHE", ROOT / "cache")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """The run store's root (``$LTLIB_RUNS``, default ``<repo>/runs``): one folder of entries per profile."""
    return Path(os.environ.get("LTLIB_RUNS", ROOT / "runs")).expanduser().resolve()


def results_dir(profile: str) -> Path:
    return ROOT / "results" / profile


def figures_dir(profile: str, notebook: str) -> Path:
    return ROOT / "figures" / profile / notebook
