"""Signatures that bind a message to one connection and one moment (moved to security later)."""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Optional

__all__ = ["sign", "same"]

_PREFIX = b"ezpool-1"


def sign(key: Optional[bytes], nonce: bytes, counter: int, label: str, payload: Any) -> bytes:
    """HMAC-SHA256 of ``(nonce, counter, label, payload)`` in a canonical encoding; ``b""`` without a key."""
    if not key:
        return b""
    mac = hmac.new(key, _PREFIX, hashlib.sha256)
    _feed(mac, (nonce, counter, label, payload))
    return mac.digest()


def same(given: Any, expected: bytes) -> bool:
    """Whether ``given`` is the signature ``expected``, compared in constant time."""
    return isinstance(given, bytes) and hmac.compare_digest(given, expected)


def _feed(mac: Any, obj: Any) -> None:
    """Feed ``obj`` to ``mac`` with a type tag and a length, so no two values read alike."""
    if obj is None:
        mac.update(b"N")
    elif isinstance(obj, bool):
        mac.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        _text(mac, b"i", repr(int(obj)))
    elif isinstance(obj, float):
        _text(mac, b"f", repr(float(obj)))
    elif isinstance(obj, str):
        _text(mac, b"s", obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        mac.update(b"b" + struct.pack("!Q", len(data)))
        mac.update(data)
    elif isinstance(obj, (list, tuple)):
        mac.update(b"l" + struct.pack("!Q", len(obj)))
        for item in obj:
            _feed(mac, item)
    elif isinstance(obj, dict):
        mac.update(b"d" + struct.pack("!Q", len(obj)))
        for key in sorted(obj, key=repr):
            _feed(mac, key)
            _feed(mac, obj[key])
    else:
        raise TypeError(f"cannot sign a {type(obj).__name__}")


def _text(mac: Any, tag: bytes, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    mac.update(tag + struct.pack("!Q", len(data)))
    mac.update(data)
