"""What a map call gives back: one ``TaskOutcome`` per finished task, and ``Results``."""

from __future__ import annotations

import os
from array import array
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, TypeVar, Union

from ._core.logs import get_logger
from ._core.records import Batch, GroupTimes
from .errors import EzPoolError
from .timeline import Timeline

if TYPE_CHECKING:
    from ._core.recording import Recording

logger = get_logger(__name__)

#: A file path, as the ``save_*`` methods take it.
PathText = Union[str, "os.PathLike[str]"]

__all__ = ["TaskOutcome", "Results", "ResultsBuilder", "R"]

#: The type of what the function returns, and so of the values of its ``Results``.
R = TypeVar("R")


class TaskOutcome(NamedTuple):
    """One finished task, as ``imap`` yields it and progress hooks receive it.

    A named tuple, so ``for task, value, *_ in pool.imap(...)`` works too.

    Attributes:
        task: the task, exactly as it was given.
        value: what the task returned or, if it failed, the exception.
        elapsed: the task's run time in seconds, measured where it ran (tasks under
            100 µs share the time of their group, see ``ezpool._worker.running.run_chunk``).
        worker: where it ran (``"pid 1234"`` for local processes, a URI for workers).
        failed: whether ``value`` is an exception the task raised (or met).
    """

    task: Any
    value: Any
    elapsed: float
    worker: str
    failed: bool

    def __repr__(self) -> str:
        state = "failed" if self.failed else "ok"
        return (
            f"TaskOutcome(task={self.task!r}, value={self.value!r}, "
            f"elapsed={self.elapsed:.6f}, worker={self.worker!r}, {state})"
        )


class Results(Dict[Any, R]):
    """A ``dict`` from each task to its value or, if the task raised, to the exception.

    Keys are in the order the tasks were given, whatever order they finished in.

    For a type checker, ``Results[R]`` maps tasks to ``R``, what the function is
    annotated to return (``pool.map(fib, ...)`` with ``fib(n: int) -> int`` gives
    ``Results[int]``; a ``BaseWorker`` class, or an unannotated function, gives
    ``Results[Any]``). The slots of failed tasks hold exceptions instead: they are
    exactly the keys of ``errors``, so check ``task in results.errors`` (or
    ``results.errors`` being empty) before using a value as an ``R``.

    Attributes:
        errors: the failed tasks only, each mapped to its exception.
        elapsed: each task's run time in seconds, measured where it ran (tasks under
            100 µs share the time of their group, see ``ezpool._worker.running.run_chunk``).
        workers: where each task ran.
        wall_time: seconds the whole call took, as seen by the caller.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: dict[Any, BaseException] = {}
        self.wall_time: float = 0.0
        self._keys: Sequence[Hashable] = ()
        self._time_parts: Sequence[tuple[int, Sequence[float]]] = ()  # (first position, times)
        self._flat_times: Optional[array[float]] = None
        self._spans: Sequence[tuple[int, int, str]] = ()
        self._elapsed: Optional[dict[Any, float]] = None
        self._workers: Optional[dict[Any, str]] = None
        self._record: Optional[Recording] = None
        self._timeline: Optional[Timeline] = None
        self._tries: dict[Any, int] = {}  # task -> runs, for tasks run more than once (retries)

    @property
    def attempts(self) -> Mapping[Any, int]:
        """How many times each task ran, by task (1, or more where ``retries`` ran it
        again). A run cut by its worker's death, and run again under ``max_attempts``,
        is not counted here; the timeline shows those."""
        return _Attempts(self, self._tries)

    @property
    def timeline(self) -> Timeline:
        """The call's timeline (``ezpool.timeline.Timeline``), every task run on every
        worker on this process's clock; empty for ``Results`` not made by a call."""
        if self._timeline is None:
            if self._record is None:
                from ._core.recording import Recording

                self._record = Recording((), "serial", {})
                self._record.end()
            self._timeline = self._record.timeline()
        return self._timeline

    def save_trace(self, path: PathText) -> None:
        """Write the call's timeline to ``path`` as a Chrome trace (JSON), which Perfetto
        (https://ui.perfetto.dev) and ``chrome://tracing`` open: see ``ezpool.trace``."""
        from .trace import write_trace

        write_trace(self.timeline, path)

    def save_report(self, path: PathText) -> None:
        """Write the call's report to ``path``: one HTML file, which any browser opens
        without a network, with the timeline of every worker, the time split per
        worker, the failures by type and the slowest tasks: see ``ezpool.report``."""
        from .report import write_report

        write_report(self.timeline, path)

    @property
    def _times(self) -> array[float]:
        """Every task's run time in key order, put together from the batches' times on
        first use (building ``Results`` copies none: most calls never read them)."""
        if self._flat_times is None:
            flat = array("d", bytes(8 * len(self._keys)))
            for start, times in self._time_parts:
                if isinstance(times, GroupTimes):
                    times = times.expand()
                flat[start : start + len(times)] = times if isinstance(times, array) else array("d", times)
            self._flat_times = flat
        return self._flat_times

    @property
    def elapsed(self) -> dict[Any, float]:
        if self._elapsed is None:
            self._elapsed = dict(zip(self._keys, self._times))
        return self._elapsed

    @property
    def workers(self) -> dict[Any, str]:
        if self._workers is None:
            names = [""] * len(self._keys)
            for start, stop, worker in self._spans:
                names[start:stop] = [worker] * (stop - start)
            self._workers = dict(zip(self._keys, names))
        return self._workers

    def summary(self) -> str:
        """A one-line account: how many tasks, how many failed, and the timings."""
        count = len(self._keys)
        busy = sum(self._times)
        mean = busy / count if count else 0.0
        return (
            f"{count} tasks, {len(self.errors)} failed, wall {self.wall_time:.3f} s, "
            f"task time {busy:.3f} s (mean {mean:.6f} s)"
        )


