"""``Pool``: one facade over the three modes, and the one place results are assembled."""

from __future__ import annotations

import functools
from collections.abc import Generator, Hashable, Iterable, Iterator, Sequence, Sized
from itertools import repeat
from time import perf_counter
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, cast

from . import _backends as backends
from ._core.feed import Feed, Live, stored_batches
from ._core.logs import get_logger
from ._core.progress import Progress
from ._core.records import Batch
from ._core.relay import Relay
from ._core.tasks import iterate_tasks, unique_tasks
from .options import NOT_GIVEN, Options, PathText, ProgressHook, given, unknown_option
from .results import R, Results, ResultsBuilder, TaskOutcome

if TYPE_CHECKING:
    from .executor import PoolExecutor
    from .store import Sweep

logger = get_logger(__name__)

__all__ = ["Pool", "EzPool"]

#: What each public method runs.
_SERIAL, _PARALLEL, _DISTRIBUTED = backends.MODES

#: Makes a ``TaskOutcome`` from a tuple of its fields, without the keyword handling.
_outcome = functools.partial(tuple.__new__, TaskOutcome)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _suggesting(method: _Method) -> _Method:
    """``method``, whose misspelt keyword is EzPool's ``TypeError`` suggesting the option
    meant (``unknown option 'timout'; did you mean 'timeout'?``), not Python's bare one.
    A type checker sees the method's own signature, and flags the typo before it runs."""
    code = method.__code__  # its parameters, without importing inspect (and ast, dis)
    accepted = frozenset(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])

    @functools.wraps(method)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if not accepted.issuperset(kwargs):
            raise unknown_option(next(name for name in kwargs if name not in accepted))
        return method(*args, **kwargs)

    return cast(_Method, checked)


#: ``imap``'s default ``buffersize``: this many tasks per worker, and never fewer than the least.
_BUFFER_PER_WORKER = 16384
_BUFFER_LEAST = 65536


