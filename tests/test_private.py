"""Files that must be the user's own (``ezpool._core.private``), key strength, ``new-key``.

The attacks of issue 25 (items 3, 7 and 8): another local user plants a key file
as a symbolic link (to ``/proc/self/environ``, whose contents they can predict),
owns or may write the key's folder, picks a guessable key, or owns the folder
``python -m ezpool.tls init`` writes into. Planting is done as uid 65534 with
``setpriv`` where the tests run as root; elsewhere those cases skip, saying why.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ezpool import SecurityError
from ezpool._core.private import check_private_dir, make_private_dir, read_private
from ezpool.security import KEY_ENV, KEY_FILE_ENV, check_key, read_key_file, resolve_key, user_key, weakness
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
GOOD = secrets.token_hex(32).encode()

as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user (uid 65534)"
)


@pytest.fixture(autouse=True)
def key_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key in the environment; the per-user key file under tmp_path."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def write_key(path: Path, data: bytes = GOOD, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def as_nobody(*command: str) -> None:
    """Run ``command`` as uid 65534, the other local user."""
    if shutil.which("setpriv") is None:
        pytest.skip("acting as a second user needs setpriv (util-linux), which is missing")
    ids = str(NOBODY)
    setpriv = ["setpriv", "--reuid", ids, "--regid", ids, "--clear-groups"]
    subprocess.run([*setpriv, *command], check=True, timeout=30)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder under /tmp that uid 65534 may write (a shared project folder); removed after."""
    shared = Path(tempfile.mkdtemp(prefix="ezpool-shared-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- item 3: symbolic links, pseudo files, folders of others ---


def test_a_key_file_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = write_key(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SecurityError, match="symbolic link") as info:
        read_key_file(tmp_path / "link")
    assert str(real) in str(info.value)  # says where the real file is
    assert read_key_file(real) == GOOD


def test_a_link_to_proc_self_environ_is_refused(tmp_path: Path, monkeypatch) -> None:
    link = tmp_path / "key"
    link.symlink_to("/proc/self/environ")
    monkeypatch.setenv(KEY_FILE_ENV, str(link))
    with pytest.raises(SecurityError, match="symbolic link"):
        resolve_key()


def test_a_folder_link_into_proc_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A link earlier in the path (``conf -> /proc/self``) reaches ``environ``: what was
    opened is judged, not the path."""
    (tmp_path / "conf").symlink_to("/proc/self")
    with pytest.raises(SecurityError, match=r"kernel makes up|not an ordinary file"):
        read_key_file(tmp_path / "conf" / "environ")
    with pytest.raises(SecurityError, match=r"kernel makes up|not an ordinary file"):
        read_private(tmp_path / "conf" / "environ", "the key file")


def test_a_key_folder_that_others_may_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    write_key(folder / "key")
    folder.chmod(0o777)
    with pytest.raises(SecurityError, match=r"0777.*chmod go-w") as info:
        read_key_file(folder / "key")
    assert str(folder) in str(info.value)
    folder.chmod(0o1777)  # sticky, like /tmp: no one else can rename or remove our file
    assert read_key_file(folder / "key") == GOOD
    folder.chmod(0o755)
    assert read_key_file(folder / "key") == GOOD


def test_the_per_user_key_folder_is_made_0700_and_checked(key_env: Path) -> None:
    made = user_key()
    assert stat.S_IMODE((key_env / "ezpool").stat().st_mode) == 0o700
    (key_env / "ezpool").chmod(0o777)
    with pytest.raises(SecurityError, match="others can replace"):
        user_key()
    (key_env / "ezpool").chmod(0o700)
    assert user_key() == made


@as_root
def test_a_key_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    write_key(folder / "key")
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(SecurityError, match=f"owned by uid {NOBODY}"):
        read_key_file(folder / "key")
    with pytest.raises(SecurityError, match=f"owned by uid {NOBODY}"):
        check_private_dir(folder, "the key file")


@as_root
def test_another_user_cannot_plant_the_key_as_a_link_to_proc(shared_dir: Path, monkeypatch) -> None:
    """The attack as reported: the config folder is one another user can write; they plant
    ``ezpool/key -> /proc/self/environ`` before the victim's first use. Serving refuses,
    saying why, and never uses the environment as a key."""
    planted = shared_dir / "ezpool"
    as_nobody("mkdir", "-m", "0777", str(planted))
    as_nobody("ln", "-s", "/proc/self/environ", str(planted / "key"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(shared_dir))
    with pytest.raises(SecurityError) as info:
        resolve_key()
    assert "symbolic link" in str(info.value) or f"owned by uid {NOBODY}" in str(info.value)
    env = {key: value for key, value in os.environ.items() if key not in (KEY_ENV, KEY_FILE_ENV)}
    env.update(XDG_CONFIG_HOME=str(shared_dir), PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.serve", "tests._workers:Square", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done
    assert "symbolic link" in done.stderr or f"owned by uid {NOBODY}" in done.stderr, done.stderr


def test_make_private_dir_refuses_a_link_in_place_of_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SecurityError, match="not a folder of its own"):
        make_private_dir(tmp_path / "link", "the key file")


# --- item 7: keys that are easy to guess ---


@pytest.mark.parametrize(
    "weak", ["science-cluster2025", "given-key-0123456789", "0123456789" * 3, "abcdefgh" * 2, "k" * 40]
)
def test_guessable_keys_are_refused_from_every_source(weak: str, tmp_path: Path, monkeypatch) -> None:
    assert weakness(weak.encode())
    with pytest.raises(SecurityError, match="new-key") as info:
        resolve_key(hmac_key=weak)
    assert weak not in str(info.value)
    monkeypatch.setenv(KEY_ENV, weak)
    with pytest.raises(SecurityError, match=KEY_ENV):
        resolve_key()
    monkeypatch.delenv(KEY_ENV)
    path = write_key(tmp_path / "key", weak.encode())
    with pytest.raises(SecurityError, match=f"new-key --force {path}"):
        resolve_key(key_file=path)


def test_random_keys_of_every_usual_kind_are_accepted() -> None:
    for _ in range(2000):
        for key in (
            secrets.token_hex(16),
            secrets.token_hex(32),
            secrets.token_urlsafe(16),
            base64.b64encode(os.urandom(24)).decode(),
        ):
            assert check_key(key, "hmac_key=") == key.encode(), key
        raw = secrets.token_bytes(16)
        if len(set(raw)) >= 8:  # 16 random bytes have fewer than 8 distinct ones almost never
            assert check_key(raw, "hmac_key=") == raw


@as_root
def test_serve_refuses_a_guessable_key_before_it_listens(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in (KEY_ENV, KEY_FILE_ENV)}
    env.update(EZPOOL_HMAC_KEY="science-cluster2025", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.serve", "tests._workers:Square", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "too easy to guess" in done.stderr, done
    assert "science-cluster2025" not in done.stderr + done.stdout


# --- python -m ezpool.security new-key ---


def new_key(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "ezpool.security", "new-key", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_new_key_prints_a_key_that_passes(tmp_path: Path) -> None:
    done = new_key()
    assert done.returncode == 0, done
    key = done.stdout.strip()
    assert len(key) == 64 and int(key, 16) >= 0 and not weakness(key.encode())


def test_new_key_writes_a_private_file_and_never_over_one(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "key"
    assert new_key(str(path)).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = read_key_file(path)
    again = new_key(str(path))
    assert again.returncode == 1 and str(path) in again.stderr
    assert read_key_file(path) == first
    assert new_key("--force", str(path)).returncode == 0
    assert read_key_file(path) != first


def test_new_key_force_replaces_a_link_and_not_what_it_points_to(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "key"
    link.symlink_to(victim)
    assert new_key("--force", str(link)).returncode == 0
    assert victim.read_text() == "keep me\n"
    assert not link.is_symlink() and read_key_file(link)


# --- item 8: TLS private keys and the folder tls init writes into ---




def test_a_tls_private_key_others_can_read_is_refused(certificates: Path, tmp_path: Path) -> None:
    from ezpool.security import client_tls_context, server_tls_context

    cluster = certificates
    shared = tmp_path / "server-key.pem"
    shutil.copy(cluster / "server-key.pem", shared)
    shared.chmod(0o644)
    with pytest.raises(SecurityError, match=r"0644.*chmod 600"):
        server_tls_context(cluster / "server.pem", shared)
    client_key = tmp_path / "client-key.pem"
    shutil.copy(cluster / "client-key.pem", client_key)
    client_key.chmod(0o640)
    with pytest.raises(SecurityError, match="0640"):
        client_tls_context(cluster / "ca.pem", cluster / "client.pem", client_key)
    shared.chmod(0o600)
    assert server_tls_context(cluster / "server.pem", shared)
    # the certificate of a separate key file is public: 0644 is fine for it
    assert stat.S_IMODE((cluster / "server.pem").stat().st_mode) == 0o644


@as_root
def test_tls_init_refuses_a_folder_another_user_owns(shared_dir: Path) -> None:
    pytest.importorskip("cryptography")
    theirs = shared_dir / "certs"
    as_nobody("mkdir", "-m", "0777", str(theirs))
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.tls", "init", str(theirs), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert done.returncode == 1 and f"owned by uid {NOBODY}" in done.stderr, done
    assert list(theirs.iterdir()) == []
