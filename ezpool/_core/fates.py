"""What can happen to a chunk of tasks, and what becomes of its tasks then: the events
the backends feed to ``ezpool._core.ledger``, and the table that decides (``CLAIMS``).

Pure data, no I/O: the ledger's module text tells the states and the fates.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Optional, Union

from .logs import get_logger
from .records import Batch

logger = get_logger(__name__)

__all__ = [
    "Answered", "CLAIMS", "Event", "Fate", "Garbled", "Happened", "Held", "Lost", "OutOfMemory", "Piece",
    "Returned", "Settlement", "Stopped", "TimedOut",
]


class Held(enum.Enum):
    """The state of a chunk that a worker took."""

    HELD = "held"  # one worker runs it
    COPIED = "copied"  # two run it: the first answer decides
    SETTLED = "settled"  # decided: any other copy's news is dropped


class Happened(enum.Enum):
    """What one copy of a chunk came to."""

    COPY = "a copy taken"
    ANSWERED = "answered"
    RETURNED = "returned"
    LOST = "lost"
    TIMED_OUT = "timed out"
    GARBLED = "garbled"
    STOPPED = "stopped"
    OUT_OF_MEMORY = "out of memory"


class Fate(enum.Enum):
    """What becomes of the tasks of a chunk (see the module's text)."""

    NONE = "none"
    REPORT = "report"
    REQUEUE = "requeue"
    CHARGE = "charge"
    TIME_OUT = "time out"
    SPLIT = "split"
    CANCEL = "cancel"
    OUT_OF_MEMORY = "out of memory"
    DROP = "drop"


_H, _C, _S = Held.HELD, Held.COPIED, Held.SETTLED

#: (state of the claim, what happened to one copy) -> (next state, fate of the tasks).
#: A pair that is not here is a bug in the caller.
CLAIMS: dict[tuple[Held, Happened], tuple[Held, Fate]] = {
    (_H, Happened.COPY): (_C, Fate.NONE),
    (_H, Happened.ANSWERED): (_S, Fate.REPORT),
    (_H, Happened.RETURNED): (_S, Fate.REQUEUE),
    (_H, Happened.LOST): (_S, Fate.CHARGE),
    (_H, Happened.TIMED_OUT): (_S, Fate.TIME_OUT),
    (_H, Happened.GARBLED): (_S, Fate.SPLIT),
    (_H, Happened.STOPPED): (_S, Fate.CANCEL),
    (_H, Happened.OUT_OF_MEMORY): (_S, Fate.OUT_OF_MEMORY),
    (_C, Happened.ANSWERED): (_S, Fate.REPORT),
    (_C, Happened.RETURNED): (_H, Fate.DROP),
    (_C, Happened.LOST): (_H, Fate.DROP),
    (_C, Happened.TIMED_OUT): (_H, Fate.DROP),
    (_C, Happened.GARBLED): (_H, Fate.DROP),
    (_C, Happened.STOPPED): (_H, Fate.DROP),
    (_C, Happened.OUT_OF_MEMORY): (_H, Fate.DROP),
    (_S, Happened.ANSWERED): (_S, Fate.DROP),
    (_S, Happened.RETURNED): (_S, Fate.DROP),
    (_S, Happened.LOST): (_S, Fate.DROP),
    (_S, Happened.TIMED_OUT): (_S, Fate.DROP),
    (_S, Happened.GARBLED): (_S, Fate.DROP),
    (_S, Happened.STOPPED): (_S, Fate.DROP),
    (_S, Happened.OUT_OF_MEMORY): (_S, Fate.DROP),
}


# --- the events ------------------------------------------------------------------------


class Answered(NamedTuple):
    """The worker answered for the first ``ran`` tasks of the chunk (all, unless it stopped early)."""

    ran: int
    kind: Happened = Happened.ANSWERED


class Returned(NamedTuple):
    """Nothing of the chunk is known to have run (it never started, or the same process
    still answers after its connection broke): ``reason`` says why it came back."""

    reason: str
    kind: Happened = Happened.RETURNED


class Lost(NamedTuple):
    """The worker died, or was replaced or went silent, holding the chunk.

    ``what`` says so as the start of a sentence ("worker process pid 7 was killed by
    SIGKILL"). ``mark`` is what it was running, ``(position, count)``: one of those
    ``count`` tasks from ``position`` on, the earlier ones finished and the later
    ones never started (see ``ezpool._worker.running.read_mark``), or ``None`` when
    nothing is known; ``seconds`` how long the marked task ran.
    """

    what: str
    mark: Optional[tuple[int, int]] = None
    seconds: float = 0.0
    kind: Happened = Happened.LOST


class TimedOut(NamedTuple):
    """The task at ``position`` ran ``seconds`` past the call's ``timeout``; its worker was
    stopped (``what`` says how)."""

    what: str
    position: int
    seconds: float
    timeout: float
    kind: Happened = Happened.TIMED_OUT


class Garbled(NamedTuple):
    """The answer came from ``worker`` but cannot be read here (``error``)."""

    worker: str
    error: BaseException
    kind: Happened = Happened.GARBLED


class Stopped(NamedTuple):
    """Tasks the worker held were asked to stop (``ezpool._core.stopping``), so it was
    killed and replaced (``what`` says so): those of the chunk at ``positions`` end as
    cancelled, the others go back at no cost."""

    what: str
    positions: frozenset[int]
    kind: Happened = Happened.STOPPED


class OutOfMemory(NamedTuple):
    """The task at ``position`` took its worker past its memory, in ``seconds``: it ends
    with ``error`` (a ``WorkerOutOfMemory`` that names the task, the limit and the size);
    the worker was replaced, and the others go back at no cost."""

    position: int
    error: BaseException
    seconds: float = 0.0
    kind: Happened = Happened.OUT_OF_MEMORY


Event = Union[Answered, Returned, Lost, TimedOut, Garbled, Stopped, OutOfMemory]

#: ``(start, stop, alone)``: tasks to send again; ``alone``: never joined with others,
#: and every task marked as it starts.
Piece = tuple[int, int, bool]


class Settlement(NamedTuple):
    """What one event means for a chunk's tasks.

    Attributes:
        fate: the fate of its tasks (see ``Fate``).
        failed: batches of tasks that end here with an error (``WorkerCrashed``,
            ``TaskTimeout``, ``ResultNotSerializable``).
        again: pieces to send again, ahead of everything else, in this order.
        break_off: holders that run nothing needed any more (another copy settled
            all they hold): stop them, and end what they wait on.
    """

    fate: Fate
    failed: list[Batch]
    again: list[Piece]
    break_off: list[Any]
