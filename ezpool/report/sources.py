"""A ``Timeline`` read back from a file: a trace (``ezpool.trace``) or a store (``ezpool.store``).

A trace holds the run as it was recorded. A store keeps, per task, its outcome, its
run time and the worker that ran it, but not when it started: ``from_store`` lays
each worker's tasks end to end, in the order they were stored, from the start of the
timeline; so a worker's row shows how much it ran and what failed, not when, and
waiting time is only what is left to the longest row. The page says so
(``STORE_NOTE``).
"""

from __future__ import annotations

import os
import re
from array import array
from typing import Any, Optional, Union

from .._core.logs import get_logger
from ..errors import StoreError
from ..timeline import Timeline, WorkerInfo

logger = get_logger(__name__)

__all__ = ["load", "from_store", "from_trace", "STORE_NOTE", "TRACE_NOTE"]

PathLike = Union[str, "os.PathLike[str]"]

#: The first bytes of every SQLite file, and so of every store.
SQLITE_HEADER = b"SQLite format 3\x00"

STORE_NOTE = (
    "Made from a store, which keeps each task's run time and worker but not when it started: "
    "each worker's tasks are laid end to end in the order they were stored, so the layout in time "
    "is approximate (from run times only), and start-up, transfer and waiting are not known."
)
TRACE_NOTE = "Made from a trace file: tasks are shown as the text the trace keeps of them."


class _Shown(str):
    """A task's text as a trace keeps it, shown as it is (not quoted again)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def load(path: PathLike, sweep: Optional[str] = None) -> tuple[Timeline, list[str]]:
    """The timeline in ``path`` (a store or a trace, told apart by their first bytes) and the
    notes to show with it.

    Raises ``FileNotFoundError`` for a missing file, ``StoreError`` for a store that
    cannot be read (or holds several sweeps and ``sweep`` names none of them), and
    ``ValueError`` for a file that is neither; each message names the path.
    """
    where = os.fspath(path)
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: no such file")
    if os.path.isdir(where):
        raise ValueError(f"{where} is a folder, not an EzPool store or trace file")
    with open(where, "rb") as file:
        head = file.read(len(SQLITE_HEADER))
    if head == SQLITE_HEADER:
        return from_store(where, sweep), [STORE_NOTE]
    if sweep is not None:
        raise ValueError(f"{where} is not a store: --sweep {sweep} names a sweep of a store")
    if head.lstrip()[:1] not in (b"{", b"["):
        raise ValueError(f"{where} is neither an EzPool store (SQLite) nor an EzPool trace (JSON)")
    return from_trace(where), [TRACE_NOTE]


def from_trace(path: PathLike) -> Timeline:
    """The timeline of a trace file; raises ``ValueError`` if it is not an EzPool trace."""
    from ..trace import read_trace

    timeline = read_trace(path)
    timeline.tasks = [_Shown(task) if isinstance(task, str) else task for task in timeline.tasks]
    return timeline


def from_store(path: PathLike, sweep: Optional[str] = None) -> Timeline:
    """The timeline of a sweep in a store (its only one, or the one named), laid out from run times.

    Each worker's tasks run end to end from 0, in the order they were stored; the
    wall time is the longest row. Runs nothing; the file is opened read-only.
    """
    from ..store import Store

    with Store(path, readonly=True) as store:
        try:
            found = store.find(sweep)
        except StoreError as exc:
            if sweep is None and "several" in str(exc):
                raise StoreError(f"{exc}; choose one with --sweep NAME") from None
            raise
        created = next((info.created for info in store.sweeps() if info.label == found.label), 0.0)
        results = found.results()
    elapsed, ran_on, errors = results.elapsed, results.workers, results.errors
    names: dict[str, int] = {}
    clocks: list[float] = []
    tasks: list[Any] = []
    owners, starts, ends = array("l"), array("d"), array("d")
    failed: dict[int, BaseException] = {}
    for index, task in enumerate(results):
        worker = ran_on.get(task) or "unknown worker"
        owner = names.setdefault(worker, len(names))
        if owner == len(clocks):
            clocks.append(0.0)
        took = max(0.0, elapsed.get(task, 0.0))
        tasks.append(task)
        owners.append(owner)
        starts.append(clocks[owner])
        clocks[owner] += took
        ends.append(clocks[owner])
        if task in errors:
            failed[index] = errors[task]
    return Timeline(
        mode="from a store",
        settings={"store": os.fspath(path), "sweep": found.label,
                  "layout": "approximate: each worker's tasks end to end, from run times"},
        started_at=created, wall_time=max(clocks, default=0.0),
        workers={name: _worker(name) for name in names},
        tasks=tasks, attempts=array("l", [1]) * len(tasks), owners=owners, starts=starts, ends=ends,
        errors=failed, stored=len(tasks),
    )


def _worker(name: str) -> WorkerInfo:
    """A worker as its stored name tells: ``pid N`` on this machine, or the host of a URI."""
    local = re.fullmatch(r"pid (\d+)", name)
    if local:
        return WorkerInfo(name, "", int(local.group(1)))
    address = re.search(r"@\[?([^\]@]+?)\]?:\d+$", name)
    return WorkerInfo(name, address.group(1) if address else "", 0)
