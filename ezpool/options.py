"""Every keyword option of EzPool, written once: its type, its default and what it means.

The options are grouped below by the modes that use them, each group a
``TypedDict`` whose fields carry their default and their one-line meaning
(``Annotated[type, Option(default, meaning)]``). From these classes:

- a type checker sees every option of every method (``Pool.pmap`` takes
  ``**options: Unpack[ParallelOptions]``), so ``pmap(timout=3)`` and
  ``pmap(workers=...)`` are type errors;
- ``Options`` takes its fields, defaults and checks, and a misspelt name at run
  time gets a ``TypeError`` suggesting the option meant;
- each method lists the options of its mode in its ``help()`` (``described``).

Every option may be given to ``Pool(...)`` as a pool-wide default and overridden per
call (``pool.pmap(..., timeout=5)``). A mode ignores the options it has no use for,
so one argparse namespace can drive all three modes.
"""

import numbers
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Callable, NamedTuple, Optional, TypedDict, TypeVar, Union

from ._core.checks import exception_types, parse_memory, pause, retries
from ._core.logs import get_logger
from .cluster.base import Cluster

# No ``from __future__ import annotations`` here: the option groups below are read at
# run time, each field's annotation holding its ``Option``.
if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = get_logger(__name__)

__all__ = [
    "DEFAULT_WORKER",
    "DistributedOptions",
    "ImapOptions",
    "MapOptions",
    "Option",
    "Options",
    "ParallelOptions",
    "PoolOptions",
    "SerialOptions",
    "ThreadOptions",
    "described",
    "parse_memory",
    "unknown_option",
]

#: The worker a distributed call uses when none is named.
DEFAULT_WORKER = "PYRO:worker@localhost:21000"

ProgressHook = Callable[[Any, int, Optional[int]], Any]
PathText = Union[str, "os.PathLike[str]"]
Modules = Union[str, ModuleType, Sequence[Union[str, ModuleType]]]
Workers = Union[str, Sequence[str], Cluster, None]


class Option(NamedTuple):
    """An option's default, its meaning in one line, and its check: ``check(name, value)``
    returns the value to keep, or raises ``TypeError``/``ValueError`` naming it."""

    default: Any
    meaning: str
    check: Callable[[str, Any], Any]


# --- the checks ------------------------------------------------------------------------


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _count(name: str, value: Any, optional: bool = True) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _needed_count(name: str, value: Any) -> Optional[int]:
    return _count(name, value, optional=False)


def _seconds(name: str, value: Any, optional: bool = True) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if not float(value) > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value  # type: ignore[return-value]  # a Real kept as given


def _needed_seconds(name: str, value: Any) -> Optional[float]:
    return _seconds(name, value, optional=False)


