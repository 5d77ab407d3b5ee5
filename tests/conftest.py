"""Fixtures shared by the core tests (distributed fixtures live in their own file)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest

#: The checkout under test; child interpreters must import ezpool from here.
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def core_child_env() -> dict[str, str]:
    """Environment for a child interpreter that imports this checkout's ezpool."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.fixture
def core_python() -> str:
    """The interpreter running the tests, for child interpreters."""
    return sys.executable


@pytest.fixture(autouse=True, scope="module")
def _core_no_worker_left_behind():
    """Every test module must leave no ezpool worker process of this interpreter running."""
    yield
    left = [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]
    for proc in left:
        proc.kill()
        proc.join(5)
    assert not left, f"worker processes left running: {left}"
