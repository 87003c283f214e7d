"""Shared fixtures: every test gets its own cache folder, and no test downloads anything.

Tests that need real data read the data root from ``$LTLIB_DATA`` and skip when it is unset
or the data set is not there; all other test data is written by the tests into ``tmp_path``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakedata.py: stand-in data sets in the real formats

# The caller's own cache choice (CI sets LTLIB_CACHE), read before any fixture replaces it: only
# the real-data test uses it, so a decoded CIFAR-10 JPEG cache can be reused between runs.
USER_CACHE = os.environ.get("LTLIB_CACHE")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """``$LTLIB_CACHE`` and ``$LTLIB_RUNS`` -> fresh folders under tmp_path: no test writes into the repository's
    cache or run store."""
    cache = tmp_path / "ltlib-cache"
    monkeypatch.setenv("LTLIB_CACHE", str(cache))
    monkeypatch.setenv("LTLIB_RUNS", str(tmp_path / "ltlib-runs"))
    monkeypatch.delenv("LTLIB_DOWNLOAD", raising=False)
    monkeypatch.delenv("LTLIB_VERIFY_MD5", raising=False)
    return cache


@pytest.fixture
def user_cache() -> str | None:
    """``$LTLIB_CACHE`` as the caller set it (None when unset), not the per-test replacement."""
    return USER_CACHE


@pytest.fixture
def numpy_global_state():
    """Restore NumPy's global random state after a test that seeds it (as LDAM-DRW's code does)."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


@pytest.fixture
def real_data_folder():
    """A function: ``name -> $LTLIB_DATA/<name>``, skipping the test when that folder is not there."""
    def find(name: str) -> Path:
        root = os.environ.get("LTLIB_DATA")
        if not root:
            pytest.skip("LTLIB_DATA is not set: no real data to test on")
        folder = Path(root).expanduser() / name
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent")
        return folder
    return find


# The paper-profile test (every notebook executed twice) takes a third of the suite: started first, it runs on one
# worker while the other takes the rest (make test passes --no-loadscope-reorder, so this order is xdist's order).
LONGEST_FIRST = ("tests/test_paper_profile.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in LONGEST_FIRST)  # stable: the rest keep their order
