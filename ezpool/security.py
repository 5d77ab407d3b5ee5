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
another user owns them, when group or others have any access to them, or when
the key is shorter than ``MIN_KEY_BYTES``. These checks use POSIX owners and
modes; where the platform has none (Windows) they are skipped.

:func:`sign` makes the HMAC-SHA256 that binds each call to one connection's nonce
and a counter that only grows (see ``ezpool._pyro.client`` for the exchange).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from ._core.logs import get_logger
from .errors import SecurityError

logger = get_logger(__name__)

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MIN_KEY_BYTES",
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

_NEW_KEY = 'python -c "import secrets; print(secrets.token_hex(32))"'
_MAKE_KEY_HINT = f"make one with: {_NEW_KEY}"

#: Mode bits of group and others; a key file must have none of them (as OpenSSH asks).
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


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
    missing or unreadable, is not a regular file, is owned by another user, has
    any permission bit for group or others (``chmod 600`` fixes it), or holds a
    key shorter than ``MIN_KEY_BYTES``. The key may be text (hex, base64) or
    binary; both sides of a connection read it the same way.
    """
    shown = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us; fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SecurityError(
            f"the key file {shown} does not exist; make one with: (umask 077; {_NEW_KEY} > {shown})"
        ) from None
    except OSError as exc:
        raise SecurityError(f"cannot read the key file {shown}: {exc.strerror or exc}") from None
    try:
        _check_private(os.fstat(fd), shown)
        with open(fd, "rb", closefd=False) as file:
            key = file.read().strip()
    finally:
        os.close(fd)
    if len(key) < MIN_KEY_BYTES:
        raise SecurityError(
            f"the key in {shown} is shorter than {MIN_KEY_BYTES} bytes; make a new one with: "
            f"(umask 077; {_NEW_KEY} > {shown})"
        )
    return key


def _check_private(info: os.stat_result, shown: str) -> None:
    """Refuse a key file that is not a regular file of this user's that only they can use."""
    if not stat.S_ISREG(info.st_mode):
        raise SecurityError(f"the key file {shown} is not a regular file")
    if not hasattr(os, "geteuid"):  # no POSIX owners or modes to check
        return
    me = os.geteuid()
    if info.st_uid != me:
        raise SecurityError(
            f"the key file {shown} is owned by uid {info.st_uid}, not by you (uid {me}), who could "
            f"change the key; use a copy of your own (install -m 600 {shown} NEWPATH), or as root: "
            f"chown {me} {shown}"
        )
    if info.st_mode & _SHARED_BITS:
        raise SecurityError(
            f"the key file {shown} has permissions {stat.S_IMODE(info.st_mode):04o}: others can use "
            f"it, so it is not a secret; fix it with: chmod 600 {shown}"
        )


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
        _make_private_dir(path.parent)
        descriptor, temporary = tempfile.mkstemp(prefix=".key-", dir=path.parent)  # 0600, O_EXCL
    except OSError as exc:
        raise SecurityError(
            f"cannot create the EzPool key file {path}: {exc.strerror or exc}; set {KEY_FILE_ENV} to "
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


def _make_private_dir(directory: Path) -> None:
    """Create ``directory`` with mode 0700 if it is missing; leave an existing one alone."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # exactly 0700, whatever the umask


def check_key(key: Union[str, bytes], source: str) -> bytes:
    """``key`` as bytes (a str is UTF-8 encoded), refused if it is too short.

    ``source`` names where the key came from (``"EZPOOL_HMAC_KEY"``,
    ``"hmac_key="``) in the ``SecurityError``; the key itself is never shown.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise TypeError(f"the key from {source} must be str or bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise SecurityError(
            f"the key from {source} is shorter than {MIN_KEY_BYTES} bytes, too easy to guess; "
            f"{_MAKE_KEY_HINT}"
        )
    return key


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


# --- TLS ---


def server_tls_context(
    cert: StrPath,
    key: Optional[StrPath],
    ca: Optional[StrPath] = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert`` (private key in ``key``).

    With ``require_client_cert``, a client must present a certificate signed by
    ``ca`` (required then). A ``ca`` alone verifies the certificates clients
    choose to present.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, cert, key)
    if require_client_cert and ca is None:
        raise SecurityError(
            "require_client_cert needs ca=: the certificate of the authority that signs client "
            "certificates (see python -m ezpool.tls init)"
        )
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_tls_context(
    ca: Optional[StrPath] = None,
    cert: Optional[StrPath] = None,
    key: Optional[StrPath] = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server and its host name.

    The server's certificate must be signed by ``ca`` (``None``: the system's
    trusted authorities) and name the host connected to. ``cert`` and ``key``
    are the client's own certificate, for servers that require one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca)
    if cert is not None:
        _load_identity(context, cert, key)
    elif key is not None:
        raise SecurityError(f"a client key ({os.fspath(key)}) needs its certificate: give cert= too")
    return context


def _readable(path: StrPath, what: str) -> str:
    """``path`` as a str, after checking that it can be opened for reading."""
    shown = os.fspath(path)
    try:
        with open(shown, "rb"):
            pass
    except OSError as exc:
        raise SecurityError(f"cannot read the TLS {what} {shown}: {exc.strerror or exc}") from None
    return shown


def _load_identity(context: ssl.SSLContext, cert: StrPath, key: Optional[StrPath]) -> None:
    certfile = _readable(cert, "certificate")
    keyfile = None if key is None else _readable(key, "private key")

    def no_prompt() -> str:
        # Without a callback, OpenSSL would prompt on the terminal for the pass phrase.
        raise SecurityError(
            f"the TLS private key {keyfile or certfile} is encrypted; EzPool needs it unencrypted "
            "(and readable only by you: chmod 600)"
        )

    try:
        context.load_cert_chain(certfile, keyfile, password=no_prompt)
    except ssl.SSLError as exc:
        raise SecurityError(
            f"cannot use the TLS certificate {certfile} with the private key {keyfile or certfile}: "
            f"{exc.reason or exc} (are they PEM files that belong together?)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: StrPath) -> None:
    cafile = _readable(ca, "CA certificate")
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as exc:
        raise SecurityError(f"no usable CA certificate in {cafile}: {exc.reason or exc}") from None


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
