"""The seam between the ``Pool`` and the three ways of running tasks.

A backend turns (function, tasks, options) into a stream of ``Batch`` objects: the
outcomes of a contiguous run of tasks, in whatever order they finish. It does not
order results, time the call, build ``Results`` or call progress hooks; the ``Pool``
does all of that once, for every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from .._core.logs import get_logger

if TYPE_CHECKING:
    from .._core.relay import TaskOutput
    from ..options import Options

logger = get_logger(__name__)

__all__ = ["Backend", "Batch"]


class Batch:
    """The outcomes of tasks ``start .. start + len(values) - 1`` of one call.

    Attributes:
        start: position of the first task in the call's list of distinct tasks.
        values: one per task: its value or, where it failed, the exception.
        elapsed: one per task: its run time in seconds, measured where it ran (a list or
            an ``array('d')``).
        failed: offsets (from ``start``) of the tasks whose value is an exception.
        worker: where these tasks ran.
        outputs: what tasks printed and logged, by offset, when the call asked for it
            (``capture_output``); ``None`` otherwise. See ``ezpool._core.relay``.
        stored: whether these outcomes come from a store rather than from running.
    """

    __slots__ = ("start", "values", "elapsed", "failed", "worker", "outputs", "stored")

    def __init__(
        self,
        start: int,
        values: list[Any],
        elapsed: Sequence[float],
        failed: frozenset[int] | set[int],
        worker: str,
        outputs: Optional[dict[int, TaskOutput]] = None,
    ) -> None:
        self.start = start
        self.values = values
        self.elapsed = elapsed
        self.failed = failed
        self.worker = worker
        self.outputs = outputs
        self.stored = False

    def __repr__(self) -> str:
        return (
            f"Batch(start={self.start}, tasks={len(self.values)}, "
            f"failed={len(self.failed)}, worker={self.worker!r})"
        )


class Backend(abc.ABC):
    """Runs tasks somewhere: in this process, in local processes or on remote workers.

    A backend may keep resources (processes, connections) between calls; the pool
    calls ``close`` exactly once when it shuts down.
    """

    @abc.abstractmethod
    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool
    ) -> Generator[Batch, None, None]:
        """Run ``fun`` over ``tasks`` and yield every task's outcome exactly once.

        Checks that can fail (the function, the tasks, the workers) happen before the
        first task runs. ``per_task`` asks for batches of one task as each finishes,
        because a progress hook wants to hear of each. If the caller stops iterating
        early (an exception, Ctrl-C), the backend stops the work it has started.
        """

    def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release everything this backend started. Called once, by ``Pool.shutdown``."""
