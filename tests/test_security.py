"""``ezpool.security`` and ``python -m ezpool.tls``: real files, real processes, real TLS handshakes.

Key files live under ``tmp_path`` (``XDG_CONFIG_HOME`` and ``EZPOOL_KEY_FILE``
point there); the real home is never touched. The "another user" cases need
root (as on CI) to hand a file to uid 65534, and are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from ezpool import EzPoolError, SecurityError
from ezpool.security import (
    KEY_ENV,
    KEY_FILE_ENV,
    MIN_KEY_BYTES,
    check_key,
    client_tls_context,
    is_loopback_host,
    private_key,
    read_key_file,
    resolve_key,
    server_tls_context,
    user_key,
    user_key_file,
)
from tests.conftest import REPO_ROOT

NOBODY = 65534
SHORT = "s3cr3t-sh0rt"  # 12 bytes: too short, and must never appear in a message
TLS_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file to another user"
)


@pytest.fixture(autouse=True)
def key_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key in the environment; the per-user key file goes under tmp_path. Its config dir."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV, "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- the per-user key file ---


def test_user_key_file_follows_the_environment(key_env: Path, monkeypatch, tmp_path: Path) -> None:
    assert user_key_file() == key_env / "ezpool" / "key"
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "elsewhere"))
    assert user_key_file() == tmp_path / "elsewhere"
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_key_file() == tmp_path / "home" / ".config" / "ezpool" / "key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert user_key_file() == tmp_path / "home" / ".config" / "ezpool" / "key"


def test_user_key_is_created_0600_in_a_0700_directory(key_env: Path, caplog) -> None:
    path = key_env / "ezpool" / "key"
    with caplog.at_level(logging.INFO, logger="ezpool.security"):
        key = user_key()
    assert len(key) == 64 and int(key, 16) >= 0
    assert path.read_bytes() == key + b"\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == ["key"]  # no temporary file left
    created = [r for r in caplog.records if r.levelno == logging.INFO and str(path) in r.getMessage()]
    assert len(created) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ezpool.security"):
        assert user_key() == key
    assert not caplog.records  # logged once, when created


def test_user_key_makes_the_directory_0700_whatever_the_umask(key_env: Path) -> None:
    old = os.umask(0o777)
    try:
        key = user_key()
    finally:
        os.umask(old)
    path = key_env / "ezpool" / "key"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key


def test_user_key_is_never_overwritten(key_env: Path) -> None:
    path = key_env / "ezpool" / "key"
    path.parent.mkdir(parents=True, mode=0o700)
    mine = b"my own key, which must stay mine"
    write_key(path, mine + b"\n")
    before = path.stat()
    assert user_key() == mine
    assert user_key() == mine
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == mine + b"\n"


def test_user_key_leaves_an_existing_directory_mode_alone(key_env: Path) -> None:
    directory = key_env / "ezpool"
    directory.mkdir(parents=True)
    directory.chmod(0o750)
    user_key()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


RACER = """
import sys, time, logging
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from ezpool.security import user_key
start = float(sys.argv[1])
while time.time() < start:
    pass
