"""Every row of a store is signed, and checked before anything in it is unpickled.

Reading a store unpickles its tasks and values, and unpickling can run any code
(a pickle is a program). So a store's rows carry an HMAC-SHA256 over the exact
bytes stored, and a row is unpickled only once its MAC is checked: a row that
was changed, or written by someone without the key, is never loaded.

The key is the user's EzPool key (``ezpool.security.resolve_key``: ``$EZPOOL_HMAC_KEY``,
else the per-user key file), never used as it is: each file has a random salt, and
its key is ``HMAC-SHA256(user key, "ezpool-store-key/3" + salt)``, so the same key
never signs two kinds of thing, and a row copied from another file does not verify.
The file also holds a check value (the MAC of a fixed text), so a store made under
another key is refused as a whole, with an error that says so, before any row is read.

What is signed (``L`` is a length or a number as 8 bytes, so no two fields run together)::

    sweep row     "sweep"     id, name, store_key, code, data, created
    batch row     "tasks"     sweep, layout, tasks, elapsed, failed, worker, recorded  -> T
                  "outcome"   T, layout, outcome                                      -> O
                  the row's mac column holds T + O (64 bytes): the index reads and
                  checks T without reading the values, which are checked when loaded
    forgotten     "forgotten" sweep, upto, keys

The cost is one HMAC over the bytes of each row when it is written and when it is
read; rows hold a whole ``record`` call, so it does nothing per task.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import struct
from typing import Union

from .._core.logs import get_logger
from ..errors import StoreError
from ..security import KEY_ENV, KEY_FILE_ENV, same, user_key_file

logger = get_logger(__name__)

__all__ = [
    "Signer", "Forged", "verify", "key_source", "write_signing", "check_store_key", "MAC_SIZE", "SALT_SIZE"
]

#: Bytes of one MAC (SHA-256), and of a file's salt.
MAC_SIZE = 32
SALT_SIZE = 16

#: What the user's key signs to give a file's key: never a message of the protocol's ``sign``,
#: whose messages all start with ``ezpool-1``.
_DERIVE = b"ezpool-store-key/3\x00"

_NUMBER = struct.Struct("!q")
_REAL = struct.Struct("!d")

Field = Union[bytes, str, int, float]


class Forged(StoreError):
    """A row of a store does not verify: it was changed outside EzPool, or written without the key."""


class Signer:
    """Signs and checks the rows of one store file, with the key derived for it."""

    def __init__(self, key: bytes, salt: bytes) -> None:
        self.salt = salt
        derived = hmac.digest(key, _DERIVE + salt, "sha256")
        self._base = hmac.new(derived, digestmod=hashlib.sha256)  # copied for each MAC: no key setup

    def check_value(self) -> bytes:
        """What the file holds to show which key made it."""
        return self._mac(b"check")

    def sweep(self, sweep_id: int, name: str, store_key: str, code: str, data: str, created: float) -> bytes:
        return self._mac(b"sweep", sweep_id, name, store_key, code, data, created)

    def batch(
        self,
        sweep_id: int,
        tasks: bytes,
        outcome: bytes,
        layout: int,
        elapsed: bytes,
        failed: bytes,
        worker: str,
        recorded: float,
    ) -> bytes:
        """The ``mac`` column of a batch row: the tasks part, then the outcome part."""
        tasks_mac = self.tasks(sweep_id, tasks, layout, elapsed, failed, worker, recorded)
        return tasks_mac + self.outcome(tasks_mac, layout, outcome)

    def tasks(
        self,
        sweep_id: int,
        tasks: bytes,
        layout: int,
        elapsed: bytes,
        failed: bytes,
        worker: str,
        recorded: float,
    ) -> bytes:
        return self._mac(b"tasks", sweep_id, layout, tasks, elapsed, failed, worker, recorded)

    def outcome(self, tasks_mac: bytes, layout: int, outcome: bytes) -> bytes:
        return self._mac(b"outcome", tasks_mac, layout, outcome)

    def forgotten(self, sweep_id: int, upto: int, keys: bytes) -> bytes:
        return self._mac(b"forgotten", sweep_id, upto, keys)

    def _mac(self, label: bytes, *fields: Field) -> bytes:
        mac = self._base.copy()
        mac.update(label)
        for field in fields:
            kind = type(field)
            if kind is bytes:
                mac.update(_NUMBER.pack(len(field)))  # type: ignore[arg-type]
                mac.update(field)  # type: ignore[arg-type]
            elif kind is str:
                data = field.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
                mac.update(_NUMBER.pack(len(data)))
                mac.update(data)
            elif kind is int:
                mac.update(b"i" + _NUMBER.pack(field))
            elif kind is float:
                mac.update(b"f" + _REAL.pack(field))
            else:  # never so in a row EzPool wrote
                raise Forged(f"a stored row holds a {kind.__name__}, which EzPool never stores")
        return mac.digest()


def verify(given: object, expected: bytes, what: str) -> None:
    """Raise ``Forged`` naming ``what`` unless ``given`` is ``expected`` (compared in constant time)."""
    if not same(given, expected):
        raise Forged(
            f"the MAC of {what} does not match: it was changed outside EzPool, or written without your key"
        )


def key_source() -> str:
    """Where ``resolve_key()`` found the key, for messages."""
    if os.environ.get(KEY_ENV) is not None:
        return f"${KEY_ENV}"
    try:
        return f"the key file {user_key_file()}"
    except Exception:  # pragma: no cover - resolve_key raised first
        return "your key file"


def write_signing(db: sqlite3.Connection, signer: Signer) -> None:
    """Record the salt and the check value of ``signer`` in a new store's ``signing`` table."""
    values = (signer.salt, signer.check_value())
    db.execute("INSERT INTO signing (id, salt, keycheck) VALUES (1, ?, ?)", values)


def check_store_key(db: sqlite3.Connection, path: str, key: bytes, source: str) -> Signer:
    """What signs the rows of the store ``db``; ``StoreError`` when it was made under another key."""
    row = db.execute("SELECT salt, keycheck FROM signing WHERE id = 1").fetchone()
    if row is None or not isinstance(row[0], bytes):
        raise StoreError(f"{path} is an ezpool store without its signing row: it was changed outside EzPool")
    signer = Signer(key, row[0])
    if not isinstance(row[1], bytes) or not same(row[1], signer.check_value()):
        raise StoreError(
            f"{path} was made under another EzPool key than yours (from {source}), so nothing it holds can "
            f"be checked as yours, and EzPool loads none of it: loading a store can run the code of whoever "
            f"wrote it. If you made it with another key, set {KEY_ENV} (or {KEY_FILE_ENV}) to that key; "
            f"otherwise, use another file"
        )
    return signer
