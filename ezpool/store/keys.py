"""Task keys: one canonical byte string per task, equal exactly when the tasks are equal dict keys.

A stored outcome is found again by its task's key, so two tasks must share a key
exactly when ``Results`` would treat them as one task: ``1``, ``1.0``, ``True`` and
``Fraction(1)`` share one, and so do ``-0.0`` and ``0``; ``"a"`` and ``b"a"`` do
not. Every item is self-delimiting (a tag byte, then a length or a fixed shape),
so a tuple's key is its members' keys side by side, and a frozenset's is its
members' keys sorted, whatever order the set iterates in.

- numbers (``bool``, ``int``, ``float``, ``complex``, ``Fraction``, ``Decimal`` and
  the numbers of other libraries registered with ``numbers``) by exact value: an
  integral value as an integer, any other as the reduced fraction of its exact
  value (``float.as_integer_ratio``), so no digits are lost;
- ``str`` and ``bytes`` (and their subclasses, ``StrEnum`` members included) by content;
- ``tuple`` (named tuples too: they equal the plain tuple of their items) and
  ``frozenset``, recursively; ``None``;
- anything else by its pickle (protocol 4, fixed, so a newer Python gives the same
  key). A pickle is not canonical: two equal objects built differently (a frozen
  dataclass holding ``1`` and one holding ``1.0``, or equal datetimes in two time
  zones) may pickle differently, and then a stored outcome of one is not found for
  the other; the task is simply run again.

A NaN is unequal even to itself, so a task that holds one is never found again:
its outcome is stored (under one key, replaced on every run) and recomputed.
Keys longer than 32 bytes are replaced by their SHA-256, tagged, to keep the
index small.
"""

from __future__ import annotations

import decimal
import hashlib
import math
import numbers
import pickle
from collections.abc import Iterable
from typing import Any

from .._core.logs import get_logger
from .._core.serialization import short_repr

logger = get_logger(__name__)

__all__ = ["task_key", "task_keys"]

#: The pickle protocol of keys; fixed, so that a key never depends on the Python version.
KEY_PROTOCOL = 4

#: Keys longer than this are stored as the tag ``#`` and their SHA-256 (33 bytes).
_LONGEST_PLAIN = 32

#: The tag and one-byte length that start the key of a short int or str.
_INT_HEADS = [b"i" + bytes((size,)) for size in range(_LONGEST_PLAIN)]
_STR_HEADS = [b"s" + bytes((size,)) for size in range(_LONGEST_PLAIN)]


