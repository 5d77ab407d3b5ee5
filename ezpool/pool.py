"""``Pool``: one facade over the three modes, and the one place results are assembled."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterable, Iterator, Sequence
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import _backends as backends
from ._core.advice import DEFAULT_MODE, Advice
from ._core.logs import get_logger
from ._core.stream import (
    open_outcomes,
    open_recording,
    open_sweep,
    placed,
    stream,
    write_outputs,
)
from ._core.summary import warn_failures
from ._core.tasks import unique_tasks
from ._core.vocabulary import known_by_other_names
from .options import (
    DistributedOptions,
    ImapOptions,
    MapOptions,
    Options,
    ParallelOptions,
    PoolOptions,
    SerialOptions,
    ThreadOptions,
    Workers,
    described,
    planned_workers,
)
from .results import R, Results, ResultsBuilder, TaskOutcome

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._core.stopping import Stops
    from .executor import PoolExecutor

logger = get_logger(__name__)

__all__ = ["Pool", "EzPool"]

#: What each public method runs.
_SERIAL, _THREADS, _PARALLEL, _DISTRIBUTED = backends.MODES


class Pool:
    """Runs a function over many tasks and returns a ``Results`` dict.

    ``mode`` is the mode ``map`` runs: ``'serial'`` (a loop here), ``'threads'``
    (threads of this process), ``'parallel'`` (processes on this machine) or
    ``'distributed'`` (workers anywhere, over Pyro4). ``smap``, ``tmap``, ``pmap``
    and ``dmap`` run one mode whatever ``mode`` says.

    Keyword options given here are defaults for every call (see ``ezpool.Options``);
    a call may override any of them, and an option left out keeps the pool's value.
    Use the pool as a context manager, or call ``shutdown()``, to stop the processes
    and workers it started.
    """

    def __init__(self, mode: str = DEFAULT_MODE, **options: Unpack[PoolOptions]) -> None:
        self.mode = backends.check_mode(str(mode))
        self._advice = Advice(mode, options)  # what each call is told before it starts
        self.options = Options(**options)
        self._backends: dict[str, backends.Backend] = {}
        self._closed = False
        if self.mode == _DISTRIBUTED:  # workers that dial in may start joining now
            self._backend(_DISTRIBUTED).prepare(self.options)

    @known_by_other_names
    @described(MapOptions)
    def map(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        workers: Workers = None,
        **options: Unpack[MapOptions],
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` in the pool's mode; the ``Results``.

        ``ncpu`` is used by the parallel mode and ``workers`` by the distributed
        one; each mode ignores what it has no use for, without a word where the pool
        was given its mode (given none, it runs serially and warns of them)."""
        given = _with(options, ncpu=ncpu, workers=workers)
        self._advice.check("map", self.mode, fun, tasks, given)
        return self._map(self.mode, fun, tasks, given)

    @known_by_other_names
    @described(SerialOptions)
    def smap(
        self, fun: Callable[..., R], tasks: Iterable[Hashable], **options: Unpack[SerialOptions]
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` one after the other, in this process."""
        self._advice.check("smap", _SERIAL, fun, tasks, options)
        return self._map(_SERIAL, fun, tasks, dict(options))

    @known_by_other_names
    @described(ThreadOptions)
    def tmap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        nthreads: Optional[int] = None,
        **options: Unpack[ThreadOptions],
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` on ``nthreads`` threads of this process (``None``: as many
        as ``concurrent.futures.ThreadPoolExecutor`` would start): for tasks that wait on I/O,
        and on a free-threaded Python for pure-Python work too. A running thread cannot be
        stopped: ``timeout`` gives the task ``TaskTimeout`` and lets its thread run on."""
        given = _with(options, nthreads=nthreads)
        self._advice.check("tmap", _THREADS, fun, tasks, given)
        return self._map(_THREADS, fun, tasks, given)

    @known_by_other_names
    @described(ParallelOptions)
    def pmap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        **options: Unpack[ParallelOptions],
    ) -> Results[R]:
        """Run ``fun`` over ``tasks`` on ``ncpu`` worker processes of this machine (``None``:
        one per CPU this process may use).

        ``fun`` may be a lambda, a closure or a function defined in ``__main__``. The
        processes live as long as the pool, so later calls reuse them."""
        given = _with(options, ncpu=ncpu)
        self._advice.check("pmap", _PARALLEL, fun, tasks, given)
        return self._map(_PARALLEL, fun, tasks, given)

    @known_by_other_names
    @described(DistributedOptions)
    def dmap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        workers: Workers = None,
        **options: Unpack[DistributedOptions],
    ) -> Results[R]:
        """Run ``fun`` (a ``BaseWorker`` subclass, or a function) on distributed workers.

        ``workers`` are URIs such as ``'PYRO:worker@localhost:21000'``."""
        given = _with(options, workers=workers)
        self._advice.check("dmap", _DISTRIBUTED, fun, tasks, given)
        return self._map(_DISTRIBUTED, fun, tasks, given)

    @known_by_other_names
    @described(ImapOptions)
    def imap(
        self,
        fun: Callable[..., Any],
        tasks: Iterable[Any],
        ncpu: Optional[int] = None,
        workers: Workers = None,
        *,
        ordered: bool = False,
        **options: Unpack[ImapOptions],
    ) -> Iterator[TaskOutcome]:
        """Run ``fun`` over ``tasks`` in the pool's mode, yielding each ``TaskOutcome`` as it finishes.

        ``tasks`` may be any iterable, a generator of millions included: tasks are read
        as the workers need them, and at most ``buffersize`` are held at once (read
        but not yet handed back to you). ``ordered=True`` yields outcomes in the order
        of the tasks, holding back those that finish early. A task that appears twice
        runs twice (``map`` runs it once). Breaking out of the loop, or an exception
        in its body, stops the work. The arguments and options are those of ``map``."""
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, got {ordered!r}")
        given = _with(options, ncpu=ncpu, workers=workers)
        self._advice.check("imap", self.mode, fun, tasks, given)
        settings = self._settings(given)
        mode = self.mode
        return open_outcomes(lambda: self._backend(mode), lambda: self._workers(mode, settings), fun, tasks,
                             settings, ordered)

    @known_by_other_names
    @described(MapOptions)
    async def amap(
        self,
        fun: Callable[..., R],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        workers: Workers = None,
        **options: Unpack[MapOptions],
    ) -> Results[R]:
        """``map`` for ``asyncio``: ``await pool.amap(fun, tasks)`` runs the call without blocking
        the event loop and returns its ``Results``. Cancelling the awaiting task stops the
        work, running tasks included."""
        from ._aio import amap

        given = _with(options, ncpu=ncpu, workers=workers)
        self._advice.check("amap", self.mode, fun, tasks, given)
        return await amap(self, self.mode, fun, tasks, given)

    @known_by_other_names
    @described(ImapOptions)
    def aimap(
        self,
        fun: Callable[..., Any],
        tasks: Iterable[Any],
        ncpu: Optional[int] = None,
        workers: Workers = None,
        *,
        ordered: bool = False,
        **options: Unpack[ImapOptions],
    ) -> AsyncIterator[TaskOutcome]:
        """``imap`` for ``asyncio``: ``async for outcome in pool.aimap(fun, tasks)`` yields each
        ``TaskOutcome`` as it finishes, without blocking the event loop. Leaving the loop,
        or cancelling the task that runs it, stops the work."""
        from ._aio import aimap

        given = _with(options, ncpu=ncpu, workers=workers)
        self._advice.check("aimap", self.mode, fun, tasks, given)
        return aimap(self, self.mode, fun, tasks, ordered, given)

    def executor(self, **options: Unpack[PoolOptions]) -> PoolExecutor:
        """A ``concurrent.futures.Executor`` in this pool's mode, with its options (and
        the options given here on top). It has processes and connections of its own; shut
        it down (or use it in a ``with`` block) when done. See ``ezpool.PoolExecutor``."""
        from .executor import PoolExecutor

        self._check_open()
        return PoolExecutor.of(self, **options)

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

    def _settings(self, given: dict[str, Any]) -> Options:
        """The pool's options with those of a call on top; refused at once if bad."""
        settings = self.options.replace(**given)
        self._check_open()
        return settings

    def _backend(self, mode: str) -> backends.Backend:
        backend = self._backends.get(mode)
        if backend is None:
            backend = self._backends[mode] = backends.create(mode)
        return backend

    def _workers(self, mode: str, options: Options) -> int:
        """How many workers a call of ``mode`` with ``options`` has."""
        if mode == _PARALLEL:
            from ._backends.parallel.backend import available_cpus

            return int(options.ncpu or available_cpus())
        if mode == _DISTRIBUTED:
            return planned_workers(options.workers)
        if mode == _THREADS:
            from ._backends.threads import thread_count

            return thread_count(options.nthreads)
        return 1

    def _map(
        self, mode: str, fun: Any, tasks: Iterable[Hashable], given: dict[str, Any],
        stops: Optional[Stops] = None,
    ) -> Results:
        """``map``: the stream of the distinct tasks that are not stored yet, collected (``stops``:
        asks from another thread to stop its tasks, as ``amap`` does when cancelled)."""
        settings = self._settings(given)
        keys = unique_tasks(tasks)
        sweep = open_sweep(settings, fun)
        began = perf_counter()
        builder = ResultsBuilder(keys)
        todo: Sequence[Hashable] = keys
        record = None
        try:
            backend = self._backend(mode)
            stored = sweep.found(keys) if sweep is not None and sweep.known() else []
            known = 0
            where: Optional[list[int]] = None
            shift = 0  # with one run of tasks left to run: where it starts
            if stored:
                for found in stored:
                    builder.add(found)
                    known += len(found.values)
                gaps = _gaps(stored, len(keys))
                if len(gaps) == 1:
                    shift = gaps[0].start
                    todo = keys[gaps[0].start : gaps[0].stop]
                else:
                    where = [position for gap in gaps for position in gap]
                    todo = [keys[position] for position in where]
                logger.info("%d of %d outcomes were found in %s; running the other %d",
                            known, len(keys), settings.store, len(todo))
            record = open_recording(todo, mode, settings, self._workers(mode, settings))
            record.stored = known
            if todo:
                batches = stream(backend, fun, todo, settings, sweep, len(todo), record=record, stops=stops)
                try:
                    for batch in batches:
                        if where is None:
                            builder.add(_shifted(batch, shift) if shift else batch)
                            continue
                        for part in placed(batch, where):
                            builder.add(part)
                finally:
                    batches.close()
        except KeyboardInterrupt as exc:
            partial = exc.results = builder.partial(perf_counter() - began)  # type: ignore[attr-defined]
            partial._record = record
            raise
        finally:
            if sweep is not None:
                sweep.close()
        results = builder.finish(perf_counter() - began)
        results._record = record
        if record is not None:
            record.end()
            write_outputs(record, settings)
        logger.debug("%s ran %d tasks (%d failed)", mode, len(todo), len(results.errors))
        warn_failures(results, stored, stops)  # one warning, if any task failed
        return results


#: The name the tutorial also uses for ``Pool``.
EzPool = Pool


def _with(options: Any, **positional: Any) -> dict[str, Any]:
    """A call's options with those also given as positional parameters, where ``None``
    has always meant "not given"."""
    given = dict(options)
    given.update((name, value) for name, value in positional.items() if value is not None)
    return given


def _gaps(stored: list[Any], count: int) -> list[range]:
    """The runs of positions ``0 .. count - 1`` that the stored batches (in position order) leave."""
    gaps, position = [], 0
    for batch in stored:
        if batch.start > position:
            gaps.append(range(position, batch.start))
        position = batch.start + len(batch.values)
    if position < count:
        gaps.append(range(position, count))
    return gaps


def _shifted(batch: Any, shift: int) -> Any:
    """``batch`` moved ``shift`` positions on (the tasks run were one run of the call's, from ``shift``)."""
    moved = type(batch)(batch.start + shift, batch.values, batch.elapsed, batch.failed, batch.worker)
    moved.tries = batch.tries
    return moved
