"""The run store: one small, committed JSON file per finished run, ``runs/<profile>/<run key>.json``.

A store entry is the durable result of a run — its full configuration, what it measured (per-epoch
history, the test confusions of the selected epochs, whatever a stage computes), and its provenance
(commit, library versions, device, threads, wall time) — and never any weights. Training runs and
post-hoc stages (classifier re-training, DLSA, analyses of a trained model) are entries of the same store;
a stage's key covers its own configuration and the key of the run it starts from.

Entries are written atomically (temporary file + rename) under a lock, so concurrent writers lose
nothing; each carries a checksum of its content, so an entry edited by hand or damaged is detected when
read and named with the fix. The folder is what a notebook reads first: only what is missing is trained.
A run too long for one sitting can be parked: its checkpoint goes to ``<profile>/in-progress/<key>.pt`` until
its entry is written.
"""
from __future__ import annotations

import re
from pathlib import Path

from .io import CorruptFileError, dumps, file_lock, read_json, sha256_hex, write_json
from .paths import ROOT, cache_dir, runs_dir

FORMAT = 1
KEY_PATTERN = re.compile(r"^[0-9a-f]{16}$")


class StoreError(CorruptFileError):
    """A store entry that is damaged, edited by hand or not what its name says."""


def checksum(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "checksum"}
    return "sha256:" + sha256_hex(dumps(body, indent=None))


class RunStore:
    """The entries of one profile: ``<root>/<profile>/<key>.json`` (root: the repository's ``runs/``)."""

    def __init__(self, profile: str, root: str | Path | None = None):
        self.profile = profile
        self.folder = Path(root if root is not None else runs_dir()) / profile

    def __repr__(self) -> str:
        return f"RunStore({self.folder})"

    def path(self, key: str) -> Path:
        if not KEY_PATTERN.match(key):
            raise ValueError(f"not a run key: {key!r} (16 hex digits)")
        return self.folder / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if KEY_PATTERN.match(p.stem))

    def get(self, key: str) -> dict | None:
        """The verified entry of ``key``, or None when the store has none."""
        path = self.path(key)
        if not path.exists():
            return None
        fix = (f"restore it with `git checkout -- {_shown(path)}`, or delete it to run it again")
        entry = read_json(path, what="store entry", fix=fix)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
            raise StoreError(f"store entry {path} is not a format-{FORMAT} entry for key {key}; {fix}")
        if entry.get("checksum") != checksum(entry):
            raise StoreError(f"store entry {path} fails its checksum (edited by hand or damaged); {fix}")
        return entry

    def put(self, entry: dict) -> Path:
        """Write ``entry`` (a dict with at least ``key``) with its checksum, atomically, under the store's lock."""
        entry = {**entry, "format": FORMAT}
        entry["checksum"] = checksum(entry)
        path = self.path(entry["key"])
        with file_lock(self.lock_path()):
            write_json(path, entry)
            # the finished entry supersedes the checkpoint its run was parked with
            self.parked_path(entry["key"]).unlink(missing_ok=True)
        return path

    def parked_path(self, key: str) -> Path:
        """Where ``python -m ltlib sweep --park`` leaves the checkpoint of an unfinished run, beside the entries but
        git-ignored (weights are not results): copied to another machine, a sweep there resumes from it."""
        return self.folder / "in-progress" / f"{self.path(key).stem}.pt"

    def lock_path(self) -> Path:
        return cache_dir() / "locks" / f"store-{self.profile}.lock"

    def run_lock(self, key: str):
        """A lock held while a process computes ``key``: a second process waits, then finds the entry."""
        return file_lock(cache_dir() / "locks" / f"run-{key}.lock", timeout=7 * 24 * 3600.0)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
