"""Stores on the edges of the file system: a read-only mount, and a file removed or replaced mid-run.

The read-only store is on a real tmpfs that the test mounts and remounts read-only
(root only; elsewhere it skips saying why). The removed and replaced stores are
those of a real ``pmap`` on two processes, whose tasks leave a file each in a
directory, so that the next run shows which tasks ran again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ezpool import Pool, open_store
from ezpool.errors import StoreError
from ezpool.store import Store
from tests import _helpers as h

pytestmark = pytest.mark.timeout(120)


# --- a store on a read-only file system ---


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs at ``tmp_path/mnt``, unmounted at the end whatever happens."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to make read-only needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount and umount (util-linux) are missing")
    point = tmp_path / "mnt"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(point)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


def _remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True, timeout=30)
    with pytest.raises(OSError, match="Read-only file system"):
        (point / "probe").write_text("")


def test_a_store_on_a_read_only_file_system_is_read(mounted, core_python, core_child_env):
    path = mounted / "results.sqlite"
    with Pool("serial", progress=False) as pool:
        pool.map(h.square, range(6), store=path)
    assert sorted(p.name for p in mounted.iterdir()) == ["results.sqlite"]  # no -wal or -shm left
    _remount_read_only(mounted)
    assert open_store(path) == {n: n * n for n in range(6)}
    done = subprocess.run([core_python, "-m", "ezpool.store", str(path)], env=core_child_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "6 tasks done, 0 failed" in done.stdout
    with pytest.raises(StoreError, match=rf"cannot open {path}: .*its file system is read-only"):
        Store(path)
    assert sorted(p.name for p in mounted.iterdir()) == ["results.sqlite"]


_KILLED_WRITER = """
import os, signal, sys
from ezpool.store import Store
from tests._helpers import square
sweep = Store(sys.argv[1]).sweep(square)
sweep.record(list(range(8)), 0, [n * n for n in range(8)], [0.1] * 8, (), "pid child")
sweep.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_a_killed_run_left_on_a_read_only_file_system_is_read_with_its_last_commits(
    mounted, core_python, core_child_env
):
    path = mounted / "results.sqlite"
    done = subprocess.run([core_python, "-c", _KILLED_WRITER, str(path)], env=core_child_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert sorted(p.name for p in mounted.iterdir()) == ["results.sqlite", "results.sqlite-shm",
                                                         "results.sqlite-wal"]  # the commits are in the -wal
    _remount_read_only(mounted)
    assert open_store(path) == {n: n * n for n in range(8)}


# --- a store removed or replaced while a run writes to it ---

TASKS = 3000


def _run(pool: Pool, calls: Path, store: Path) -> dict:
    fun = functools.partial(h.nap_then_record, str(calls), seconds=0.001)
    return dict(pool.pmap(fun, range(TASKS), store=store))


def _when_started(calls: Path, count: int, then) -> threading.Thread:
    """A thread that runs ``then()`` once ``count`` tasks have run."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while len(os.listdir(calls)) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_store_removed_mid_run_is_made_again_and_the_next_run_resumes_everything(tmp_path, caplog):
    store, calls = tmp_path / "results.sqlite", tmp_path / "calls"
    calls.mkdir()
    removed: list[int] = []

    def remove() -> None:
        removed.append(len(os.listdir(calls)))
        os.unlink(store)

    with Pool("parallel", ncpu=2, progress=False) as pool:
        watcher = _when_started(calls, 600, remove)
        first = _run(pool, calls, store)
        watcher.join(10)
        assert removed and removed[0] < TASKS - 500, removed  # removed well before the end
        assert first == {n: n for n in range(TASKS)}
        assert f"the store {store} was removed while this run wrote to it; made it again" in caplog.text
        assert len(open_store(store)) == TASKS
        ran = sum(h.calls(calls).values())
        second = _run(pool, calls, store)
    assert second == first
    assert sum(h.calls(calls).values()) == ran == TASKS  # nothing ran twice


def test_a_store_replaced_mid_run_is_left_alone_and_the_outcomes_go_beside_it(tmp_path, caplog):
    store, calls = tmp_path / "results.sqlite", tmp_path / "calls"
    calls.mkdir()
    other = tmp_path / "other.sqlite"
    with Pool("serial", progress=False) as pool:
        pool.map(h.square, range(3), store=other)

    def replace() -> None:
        os.replace(other, store)

    with Pool("parallel", ncpu=2, progress=False) as pool:
        watcher = _when_started(calls, 600, replace)
        first = _run(pool, calls, store)
        watcher.join(10)
    assert first == {n: n for n in range(TASKS)}
    assert open_store(store) == {0: 0, 1: 1, 2: 4}  # the file put there, as it was
    (recovered,) = tmp_path.glob("results.recovered-*.sqlite")
    assert f"the store {store} was replaced while this run wrote to it" in caplog.text
    assert str(recovered) in caplog.text
    assert len(open_store(recovered)) == TASKS
    with contextlib.suppress(FileNotFoundError):
        os.unlink(other)
