"""What a pool tells a call before any work starts: a name that is no option, a function
that is not one, an option that the call's mode has no use for.

Which mode uses which option is read from the option groups of ``ezpool.options``
(``SerialOptions``, ``ThreadOptions``, ...), plus each mode's own count (``nthreads``,
``ncpu``, ``workers``). Two kinds of call are told of options their mode ignores, with
an ``IgnoredOptionWarning`` at the caller's line:

- a method of one mode (``smap``, ``tmap``, ``pmap``, ``dmap``) given, at the call, an
  option of other modes: ``pool.smap(f, xs, timeout=3)``;
- ``map``, ``imap``, ``amap`` or ``aimap`` on a pool given no mode (so serial), given an
  option of other modes at the call or in ``Pool(...)``: ``Pool().map(f, xs, ncpu=4)``.

``map`` on a pool given its mode ignores other modes' options without a word: one
argparse namespace drives every mode (``Pool(mode=args.mode).map(..., ncpu=args.ncpu,
workers=args.workers)``). A value left at the option's default (``None``) is never news.
"""

from __future__ import annotations

import reprlib
import warnings
from collections.abc import Mapping, Set
from typing import Any

from .._backends import MODES
from ..errors import IgnoredOptionWarning
from ..options import (
    OPTIONS,
    DistributedOptions,
    ImapOptions,
    MapOptions,
    ParallelOptions,
    SerialOptions,
    ThreadOptions,
)
from ..worker import BaseWorker
from .logs import get_logger
from .vocabulary import METHODS, unknown

logger = get_logger(__name__)

__all__ = ["Advice", "DEFAULT_MODE"]

SERIAL, THREADS, PARALLEL, DISTRIBUTED = MODES


class _Unstated(str):
    """The mode of a ``Pool`` given none: ``'serial'``, told apart from a ``'serial'`` written."""

    __slots__ = ()


#: ``Pool``'s default mode (``Pool(mode=DEFAULT_MODE)`` is ``Pool()``).
DEFAULT_MODE = _Unstated(SERIAL)


def _names(group: type) -> frozenset[str]:
    return frozenset(group.__annotations__)


#: The options each mode uses: its group's, and its own count.
USES: dict[str, frozenset[str]] = {
    SERIAL: _names(SerialOptions),
    THREADS: _names(ThreadOptions) | {"nthreads"},
    PARALLEL: _names(ParallelOptions) | {"ncpu"},
    DISTRIBUTED: _names(DistributedOptions) | {"workers"},
}

#: The options only ``imap`` and ``aimap`` use, whatever the mode (``buffersize``).
STREAMING = _names(ImapOptions) - _names(MapOptions)
_STREAMED = ("imap", "aimap")

#: The mode each method of one mode runs.
_MODE_OF = {method: mode for mode, method in METHODS.items()}


class Advice:
    """A pool's checks of each call: ``check`` raises a ``TypeError`` for a misnamed option or
    a ``fun`` that is not callable, and warns of options the call's mode ignores."""

    __slots__ = ("_stated", "_defaults")

    def __init__(self, mode: str, options: Mapping[str, Any]) -> None:
        for name, value in options.items():
            if name not in OPTIONS:
                raise unknown(name, OPTIONS, value, None, str(mode))
        self._stated = mode is not DEFAULT_MODE
        # What Pool(...) was given that its default serial mode ignores: map tells of it at each call.
        self._defaults = {} if self._stated else {
            name: value for name, value in options.items()
            if name not in USES[SERIAL] and name not in STREAMING and not _left(name, value)
        }

    def check(self, method: str, mode: str, fun: Any, tasks: Any, given: Mapping[str, Any]) -> None:
        """Check a call of ``method`` (``"map"``, ``"pmap"``, ...) that runs ``mode``, before it starts;
        to be called from the method itself (under ``known_by_other_names``), so that a warning
        points at its caller's line."""
        alone = _MODE_OF.get(method)
        # map in a mode the pool was given says nothing of other modes' options: they are its switch
        uses: Set[str] = USES[alone or SERIAL] if alone is not None or not self._stated else OPTIONS.keys()
        if method in _STREAMED:
            uses = uses | STREAMING
        odd = given.keys() - uses
        for name in odd:
            if name not in OPTIONS:
                raise unknown(name, OPTIONS, given[name], method, mode, _accepted(method, mode))
        _check_fun(method, mode, fun, tasks)
        ignored = {name: value for name, value in given.items() if name in odd and not _left(name, value)}
        if alone is None and self._defaults:
            pooled = {name: value for name, value in self._defaults.items() if name not in given}
            ignored = {**pooled, **ignored}
        if ignored:
            for name, value in ignored.items():  # a bad value is refused, not warned of
                OPTIONS[name].check(name, value)
            if alone is not None:
                lead = f"{method} runs the {mode!r} mode"
            elif self._stated:
                lead = f"{method} runs the pool's {mode!r} mode"
            else:
                lead = f"Pool() runs {method} serially (mode='serial' is the default)"
            warnings.warn(_ignoring(lead, ignored, alone is not None), IgnoredOptionWarning, stacklevel=4)


