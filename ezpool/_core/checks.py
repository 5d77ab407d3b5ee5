"""The checks of the options for retries and worker limits (``ezpool.options`` holds the rest).

Each takes the option's name and the value given, and returns the value to keep or
raises ``TypeError``/``ValueError`` naming both.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["exception_types", "parse_memory", "pause", "retries"]



def retries(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number of runs again (0: none), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value!r}")
    return int(value)


def exception_types(name: str, value: Any) -> tuple[type[BaseException], ...]:
    found = (value,) if isinstance(value, type) else value
    try:
        types = tuple(found)
    except TypeError:
        raise TypeError(f"{name} must be an exception class or a tuple of them, got {value!r}") from None
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(
                f"{name} must be an exception class or a tuple of them, got {kind!r} in {value!r}"
            )
    return types


def pause(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds (0: none), got {value!r}")
    if not float(value) >= 0:
        raise ValueError(f"{name} must be 0 or more seconds, got {value!r}")
    return float(value)


#: Units of ``max_memory`` and ``ezpool-serve --max-memory``, as Dask and psutil read them.
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(name: str, value: Any) -> Optional[int]:
    """``value`` (bytes, or a text such as ``"2GiB"``, ``"500MB"``, ``"1.5 G"``) in bytes."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "").replace("_", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            amount = float(number) * _UNITS[unit]
        except (ValueError, KeyError):
            raise ValueError(
                f"{name} must be bytes or a size such as '2GiB', '500MB' or '1.5G', got {value!r}"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be bytes or a size such as '2GiB', got {value!r}")
    else:
        amount = float(value)
    if not amount >= 1:
        raise ValueError(f"{name} must be a positive size, got {value!r}")
    return int(amount)

