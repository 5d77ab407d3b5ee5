"""The file a listening pool writes, so that workers on a shared file system can find it.

It holds what a worker needs to dial in, the key excluded (as JSON: ``address``,
``tls``, and the pool's ``pid`` and ``host``). It is
written whole (a temporary file renamed over it) and must be the user's own, in a
folder only the user (or root) can change: a worker refuses a file that others
could have written, since it would dial wherever the file says.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import SecurityError
from .logs import get_logger
from .private import check_private_dir, open_private

logger = get_logger(__name__)

__all__ = ["ListenFile", "write_listen_file", "remove_listen_file", "read_listen_file", "parse_address"]


class ListenFile(NamedTuple):
    address: str  # HOST:PORT
    tls: bool
    pid: int
    host: str


def write_listen_file(path: Path, address: str, tls: bool) -> None:
    """Write ``path`` for workers to read; ``SecurityError`` if others could change it."""
    path = Path(path)
    check_private_dir(path.parent if str(path.parent) else Path("."), "the listen file")
    text = json.dumps({"address": address, "tls": tls, "pid": os.getpid(), "host": socket.gethostname()})
    fd, temporary = tempfile.mkstemp(prefix=".ezpool-listen-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_listen_file(path: Path, address: str) -> None:
    """Remove ``path`` if it still names ``address`` (another pool may have written it since)."""
    try:
        if read_listen_file(path).address == address:
            os.unlink(path)
    except (OSError, ValueError, SecurityError):
        pass


def read_listen_file(path: Path) -> ListenFile:
    """What a pool wrote into ``path``. ``FileNotFoundError`` if it is not there (yet);
    ``SecurityError`` if others could have written it; ``ValueError`` if it is not one."""
    path = Path(path)
    check_private_dir(path.parent if str(path.parent) else Path("."), "the listen file")
    fd = open_private(path, "the listen file", secret=False)
    try:
        with open(fd, "rb", closefd=False) as file:
            data = file.read(1 << 16)
    finally:
        os.close(fd)
    try:
        fields: Any = json.loads(data)
        address = str(fields["address"])
        parse_address(address)
        pid, host = int(fields.get("pid", 0)), str(fields.get("host", ""))
        return ListenFile(address, bool(fields.get("tls")), pid, host)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a pool's listen file: {exc}") from None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair; ``ValueError`` naming it if it is not one."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 'node1:5000' or ':0' for any free port)")
    return host, int(port)
