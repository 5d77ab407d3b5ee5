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
    from .._core.recording import Recording
    from .._core.records import Batch
    from .._core.stopping import Stops
    from ..options import Options

logger = get_logger(__name__)

__all__ = ["Backend"]


class Backend(abc.ABC):
    """Runs tasks somewhere: in this process, in local processes or on remote workers.

    A backend may keep resources (processes, connections) between calls; the pool
    calls ``close`` exactly once when it shuts down.
    """

    #: The mode's name (``ezpool._backends.MODES``).
    mode: str = ""

    @abc.abstractmethod
    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        """Run ``fun`` over ``tasks`` and yield every task's outcome exactly once.

        Checks that can fail (the function, the tasks, the workers) happen before the
        first task runs. ``per_task`` asks for batches of one task as each finishes,
        because a progress hook wants to hear of each. If the caller stops iterating
        early (an exception, Ctrl-C), the backend stops the work it has started.
        ``record`` hears who the workers are, when they started, each chunk's round
        trip and the runs cut by a crash (``ezpool._core.recording``); batches carry
        their ``origin`` and ``attempt``. ``stops``, where given, asks from other
        threads to stop tasks that run or wait (``ezpool._core.stopping``).
        """

    def prepare(self, options: Options) -> None:  # noqa: B027 - most backends start nothing early
        """Start, before any call, what a pool made with ``options`` holds for its life
        (the distributed mode: the address where workers dial in, and their cluster)."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release everything this backend started. Called once, by ``Pool.shutdown``."""

    def terminate(self) -> None:  # noqa: B027 - most backends let a running call end
        """Stop at once, from any thread, under a running call, the workers this backend
        started (the tasks they run fail); ``close`` still follows. By default nothing."""