def task_key(task: Any) -> tuple[bytes, bool]:
    """The key of ``task``, and whether an outcome stored under it can be found again.

    The second item is false when the task holds a NaN. Raises ``TypeError`` naming
    the task when it is none of the canonical kinds and cannot be pickled.
    """
    kind = type(task)
    if kind is int:  # the common tasks, without the bytearray
        payload = task.to_bytes((task.bit_length() + 8) // 8, "big", signed=True)
        if len(payload) < _LONGEST_PLAIN - 1:
            return _INT_HEADS[len(payload)] + payload, True
    elif kind is str:
        payload = task.encode("utf-8", "surrogatepass")
        if len(payload) < _LONGEST_PLAIN - 1:
            return _STR_HEADS[len(payload)] + payload, True
    out = bytearray()
    findable = _encode(task, out, task)
    if len(out) > _LONGEST_PLAIN:
        return b"#" + hashlib.sha256(out).digest(), findable
    return bytes(out), findable


def task_keys(tasks: Iterable[Any]) -> tuple[list[bytes], list[int]]:
    """The key of each task, and the positions of the tasks whose outcomes cannot be found.

    The same keys as ``task_key``, at about half its cost for plain ``int`` and ``str``
    tasks: their case is written out in the loop, with no call.
    """
    keys: list[bytes] = []
    lost: list[int] = []
    add, int_heads, str_heads, longest = keys.append, _INT_HEADS, _STR_HEADS, _LONGEST_PLAIN - 1
    for task in tasks:
        kind = type(task)
        if kind is int:
            payload = task.to_bytes((task.bit_length() + 8) // 8, "big", signed=True)
            if len(payload) < longest:
                add(int_heads[len(payload)] + payload)
                continue
        elif kind is str:
            payload = task.encode("utf-8", "surrogatepass")
            if len(payload) < longest:
                add(str_heads[len(payload)] + payload)
                continue
        key, findable = task_key(task)
        if not findable:
            lost.append(len(keys))
        add(key)
    return keys, lost


def _encode(obj: Any, out: bytearray, task: Any) -> bool:
    kind = type(obj)
    if kind is int:
        _integer(obj, out)
        return True
    if kind is str:
        _sized(b"s", obj.encode("utf-8", "surrogatepass"), out)
        return True
    if kind is tuple or isinstance(obj, tuple):
        out += b"("
        _varint(len(obj), out)
        findable = True
        for item in obj:
            findable = _encode(item, out, task) and findable
        return findable
    if obj is None:
        out += b"N"
        return True
    if isinstance(obj, (int, float, complex, numbers.Number, decimal.Decimal)):
        return _number(obj, out, task)
    if isinstance(obj, str):
        _sized(b"s", str.encode(obj, "utf-8", "surrogatepass"), out)
        return True
    if isinstance(obj, bytes):
        _sized(b"b", bytes(obj), out)
        return True
    if isinstance(obj, frozenset):
        members = []
        findable = True
        for item in obj:
            encoded = bytearray()
            findable = _encode(item, encoded, task) and findable
            members.append(bytes(encoded))
        out += b"{"
        _varint(len(members), out)
        for member in sorted(members):
            out += member
        return findable
    _sized(b"p", _pickled(obj, task), out)
    return True


def _number(obj: Any, out: bytearray, task: Any) -> bool:
    """Encode a number by its exact value; false for a NaN."""
    if isinstance(obj, int):  # bool, IntEnum, ...
        _integer(int(obj), out)
        return True
    if isinstance(obj, complex) or (isinstance(obj, numbers.Complex) and not isinstance(obj, numbers.Real)):
        value = complex(obj)
        if value.imag == 0:
            return _number(value.real, out, task)
        out += b"c"
        real = _number(value.real, out, task)
        return _number(value.imag, out, task) and real
    if isinstance(obj, numbers.Integral):
        _integer(int(obj), out)
        return True
    if isinstance(obj, numbers.Rational):
        _ratio(int(obj.numerator), int(obj.denominator), out)
        return True
    if isinstance(obj, decimal.Decimal) or hasattr(obj, "as_integer_ratio"):
        try:
            is_nan = obj != obj
            infinite = not is_nan and obj in (math.inf, -math.inf)
        except TypeError:
            is_nan = infinite = False
        if is_nan:
            out += b"n"
            return False
        if infinite:
            out += b"+" if obj > 0 else b"-"
            return True
        numerator, denominator = obj.as_integer_ratio()
        _ratio(int(numerator), int(denominator), out)
        return True
    _sized(b"p", _pickled(obj, task), out)  # a number of a kind unknown here
    return True


def _ratio(numerator: int, denominator: int, out: bytearray) -> None:
    if denominator == 1:
        _integer(numerator, out)
    else:
        out += b"q"
        _integer(numerator, out)
        _integer(denominator, out)


def _integer(value: int, out: bytearray) -> None:
    _sized(b"i", value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True), out)


def _sized(tag: bytes, payload: bytes, out: bytearray) -> None:
    out += tag
    _varint(len(payload), out)
    out += payload


def _varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _pickled(obj: Any, task: Any) -> bytes:
    try:
        return pickle.dumps(obj, KEY_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"task {short_repr(task)} cannot be stored: its {type(obj).__name__} cannot be pickled ({exc})"
        ) from None
