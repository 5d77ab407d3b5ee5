"""Backup copies: a chunk that holds up the end of a call is run by an idle worker too.

The heartbeat catches a worker that stops answering, not one that is alive but
slow (an overloaded machine, a throttled VM): that worker keeps its chunk until
it answers, and the others idle. So when no task waits to be sent, an idle
worker takes a *backup copy* of the chunk held longest, once that chunk has been
out for ``PATIENCE`` times the time its tasks were expected to take (the idle
worker's own mean run time so far in the call, or the call's mean before it has
one, times its tasks) and at least ``FLOOR`` seconds. The idle worker's own
rate, not the call's: the slow worker's times would inflate a shared mean and
delay the very copies meant to overtake it, and a copy pays only if the worker
that runs it is fast. Both copies run; ``Call.settle`` keeps the first answer and breaks the
other copy's connection off, and its worker stops after the task it is running::

    slow worker   ──[tasks 40..41 ............................ ✗ broken off]
    fast worker   ──[..][..][..][38..39] idle  ──[40..41 copy]──▶ settles 40..41

Copies rather than taking back the tasks not yet started: the tail is usually a
task already running on the slow worker, which only a copy can overtake, and a
copy asks nothing new of the workers. A chunk has at most ``COPIES`` copies
running at once. A copy that fails (its worker lost, its connection broken)
while another still runs is dropped and counts nothing against its tasks; the
last copy left decides as a lone chunk always did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

from ..._core.chunking import Chunk
from .links import Link

__all__ = ["Claim", "pick", "FLOOR", "PATIENCE", "COPIES"]

#: A chunk may be copied once it has been out this many times its expected run time...
PATIENCE = 2.0

#: ...and at least this many seconds.
FLOOR = 0.2

#: Most copies of one chunk running at once (the first included).
COPIES = 2


class Claim:
    """A chunk in flight and the links running a copy of it.

    Attributes:
        chunk: the tasks.
        links: the links running a copy now, the first sent first.
        since: when the latest copy was sent.
        settled: whether an answer has decided every task of the chunk (any copy
            still running has lost the race, and its answer is dropped).
    """

    __slots__ = ("chunk", "links", "since", "settled")

    def __init__(self, chunk: Chunk, link: Link, now: float) -> None:
        self.chunk = chunk
        self.links = [link]
        self.since = now
        self.settled = False

    def __repr__(self) -> str:
        holders = ", ".join(link.text for link in self.links)
        return f"Claim({self.chunk.start}..{self.chunk.stop - 1}, [{holders}], settled={self.settled})"


def pick(claims: Iterable[Claim], mean: Optional[float], now: float) -> tuple[Optional[Claim], float]:
    """The claim an idle worker should copy now, held longest; else ``None`` and the
    seconds until one may be due (``math.inf``: none will be without news).

    Nothing is copied before a task of the call has been measured: until then no
    chunk can be told late.
    """
    if mean is None:
        return None, math.inf
    best: Optional[Claim] = None
    wait = math.inf
    for claim in claims:
        if claim.settled or len(claim.links) >= COPIES:
            continue
        due = claim.since + max(FLOOR, PATIENCE * mean * (claim.chunk.stop - claim.chunk.start))
        if due > now:
            wait = min(wait, due - now)
        elif best is None or claim.since < best.since:
            best = claim
    return best, 0.0 if best is not None else wait