class Pool:
    """Runs a function over many tasks and returns a ``Results`` dict.

    ``mode`` is the mode ``map`` runs: ``'serial'`` (a loop here), ``'parallel'``
    (processes on this machine) or ``'distributed'`` (workers anywhere, over Pyro4).
    ``smap``, ``pmap`` and ``dmap`` run one mode whatever ``mode`` says.

    Keyword options given here (see ``ezpool.Options``: ``progress``, ``msg``,
    ``timeout``, ``ncpu``, ``chunksize``, ``start_method``, ``workers``, ``spawn``,
    ``hmac_key``, ``max_attempts``, ``capture_output``, ...) are defaults for every call; a call may
    override any of them. Each method names every option as a keyword-only parameter,
    so that a type checker catches a misspelt one; an option left out keeps the
    pool's value (or ``Options``' default), whatever its default shows. Use the pool
    as a context manager, or call ``shutdown()``, to stop the processes and workers
    it started.
    """

    @_suggesting
    def __init__(
        self,
        mode: str = "serial",
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        ncpu: Optional[int] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        workers: Union[str, Sequence[str], None] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> None:
        self.mode = backends.check_mode(mode)
        self.options = Options().replace(**given(locals()))
        self._backends: dict[str, backends.Backend] = {}
        self._closed = False

    @_suggesting
    def map(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        workers: Union[str, Sequence[str], None] = None,
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` in the pool's mode.

        ``ncpu`` is used by the parallel mode and ``workers`` by the distributed
        one; each mode ignores what it has no use for.
        """
        return self._run(self.mode, fun, tasks, given(locals()))

    @_suggesting
    def smap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        ncpu: Optional[int] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        workers: Union[str, Sequence[str], None] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` one after the other, in this process."""
        return self._run(_SERIAL, fun, tasks, given(locals()))

    @_suggesting
    def pmap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        workers: Union[str, Sequence[str], None] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` on ``ncpu`` worker processes of this machine.

        ``fun`` may be a lambda, a closure or a function defined in ``__main__``.
        The processes live as long as the pool, so later calls reuse them.
        """
        return self._run(_PARALLEL, fun, tasks, given(locals()))

    @_suggesting
    def dmap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        workers: Union[str, Sequence[str], None] = None,
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        ncpu: Optional[int] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> Results[R]:
        """Run ``fun`` (a ``BaseWorker`` subclass, or a function) on distributed workers.

        ``workers`` are Pyro4 URIs such as ``'PYRO:worker@localhost:21000'``.
        """
        return self._run(_DISTRIBUTED, fun, tasks, given(locals()))

    @_suggesting
    def imap(
        self,
        fun: Callable[..., Any],
        tasks: Iterable[Any],
        ncpu: Optional[int] = None,
        workers: Union[str, Sequence[str], None] = None,
        *,
        ordered: bool = False,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> Iterator[TaskOutcome]:
        """Run ``fun`` over ``tasks`` in the pool's mode, yielding each ``TaskOutcome`` as it finishes.

        ``tasks`` may be any iterable, a generator of millions included: tasks are read
        as the workers need them, and at most ``buffersize`` are held at once (read
        but not yet handed back to you). ``ordered=True`` yields outcomes in the order
        of the tasks, holding back those that finish early. A task that appears twice
        runs twice (``map`` runs it once). Breaking out of the loop, or an exception
        in its body, stops the work. The arguments and options are those of ``map``.
        """
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, got {ordered!r}")
        feed, batches = self._open_stream(fun, tasks, given(locals()))
        return self._outcomes(feed, batches, ordered)

    @_suggesting
    def executor(
        self,
        *,
        progress: Union[bool, ProgressHook, None] = NOT_GIVEN,
        msg: str = NOT_GIVEN,
        timeout: Optional[float] = NOT_GIVEN,
        ncpu: Optional[int] = NOT_GIVEN,
        chunksize: Optional[int] = NOT_GIVEN,
        start_method: Optional[str] = NOT_GIVEN,
        workers: Union[str, Sequence[str], None] = NOT_GIVEN,
        spawn: Optional[bool] = NOT_GIVEN,
        hmac_key: Union[str, bytes, None] = NOT_GIVEN,
        insecure: bool = NOT_GIVEN,
        tls_ca: Optional[PathText] = NOT_GIVEN,
        tls_cert: Optional[PathText] = NOT_GIVEN,
        tls_key: Optional[PathText] = NOT_GIVEN,
        ship_modules: Union[str, ModuleType, Sequence[Union[str, ModuleType]]] = NOT_GIVEN,
        max_attempts: int = NOT_GIVEN,
        heartbeat: float = NOT_GIVEN,
        backup: bool = NOT_GIVEN,
        context: Any = NOT_GIVEN,
        capture_output: bool = NOT_GIVEN,
        store: Optional[PathText] = NOT_GIVEN,
        store_key: Optional[str] = NOT_GIVEN,
        retry_failed: bool = NOT_GIVEN,
        buffersize: Optional[int] = NOT_GIVEN,
    ) -> PoolExecutor:
        """A ``concurrent.futures.Executor`` in this pool's mode, with its options (and
        the options given here on top). It has processes and connections of its own; shut
        it down (or use it in a ``with`` block) when done. See ``ezpool.PoolExecutor``."""
        from .executor import PoolExecutor

        self._check_open()
        return PoolExecutor.of(self, **given(locals()))

    def shutdown(self) -> None:
        """Stop every process and worker this pool started. Safe to call twice."""
        self._closed = True
        backends_, self._backends = self._backends, {}
        for backend in backends_.values():
            backend.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Pool(mode={self.mode!r}, {state})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Pool has been shut down; create a new one")

    def _backend(self, mode: str) -> backends.Backend:
        backend = self._backends.get(mode)
        if backend is None:
            backend = self._backends[mode] = backends.create(mode)
        return backend

    def _run(self, mode: str, fun: Any, tasks: Iterable[Hashable], overrides: dict[str, Any]) -> Results:
        options = self.options.replace(**overrides)
        self._check_open()
        keys = unique_tasks(tasks)
        sweep = _open_sweep(options, fun)
        began = perf_counter()
        builder = ResultsBuilder(keys)
        try:
            backend = self._backend(mode)
            known = sweep.lookup(keys) if sweep is not None and sweep.known() else {}
            for batch in stored_batches(known):
                builder.add(batch)
            todo, where = _missing(keys, known)
            if known:
                logger.info("%d of %d outcomes were found in %s; running the other %d",
                            len(known), len(keys), options.store, len(todo))
            if todo:
                self._collect(backend, fun, todo, where, options, builder, sweep)
        except KeyboardInterrupt as exc:
            exc.results = builder.partial(perf_counter() - began)  # type: ignore[attr-defined]
            raise
        finally:
            if sweep is not None:
                sweep.close()
        results = builder.finish(perf_counter() - began)
        logger.debug("%s ran %d tasks (%d failed)", mode, len(todo), len(results.errors))
        return results

    def _collect(
        self,
        backend: backends.Backend,
        fun: Any,
        todo: Sequence[Hashable],
        where: Optional[list[int]],
        options: Options,
        builder: ResultsBuilder,
        sweep: Optional[Sweep],
    ) -> None:
        """Run ``todo`` and add every outcome to ``builder``, at ``where`` its task is in the call."""
        progress = Progress(options.progress, options.msg, todo, len(todo))
        relay = Relay(todo, progress)
        batches = backend.run(fun, todo, options, progress.per_task)
        try:
            for batch in batches:
                if sweep is not None:
                    sweep.record(todo, batch.start, batch.values, batch.elapsed, batch.failed, batch.worker)
                if where is None:
                    builder.add(batch)
                else:
                    for part in _placed(batch, where):
                        builder.add(part)
                if batch.outputs:
                    relay.show(batch)
                progress.update(batch)
        finally:
            batches.close()
            progress.close()

    def _open_stream(
        self, fun: Any, tasks: Iterable[Any], overrides: dict[str, Any], eager: bool = False
    ) -> tuple[Feed, Generator[tuple[Sequence[Any], Batch], None, None]]:
        """Start a stream of ``fun`` over ``tasks`` in the pool's mode: its feed, and its batches.

        Bad arguments are refused here, at the call. The batches (see ``_batches``) are
        what ``imap`` and ``PoolExecutor`` consume; ``eager`` asks for every outcome as
        soon as it is known, even where waiting would batch more.
        """
        settings = self.options.replace(**overrides)
        self._check_open()
        source = tasks if isinstance(tasks, Live) else iterate_tasks(tasks)
        total = len(tasks) if isinstance(tasks, Sized) else None
        sweep = _open_sweep(settings, fun)
        try:
            limit = settings.buffersize or _default_buffer(self.mode, settings)
            lookup = sweep.lookup if sweep is not None and sweep.known() else None
            feed = Feed(source, limit, lookup)
            backend = self._backend(self.mode)
        except BaseException:
            if sweep is not None:
                sweep.close()
            raise
        return feed, self._batches(backend, fun, feed, total, settings, sweep, eager)

    def _batches(
        self,
        backend: backends.Backend,
        fun: Any,
        feed: Feed,
        total: Optional[int],
        options: Options,
        sweep: Optional[Sweep],
        eager: bool,
    ) -> Generator[tuple[Sequence[Any], Batch], None, None]:
        """Each batch of a stream with its tasks, once it was stored, relayed and counted.

        The consumer lets the tasks go (``feed.release``) when it has handed them on.
        """
        progress = Progress(options.progress, options.msg, feed, total)
        relay = Relay(feed, progress)
        batches = backend.run(fun, feed, options, progress.per_task or eager)
        try:
            for batch in batches:
                start = batch.start
                if sweep is not None and not batch.stored:
                    sweep.record(feed, start, batch.values, batch.elapsed, batch.failed, batch.worker)
                if batch.outputs:
                    relay.show(batch)
                progress.update(batch)
                yield feed[start : start + len(batch.values)], batch
        finally:
            batches.close()
            progress.close()
            if sweep is not None:
                sweep.close()

    def _outcomes(
        self, feed: Feed, batches: Generator[tuple[Sequence[Any], Batch], None, None], ordered: bool
    ) -> Generator[TaskOutcome, None, None]:
        """What ``imap`` returns: outcomes as they come, each task let go once handed on."""
        waiting: dict[int, list[TaskOutcome]] = {}
        following = 0  # with ordered=True, the position of the next outcome to yield
        try:
            for tasks, batch in batches:
                start, count, failed = batch.start, len(batch.values), batch.failed
                flags: Iterable[bool] = repeat(False)
                if failed:
                    flags = [offset in failed for offset in range(count)]
                rows = zip(tasks, batch.values, batch.elapsed, repeat(batch.worker), flags)
                outcomes = list(map(_outcome, rows))
                if not ordered:
                    yield from outcomes
                    feed.release(start, start + count)
                    continue
                # Batches cut the positions into runs, so the next run to yield starts at `following`.
                waiting[start] = outcomes
                while following in waiting:
                    run = waiting.pop(following)
                    yield from run
                    feed.release(following, following + len(run))
                    following += len(run)
        finally:
            batches.close()

#: The name the tutorial also uses for ``Pool``.
EzPool = Pool


def _default_buffer(mode: str, options: Options) -> int:
    """How many tasks ``imap`` may hold when ``buffersize`` is not given: in proportion
    to the workers, and enough that tiny tasks still travel by the thousand."""
    if mode == _PARALLEL:
        from ._backends.parallel.backend import available_cpus

        workers = options.ncpu or available_cpus()
    elif mode == _DISTRIBUTED:
        workers = len(options.workers or ()) or 1
    else:
        workers = 1
    return max(_BUFFER_LEAST, _BUFFER_PER_WORKER * workers)


def _open_sweep(options: Options, fun: Any) -> Optional[Sweep]:
    """The sweep of ``fun`` in ``options.store``, if one is asked for; stored failures
    are forgotten first when ``retry_failed`` is set."""
    if options.store is None:
        if options.retry_failed or options.store_key is not None:
            raise ValueError("retry_failed and store_key need a store: pass store='results.sqlite'")
        return None
    from .store import open_sweep

    sweep = open_sweep(options.store, fun, options.store_key)
    if options.retry_failed:
        forgotten = sweep.forget_failed()
        logger.info("retry_failed: %d stored failures in %s will run again", forgotten, options.store)
    return sweep


def _missing(
    keys: Sequence[Hashable], known: dict[int, Any]
) -> tuple[Sequence[Hashable], Optional[list[int]]]:
    """The tasks to run, and where each is among ``keys`` (``None``: the same place)."""
    if not known:
        return keys, None
    where = [position for position in range(len(keys)) if position not in known]
    return [keys[position] for position in where], where


def _placed(batch: Batch, where: list[int]) -> Iterator[Batch]:
    """``batch`` (positions among the tasks run) cut into runs at their places in the call."""
    offset = 0
    count = len(batch.values)
    while offset < count:
        end = offset + 1
        while end < count and where[batch.start + end] == where[batch.start + offset] + end - offset:
            end += 1
        failed = {spot - offset for spot in batch.failed if offset <= spot < end}
        yield Batch(where[batch.start + offset], batch.values[offset:end], batch.elapsed[offset:end],
                    failed, batch.worker)
        offset = end