print(user_key().decode())
"""


def test_processes_racing_to_create_the_key_all_get_the_same_one(key_env: Path) -> None:
    start = time.time() + 1.5  # every racer is spinning by then, and they all go at once
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, repr(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(XDG_CONFIG_HOME=str(key_env)),
        )
        for _ in range(8)
    ]
    outputs = []
    for racer in racers:
        try:
            out, err = racer.communicate(timeout=60)
        finally:
            racer.kill()
        assert racer.returncode == 0, err
        outputs.append((out.strip(), err))
    path = key_env / "ezpool" / "key"
    keys = {out for out, _ in outputs}
    assert keys == {path.read_text().strip()}
    assert sum("created the EzPool key file" in err for _, err in outputs) == 1
    assert sorted(os.listdir(path.parent)) == ["key"]


def test_user_key_that_cannot_be_created_says_what_to_set(key_env: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(KEY_FILE_ENV, str(blocker / "key"))
    with pytest.raises(SecurityError, match=f"{KEY_FILE_ENV}.*{KEY_ENV}") as info:
        user_key()
    assert str(blocker / "key") in str(info.value)


# --- reading key files ---


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602, 0o644, 0o610], ids=oct)
def test_a_key_file_others_can_use_is_refused_with_a_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "key", b"a" * 32, mode)
    with pytest.raises(SecurityError) as info:
        read_key_file(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert "a" * 32 not in str(info.value)


def test_per_user_key_file_others_can_read_is_refused(key_env: Path) -> None:
    key = user_key()
    path = user_key_file()
    path.chmod(0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        user_key()
    path.chmod(0o600)
    assert user_key() == key


@needs_root
def test_a_key_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "key", b"b" * 32)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SecurityError) as info:
        read_key_file(path)
    message = str(info.value)
    assert str(path) in message and f"uid {NOBODY}" in message and f"chown 0 {path}" in message
    assert "b" * 32 not in message


@needs_root
def test_a_per_user_key_file_another_user_owns_is_refused_and_kept(key_env: Path) -> None:
    path = key_env / "ezpool" / "key"
    path.parent.mkdir(parents=True, mode=0o700)
    write_key(path, b"c" * 32)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SecurityError, match="owned by uid"):
        user_key()
    assert path.read_bytes() == b"c" * 32


def _python_for_nobody() -> Optional[str]:
    """An interpreter that uid 65534 can run (the test's own may live under /root)."""
    for candidate in dict.fromkeys([sys.executable, shutil.which("python3")]):
        if candidate is None:
            continue
        probe = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
        check = "import sys; assert sys.version_info >= (3, 9)"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run([*probe, candidate, "-c", check], capture_output=True, timeout=30)
            if done.returncode == 0:
                return candidate
    return None


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory owned by uid 65534 that it can reach (outside root's private tmp_path)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run a process as another user")
    directory = Path(tempfile.mkdtemp(prefix="ezpool-nobody-"))
    try:
        os.chown(directory, NOBODY, NOBODY)
        yield directory
    finally:
        shutil.rmtree(directory)


READ_AS_NOBODY = """
import sys
from ezpool import SecurityError
from ezpool.security import read_key_file, user_key
try:
    key = read_key_file(sys.argv[1]) if len(sys.argv) > 1 else user_key()
except SecurityError as exc:
    print("refused:", exc)
else:
    print("key:", key.decode())
"""


def test_as_another_user_a_root_owned_key_file_is_refused(nobody_dir: Path) -> None:
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    shared = write_key(nobody_dir / "shared-key", b"d" * 32, 0o600)  # root's, unreadable to nobody
    loose = write_key(nobody_dir / "loose-key", b"e" * 32, 0o644)  # root's, readable to nobody
    xdg = nobody_dir / "config"
    xdg.mkdir()
    os.chown(xdg, NOBODY, NOBODY)
    outputs = {}
    for label, extra in {"shared": [str(shared)], "loose": [str(loose)], "own": []}.items():
        done = subprocess.run(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
             python, "-c", READ_AS_NOBODY, *extra],
            capture_output=True, text=True, timeout=60, cwd=str(nobody_dir),
            env=child_env(XDG_CONFIG_HOME=str(xdg), HOME=str(nobody_dir)),
        )
        assert done.returncode == 0, done.stderr
        outputs[label] = done.stdout.strip()
    assert outputs["shared"].startswith(f"refused: cannot read the key file {shared}")
    assert outputs["loose"].startswith(f"refused: the key file {loose} is owned by uid 0, not by you")
    assert "e" * 32 not in outputs["loose"]
    # The same user makes and uses a per-user key of its own.
    own = xdg / "ezpool" / "key"
    assert outputs["own"] == f"key: {own.read_text().strip()}"
    assert own.stat().st_uid == NOBODY and stat.S_IMODE(own.stat().st_mode) == 0o600


def test_a_missing_key_file_is_refused_with_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(SecurityError) as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    assert f"python -m ezpool.security new-key {path}" in str(info.value)


def test_a_directory_or_fifo_is_not_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecurityError, match="not a regular file"):
        read_key_file(tmp_path / "dir")
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(SecurityError, match="not a regular file"):
        read_key_file(tmp_path / "fifo")  # and does not wait for a writer


