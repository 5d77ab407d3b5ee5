"""The one set of keyword options every map call takes, checked in one place.

Every option may be given to ``Pool(...)`` as a pool-wide default and overridden per
call (``pool.pmap(..., timeout=5)``). A mode ignores the options it has no use for,
so one argparse namespace can drive all three modes.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable, Optional, Union

from ._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Options", "DEFAULT_WORKER", "NOT_GIVEN", "given", "unknown_option"]

#: The worker a distributed call uses when none is named.
DEFAULT_WORKER = "PYRO:worker@localhost:21000"

ProgressHook = Callable[[Any, int, Optional[int]], Any]
PathText = Union[str, "os.PathLike[str]"]


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"

    def __reduce__(self) -> str:
        return "NOT_GIVEN"  # one object, even through pickle


#: The default of every option parameter of ``Pool``'s methods: the option was not
#: given, so the pool's value (or the default here, in ``Options``) applies. Typed
#: ``Any`` so that each parameter can show the option's own type.
NOT_GIVEN: Any = _NotGiven()


class Options:
    """Keyword options of ``Pool``, ``map``, ``smap``, ``pmap`` and ``dmap``.

    Attributes:
        progress: ``None`` shows a progress bar on stderr only when it is a terminal, or
            in a Jupyter notebook (a widget where ipywidgets is installed);
            ``True`` always, ``False`` never; a callable is called in the calling
            process once per finished task as ``progress(outcome, done, total)``.
        msg: the label of the progress bar.
        timeout: seconds a single task may run (``None``: no limit). A task that runs
            longer gets ``TaskTimeout`` (a ``TimeoutError``) in its slot. The serial
            mode cannot stop a running task and ignores it.
        ncpu: worker processes for the parallel mode (``None``: the CPUs this
            process may use). More than the cores is allowed.
        chunksize: tasks sent to a worker at a time (``None``: chosen for you,
            shrinking towards the end of a run so that no core idles).
        start_method: the ``multiprocessing`` start method (``"fork"``, ``"spawn"``,
            ``"forkserver"``; ``None``: the platform's default).
        workers: URIs of the distributed workers, e.g. ``"PYRO:worker@host:21000"``;
            one string or a sequence of them.
        spawn: in the distributed mode, whether the pool starts a worker itself where
            none answers. Only ever on this machine's loopback (``localhost``,
            ``127.0.0.1``) and where nothing listens on the port. ``None`` (the
            default): only at the default address, ``PYRO:worker@localhost:21000``,
            so that a mistyped address is an error rather than a new worker;
            ``True``: at any such address; ``False``: never.
        hmac_key: the shared secret of distributed workers, at least 16 bytes
            (``None``: ``$EZPOOL_HMAC_KEY``, else your per-user key file, made on
            first use; see ``ezpool.security``).
        insecure: use no key at all with distributed workers (they must be started
            with ``--insecure`` too). Anyone who can reach a worker can then run
            code in it, and in this process through its answers.
        tls_ca: for TLS with distributed workers, the CA file that signed their
            certificates (``python -m ezpool.tls`` makes it).
        tls_cert: this client's certificate file, where the workers require one.
        tls_key: the private key file of ``tls_cert``.
        ship_modules: modules (or their names) whose functions and classes travel
            to generic distributed workers by value, for code the workers cannot
            import (e.g. your own project, not installed there). Code from other
            importable modules travels by name, as pickle does.
        max_attempts: how many times a task is tried when the process running it dies.
        heartbeat: in the distributed mode, seconds a busy worker may leave a check
            unanswered (a stopped process, a cut network) before its tasks go to others.
        backup: in the distributed mode, when no task waits to be sent and a worker is
            idle while another has held its chunk for twice the time its tasks were
            expected to take (judged from the run times measured in the call, and at
            least 0.2 s), the idle worker runs a backup copy of that chunk. The first
            answer is kept; the other copy is broken off, and its worker stops after the
            task it is running. So a slow but live worker does not hold up the end of a
            call, but a task there may run twice: turn it off for tasks whose side
            effects must not be repeated. ``max_attempts`` counts as before: a copy that
            fails while the other still runs counts nothing. With it on, a worker is
            also sent its next chunk while it runs the last (a copy rescues one that
            waits behind a slow worker's); off, it holds one at a time. The other
            modes ignore it.
        capture_output: in the parallel and distributed modes, send back what each task
            writes to ``sys.stdout`` and ``sys.stderr`` and logs with ``logging``, and show
            it here, each line tagged ``[WORKER task TASK]``: text on this process's
            stdout and stderr (above the progress bar, if one is shown), log records
            through this process's loggers of the same name. Records are kept from the
            level of this process's root logger at the call (a logger the worker gave a
            level of its own decides for its records). Off by default: it costs a few
            microseconds per task. The serial mode ignores it: its tasks already write
            here. Output of a task that overruns its timeout or kills its process is lost.
        store: a file (SQLite) that keeps every outcome as it arrives: run the same call
            again and the stored outcomes come back at once, only the missing tasks run.
            Survives Ctrl-C and a killed process; see ``ezpool.store``.
        store_key: a name of your own for the results in ``store``, to keep apart the
            results of different versions of a function (``None``: its name). The store
            refuses to mix results of changed code under one name.
        retry_failed: with ``store``, run again the tasks whose stored outcome is an
            exception, instead of returning it.
        context: an object every task gets as its first argument, ``fun(context, *args)``
            (``None``: none). It travels to each worker process or distributed worker
            once, and stays there for the life of the pool (cached by content, like the
            function: give an equal object again and nothing is sent); in the serial
            mode it is passed as it is. Big numpy arrays in it reach the parallel workers
            through shared memory, not the pipes, and are read-only there. A
            ``BaseWorker`` gets it as the first argument of ``run``. Treat it as
            read-only: what a task changes in its worker's copy is not seen elsewhere,
            and may or may not be seen by later tasks.
        buffersize: ``imap`` only: most tasks read from the iterable and not yet handed
            back, which bounds memory (``None``: in proportion to the workers). Fewer
            are read when tasks are slow.
    """

    # Frozen, compared and hashed like a dataclass(frozen=True), without importing
    # dataclasses (and inspect, ast, dis with it): a good part of ``import ezpool``.
    __slots__ = (
        "progress", "msg", "timeout", "ncpu", "chunksize", "start_method", "workers", "spawn",
        "hmac_key", "insecure", "tls_ca", "tls_cert", "tls_key", "ship_modules", "max_attempts",
        "heartbeat", "backup", "capture_output", "store", "store_key", "retry_failed",
        "buffersize", "context",
    )

    progress: Union[bool, ProgressHook, None]
    msg: str
    timeout: Optional[float]
    ncpu: Optional[int]
    chunksize: Optional[int]
    start_method: Optional[str]
    workers: Union[str, Sequence[str], None]
    spawn: Optional[bool]
    hmac_key: Union[str, bytes, None]
    insecure: bool
    tls_ca: Optional[PathText]
    tls_cert: Optional[PathText]
    tls_key: Optional[PathText]
    ship_modules: Sequence[Union[str, ModuleType]]
    max_attempts: int
    heartbeat: float
    backup: bool
    capture_output: bool
    store: Optional[PathText]
    store_key: Optional[str]
    retry_failed: bool
    buffersize: Optional[int]
    context: Any

    def __init__(
        self,
        progress: Union[bool, ProgressHook, None] = None,
        msg: str = "Computing",
        timeout: Optional[float] = None,
        ncpu: Optional[int] = None,
        chunksize: Optional[int] = None,
        start_method: Optional[str] = None,
        workers: Union[str, Sequence[str], None] = None,
        spawn: Optional[bool] = None,
        hmac_key: Union[str, bytes, None] = None,
        insecure: bool = False,
        tls_ca: Optional[PathText] = None,
        tls_cert: Optional[PathText] = None,
        tls_key: Optional[PathText] = None,
        ship_modules: Sequence[Union[str, ModuleType]] = (),
        max_attempts: int = 2,
        heartbeat: float = 10.0,
        backup: bool = True,
        capture_output: bool = False,
        store: Optional[PathText] = None,
        store_key: Optional[str] = None,
        retry_failed: bool = False,
        buffersize: Optional[int] = None,
        context: Any = None,
    ) -> None:
        values = locals()
        for name in Options.__slots__:
            object.__setattr__(self, name, values[name])
        self._check()

    def _check(self) -> None:
        if not (self.progress is None or isinstance(self.progress, bool) or callable(self.progress)):
            raise TypeError(f"progress must be None, True, False or a callable, got {self.progress!r}")
        if not isinstance(self.msg, str):
            raise TypeError(f"msg must be a string, got {self.msg!r}")
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, numbers.Real):
                raise TypeError(f"timeout must be a number of seconds or None, got {self.timeout!r}")
            if not self.timeout > 0:
                raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        _check_count("ncpu", self.ncpu)
        _check_count("chunksize", self.chunksize)
        _check_count("max_attempts", self.max_attempts, optional=False)
        if isinstance(self.heartbeat, bool) or not isinstance(self.heartbeat, numbers.Real):
            raise TypeError(f"heartbeat must be a number of seconds, got {self.heartbeat!r}")
        if not self.heartbeat > 0:
            raise ValueError(f"heartbeat must be positive, got {self.heartbeat!r}")
        if not isinstance(self.backup, bool):
            raise TypeError(f"backup must be True or False, got {self.backup!r}")
        if self.start_method is not None:
            import multiprocessing  # here, not at the top: a serial pool never needs it

            methods = multiprocessing.get_all_start_methods()
            if self.start_method not in methods:
                raise ValueError(
                    f"start_method {self.start_method!r} is not one of {', '.join(methods)}"
                )
        object.__setattr__(self, "workers", _check_workers(self.workers))
        if self.spawn is not None and not isinstance(self.spawn, bool):
            raise TypeError(f"spawn must be None, True or False, got {self.spawn!r}")
        if self.hmac_key is not None and not isinstance(self.hmac_key, (str, bytes)):
            raise TypeError(f"hmac_key must be a str, bytes or None, got {type(self.hmac_key).__name__}")
        if not isinstance(self.insecure, bool):
            raise TypeError(f"insecure must be True or False, got {self.insecure!r}")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name} must be a file path or None, got {value!r}")
        object.__setattr__(self, "ship_modules", _check_modules(self.ship_modules))
        if not isinstance(self.capture_output, bool):
            raise TypeError(f"capture_output must be True or False, got {self.capture_output!r}")
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise TypeError(f"store must be a file path or None, got {self.store!r}")
        if self.store_key is not None and not (isinstance(self.store_key, str) and self.store_key):
            raise TypeError(f"store_key must be a non-empty string or None, got {self.store_key!r}")
        if not isinstance(self.retry_failed, bool):
            raise TypeError(f"retry_failed must be True or False, got {self.retry_failed!r}")
        _check_count("buffersize", self.buffersize)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")

    def replace(self, **changes: Any) -> Options:
        """Return a copy with ``changes`` applied; an unknown name is a ``TypeError``."""
        for name in changes:
            if name not in _NAMES:
                raise unknown_option(name)
        if not changes:
            return self
        values = {name: getattr(self, name) for name in Options.__slots__}
        return Options(**{**values, **changes})

    def _key(self) -> tuple[Any, ...]:
        # What equality and hashing compare: not ``context``, which may be a big array.
        return tuple(getattr(self, name) for name in Options.__slots__ if name != "context")

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
        return _rebuild, (tuple(getattr(self, name) for name in Options.__slots__),)

    def __repr__(self) -> str:
        shown = {name: repr(getattr(self, name)) for name in Options.__slots__}
        if self.hmac_key is not None:
            shown["hmac_key"] = "<hidden>"
        if self.context is not None:  # it may be big: its type is enough
            shown["context"] = f"<{type(self.context).__name__}>"
        return f"Options({', '.join(f'{k}={v}' for k, v in shown.items())})"


def _check_count(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_modules(modules: Any) -> tuple[Union[str, ModuleType], ...]:
    if isinstance(modules, (str, ModuleType)):
        modules = (modules,)
    try:
        found = tuple(modules)
    except TypeError:
        raise TypeError(f"ship_modules must be modules or module names, got {modules!r}") from None
    for module in found:
        if not isinstance(module, (str, ModuleType)):
            raise TypeError(f"ship_modules must be modules or module names, got {module!r}")
    return found


def _check_workers(workers: Any) -> Optional[tuple[str, ...]]:
    if workers is None:
        return None
    if isinstance(workers, str):
        workers = (workers,)
    try:
        uris = tuple(workers)
    except TypeError:
        raise TypeError(f"workers must be a URI string or a sequence of them, got {workers!r}") from None
    for uri in uris:
        if not isinstance(uri, str):
            raise TypeError(f"each worker must be a URI string, got {uri!r}")
    if not uris:
        raise ValueError(f"workers is empty ({workers!r}): name at least one worker URI")
    return uris


def _rebuild(values: tuple[Any, ...]) -> Options:
    return Options(*values)


#: The option names, for ``given``.
_NAMES = frozenset(Options.__slots__)


def unknown_option(name: str) -> TypeError:
    """The error for a keyword that is no option, suggesting the closest one."""
    import difflib  # only to suggest a name for a mistyped one

    close = difflib.get_close_matches(name, _NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return TypeError(f"unknown option {name!r}{hint} (options: {', '.join(sorted(_NAMES))})")


def given(arguments: dict[str, Any]) -> dict[str, Any]:
    """The options among a method's ``arguments`` (its ``locals()``) that were given.

    ``ncpu`` and ``workers`` are also positional parameters of some methods, where
    ``None`` has always meant "not given", so ``None`` is left out for them.
    """
    return {
        name: value
        for name, value in arguments.items()
        if name in _NAMES and value is not NOT_GIVEN and not (value is None and name in ("ncpu", "workers"))
    }
