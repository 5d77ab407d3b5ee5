"""Security in one module: keys, key files, TLS contexts, the loopback guard and signatures.

Workers unpickle what clients send, and unpickling can run code, so every
connection is authenticated with a shared key. Nothing else in EzPool reads
``EZPOOL_HMAC_KEY`` or builds an SSL context; the protocol code asks here.

Where the key comes from (:func:`resolve_key`), first match wins::

    hmac_key=...            given in code
    key_file=...            a file, checked like OpenSSH checks a private key
    $EZPOOL_HMAC_KEY        the environment, surrounding whitespace stripped
    per-user key file       $EZPOOL_KEY_FILE, else $XDG_CONFIG_HOME/ezpool/key,
                            else ~/.config/ezpool/key; made on first use (0600)

``insecure=True`` is the only way to run without a key. A pool's own local
workers get a fresh :func:`private_key` instead of the shared one.

Key files are refused (``SecurityError``, with the command that fixes it) when
they are symbolic links or not regular files (a FIFO, ``/proc/self/environ``),
when another user owns them or their folder, when group or others have any
access to them or may write their folder (see ``ezpool._core.private``). Keys
from any source are refused when they are easy to guess (:func:`weakness`);
``python -m ezpool.security new-key [PATH]`` makes a good one. The owner and
mode checks use POSIX owners and modes; where the platform has none (Windows)
they are skipped.

:func:`sign` makes the HMAC-SHA256 that binds each call to one connection's nonce
and a counter that only grows (see ``ezpool._pyro.client`` for the exchange).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import ipaddress
import math
import os
import re
import secrets
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from ._core.cli import command_line
from ._core.logs import get_logger
from ._core.private import check_private_dir, make_private_dir, read_private
from ._core.tls_contexts import client_tls_context, server_tls_context
from .errors import SecurityError

logger = get_logger(__name__)

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MIN_KEY_BYTES",
    "MIN_KEY_BITS",
    "weakness",
    "user_key_file",
    "read_key_file",
    "user_key",
    "check_key",
    "resolve_key",
    "private_key",
    "is_loopback_host",
    "server_tls_context",
    "client_tls_context",
    "sign",
    "same",
]

#: The environment variable that holds the shared key.
KEY_ENV = "EZPOOL_HMAC_KEY"

#: The environment variable that names the per-user key file instead of the default.
KEY_FILE_ENV = "EZPOOL_KEY_FILE"

#: The shortest key EzPool accepts, in bytes.
MIN_KEY_BYTES = 16

StrPath = Union[str, "os.PathLike[str]"]

#: The strength a key must have by :func:`weakness`'s count.
MIN_KEY_BITS = 128

_NEW_KEY_HINT = (
    'python -m ezpool.security new-key (or: python -c "import secrets; print(secrets.token_hex(32))")'
)
_MIN_DISTINCT = 8
#: The usual alphabets of keys, smallest first, with their sizes.
_ALPHABETS = (
    (re.compile(r"[0-9]+"), 10),
    (re.compile(r"[0-9a-f]+|[0-9A-F]+"), 16),
    (re.compile(r"[0-9A-Za-z+/=_-]+"), 64),
    (re.compile(r".+", re.DOTALL), 95),
)


# --- keys and key files ---


def user_key_file() -> Path:
    """The per-user key file: ``$EZPOOL_KEY_FILE``, else the XDG config directory's ``ezpool/key``."""
    override = os.environ.get(KEY_FILE_ENV)
    if override:
        return Path(override).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME")
    if config and os.path.isabs(config):  # the XDG spec says to ignore a relative one
        return Path(config) / "ezpool" / "key"
    try:
        home = Path.home()
    except RuntimeError:
        raise SecurityError(
            f"cannot find your home directory for the EzPool key file; set {KEY_FILE_ENV} to a path "
            f"(or {KEY_ENV} to a key)"
        ) from None
    return home / ".config" / "ezpool" / "key"