def test_key_file_text_is_stripped_and_binary_keys_are_kept(tmp_path: Path) -> None:
    text = write_key(tmp_path / "text", b"  0123456789abcdef0123456789abcdef\r\n")
    assert read_key_file(text) == b"0123456789abcdef0123456789abcdef"
    assert read_key_file(str(text)) == b"0123456789abcdef0123456789abcdef"
    binary = bytes(range(256)) + b"\x00\x00\xff"
    binary = binary.strip()  # what the edges look like after whitespace is stripped
    path = write_key(tmp_path / "binary", binary)
    assert b"\x00" in read_key_file(path)
    assert read_key_file(path) == binary
    nul = write_key(tmp_path / "nul", b"\x00" * 20)
    with pytest.raises(SecurityError, match="distinct"):  # binary, but one byte over and over
        read_key_file(nul)


def test_binary_key_from_hmac_key_bytes_is_kept() -> None:
    key = b"\x00\x01\x02 binary\x00key\xff\xfe\x00"
    assert resolve_key(hmac_key=key) == key
    assert check_key(key, "hmac_key=") == key


# --- short keys, from every source ---


def test_short_keys_are_refused_from_every_source(tmp_path: Path, key_env: Path, monkeypatch) -> None:
    def refused(call) -> str:
        with pytest.raises(SecurityError) as info:
            call()
        message = str(info.value)
        assert SHORT not in message and "ezpool.security new-key" in message
        return message

    assert "hmac_key=" in refused(lambda: resolve_key(hmac_key=SHORT))
    assert "hmac_key=" in refused(lambda: resolve_key(hmac_key=SHORT.encode()))
    assert "hmac_key=" in refused(lambda: check_key(SHORT, "hmac_key="))
    short_file = write_key(tmp_path / "short", SHORT.encode() + b"\n")
    assert str(short_file) in refused(lambda: resolve_key(key_file=short_file))
    assert str(short_file) in refused(lambda: read_key_file(short_file))
    monkeypatch.setenv(KEY_ENV, f"  {SHORT}\n")
    assert KEY_ENV in refused(lambda: resolve_key())
    monkeypatch.setenv(KEY_ENV, "")  # set but empty is not the same as unset
    assert KEY_ENV in refused(lambda: resolve_key())
    monkeypatch.delenv(KEY_ENV)
    user_file = key_env / "ezpool" / "key"
    user_file.parent.mkdir(parents=True, mode=0o700)
    write_key(user_file, SHORT.encode())
    assert str(user_file) in refused(lambda: resolve_key())
    assert str(user_file) in refused(user_key)