def _left(name: str, value: Any) -> bool:
    """Whether ``value`` is ``name``'s default (given or not, it changes nothing)."""
    default = OPTIONS[name].default
    if value is None or value is default:
        return True
    try:
        return bool(value == default)
    except Exception:  # an object whose == is not a truth (an array): not the default
        return False


def _accepted(method: str, mode: str) -> frozenset[str]:
    """The options a call of ``method`` in ``mode`` uses, listed when a name is not one of them."""
    return USES[_MODE_OF.get(method, mode)] | (STREAMING if method in _STREAMED else frozenset())


def _check_fun(method: str, mode: str, fun: Any, tasks: Any) -> None:
    """A ``TypeError`` if ``fun`` cannot run tasks in ``mode``, saying so when ``fun`` and
    ``tasks`` look swapped (``pmap(range(5), fib)``)."""
    if mode == DISTRIBUTED and isinstance(fun, type) and not issubclass(fun, BaseWorker):
        raise TypeError(f"fun must be a BaseWorker subclass or a function to serve, got {fun!r}")
    if mode != DISTRIBUTED and isinstance(fun, type) and issubclass(fun, BaseWorker):
        raise TypeError(
            f"fun is {fun.__name__}, a BaseWorker class, which only the distributed mode serves; "
            f"the {mode!r} mode calls a function: give {fun.__name__}().run, or the function its run calls"
        )
    if callable(fun):
        return
    message = f"fun must be callable, got {reprlib.repr(fun)}"
    if callable(tasks) and hasattr(fun, "__iter__"):
        name = getattr(tasks, "__qualname__", None) or reprlib.repr(tasks)
        message += f"; the arguments look swapped: {method}({name}, {reprlib.repr(fun)})"
    raise TypeError(message)


def _ignoring(lead: str, ignored: dict[str, Any], alone: bool) -> str:
    """The warning of a call that ignores ``ignored`` (name: value), after ``lead``."""
    users = {name: [mode for mode in MODES if name in USES[mode]] for name in ignored}
    parts = [f"{name}={_shown(name, value)}" for name, value in ignored.items()]
    whose = [_whose(users[name]) for name in ignored]
    if len(parts) == 1:
        said = f"{lead}, which ignores {parts[0]}: {whose[0]}"
    else:
        listed = [f"{part} ({who})" for part, who in zip(parts, whose)]
        said = f"{lead}, which ignores {', '.join(listed[:-1])} and {listed[-1]}"
    needed = [found for found in users.values() if found]  # buffersize is no mode's
    if not needed:
        return f"{said}; call pool.imap, or leave it out"
    modes = [mode for mode in MODES if all(mode in found for found in needed)]
    either = modes or [mode for mode in MODES if any(mode in found for found in needed)]
    methods = [f"pool.{METHODS[mode]}" for mode in either]
    if alone:
        return f"{said}; leave {'it' if len(parts) == 1 else 'them'} out, or call {_either(methods)}"
    if len(modes) == 1:
        return f"{said}; give Pool(mode={modes[0]!r}) or call {methods[0]}"
    return f"{said}; give Pool(mode=...) the mode meant, or call {_either(methods)}"


def _whose(modes: list[str]) -> str:
    if not modes:
        return "only imap and aimap use it"
    if len(modes) == 1:
        return f"the {modes[0]!r} mode uses it"
    return f"the {_both(repr(mode) for mode in modes)} modes use it"


def _shown(name: str, value: Any) -> str:
    return "<hidden>" if name == "hmac_key" else reprlib.repr(value)


def _both(words: Any) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"

