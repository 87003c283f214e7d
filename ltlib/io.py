"""Files ltlib writes: atomically, under a lock where several writers meet, JSON that keeps NaN.

Everything ltlib writes (store entries, results, figures, caches, executed notebooks) goes through
:func:`atomic_write_bytes`: a temporary file beside the target, flushed and renamed into place, so a
reader sees the old file or the new one, never half of one. :func:`atomic_write_set` does the same for
a group of files that must agree (a figure's PDF, PNG and sidecar): the group is staged first and
renamed last-to-first with the sidecar written last, and a reader that finds the sidecar's hashes
disagreeing with the files knows the set is being replaced.

JSON: Python's ``json`` writes the non-standard literals ``NaN`` / ``Infinity`` and reads them back, so
a metric of an empty class group (NaN) round-trips as NaN; :func:`read_json` turns a file that does
not parse into one error naming the file and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 3600.0  # a temporary file older than this belongs to a writer that was killed


class CorruptFileError(ValueError):
    """A file ltlib wrote earlier does not parse or fails its checksum; the message names the fix."""


def atomic_write_bytes(path: str | os.PathLike, write: Callable) -> None:
    """Call ``write(file_handle)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_write_set(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Write several files that describe each other; the last one named (a sidecar) is always true to the rest.

    Every file is staged to a temporary sibling first (a kill then leaves the old set untouched). Then the old
    sidecar is removed, the other files are renamed into place, and the new sidecar is renamed last. At every
    moment the sidecar is either absent (the set is being replaced; the next write completes it) or describes
    exactly the files beside it.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for target, blob in files.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        staged[-1][1].unlink(missing_ok=True)
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete temporary files (``.*.tmp``, ``.*.running.ipynb``) left in ``folder`` (recursively) by killed writers."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for path in [*folder.rglob(f".*{TMP_SUFFIX}"), *folder.rglob(".*.running.ipynb")]:
        try:
            if now - path.stat().st_mtime > older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def dumps(payload, *, indent: int | None = 1) -> str:
    """Canonical JSON: sorted keys, NaN and infinities as JSON5-style literals (Python reads them back)."""
    return json.dumps(to_jsonable(payload), indent=indent, sort_keys=True, allow_nan=True,
                      separators=(",", ":") if indent is None else (",", ": "))


def write_json(path: str | os.PathLike, payload) -> None:
    atomic_write_text(path, dumps(payload) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "file", fix: str | None = None):
    """Parse ``path``; a file that does not parse raises :class:`CorruptFileError` naming it and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({error}); "
                               f"{fix or 'restore it from git (git checkout -- <file>) or delete it to rebuild it'}"
                               ) from None


def to_jsonable(value):
    """Tensors, NumPy scalars and arrays, tuples and paths as plain JSON values (NaN kept)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays / scalars, torch tensors
        return to_jsonable(value.tolist())
    return value


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (created if needed), for read-modify-write of shared files."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        with lock:
            yield
    except Timeout:
        raise TimeoutError(f"waited {timeout:.0f} s for the lock {path}; another ltlib process holds it. If none is "
                           f"running, delete {path}") from None