def _progress(name: str, value: Any) -> Any:
    if not (value is None or isinstance(value, bool) or callable(value)):
        raise TypeError(f"progress must be None, True, False or a callable, got {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    return value


def _name(name: str, value: Any) -> Optional[str]:
    if value is not None and not (isinstance(value, str) and value):
        raise TypeError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _maybe_flag(name: str, value: Any) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False, got {value!r}")
    return value


def _path(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path or None, got {value!r}")
    return value


def _output(name: str, value: Any) -> Any:
    """A file to write at the end of each call: its folder must exist now, not after the work."""
    _path(name, value)
    if value is not None:
        folder = os.path.dirname(os.path.abspath(os.fspath(value)))
        if os.path.isdir(value) or not os.path.isdir(folder):
            where = "is a folder" if os.path.isdir(value) else f"has no folder {folder!r}"
            raise ValueError(f"{name}={os.fspath(value)!r} {where}: give the path of a file to write")
    return value


def _start_method(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    import multiprocessing  # here, not at the top: a serial pool never needs it

    methods = multiprocessing.get_all_start_methods()
    if value not in methods:
        raise ValueError(f"start_method {value!r} is not one of {', '.join(methods)}")
    return str(value)


def _key(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, (str, bytes)):  # never shown: it is a secret
        raise TypeError(f"hmac_key must be a str, bytes or None, got {type(value).__name__}")
    return value


def _modules(name: str, value: Any) -> tuple[Union[str, ModuleType], ...]:
    if isinstance(value, (str, ModuleType)):
        value = (value,)
    try:
        found = tuple(value)
    except TypeError:
        raise TypeError(f"ship_modules must be modules or module names, got {value!r}") from None
    for module in found:
        if not isinstance(module, (str, ModuleType)):
            raise TypeError(f"ship_modules must be modules or module names, got {module!r}")
    return found


def _workers(name: str, value: Any) -> Union[tuple[str, ...], Cluster, str, None]:
    if value is None or isinstance(value, Cluster) or value == "slurm":
        return value
    if isinstance(value, str):
        value = (value,)
    try:
        uris = tuple(value)
    except TypeError:
        raise TypeError(
            f"workers must be a URI string or a sequence of them, 'slurm', or an ezpool.cluster "
            f"cluster (Slurm, SSH), got {value!r}"
        ) from None
    for uri in uris:
        if not isinstance(uri, str):
            raise TypeError(f"each worker must be a URI string, got {uri!r}")
    if not uris:
        raise ValueError(f"workers is empty ({value!r}): name at least one worker URI")
    if uris == ("slurm",):  # as an argparse list gives it: --workers slurm
        return "slurm"
    return uris


def planned_workers(workers: Any) -> int:
    """How many distributed workers ``workers`` (a checked ``workers`` option) names, or a
    cluster asks for (``"slurm"``: 1, until the allocation is known)."""
    if isinstance(workers, tuple):
        return len(workers)
    return int(getattr(workers, "expected", 0)) or 1


def _address(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    from ._core.listen_file import parse_address

    if not isinstance(value, str):
        raise TypeError(f"{name} must be 'HOST:PORT' (a str), got {value!r}")
    parse_address(value if ":" in value else f"{value}:0")
    return value if ":" in value else f"{value}:0"


def _anything(name: str, value: Any) -> Any:
    return value


# --- the options, by the modes that use them ---------------------------------------------


class _Every(TypedDict, total=False):
    progress: Annotated[Union[bool, ProgressHook, None], Option(
        None, "a bar on a terminal or in a notebook (None), always (True), never (False), or a hook "
        "called here once per finished task as hook(outcome, done, total)", _progress)]
    msg: Annotated[str, Option("Computing", "the label of the progress bar", _text)]
    context: Annotated[Any, Option(
        None, "an object every task gets as the first argument of fun; it travels to each worker once "
        "and stays there for the pool's life (treat it as read-only)", _anything)]
    store: Annotated[Optional[PathText], Option(
        None, "a file (SQLite) that keeps every outcome as it arrives: the same call again returns the "
        "stored ones at once and runs only the others (see ezpool.store)", _path)]
    store_key: Annotated[Optional[str], Option(
        None, "a name of your own for the results in store, to keep apart versions of a function "
        "(None: its name)", _name)]
    retry_failed: Annotated[bool, Option(
        False, "with store, run again the tasks whose stored outcome is an exception", _flag)]
    trace: Annotated[Optional[PathText], Option(
        None, "a file to write each call's timeline to as a Chrome trace (JSON; open it in Perfetto)",
        _output)]
    report: Annotated[Optional[PathText], Option(
        None, "a file to write each call's report to: one HTML page with the timeline, the time "
        "split per worker, the failures and the slowest tasks (see ezpool.report)", _output)]
    retries: Annotated[int, Option(
        0, "how many more times a task whose exception is one of retry_on runs (at the back of the "
        "queue); the last outcome is kept and results.attempts counts the runs", retries)]
    retry_on: Annotated[tuple[type[BaseException], ...], Option(
        (), "the exception classes that retries runs again (Exception: every exception; "
        "KeyboardInterrupt and SystemExit never)", exception_types)]
    retry_backoff: Annotated[float, Option(
        0.0, "seconds before the first run again, doubling for each next one (with jitter, at most "
        "60 s)", pause)]


class _Timed(TypedDict, total=False):
    timeout: Annotated[Optional[float], Option(
        None, "seconds a task may run; one that runs longer gets TaskTimeout (the serial mode cannot "
        "stop a task, and ignores it; the threads mode cannot stop one either, and says so)",
        _seconds)]


class _Chunked(TypedDict, total=False):
    chunksize: Annotated[Optional[int], Option(
        None, "tasks handed to a worker (or a thread) at a time (None: sized from the run times "
        "measured, shrinking towards the end so that no worker idles)", _count)]


class _Processes(_Timed, _Chunked, total=False):
    max_attempts: Annotated[int, Option(
        2, "how many times a task is tried when the process running it dies", _needed_count)]
    capture_output: Annotated[bool, Option(
        False, "send back what tasks print and log on workers, and show it here, each line tagged "
        "[WORKER task TASK]", _flag)]


class _Limits(TypedDict, total=False):
    max_tasks_per_worker: Annotated[Optional[int], Option(
        None, "replace a worker process after it ran this many tasks (None: never)", _count)]
    max_memory: Annotated[Optional[int], Option(
        None, "a worker process whose own resident memory passes this (bytes, or '2GiB', '500MB') fails "
        "its task with WorkerOutOfMemory and is replaced (None: no limit)", parse_memory)]


class _Local(TypedDict, total=False):
    start_method: Annotated[Optional[str], Option(
        None, "the multiprocessing start method: 'fork', 'spawn', 'forkserver' (None: the platform's)",
        _start_method)]


class _Remote(TypedDict, total=False):
    spawn: Annotated[Optional[bool], Option(
        None, "start a local worker where none answers: only on loopback; None: only at the default "
        "address " + DEFAULT_WORKER, _maybe_flag)]
    hmac_key: Annotated[Union[str, bytes, None], Option(
        None, "the workers' shared secret (None: $EZPOOL_HMAC_KEY, else your key file; see "
        "ezpool.security)", _key)]
    insecure: Annotated[bool, Option(
        False, "use no key at all (the workers need --insecure too): anyone who can reach them can "
        "run code there, and here", _flag)]
    tls_ca: Annotated[Optional[PathText], Option(
        None, "for TLS: the CA file that signed the workers' certificates (python -m ezpool.tls)", _path)]
    tls_cert: Annotated[Optional[PathText], Option(
        None, "for TLS: this client's certificate file, where workers require one", _path)]
    tls_key: Annotated[Optional[PathText], Option(None, "for TLS: the private key file of tls_cert", _path)]
    ship_modules: Annotated[Modules, Option(
        (), "modules (or their names) whose code travels to generic workers by value, for code they "
        "cannot import", _modules)]
    heartbeat: Annotated[float, Option(
        10.0, "seconds a busy worker may leave a check unanswered before its tasks go to others",
        _needed_seconds)]
    backup: Annotated[bool, Option(
        True, "let an idle worker run a backup copy of a late chunk (the first answer is kept): a task "
        "may then run twice", _flag)]
    listen: Annotated[Optional[str], Option(
        None, "HOST:PORT where workers started with ezpool-serve --connect dial in (port 0: a free one; "
        "None: only where listen_file or a cluster asks, on this machine's address)", _address)]
    listen_file: Annotated[Optional[PathText], Option(
        None, "a file (on a file system the workers share) to write the listen address into, for "
        "ezpool-serve --connect FILE; the key is not in it", _path)]
    procs_per_node: Annotated[Optional[int], Option(
        None, "workers='slurm': worker processes per node (None: one per task slot of the allocation)",
        _count)]


class _Cpus(TypedDict, total=False):
    ncpu: Annotated[Optional[int], Option(
        None, "worker processes of the parallel mode (None: the CPUs this process may use)", _count)]


class _Threads(TypedDict, total=False):
    nthreads: Annotated[Optional[int], Option(
        None, "threads of the threads mode (None: as concurrent.futures.ThreadPoolExecutor has)", _count)]


class _Workers(TypedDict, total=False):
    workers: Annotated[Workers, Option(
        None, "the distributed workers: a URI ('PYRO:worker@host:21000', 'PYRONAME:...') or a sequence "
        "of them, 'slurm' (workers started on this SLURM allocation), or an ezpool.cluster cluster "
        "(Slurm, SSH) whose workers dial in (None: " + DEFAULT_WORKER + ", or only workers that dial in "
        "where listen is given)", _workers)]


class _Streaming(TypedDict, total=False):
    buffersize: Annotated[Optional[int], Option(
        None, "imap: most tasks read and not yet handed back, which bounds memory (None: in "
        "proportion to the workers)", _count)]


class SerialOptions(_Every, total=False):
    """The options of ``smap``: the serial mode."""


class ThreadOptions(_Every, _Timed, _Chunked, total=False):
    """The options of ``tmap``: the threads mode (its ``nthreads`` is a parameter of its own)."""


class ParallelOptions(_Every, _Processes, _Limits, _Local, total=False):
    """The options of ``pmap`` (its ``ncpu`` is a parameter of its own)."""


class DistributedOptions(_Every, _Processes, _Limits, _Remote, total=False):
    """The options of ``dmap`` (its ``workers`` is a parameter of its own)."""


class MapOptions(_Every, _Processes, _Limits, _Local, _Remote, total=False):
    """The options of ``map``, whichever mode runs it (``ncpu`` and ``workers`` are
    parameters of their own)."""


class ImapOptions(MapOptions, _Streaming, total=False):
    """The options of ``imap``."""


class PoolOptions(ImapOptions, _Cpus, _Threads, _Workers, total=False):
    """Every option: those of ``Pool(...)``, ``Pool.executor`` and ``PoolExecutor``."""


def _table(group: type) -> dict[str, Option]:
    """The options of ``group`` (a class above), by name, in the order written."""
    return {name: hint.__metadata__[0] for name, hint in group.__annotations__.items()}


#: Every option, by name.
OPTIONS: dict[str, Option] = _table(PoolOptions)


class Options:
    """The keyword options of a pool and of each of its calls; see each method's list.

    Frozen, compared and hashed like a ``dataclass(frozen=True)`` (without importing
    dataclasses, and inspect, ast and dis with it: a good part of ``import ezpool``);
    ``replace`` makes a changed copy. An unknown name is a ``TypeError`` suggesting
    the option meant.
    """

    __slots__ = tuple(OPTIONS)

    def __init__(self, **values: "Unpack[PoolOptions]") -> None:
        for name in values:
            if name not in OPTIONS:
                raise unknown_option(name)
        given: dict[str, Any] = dict(values)
        for name, option in OPTIONS.items():
            value = option.check(name, given[name]) if name in given else option.default
            object.__setattr__(self, name, value)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")

    if TYPE_CHECKING:
        # Each option is an attribute, of the type its group gives it.
        def __getattr__(self, name: str) -> Any: ...

    def replace(self, **changes: "Unpack[PoolOptions]") -> "Options":
        """Return a copy with ``changes`` applied; an unknown name is a ``TypeError``."""
        for name in changes:
            if name not in OPTIONS:
                raise unknown_option(name)
        if not changes:
            return self
        return Options(**{**self.values(), **changes})

    def values(self) -> dict[str, Any]:
        """Every option by name, as keyword arguments of ``Options``, ``Pool`` or ``PoolExecutor``."""
        return {name: getattr(self, name) for name in OPTIONS}

    def _key(self) -> tuple[Any, ...]:
        # What equality and hashing compare: not ``context``, which may be a big array.
        return tuple(getattr(self, name) for name in OPTIONS if name != "context")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")  # frozen, as a dataclass(frozen=True)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, (self.values(),)

    def __repr__(self) -> str:
        shown = {name: repr(getattr(self, name)) for name in OPTIONS}
        if self.hmac_key is not None:
            shown["hmac_key"] = "<hidden>"
        if self.context is not None:  # it may be big: its type is enough
            shown["context"] = f"<{type(self.context).__name__}>"
        return f"Options({', '.join(f'{k}={v}' for k, v in shown.items())})"


Options.__doc__ = (Options.__doc__ or "") + "\n    Attributes:\n" + "".join(
    f"        {name}: {option.meaning} (default: {option.default!r})\n" for name, option in OPTIONS.items()
)


def _rebuild(values: dict[str, Any]) -> Options:
    return Options(**values)


def unknown_option(name: str) -> TypeError:
    """The error for a keyword that is no option: what EzPool calls it where it is another
    library's name (``processes``: ``ncpu``), else the closest option (see ezpool._core.vocabulary)."""
    from ._core.vocabulary import unknown

    return unknown(name, OPTIONS)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def described(group: type) -> Callable[[_Method], _Method]:
    """A decorator adding the options of ``group`` to a method's docstring, one line each,
    so that ``help(Pool.pmap)`` lists what ``pmap`` takes."""
    table = _table(group)

    def decorate(method: _Method) -> _Method:
        doc = (method.__doc__ or "").rstrip()
        body = [line for line in doc.splitlines()[1:] if line.strip()]
        indent = min((line[: len(line) - len(line.lstrip())] for line in body), key=len, default="")
        lines = "".join(f"{indent}    {name}: {option.meaning}\n" for name, option in table.items())
        method.__doc__ = f"{doc}\n\n{indent}Options (where not given, the pool's):\n{lines}"
        return method

    return decorate