def read_key_file(path: StrPath) -> bytes:
    """The key in the file ``path``, surrounding ASCII whitespace stripped.

    Raises ``SecurityError`` (naming the file and the fix) when the file is
    missing or unreadable, is a symbolic link, is not a regular file (a FIFO, a
    ``/proc`` file), is owned by another user, has any permission bit for group
    or others (``chmod 600`` fixes it), lies in a folder that another user owns
    or may write (see ``ezpool._core.private``), or holds a key that is too
    short or too easy to guess (:func:`check_key`). The key may be text (hex,
    base64) or binary; both sides of a connection read it the same way.
    """
    shown = os.fspath(path)
    check_private_dir(os.path.dirname(os.path.abspath(shown)), f"the key file {shown}")
    try:
        key = read_private(path, "the key file").strip()
    except FileNotFoundError:
        raise SecurityError(
            f"the key file {shown} does not exist; make one with: python -m ezpool.security new-key {shown}"
        ) from None
    return check_key(key, f"the key file {shown}", fix=f"python -m ezpool.security new-key --force {shown}")


def user_key() -> bytes:
    """The per-user key, from :func:`user_key_file`; made on first use.

    A new file holds ``secrets.token_hex(32)`` and a newline, mode 0600, in a
    directory made 0700. It is put in place atomically and never overwritten:
    when two processes race to make it, both use the one that got there first.
    """
    path = user_key_file()
    if not os.path.lexists(path):
        _create_key_file(path)
    return read_key_file(path)