def test_a_random_key_of_exactly_the_minimum_length_is_accepted() -> None:
    binary = bytes(range(0, 256, 256 // MIN_KEY_BYTES))  # 16 distinct bytes, not text
    assert check_key(binary, "hmac_key=") == binary
    accented = "éàüöçñøåßæ"[: MIN_KEY_BYTES // 2]  # 8 characters, 16 bytes: not ASCII
    assert check_key(accented, "x") == accented.encode()
    with pytest.raises(SecurityError):
        check_key(binary[:-1], "hmac_key=")


def test_security_error_is_an_ezpool_error() -> None:
    assert issubclass(SecurityError, EzPoolError)
    with pytest.raises(TypeError, match="hmac_key="):
        check_key(1234, "hmac_key=")  # type: ignore[arg-type]


# --- resolve_key ---


def test_resolve_order(tmp_path: Path, key_env: Path, monkeypatch) -> None:
    given = "given-key-0123456789abcdef"
    from_file = write_key(tmp_path / "file-key", b"file-key-0123456789abcdef\n")
    monkeypatch.setenv(KEY_ENV, " env-key-0123456789abcdef \n")
    user_file = key_env / "ezpool" / "key"
    user_file.parent.mkdir(parents=True, mode=0o700)
    write_key(user_file, b"user-key-0123456789abcdef")

    assert resolve_key(hmac_key=given, key_file=from_file) == given.encode()
    assert resolve_key(key_file=from_file) == b"file-key-0123456789abcdef"
    assert resolve_key() == b"env-key-0123456789abcdef"
    monkeypatch.delenv(KEY_ENV)
    assert resolve_key() == b"user-key-0123456789abcdef"
    user_file.unlink()
    made = resolve_key()
    assert made is not None and len(made) == 64 and user_file.read_bytes() == made + b"\n"


def test_insecure_means_no_key_and_says_what_that_allows(key_env: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(KEY_ENV, "env-key-0123456789abcdef")  # the environment is not an explicit key
    with caplog.at_level(logging.WARNING, logger="ezpool.security"):
        assert resolve_key(insecure=True) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "anyone who can reach the port" in warnings[0].getMessage()
    assert not (key_env / "ezpool").exists()  # no key file made for nothing


def test_insecure_with_an_explicit_key_is_a_contradiction(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "key", b"f" * 32)
    with pytest.raises(SecurityError, match="insecure"):
        resolve_key(hmac_key="g" * 32, insecure=True)
    with pytest.raises(SecurityError, match="insecure") as info:
        resolve_key(key_file=key_file, insecure=True)
    assert "f" * 32 not in str(info.value)


def test_private_key_is_64_hex_characters_and_new_each_time() -> None:
    keys = {private_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert isinstance(key, bytes) and len(key) == 64
        assert all(c in b"0123456789abcdef" for c in key)
        assert check_key(key, "private_key()") == key
        assert key.decode("ascii")  # safe in an environment variable


# --- the loopback guard ---


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.9.9.9", "::1", "127.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


def test_ipv4_mapped_loopback_is_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    assert is_loopback_host("::ffff:127.0.0.1")
    assert not is_loopback_host("::ffff:10.0.0.1")


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "0.0.0.0", "::", "", "8.8.8.8", "example.invalid", "127.0.0.1.invalid", "bad host"]
)
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def test_own_hostname_with_a_non_loopback_address_is_not_loopback() -> None:
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip(f"this machine's hostname {name!r} does not resolve")
    import ipaddress

    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        pytest.skip(f"this machine's hostname {name!r} resolves only to loopback: {sorted(addresses)}")
    assert not is_loopback_host(name)


# --- TLS: python -m ezpool.tls and the contexts ---


def tls_init(directory: Path, *hosts: str, days: Optional[int] = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ezpool.tls", "init", str(directory)]
    for host in hosts:
        command += ["--host", host]
    if days is not None:
        command += ["--days", str(days)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=child_env())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and its certificates for 127.0.0.1, made by the real command."""
    directory = tmp_path_factory.mktemp("tls") / "cluster"
    done = tls_init(directory, "127.0.0.1")
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture(scope="module")
def other_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, for the same host: its certificates must not be trusted by the first."""
    directory = tmp_path_factory.mktemp("tls") / "other"
    done = tls_init(directory, "127.0.0.1")
    assert done.returncode == 0, done.stderr
    return directory


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> tuple[Optional[BaseException], Optional[BaseException]]:
    """A real TLS exchange over 127.0.0.1; the errors of (server, client), ``None`` if it worked."""
    errors: dict[str, BaseException] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(20)
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(b"hello " + tls.recv(16))
        except (OSError, ssl.SSLError) as exc:
            errors["server"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        with raw, client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"client")
            answer = tls.recv(64)  # TLS 1.3: a refused client certificate shows up here
            if answer != b"hello client":
                raise ConnectionError(f"the server hung up instead of answering: {answer!r}")
    except (OSError, ssl.SSLError) as exc:
        errors["client"] = exc
    finally:
        thread.join(30)
        listener.close()
    assert not thread.is_alive()
    return errors.get("server"), errors.get("client")


def server_context(directory: Path, require_client_cert: bool = True) -> ssl.SSLContext:
    return server_tls_context(
        directory / "server.pem", directory / "server-key.pem", directory / "ca.pem", require_client_cert
    )


def client_context(directory: Path, ca_from: Optional[Path] = None, with_cert: bool = True) -> ssl.SSLContext:
    if not with_cert:
        return client_tls_context((ca_from or directory) / "ca.pem")
    return client_tls_context(
        ca=(ca_from or directory) / "ca.pem", cert=directory / "client.pem", key=directory / "client-key.pem"
    )


def test_tls_init_writes_private_files(cluster: Path) -> None:
    assert sorted(os.listdir(cluster)) == sorted(TLS_FILES)
    assert stat.S_IMODE(cluster.stat().st_mode) == 0o700
    for name in TLS_FILES:
        mode = stat.S_IMODE((cluster / name).stat().st_mode)
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), (name, oct(mode))


def test_tls_init_prints_the_commands_to_use(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    done = tls_init(directory, "127.0.0.1", "node1.example", days=30)
    assert done.returncode == 0, done.stderr
    assert (
        f"python -m ezpool.serve MODULE:NAME --host 127.0.0.1 --tls-cert {directory}/server.pem "
        f"--tls-key {directory}/server-key.pem --tls-ca {directory}/ca.pem --tls-require-client-cert"
    ) in done.stdout
    assert (
        f"Pool(tls_ca='{directory}/ca.pem', tls_cert='{directory}/client.pem', "
        f"tls_key='{directory}/client-key.pem')"
    ) in done.stdout


def test_tls_handshake_with_client_certificates(cluster: Path) -> None:
    assert handshake(server_context(cluster), client_context(cluster)) == (None, None)


def test_tls_handshake_fails_without_a_client_certificate(cluster: Path) -> None:
    server_error, client_error = handshake(server_context(cluster), client_context(cluster, with_cert=False))
    assert isinstance(server_error, ssl.SSLError)
    assert client_error is not None


def test_tls_client_refuses_a_server_certificate_from_another_ca(cluster: Path, other_cluster: Path) -> None:
    server_error, client_error = handshake(server_context(other_cluster), client_context(cluster))
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert server_error is not None


def test_tls_server_refuses_a_client_certificate_from_another_ca(cluster: Path, other_cluster: Path) -> None:
    intruder = client_context(other_cluster, ca_from=cluster)
    server_error, client_error = handshake(server_context(cluster), intruder)
    assert isinstance(server_error, ssl.SSLError)
    assert client_error is not None


def test_tls_client_checks_the_host_name(cluster: Path) -> None:
    _, client_error = handshake(server_context(cluster), client_context(cluster), "localhost")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "localhost" in str(client_error)


def test_tls_contexts_are_tls_1_2_or_newer(cluster: Path) -> None:
    assert server_context(cluster).minimum_version >= ssl.TLSVersion.TLSv1_2
    client = client_context(cluster)
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert server_context(cluster).verify_mode == ssl.CERT_REQUIRED
    assert server_tls_context(cluster / "server.pem", cluster / "server-key.pem").verify_mode == ssl.CERT_NONE
    assert client_tls_context().verify_mode == ssl.CERT_REQUIRED  # the system's authorities


def test_tls_init_refuses_to_overwrite(cluster: Path) -> None:
    before = {name: (cluster / name).read_bytes() for name in TLS_FILES}
    done = tls_init(cluster, "127.0.0.1")
    assert done.returncode == 1
    assert "refusing to overwrite" in done.stderr and str(cluster) in done.stderr
    assert {name: (cluster / name).read_bytes() for name in TLS_FILES} == before


def test_tls_init_refuses_when_any_one_file_exists(tmp_path: Path) -> None:
    directory = tmp_path / "partial"
    directory.mkdir()
    (directory / "client-key.pem").write_text("mine")
    done = tls_init(directory, "127.0.0.1")
    assert done.returncode == 1 and "client-key.pem" in done.stderr
    assert os.listdir(directory) == ["client-key.pem"]


def test_tls_init_rejects_bad_arguments(tmp_path: Path) -> None:
    assert tls_init(tmp_path / "a").returncode == 2  # --host is required
    assert tls_init(tmp_path / "b", "bad host").returncode == 2
    assert tls_init(tmp_path / "c", "127.0.0.1", days=0).returncode == 2
    assert not any((tmp_path / d).exists() for d in "abc")


def test_tls_init_without_cryptography_says_how_to_install(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['cryptography'] = None\n"  # as if it were not installed
        "from ezpool.tls import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    directory = tmp_path / "certs"
    done = subprocess.run(
        [sys.executable, "-c", script, "init", str(directory), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'ezpool.tls: the cryptography package is missing: pip install "ezpool[tls]"'
    ]
    assert not directory.exists()


def test_tls_files_that_are_missing_or_wrong_are_named(cluster: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(SecurityError, match=re.escape(str(missing))):
        server_tls_context(missing, cluster / "server-key.pem")
    with pytest.raises(SecurityError, match=re.escape(str(missing))):
        server_tls_context(cluster / "server.pem", missing)
    with pytest.raises(SecurityError, match=re.escape(str(missing))):
        client_tls_context(ca=missing)
    with pytest.raises(SecurityError, match=re.escape(str(missing))):
        client_tls_context(ca=cluster / "ca.pem", cert=cluster / "client.pem", key=missing)
    with pytest.raises(SecurityError, match=r"client-key\.pem"):
        server_tls_context(cluster / "server.pem", cluster / "client-key.pem")  # not its key
    with pytest.raises(SecurityError, match=r"ca-key\.pem"):
        client_tls_context(ca=cluster / "ca-key.pem")  # a key is not a certificate
    with pytest.raises(SecurityError, match="ca="):
        server_tls_context(cluster / "server.pem", cluster / "server-key.pem", require_client_cert=True)
    with pytest.raises(SecurityError, match="cert="):
        client_tls_context(ca=cluster / "ca.pem", key=cluster / "client-key.pem")


def test_an_encrypted_tls_key_is_refused_without_a_prompt(cluster: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((cluster / "server-key.pem").read_bytes(), None)
    encrypted = tmp_path / "locked.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(SecurityError, match=r"locked\.pem is encrypted"):
        server_tls_context(cluster / "server.pem", encrypted)


def test_importing_security_and_tls_loads_neither_pyro4_nor_cryptography() -> None:
    check = (
        "import sys, ezpool.security, ezpool.tls\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('Pyro4', 'cryptography')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- signatures of calls and replies ---------------------------------------------------


def test_a_signature_is_the_same_from_version_to_version() -> None:
    # Computed by the first version that signed calls; a client and a worker must agree.
    from ezpool.security import sign

    key, nonce = bytes(range(32)), bytes(range(16))
    call = ["a" * 32, "fid", 120, 10, [b"p" * 60, b"q" * 5000], None, 20]
    assert sign(key, nonce, 7, "run_chunk", call).hex() == (
        "6c03c83d8aa02682783db47fd059b7b34daed313cdb38f2eaee8bf9d0071b1c9")
    assert sign(key, nonce, 8, "reply", ("ok", b"r" * 300)).hex() == (
        "9ab477934e04c50b07410b342b8452a15cb8ba35612450b5804624ededb912d4")
    assert sign(key, nonce, 9, "x", [True, 1.5, {"k": (1, "v")}, bytearray(b"ab"), "\ud800"]).hex() == (
        "99065f29e1d3c10a1e1509d3e95370b64a038b1d01dfd83aab8b9a1623c9c421")


def test_values_that_print_alike_sign_differently() -> None:
    import enum

    from ezpool.security import sign

    class Level(enum.IntEnum):
        ONE = 1

    key, nonce = b"k" * 32, b"n" * 16
    values = [["ab"], ["a", "b"], [b"ab"], "ab", 1, True, "1", b"1", 1.0, None, [], [[]], [None]]
    signatures = {sign(key, nonce, 1, "x", value) for value in values}
    assert len(signatures) == len(values)
    assert sign(key, nonce, 1, "x", Level.ONE) == sign(key, nonce, 1, "x", 1)
    assert sign(key, nonce, 1, "x", [1]) != sign(key, nonce, 2, "x", [1]) != sign(key, nonce, 1, "y", [1])
    assert sign(b"", nonce, 1, "x", [1]) == b""