class ResultsBuilder:
    """Collects batches that arrive in any order and fills ``Results`` in task order.

    A batch is put in the dict as soon as every task before it is there (the
    batches of a call mostly come in order, so few wait): the dict grows while
    the workers run, instead of in one pass after the last result, when they are
    idle. Run times are kept as the batches brought them and put in order only
    when ``Results`` are asked for them.
    """

    def __init__(self, keys: Sequence[Hashable]) -> None:
        self._keys = keys
        self._results: Results[Any] = Results()
        self._next = 0  # the position of the first task not in the dict yet
        self._early: dict[int, Batch] = {}  # by start: batches that came before those ahead
        # A range of keys is paired with the values by enumerate: a tenth cheaper than zip.
        self._counted: Optional[int] = keys.start if isinstance(keys, range) and keys.step == 1 else None
        self._time_parts: list[tuple[int, Sequence[float]]] = []  # (first position, times), as they came
        self._spans: list[tuple[int, int, str]] = []
        self._failed: list[int] = []
        self._tries: dict[int, int] = {}
        self._reported = 0

    def add(self, batch: Batch) -> None:
        start = batch.start
        stop = start + len(batch.values)
        self._time_parts.append((start, batch.elapsed))
        self._spans.append((start, stop, batch.worker))
        if batch.failed:
            self._failed.extend(start + offset for offset in batch.failed)
        if batch.tries > 1:
            self._tries.update(dict.fromkeys(range(start, stop), batch.tries))
        self._reported += stop - start
        if start != self._next:
            self._early[start] = batch
            return
        self._insert(batch)
        early = self._early
        while early and self._next in early:
            self._insert(early.pop(self._next))

    def _insert(self, batch: Batch) -> None:
        start = batch.start
        stop = start + len(batch.values)
        if self._counted is not None:  # the first key of a range
            self._results.update(enumerate(batch.values, self._counted + start))
        else:
            self._results.update(zip(self._keys[start:stop], batch.values))
        self._next = stop

    def partial(self, wall_time: float) -> Results:
        """``Results`` of the tasks reported so far, in task order (for a call that stopped early)."""
        spans = sorted(self._spans)
        keys: list[Hashable] = []
        times = array("d")
        rebased: list[tuple[int, int, str]] = []
        by_start = dict(self._time_parts)
        for start, stop, worker in spans:
            rebased.append((len(keys), len(keys) + stop - start, worker))
            keys.extend(self._keys[start:stop])
            times.extend(by_start[start])
        results: Results[Any] = Results(self._results)
        for start in sorted(self._early):
            batch = self._early[start]
            results.update(zip(self._keys[start : start + len(batch.values)], batch.values))
        failed = sorted(self._failed)
        results.errors = {self._keys[position]: results[self._keys[position]] for position in failed}
        results.wall_time = wall_time
        results._keys, results._time_parts, results._spans = keys, [(0, times)], rebased
        results._tries = {self._keys[position]: tries for position, tries in self._tries.items()}
        return results

    def finish(self, wall_time: float) -> Results:
        """The finished ``Results``; every task must have been reported once."""
        if self._reported != len(self._keys) or self._next != len(self._keys):
            raise EzPoolError(f"{self._reported} outcomes were reported for {len(self._keys)} tasks")
        results = self._results
        keys = self._keys
        results.errors = {keys[position]: results[keys[position]] for position in sorted(self._failed)}
        results.wall_time = wall_time
        results._keys, results._time_parts, results._spans = self._keys, self._time_parts, self._spans
        results._tries = {keys[position]: tries for position, tries in self._tries.items()}
        return results


class _Attempts(Mapping[Any, int]):
    """``Results.attempts``: 1 for every task, but those ``retries`` ran again."""

    def __init__(self, results: Results[Any], tries: dict[Any, int]) -> None:
        self._results = results
        self._tries = tries

    def __getitem__(self, task: Any) -> int:
        found = self._tries.get(task)
        if found is not None:
            return found
        if task in self._results:
            return 1
        raise KeyError(task)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"<attempts of {len(self)} tasks, {len(self._tries)} run more than once>"
