"""The parallel mode: worker processes on this machine, fed chunk by chunk.

How data flows (one duplex pipe and one shared ``mark`` slot per process)::

    calling process (ParallelBackend / _Call)          worker process (child.main)
    ─────────────────────────────────────────          ───────────────────────────
    publish the function (ezpool._core.parcels), tasks in pieces
    each worker holds up to two chunks:                  a reader thread queues them;
      ── ChunkRequest (the small pieces in it) ──────▶  unpickle, run each task:
      ── then each big piece, part by part ──────────▶    mark = its position (tiny
                                                            ones: its group's, see run_chunk)
    wait(pipes + process sentinels, timeout)  ◀── ChunkReply (first, values, times,
                                                   failures, [what tasks wrote])
      ├─ a reply: the ledger settles the chunk (Answered, or Garbled if it cannot be
      │   read here), top that worker up to two chunks, yield a Batch
      ├─ a sentinel: the process died (Lost, with its ``mark``): the ledger charges
      │   the task it was running an attempt (WorkerCrashed after ``max_attempts``),
      │   or runs a group of tiny tasks again with every task marked; its other
      │   chunks go back at no cost
      ├─ a timeout: a mark unchanged for ``timeout`` seconds: kill the process
      │   (TimedOut): the task gets TaskTimeout, the rest goes back, a new one starts
      └─ the alarm: tasks asked to stop (``stops``): the processes holding them are
          killed (Stopped: those tasks cancelled, the rest back); ``stop_all`` ends the call

Limits (``control.py``): with ``max_tasks_per_worker`` no chunk holds more tasks than
its process has left, and the process is replaced after its last; with ``max_memory``
each process is told the limit (a ``Limits`` message) and watches itself
(``ezpool._worker.memory``): past it, the answer's last task is WorkerOutOfMemory and
``mark[1]`` holds the size (the process is replaced), or its watchdog kills it with the
size in ``mark[1]`` (OutOfMemory for the marked task). So does a SIGKILL that the
memory cgroup's OOM kill count explains (``ezpool._core.deaths``). Closing the
generator (``imap`` left early) kills the processes still running this call's chunks.

A request is one small pickle; a piece of tasks rides in it when it is small,
and otherwise follows as a message of its own, written from its parts
(``ezpool._core.serialization.Pickled``), each from the very ``bytes`` object of the
task that holds it: a big argument is copied into the pipe and nowhere else in
the calling process, and the worker reads it straight into one buffer and
unpickles the tasks from there (``ezpool._backends.parallel.pipes``). A reply is one
pickle, read into a buffer the caller keeps for that worker. (Written from the
values' own bytes, in parts, replies cost the worker more time than the copy
they saved, in every measurement.)

The function, and what it captures, travels once to each process and stays
there, cached by content (``ezpool._core.parcels``): a second call with the same
function sends a few bytes, and big arrays reach the processes through shared
memory rather than the pipes. The processes live as long as the pool, so a
second call pays no start-up either.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Generator, Iterator, Sequence
from multiprocessing.connection import wait
from multiprocessing.util import Finalize
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..._core.chunking import ChunkQueue, Priors
from ..._core.deaths import how_it_ended
from ..._core.ledger import Answered, Garbled, Ledger, Lost, OutOfMemory, Settlement, Stopped, TimedOut
from ..._core.logs import get_logger
from ..._core.parcels import Parcel, Shelf
from ..._core.recording import Recording
from ..._core.records import Batch, ChunkReply, run_time
from ..._core.relay import capture_level
from ..._core.unsendable import rebuild_answer
from ...errors import EzPoolError, WorkerCrashed
from ...options import Options
from ..base import Backend
from .control import CallLimits, CallStops
from .processes import STOP_GRACE, WorkerProcess, preload, stop_if_unguarded, stop_with
from .sending import Waker, forget, main_functions, publish, send_request, sent_reply

if TYPE_CHECKING:
    from ..._core.stopping import Stops

logger = get_logger(__name__)

__all__ = ["ParallelBackend", "available_cpus"]

#: Longest pause between two looks for overdue tasks when a timeout is set.
_TIMEOUT_POLL = 0.1

#: Chunks a worker holds at once: one running, one waiting, so it never idles
#: while the calling process is busy with another worker's results.
_DEPTH = 2


def available_cpus() -> int:
    """The number of CPUs this process may run on."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ParallelBackend(Backend):
    """Runs tasks on worker processes that live as long as the pool."""

    mode = "parallel"

    def __init__(self) -> None:
        # Changed in place only: the finalizer that stops them holds this very list.
        self._processes: list[WorkerProcess] = []
        self._finalizer: Optional[Finalize[None]] = None
        self._shape: Optional[tuple[int, Optional[str]]] = None
        self._context: Any = None
        self._shelf = Shelf()  # the functions sent to the processes, and their big buffers
        self._forked_with: dict[Any, Any] = {}  # the functions of __main__ when they were forked
        self._priors = Priors()  # run times measured in earlier calls, by function

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        ncpu = options.ncpu or available_cpus()
        pending = ChunkQueue(tasks, ncpu, options.chunksize, depth=_DEPTH)
        if not pending and pending.exhausted:
            yield from pending.unsent()  # tasks that could not be pickled, if any
            return
        # A forked process inherits what pickling the function imported (cloudpickle),
        # so fork after it; a spawned one boots for a while, so pickle meanwhile.
        forks = multiprocessing.get_context(options.start_method).get_start_method() == "fork"
        # How the processes come by a function of __main__ (else it travels by value):
        # they run the script again, or were all forked from here since it was there.
        if forks and (not self._processes or self._shape != (ncpu, options.start_method)):
            self._forked_with = main_functions()  # the processes are all forked after now
        named = self._forked_with.get(getattr(fun, "__qualname__", None)) is fun
        main = "import" if not forks else "fork" if named else None
        if not forks:
            self._start(ncpu, options.start_method)
        parcel = publish(self._shelf, fun, options.context, ncpu, main)
        if forks:
            self._start(ncpu, options.start_method)
        prior = self._priors.get(parcel.fid)
        if prior is not None:
            pending.sizer.seed(prior)
        call = _Call(self, tasks, parcel, pending, options, record, stops)
        try:
            yield from call.batches()
        finally:
            self._priors.keep(parcel.fid, pending.sizer)

    def close(self) -> None:
        self._stop()
        self._shelf.close()

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # stop_all(self._processes), once
            self._finalizer = None
        self._shape = None

    def _start(self, ncpu: int, start_method: Optional[str]) -> None:
        """Have ``ncpu`` live processes, reusing those of an earlier call."""
        if self._shape != (ncpu, start_method):
            self._stop()
            self._context = multiprocessing.get_context(start_method)
            preload(self._context)
            self._shape = (ncpu, start_method)
        for proc in [proc for proc in self._processes if not proc.process.is_alive()]:
            proc.kill()
            self._processes.remove(proc)
        if self._finalizer is None or not self._finalizer.still_active():
            self._finalizer = stop_with(self, self._processes)
        had = len(self._processes)
        while len(self._processes) < ncpu:  # each one in the list, stopped with it, from its start
            self._processes.append(WorkerProcess(self._context))
        if len(self._processes) != had:
            logger.debug("started worker processes: %d live", len(self._processes))

    def _replace(self, proc: WorkerProcess) -> WorkerProcess:
        proc.kill()
        fresh = WorkerProcess(self._context)
        self._processes[self._processes.index(proc)] = fresh
        return fresh

    def _discard(self, procs: Sequence[WorkerProcess]) -> None:
        """Kill processes whose work was abandoned; the next call starts new ones."""
        for proc in procs:
            proc.kill()
        self._processes[:] = [proc for proc in self._processes if proc not in procs]


