"""ezpool._worker.launch: the workers EzPool starts itself never import from the current directory.

Another user (uid 65534) owns a directory the victim (root here) works from, and has
planted there an ``ezpool/`` package and a module named like the victim's own: each
creates a marker file when it is imported. The victim's pool starts its worker (and
that worker replaces itself after a timeout), and ``serve --procs`` starts its
processes, from that directory: no marker may appear, and the results are right.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from ezpool import Pool, TaskTimeout
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(120)

OTHER_UID = 65534
#: The victim's own module, and the name the planted one shadows.
MODULE = "ezpool_victim_tasks"

MINE = textwrap.dedent("""\
    import time

    def square(x):
        return x * x

    def nap(seconds):
        time.sleep(seconds)
        return seconds
""")

PLANTED = textwrap.dedent("""\
    import os
    open(os.path.join({markers!r}, {name!r} + "-" + str(os.getpid())), "w").close()

    def square(x):
        return -1

    def nap(seconds):
        return -1
""")


#: What is planted, by default: EzPool itself, and a module named like the victim's.
EZPOOL_AND_MINE = ("ezpool", "ezpool.serve", MODULE)


@pytest.fixture
def planted(request, tmp_path, monkeypatch):
    """A directory of uid 65534 holding planted modules (``EZPOOL_AND_MINE``, or the
    names given as the fixture's param); the victim's own ``MODULE`` imported from a
    directory of its own; the markers' directory."""
    names = getattr(request, "param", EZPOOL_AND_MINE)
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"the planted directory belongs to another user (uid {OTHER_UID}), which needs root")
    markers = tmp_path / "markers"
    markers.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f"{MODULE}.py").write_text(MINE)
    shared = Path(tempfile.mkdtemp(prefix="ezpool-shared-"))
    try:
        for name in names:
            package = any(other.startswith(name + ".") for other in names)
            where = shared / (name.replace(".", "/") + ("/__init__.py" if package else ".py"))
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(PLANTED.format(markers=str(markers), name=name))
        for path in [shared, *shared.rglob("*")]:
            os.chown(path, OTHER_UID, OTHER_UID)
        shared.chmod(0o755)
        monkeypatch.syspath_prepend(str(mine))
        monkeypatch.delitem(sys.modules, MODULE, raising=False)
        monkeypatch.chdir(shared)
        yield shared, markers
    finally:
        sys.modules.pop(MODULE, None)
        os.chdir(tmp_path)
        shutil.rmtree(shared, ignore_errors=True)


def test_a_pool_s_own_worker_runs_nothing_planted_in_the_current_directory(planted):
    shared, markers = planted
    victim = __import__(MODULE)
    assert Path(victim.__file__).parent != shared
    uri = f"PYRO:worker@127.0.0.1:{free_port()}"

    def run() -> None:
        with Pool(mode="distributed", workers=[uri], spawn=True, progress=False) as pool:
            results = pool.map(victim.square, range(20))
            assert dict(results) == {x: x * x for x in range(20)}
            # A task past its timeout makes the worker replace itself (exec), from the same directory.
            late = pool.map(victim.nap, [0, 3], timeout=1)
            assert late[0] == 0 and isinstance(late[3], TaskTimeout)
            assert dict(pool.map(victim.square, range(5))) == {x: x * x for x in range(5)}

    _nothing_planted_ran(markers, run)


def _nothing_planted_ran(markers: Path, run) -> None:
    """``run()``; then fail if a planted module was imported (first), or if ``run`` failed."""
    failure = None
    try:
        run()
    except Exception as exc:
        failure = exc
    ran = sorted(os.listdir(markers))
    assert not ran, f"code planted by uid {OTHER_UID} ran as this user: {ran} (and then: {failure!r})"
    if failure is not None:
        raise failure


def test_serve_procs_processes_run_nothing_planted_in_the_current_directory(planted, start_daemon,
                                                                            core_child_env):
    _, markers = planted
    script = Path(sys.executable).with_name("ezpool-serve")  # not -m: that would import the planted one
    if not script.exists():
        pytest.skip(f"no ezpool-serve script next to {sys.executable} (is EzPool installed?)")
    port = free_port(count=2)

    def run() -> None:
        command = [str(script), "--procs", "2", "--port", str(port)]
        served = start_daemon(command, expect=2, env=core_child_env)
        with Pool(mode="distributed", workers=served.uris, spawn=False, progress=False) as pool:
            assert dict(pool.map(lambda x: x + 1, range(10))) == {x: x + 1 for x in range(10)}

    _nothing_planted_ran(markers, run)


@pytest.mark.parametrize("planted", [("Pyro4", "cloudpickle", "serpent", MODULE)], indirect=True)
def test_python_m_serve_by_hand_from_a_shared_directory_takes_it_off_and_says_so(planted, start_daemon,
                                                                                core_child_env):
    """``python -m`` imports EzPool from the current directory before any of its code runs:
    that cannot be helped (the docs say to run ``ezpool-serve`` there). What it imports
    afterwards, and the modules clients name, no longer come from there."""
    shared, markers = planted
    victim = __import__(MODULE)
    port = free_port()

    def run() -> None:
        served = start_daemon([sys.executable, "-m", "ezpool.serve", "--port", str(port)], env=core_child_env)
        with Pool(mode="distributed", workers=served.uris, spawn=False, progress=False) as pool:
            # The victim's module is not on that worker's path: it travels by value.
            squares = pool.map(victim.square, range(10), ship_modules=[MODULE])
            assert dict(squares) == {x: x * x for x in range(10)}
        warning = served.process.stderr.readline()
        said = f"python -m ezpool.serve: warning: the current directory {shared} was first on the import path"
        assert warning.startswith(said + " (python -m puts it there) and others can write it")

    _nothing_planted_ran(markers, run)


def test_the_current_directory_reaches_a_worker_only_where_no_one_else_can_write_it(tmp_path, monkeypatch):
    from ezpool._worker.launch import import_path

    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    monkeypatch.chdir(own)
    assert import_path(["", "/somewhere", str(own)]) == [str(own), "/somewhere"]
    monkeypatch.chdir(open_to_all)
    assert import_path(["", "/somewhere", str(open_to_all)]) == ["/somewhere"]
    assert stat.S_IMODE(open_to_all.stat().st_mode) == 0o777


def test_a_started_worker_has_no_current_directory_on_its_path(tmp_path, core_child_env, monkeypatch):
    from ezpool._worker.launch import BOOT

    monkeypatch.chdir(tmp_path)
    probe = BOOT.split("from ezpool")[0] + "import os; print(os.getcwd() in sys.path, '' in sys.path)"
    done = subprocess.run([sys.executable, "-c", probe], env=core_child_env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr
