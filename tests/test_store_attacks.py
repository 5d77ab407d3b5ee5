"""A store planted or changed by another user runs nothing and gives none of its values.

The attacker is uid 65534 with its own EzPool (a copy of this checkout's, staged
where it can read it) and its own key, under ``setpriv``; the victim is root, with
its per-user key in a config dir only it can read (``conftest._own_config_dir``).
The shared dir is sticky and writable by all, like ``/tmp``. A payload's proof is
a directory it makes in ``markers/`` when a victim unpickles it.

Each victim reads the store the three ways a user does: ``python -m ezpool.store
PATH``, ``open_store(PATH)``, and a resumed ``map(store=PATH)``.

Run as root with ``setpriv``; elsewhere these skip saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ezpool import Pool, open_store
from ezpool.errors import StoreError
from ezpool.store import Store
from tests import _helpers as h
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(180)

ATTACKER_UID = 65534

#: The attacker's script, run by path as uid 65534 with its own EzPool. ``plant``: its own
#: store of ``tests._helpers.square`` whose values are 666 and a payload, signed with its own
#: key (``signed``) or in the format older EzPools read, unsigned (``unsigned``). ``tamper``:
#: the values of the first row of a store it can write (the victim's) replaced by a payload.
_ATTACKER = r'''
import contextlib, os, pickle, sqlite3, sys

command, path, markers = sys.argv[1:4]


class Payload:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return os.makedirs, (os.path.join(markers, self.name), 0o777, True)


def rows(db):
    return [row for (row,) in db.execute("SELECT id FROM batches ORDER BY id")]


def plant(signed):
    from ezpool.store import Store
    from tests._helpers import square

    with Store(path) as store:
        store.sweep(square).record(list(range(10)), 0, [666] * 10, [0.5] * 10, (), "attacker")
    name = "planted-" + ("signed" if signed else "unsigned")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for row in rows(db):
            db.execute("UPDATE batches SET outcome = ? WHERE id = ?",
                       (pickle.dumps([Payload(name)] + [666] * 9), row))
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version >= 3 and signed:  # signed with the attacker's own key, by its own EzPool
            from ezpool.security import resolve_key
            from ezpool.store.signing import Signer
            (salt,) = db.execute("SELECT salt FROM signing").fetchone()
            signer = Signer(resolve_key(), salt)
            columns = "sweep, tasks, outcome, layout, elapsed, failed, worker, recorded"
            for row in rows(db):
                values = db.execute(f"SELECT {columns} FROM batches WHERE id = ?", (row,)).fetchone()
                db.execute("UPDATE batches SET mac = ? WHERE id = ?", (signer.batch(*values), row))
        elif version >= 3:  # the format before rows were signed, which older EzPools read
            for table in ("sweeps", "batches", "forgotten"):
                db.execute(f"ALTER TABLE {table} DROP COLUMN mac")
            db.execute("DROP TABLE signing")
            db.execute("PRAGMA user_version = 2")
    os.chmod(path, 0o644)
    print("planted", path, flush=True)


def tamper():
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE batches SET outcome = ? WHERE id = ?",
                   (pickle.dumps([Payload("tampered")] + [666] * 4), rows(db)[0]))
    print("tampered", path, flush=True)


if command == "plant-signed":
    plant(True)
elif command == "plant-unsigned":
    plant(False)
else:
    tamper()
'''


def _as_attacker(*args: Any) -> list[str]:
    ids = str(ATTACKER_UID)
    setpriv = ["setpriv", "--reuid", ids, "--regid", ids, "--clear-groups"]
    return [*setpriv, sys.executable, "-s", *map(str, args)]


def _stage(site: Path, name: str, source: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(source, site / name)


class _Attacker:
    """uid 65534 with its own EzPool (staged where it can read it) and its own config dir."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.script = stage / "store_attacker.py"
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(stage / "home"),
                    "XDG_CONFIG_HOME": str(stage / "home" / "config"), "PYTHONPATH": str(stage / "site"),
                    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}

    def run(self, *args: Any) -> str:
        done = subprocess.run(_as_attacker(self.script, *args), env=self.env, cwd=self.stage,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"the attacker failed (exit {done.returncode}): {args}\n{done.stderr}")
        return done.stdout


@pytest.fixture(scope="module")
def store_attacker() -> Iterator[_Attacker]:
    """The attacker, or a skip saying why it cannot run here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"the attacks run as a second user (uid {ATTACKER_UID}), which needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("the attacks run as a second user with setpriv (util-linux), which is missing")
    stage = Path(tempfile.mkdtemp(prefix="ezpool-store-attacker-"))
    try:
        site = stage / "site"
        (site / "tests").mkdir(parents=True)
        _stage(site, "ezpool", REPO_ROOT / "ezpool")
        for name in ("__init__.py", "_helpers.py"):
            _stage(site / "tests", name, REPO_ROOT / "tests" / name)
        (stage / "store_attacker.py").write_text(_ATTACKER)
        (stage / "home").mkdir()
        for path in [stage, *stage.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.chown(stage / "home", ATTACKER_UID, ATTACKER_UID)
        attacker = _Attacker(stage)
        probe = ["-c", f"import os, ezpool.store; assert os.getuid() == {ATTACKER_UID}"]
        done = subprocess.run(_as_attacker(*probe), env=attacker.env, capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            import cloudpickle  # the one dependency of ezpool.store outside the standard library

            _stage(site, "cloudpickle", Path(cloudpickle.__file__).parent)
            for path in [site, *site.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            again = subprocess.run(_as_attacker(*probe), env=attacker.env, capture_output=True, text=True,
                                   timeout=60)
            if again.returncode != 0:
                pytest.skip(f"uid {ATTACKER_UID} cannot import a copy of ezpool with {sys.executable}: "
                            f"{done.stderr.strip()[-300:]}")
        yield attacker
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory everyone can write, sticky like /tmp, with ``markers/`` for the payloads' proofs."""
    folder = Path(tempfile.mkdtemp(prefix="ezpool-shared-"))
    try:
        folder.chmod(0o1777)
        (folder / "markers").mkdir()
        (folder / "markers").chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _markers(shared: Path) -> list[str]:
    return sorted(path.name for path in (shared / "markers").iterdir())


def _cli(core_python: str, env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([core_python, "-m", "ezpool.store", str(path)], env=env, capture_output=True,
                          text=True, timeout=60)


def _read_all_three_ways(path: Path, core_python: str, env: dict[str, str]) -> dict[str, Any]:
    """What ``python -m ezpool.store``, ``open_store`` and a resumed ``map(store=)`` give for ``path``."""
    seen: dict[str, Any] = {}
    done = _cli(core_python, env, path)
    seen["cli"] = (done.returncode, done.stdout + done.stderr)
    for name, read in (("open_store", lambda: open_store(path)),
                       ("map", lambda: Pool("serial", progress=False).map(h.square, range(10), store=path))):
        try:
            seen[name] = dict(read())
        except StoreError as exc:
            seen[name] = exc
    return seen


def _no_value_of_the_attacker(seen: dict[str, Any]) -> None:
    for name in ("open_store", "map"):
        if isinstance(seen[name], dict):
            assert 666 not in seen[name].values(), (name, seen[name])
    assert "666" not in seen["cli"][1]


@pytest.mark.parametrize("kind", ["unsigned", "signed"])
def test_a_store_another_user_planted_runs_nothing(store_attacker, shared, kind, core_python, core_child_env):
    path = shared / "results.sqlite"
    store_attacker.run(f"plant-{kind}", path, shared / "markers")
    assert path.stat().st_uid == ATTACKER_UID
    seen = _read_all_three_ways(path, core_python, core_child_env)
    assert _markers(shared) == [], seen
    _no_value_of_the_attacker(seen)
    code, text = seen["cli"]
    assert code == 2 and "is owned by uid 65534, not by you (uid 0)" in text, text
    for name in ("open_store", "map"):
        assert isinstance(seen[name], StoreError), (name, seen[name])
        assert f"{path} is owned by uid 65534" in str(seen[name])


def test_a_row_another_user_changed_in_your_store_is_never_loaded(
    store_attacker, shared, core_python, core_child_env, caplog
):
    path = shared / "results.sqlite"
    with Pool("serial", progress=False) as pool:
        pool.map(h.square, range(5), store=path)
        pool.map(h.square, range(5, 10), store=path)
    # A moment when others could write it (a group-writable umask, say), closed again afterwards.
    path.chmod(0o666)
    try:
        store_attacker.run("tamper", path, shared / "markers")
    finally:
        path.chmod(0o644)
    assert [p.name for p in shared.iterdir() if p.name.startswith("results")] == ["results.sqlite"]
    seen = _read_all_three_ways(path, core_python, core_child_env)
    assert _markers(shared) == [], seen
    _no_value_of_the_attacker(seen)
    assert seen["cli"][0] == 0, seen["cli"]
    assert seen["open_store"] == {n: n * n for n in range(5, 10)}  # the changed row left out
    assert seen["map"] == {n: n * n for n in range(10)}  # its tasks ran again
    assert "the MAC of the values of stored batch 1 does not match" in caplog.text


def test_a_store_made_under_another_key_is_refused_saying_so(
    store_attacker, shared, core_python, core_child_env
):
    planted = shared / "planted.sqlite"
    store_attacker.run("plant-signed", planted, shared / "markers")
    path = shared / "copied.sqlite"
    shutil.copyfile(planted, path)  # a copy of the victim's own: owned by it, mode 0644
    assert path.stat().st_uid == 0
    seen = _read_all_three_ways(path, core_python, core_child_env)
    assert _markers(shared) == [], seen
    _no_value_of_the_attacker(seen)
    code, text = seen["cli"]
    assert code == 2 and "was made under another EzPool key than yours" in text, text
    for name in ("open_store", "map"):
        assert isinstance(seen[name], StoreError), (name, seen[name])
        assert f"{path} was made under another EzPool key than yours" in str(seen[name])


def test_a_store_writable_by_others_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "s.sqlite"
    Pool("serial", progress=False).map(h.square, range(3), store=path)
    path.chmod(0o664)
    with pytest.raises(StoreError, match=rf"permissions 0664: others can write it.*chmod go-w {path}"):
        open_store(path)
    path.chmod(0o644)
    assert open_store(path) == {0: 0, 1: 1, 2: 4}


def test_a_link_planted_beside_a_store_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    Pool("serial", progress=False).map(h.square, range(3), store=path)
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    os.symlink(victim, str(path) + "-wal")
    with pytest.raises(StoreError, match=r"s\.sqlite-wal, beside the store .* is a symbolic link"):
        Pool("serial", progress=False).map(h.square, range(5), store=path)
    assert victim.read_text() == "keep me"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(path) + "-wal")


def test_a_store_of_an_older_ezpool_is_refused_until_you_sign_it(tmp_path, core_python, core_child_env):
    path = tmp_path / "old.sqlite"
    Pool("serial", progress=False).map(h.square, range(4), store=path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # what format 2 held: the same rows, unsigned
        for table in ("sweeps", "batches", "forgotten"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN mac")
        db.execute("DROP TABLE signing")
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(StoreError, match=rf"format 2, made by an older ezpool.*--upgrade {path}"):
        open_store(path)
    done = subprocess.run([core_python, "-m", "ezpool.store", "--upgrade", str(path)], env=core_child_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "signed 2 rows" in done.stdout  # a sweep and a batch
    assert open_store(path) == {0: 0, 1: 1, 2: 4, 3: 9}


def test_a_store_made_with_another_key_is_refused_as_a_whole_before_any_row_is_read(tmp_path, caplog):
    import secrets

    path = tmp_path / "s.sqlite"
    with Store(path, key=secrets.token_hex(32)) as store:
        store.sweep(h.square).record([1, 2], 0, [1, 4], [0.1, 0.1], (), "pid 1")
    for read in (lambda: open_store(path), lambda: Store(path).sweep(h.square)):
        with pytest.raises(StoreError, match=rf"{path} was made under another EzPool key than yours \(from "):
            read()
    assert "does not match" not in caplog.text  # refused at once, not row by row