def _create_key_file(path: Path) -> None:
    """Write a new random key at ``path`` unless something is there already."""
    try:
        make_private_dir(path.parent, "the EzPool key file")
        descriptor, temporary = tempfile.mkstemp(prefix=".key-", dir=path.parent)  # 0600, O_EXCL
    except (OSError, SecurityError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SecurityError(
            f"cannot create the EzPool key file {path}: {reason}; set {KEY_FILE_ENV} to "
            f"another path, or {KEY_ENV} to a key"
        ) from None
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(descriptor, 0o600)  # exactly 0600, whatever the umask
            file.write((secrets.token_hex(32) + "\n").encode("ascii"))
            file.flush()
            os.fsync(file.fileno())
        _publish(temporary, path)
    finally:
        os.unlink(temporary)


def _publish(temporary: str, path: Path) -> None:
    """Give the complete file ``temporary`` the name ``path``, unless that name is taken."""
    try:
        os.link(temporary, path)  # atomic, and fails rather than overwrite
    except FileExistsError:
        return  # another process made it first: use theirs
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise SecurityError(f"cannot create the EzPool key file {path}: {exc.strerror or exc}") from None
        _publish_without_links(temporary, path)
        return
    logger.info("created the EzPool key file %s (mode 0600); copy it to the hosts that must share it", path)


def _publish_without_links(temporary: str, path: Path) -> None:
    """The fallback where hard links are not supported: O_CREAT|O_EXCL, never overwriting.

    Here a racing reader could see the file before its one small write lands;
    it then refuses the short key, and the next call reads the whole one.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with open(fd, "wb") as file, open(temporary, "rb") as source:
        os.fchmod(fd, 0o600)
        file.write(source.read())
    logger.info("created the EzPool key file %s (mode 0600); copy it to the hosts that must share it", path)


def check_key(key: Union[str, bytes], source: str, fix: str = "") -> bytes:
    """``key`` as bytes (a str is UTF-8 encoded), refused if it is too short or too easy to guess.

    ``source`` names where the key came from (``"EZPOOL_HMAC_KEY"``,
    ``"hmac_key="``) in the ``SecurityError``, and ``fix`` how to replace it; the
    key itself is never shown. What counts as easy to guess: see :func:`weakness`.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise TypeError(f"the key from {source} must be str or bytes, got {type(key).__name__}")
    reason = weakness(key)
    if reason:
        raise SecurityError(f"the key from {source} {reason}; make a new one with: {fix or _NEW_KEY_HINT}")
    return key


def weakness(key: bytes) -> str:
    """Why ``key`` is too easy to guess, or ``""`` when it is not.

    A worker's key guards running code as its user, and anyone who records one
    keyed exchange can test guesses offline, fast. So a key must be long
    (``MIN_KEY_BYTES``), use at least eight distinct characters, and carry
    ``MIN_KEY_BITS`` bits counted as its length times the bits of the smallest
    usual alphabet that holds it: decimal, hex, base64 (``-`` and ``_``
    included), printable ASCII. ``"science-cluster2025"`` counts 114 and is
    refused; ``new-key``, ``secrets.token_hex(16)``, ``secrets.token_urlsafe(16)``
    and ``openssl rand -base64 24`` all pass, and so does binary of 16 random
    bytes or more. A long sentence of words passes
    the count without being random: prefer ``new-key``.
    """
    if len(key) < MIN_KEY_BYTES:
        return f"is shorter than {MIN_KEY_BYTES} bytes, too easy to guess"
    if len(set(key)) < _MIN_DISTINCT:
        return f"uses fewer than {_MIN_DISTINCT} distinct characters, too easy to guess"
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return ""  # binary: judged by its length and distinct bytes alone
    if not text.isprintable():
        return ""
    alphabet = next(size for pattern, size in _ALPHABETS if pattern.fullmatch(text))
    if len(text) * math.log2(alphabet) < MIN_KEY_BITS:
        return f"has less than {MIN_KEY_BITS} bits by its length and characters, too easy to guess"
    return ""


def resolve_key(
    hmac_key: Union[str, bytes, None] = None,
    key_file: Optional[StrPath] = None,
    insecure: bool = False,
) -> Optional[bytes]:
    """The key to use: ``hmac_key``, else ``key_file``'s, else ``$EZPOOL_HMAC_KEY``, else :func:`user_key`.

    ``insecure=True`` means no key at all: it returns ``None`` and logs a
    warning. Giving it together with ``hmac_key`` or ``key_file`` is a
    contradiction, and raises ``SecurityError``.
    """
    if insecure:
        if hmac_key is not None or key_file is not None:
            given = "hmac_key=" if hmac_key is not None else "key_file="
            raise SecurityError(f"insecure=True asks for no key, but {given} gives one; drop one of the two")
        logger.warning(
            "running without a key (insecure): anyone who can reach the port can run any code as this user"
        )
        return None
    if hmac_key is not None:
        return check_key(hmac_key, "hmac_key=")
    if key_file is not None:
        return read_key_file(key_file)
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:  # set but empty is refused as too short, not ignored
        return check_key(from_env.strip(), KEY_ENV)
    return user_key()


def private_key() -> bytes:
    """A fresh random key for workers a pool starts for itself: 64 hex characters, as bytes."""
    return secrets.token_hex(32).encode("ascii")


# --- the loopback guard ---


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves, and only to loopback addresses.

    The answer comes from what the name resolves to, never from its text:
    ``"127.0.0.1.example"`` is judged by its DNS records. A host that does not
    resolve, or an empty one (every interface, to a server), is not loopback.
    """
    if not host:
        return False
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError, ValueError):
        return False
    return bool(found) and all(_is_loopback_address(entry[4][0]) for entry in found)


def only_here(host: str) -> str:
    """What ``host`` resolves to, if it is a name (not ``localhost``, not an address) that
    resolves to loopback only: an address of this machine alone, though the name looks
    like one other machines reach (Debian maps the host's own name to 127.0.1.1). ``""``
    otherwise."""
    if not host or host == "localhost" or _is_loopback_address(host) or not is_loopback_host(host):
        return ""
    with contextlib.suppress(OSError, UnicodeError, ValueError):
        return str(socket.getaddrinfo(host, None)[0][4][0])
    return ""


def _is_loopback_address(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 scope
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# --- signatures: a call bound to one connection (its nonce) and one moment (a counter) ---

_PREFIX = b"ezpool-1"


def sign(key: Optional[bytes], nonce: bytes, counter: int, label: str, payload: Any) -> bytes:
    """HMAC-SHA256 of ``(nonce, counter, label, payload)`` in a canonical encoding; ``b""`` without a key."""
    if not key:
        return b""
    parts: list[bytes] = [_PREFIX]
    _encode((nonce, counter, label, payload), parts)
    if max(map(len, parts)) < _JOIN_BELOW:  # a call is mostly short fields: hashed in one go
        return hmac.digest(key, b"".join(parts), "sha256")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    small: list[bytes] = []  # joined into one update
    for part in parts:
        if len(part) < _JOIN_BELOW:
            small.append(part)
            continue
        if small:
            mac.update(b"".join(small))
            small.clear()
        mac.update(part)  # a payload: hashed where it lies, not copied
    mac.update(b"".join(small))
    return mac.digest()


#: Parts of an encoding shorter than this are joined before they are hashed.
_JOIN_BELOW = 4096


def same(given: Any, expected: bytes) -> bool:
    """Whether ``given`` is the signature ``expected``, compared in constant time."""
    return isinstance(given, bytes) and hmac.compare_digest(given, expected)


def _encode(obj: Any, out: list[bytes]) -> None:
    """Append ``obj`` to ``out`` with a type tag and a length, so no two values read alike."""
    # The types of every call and reply first, by their exact type: a worker signs two
    # a chunk, and each look through the general case below costs it several checks.
    kind = type(obj)
    if kind is bytes:
        out += (b"b" + _LENGTH.pack(len(obj)), obj)
    elif kind is str:
        data = obj.encode("utf-8", "surrogatepass")
        out += (b"s" + _LENGTH.pack(len(data)), data)
    elif kind is int:
        data = repr(obj).encode()
        out += (b"i" + _LENGTH.pack(len(data)), data)
    elif kind is list or kind is tuple:
        out.append(b"l" + _LENGTH.pack(len(obj)))
        for item in obj:
            _encode(item, out)
    elif obj is None:
        out.append(b"N")
    else:
        _encode_any(obj, out)


def _encode_any(obj: Any, out: list[bytes]) -> None:
    """``_encode`` for any other type; a subclass of a type above reads as that type."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        _encode(bytes(obj), out)
    elif isinstance(obj, str):
        _encode(str.__str__(obj), out)
    elif isinstance(obj, bool):
        out.append(b"T" if obj else b"F")
    elif isinstance(obj, int):
        _encode(int(obj), out)
    elif isinstance(obj, float):
        data = repr(float(obj)).encode()
        out += (b"f" + _LENGTH.pack(len(data)), data)
    elif isinstance(obj, (list, tuple)):
        _encode(list(obj), out)
    elif isinstance(obj, dict):
        out.append(b"d" + _LENGTH.pack(len(obj)))
        for key in sorted(obj, key=repr):
            _encode(key, out)
            _encode(obj[key], out)
    else:
        raise TypeError(f"cannot sign a {type(obj).__name__}")


_LENGTH = struct.Struct("!Q")


# --- python -m ezpool.security new-key ---


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """``python -m ezpool.security new-key [PATH]``: print a new random key, or write it to
    ``PATH`` (mode 0600, never over an existing file unless ``--force``). Returns the exit status."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m ezpool.security", description="EzPool's keys.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = commands.add_parser("new-key", help="make a new random key (256 bits, hex)")
    new.add_argument("path", nargs="?", type=Path, help="key file to write (default: print the key)")
    new.add_argument("--force", action="store_true", help="replace PATH if it exists")
    args = parser.parse_args(argv)
    key = secrets.token_hex(32) + "\n"
    if args.path is None:
        sys.stdout.write(key)
        return 0
    try:
        _write_key(args.path, key.encode("ascii"), args.force)
    except (OSError, SecurityError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"ezpool.security: error: cannot write {args.path}: {reason}", file=sys.stderr)
        return 1
    print(f"wrote a new key to {args.path} (mode 0600); copy it to the hosts that share it", file=sys.stderr)
    return 0


def _write_key(path: Path, key: bytes, force: bool) -> None:
    """Write ``key`` to ``path`` (0600) in a private folder: a new file, or atomically over the old one."""
    if path.parent != Path(""):
        make_private_dir(path.absolute().parent, f"the key file {path}")
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with open(fd, "wb") as file:
            os.fchmod(fd, 0o600)
            file.write(key)
        return
    descriptor, temporary = tempfile.mkstemp(prefix=".key-", dir=path.absolute().parent)
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(descriptor, 0o600)
            file.write(key)
        os.replace(temporary, path)  # replaces a link itself, never what it points to
    except BaseException:
        os.unlink(temporary)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