class _Call:
    """One ``pmap`` call: the chunks that wait, and the processes they are sent to.

    What becomes of a chunk, whatever its process does, is the ledger's to say
    (``ezpool._core.ledger``); this loop does the I/O: it sends chunks, waits on the
    pipes and the processes' sentinels, and tells the ledger what it saw.
    """

    def __init__(
        self,
        backend: ParallelBackend,
        tasks: Sequence[Any],
        parcel: Parcel,
        pending: ChunkQueue,
        options: Options,
        record: Recording,
        stops: Optional[Stops] = None,
    ) -> None:
        self.backend = backend
        self.record = record
        self.parcel = parcel
        self.pending = pending
        self.timeout = options.timeout
        self.capture_level = capture_level(options)
        self.sizer = pending.sizer
        self.ledger = Ledger(tasks, options.max_attempts, name=lambda proc: proc.name)
        self.stillborn = 0  # processes that died before running anything, this call
        live = pending.feed.live if pending.feed is not None else None
        self.waker = Waker(live) if live is not None else None
        self.limits = CallLimits(options, tasks)
        self.stops = CallStops(stops, tasks, live) if stops is not None else None
        for proc in backend._processes:
            proc.seen = (-1, 0.0)  # positions restart with every call

    def batches(self) -> Iterator[Batch]:
        busy: dict[Any, WorkerProcess] = {}  # pipe or sentinel -> process
        pending = self.pending
        finished = False
        try:
            yield from pending.refill()
            self._feed_all(busy)
            while busy or pending or not pending.exhausted:
                if self.stops is not None:
                    yield from self.stops.flush()
                    if self.stops.stops.asked:
                        if self.stops.take():
                            return  # stop_all: the processes running this call's chunks are killed below
                        yield from self._stop(busy)
                        continue
                if not busy:  # nothing out: read more tasks (a feed), or send what is pending
                    settled = pending.refill()
                    yield from settled
                    self._feed_all(busy)
                    if not busy and not settled and not pending.exhausted:
                        if self.waker is None:
                            raise EzPoolError("no room to read more tasks, and none in flight")
                        self.waker.wait()  # a live source: until more tasks arrive
                    continue
                handles = list(busy)
                if self.stops is not None:
                    handles.append(self.stops.alarm.handle)
                if self.waker is not None and self._wants_tasks():
                    handles.append(self.waker.handle)
                    self.waker.watching = True
                ready = wait(handles, self._wait_seconds())
                if self.waker is not None:
                    self.waker.watching = False
                for handle in ready:
                    if self.waker is not None and handle is self.waker.handle:
                        self.waker.clear()
                        continue
                    if handle not in busy:  # its pipe and its sentinel were both ready (or: the alarm)
                        continue
                    proc = busy[handle]
                    try:
                        reply = proc.inbox.receive(proc.conn) if handle is proc.conn else None
                    except (EOFError, OSError):
                        reply = None
                    if reply is None:
                        yield from self._lost(proc, busy, timed_out=False)
                        continue
                    proc.served = True
                    # Decoded before the process is topped up, so that its next chunk is
                    # sized with these run times too (it still has one to run meanwhile).
                    decoded = self._answered(proc, reply)
                    if self.limits.due(proc):
                        proc = self._retire(proc, busy, decoded)
                    if not self.ledger.holds(proc):
                        forget(busy, proc)
                    self._feed(proc, busy)
                    yield from decoded
                if self.timeout is not None:
                    for proc in self._overdue(busy):
                        yield from self._lost(proc, busy, timed_out=True)
                yield from pending.refill()
                self._feed_all(busy)  # what was read, and work put back, goes out
            if self.stops is not None:
                yield from self.stops.flush()
            finished = True
        finally:
            if self.waker is not None:
                self.waker.close()
            if self.stops is not None:
                self.stops.close()
            if not finished:
                stuck = [proc for proc in self.backend._processes if self.ledger.holds(proc)]
                logger.debug("call abandoned: killing %d busy worker processes", len(stuck))
                self.backend._discard(stuck)

    def _wants_tasks(self) -> bool:
        """Whether tasks arriving in a live source could go out now: nothing is pending and
        a process has room. If not, they wait to be read with the next reply, many at
        once, rather than each waking this loop."""
        held = self.ledger.holds
        return not self.pending and any(len(held(proc)) < _DEPTH for proc in self.backend._processes)

    def _feed_all(self, busy: dict[Any, WorkerProcess]) -> None:
        """Top every process up, one chunk each in turn: an idle one is served before a
        busy one gets its second."""
        for depth in range(1, _DEPTH + 1):
            for proc in list(self.backend._processes):
                self._feed(proc, busy, depth)

    def _feed(self, proc: WorkerProcess, busy: dict[Any, WorkerProcess], depth: int = _DEPTH) -> None:
        """Top a process up to ``depth`` chunks in flight, while work is pending."""
        limits = self.limits
        while self.pending and len(self.ledger.holds(proc)) < depth:
            room = limits.room(proc, self.ledger.holds(proc))
            if room <= 0:
                return
            chunk = limits.cut(self.pending.take(), room, self.pending)
            if self.stops is not None and self.stops.cut(chunk, self.pending, proc.name) is None:
                continue
            fid = self.parcel.fid
            parcel = None if fid in proc.holds else self.parcel
            try:
                # Every task is marked where a timeout (or max_memory) must find it, or a crash
                # is narrowed down.
                exact = self.timeout is not None or chunk.alone or limits.exact
                if limits.max_memory is not None or proc.limit is not None:
                    limits.tell(proc)
                send_request(proc.conn, fid, parcel, chunk, exact, self.capture_level)
            except OSError:  # it died: its sentinel will say so; this chunk never left
                self.pending.put_back(chunk.start, chunk.stop, alone=chunk.alone)
                if not self.ledger.holds(proc):
                    proc = self.backend._replace(proc)
                    continue
                return
            if parcel is not None:  # what it keeps now, as child.main's Loader does
                proc.holds = {held for held in proc.holds if held in parcel.keep} | {fid}
            self.ledger.take(proc, chunk, perf_counter())
            busy[proc.conn] = proc
            busy[proc.process.sentinel] = proc

    def _answered(self, proc: WorkerProcess, reply: memoryview) -> list[Batch]:
        """The outcomes of the reply to the oldest chunk ``proc`` holds; if the reply cannot
        be unpickled here, the ledger has its tasks redone one by one."""
        claim = self.ledger.holds(proc)[0]
        chunk = claim.chunk
        try:
            answer = ChunkReply.decode(reply)
        except Exception as exc:
            return self._apply([self.ledger.settle(proc, chunk, Garbled(proc.name, exc))])
        values = answer.values
        unloaded = rebuild_answer(answer, self.ledger.tasks, proc.name)
        if unloaded is not None:  # its tasks could not be unpickled there: each runs again alone
            return self._apply([self.ledger.settle(proc, chunk, Garbled(proc.name, unloaded))])
        settled = self.ledger.settle(proc, chunk, Answered(len(answer.values)))
        proc.ran += len(answer.values)
        self.sizer.record(answer.times, reply_bytes=len(reply))
        batch = Batch(answer.first, values, answer.times, set(answer.failures), proc.name, answer.outputs)
        batch.origin = getattr(answer.times, "origin", None)
        if len(values) == 1:
            batch.attempt = self.ledger.attempt(answer.first)
        if proc.name not in self.record.workers:
            self.record.local(proc.name, proc.process.pid or 0, proc.born, batch.origin)
        self.record.trip(proc.name, claim.since, perf_counter(), batch.origin, run_time(answer.times))
        return [*self._apply([settled]), batch]

    def _apply(self, settlements: list[Settlement]) -> list[Batch]:
        """Put back what the ledger sends again, ahead of everything else and in the order
        given; the tasks that failed, as batches."""
        for piece in reversed([piece for settled in settlements for piece in settled.again]):
            self.pending.put_back(*piece)
        self.record.struck(self.ledger)
        return [batch for settled in settlements for batch in settled.failed]

    def _wait_seconds(self) -> Optional[float]:
        """How long to block: forever, or briefly enough to watch for overdue tasks."""
        if self.timeout is None:
            return None
        return min(self.timeout / 4, _TIMEOUT_POLL)

    def _overdue(self, busy: dict[Any, WorkerProcess]) -> list[WorkerProcess]:
        assert self.timeout is not None
        now = perf_counter()
        late = []
        for proc in set(busy.values()):
            position, _, since = proc.running(now)
            if position >= 0 and now - since > self.timeout:
                late.append(proc)
        return late

    def _lost(self, proc: WorkerProcess, busy: dict[Any, WorkerProcess], timed_out: bool) -> Iterator[Batch]:
        """A process died (or was killed for a timeout) with chunks in flight."""
        forget(busy, proc)
        position, group, began = proc.running(perf_counter())
        if timed_out:
            proc.process.kill()
        proc.process.join(STOP_GRACE)
        # Replies it finished sending before it died are good: use them.
        while self.ledger.holds(proc):
            reply = sent_reply(proc)
            if reply is None:
                break
            yield from self._answered(proc, reply)
        how = how_it_ended(proc.process.exitcode, proc.witness)
        if not proc.served and position < 0 and not timed_out:
            self._stillborn(proc, how, busy)
            return
        event: Union[Lost, TimedOut, OutOfMemory]
        memory = None if timed_out else self.limits.memory_error(proc, position, group, how)
        if timed_out:
            assert self.timeout is not None
            what = f"worker process {proc.name} was killed and replaced"
            event = TimedOut(what, position, perf_counter() - began, self.timeout)
        elif memory is not None:
            logger.warning("%s", memory)
            event = OutOfMemory(position, memory, perf_counter() - began)
        elif proc.outgrown:  # its watchdog killed it between two tasks: nothing to blame
            replacement = self.backend._replace(proc)
            yield from self._apply(self.ledger.release(proc, "its process outgrew max_memory between tasks"))
            self._feed(replacement, busy)
            return
        else:
            mark = (position, group) if position >= 0 else None
            event = Lost(f"worker process {proc.name} {how}", mark, perf_counter() - began)
            if mark is None and self.ledger.holds(proc):
                logger.warning("worker process %s %s outside any task; retrying its chunk", proc.name, how)
        replacement = self.backend._replace(proc)
        yield from self._apply(self.ledger.lose(proc, event))
        self._feed(replacement, busy)

    def _retire(
        self, proc: WorkerProcess, busy: dict[Any, WorkerProcess], decoded: list[Batch]
    ) -> WorkerProcess:
        """Replace ``proc``, which ran its last task (``max_tasks_per_worker``) or outgrew
        ``max_memory``: what it still holds never started, and goes back at no cost."""
        held = list(self.ledger.holds(proc))
        settled = [self.ledger.settle(proc, claim.chunk, Answered(0)) for claim in held]
        decoded.extend(self._apply(settled))
        forget(busy, proc)
        return self.backend._replace(proc)

    def _stop(self, busy: dict[Any, WorkerProcess]) -> Iterator[Batch]:
        """Kill and replace the processes that hold tasks asked to stop: those end as
        cancelled (unless their answer came already), the rest goes back at no cost."""
        assert self.stops is not None
        for proc in list(self.backend._processes):
            hit = self.stops.hit(self.ledger.holds(proc))
            if not hit:
                continue
            forget(busy, proc)
            proc.process.kill()
            proc.process.join(STOP_GRACE)
            while self.ledger.holds(proc):  # answers it sent before it died are good
                reply = sent_reply(proc)
                if reply is None:
                    break
                yield from self._answered(proc, reply)
            what = f"worker process {proc.name} was killed and replaced"
            replacement = self.backend._replace(proc)
            yield from self._apply(self.ledger.lose(proc, Stopped(what, hit)))
            self._feed(replacement, busy)

    def _stillborn(self, proc: WorkerProcess, how: str, busy: dict[Any, WorkerProcess]) -> None:
        """A process died before running any task: blame its start, not the tasks.

        Its chunks go back whole. If fresh processes keep dying like that while none
        has served anything, the call stops with one clear error instead of
        starting two processes per task.
        """
        self.stillborn += 1
        stop_if_unguarded(proc, self.backend._context.get_start_method())
        served = any(other.served for other in self.backend._processes)
        if not served and self.stillborn >= max(2, len(self.backend._processes)):
            raise WorkerCrashed(
                f"worker processes die before running any task (the last, {proc.name}, {how}); "
                "see its error above. With the 'spawn' or 'forkserver' start method the main "
                "module must be importable and its work guarded by "
                "if __name__ == '__main__':"
            )
        logger.warning("worker process %s %s before running any task; its work is redone", proc.name, how)
        self._apply(self.ledger.release(proc, f"its process {how} before running any task"))
        replacement = self.backend._replace(proc)
        self._feed(replacement, busy)
