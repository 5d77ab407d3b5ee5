"""A run's timeline as a Chrome trace: open it in Perfetto (ui.perfetto.dev), chrome://tracing
or the Performance panel of Chrome's DevTools ("Load profile").

``write_trace(timeline, path)`` writes the Trace Event format's JSON object, one
event per line; ``read_trace(path)`` reads such a file back into a ``Timeline``::

    {"otherData": {"format": "ezpool trace", "mode": ..., "settings": {...}, "workers": {...}, ...},
     "displayTimeUnit": "ms",
     "traceEvents": [
      {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "node1"}},        one pid per host
      {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "pid 41"}},  one tid per worker
      {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "pid 41 · transfers"}},
      {"name": "3", "cat": "task", "ph": "X", "ts": 1520, "dur": 87, "pid": 1, "tid": 1,
       "args": {"task": "3", "attempt": 1, "worker": "pid 41"}},                       one per task run
      {"name": "7", "cat": "failed", ..., "args": {..., "error": "ValueError: odd"}},   a run that raised
      {"name": "transfer tasks 0..9", "cat": "transfer", "ph": "X", "pid": 1, "tid": 2, ...}
     ]}

A run's name is its task's ``repr`` (a task that is text: the text), cut short.
Times (``ts``, ``dur``) are whole microseconds from the call's start, on the caller's
clock. Events on one track (pid, tid) must nest, so each worker has a track for its
task runs and one or more tracks for its other spans (start-up, transfer, backup,
lost), which may overlap one another: a span goes on the first of the worker's span
tracks where it overlaps nothing. Two runs on one worker can overlap by a little
after their clocks are corrected (estimated offsets, rounding): a run that starts
before the previous one on its worker ends is clipped to start when that one ends
(and lasts at least nothing), so the runs of a track never overlap.
"""

from __future__ import annotations

import json
import os
import platform
import reprlib
from array import array
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring_ascii as _quote
from typing import IO, Any, Union

from ._core.logs import get_logger
from ._core.writing import replacing
from ._version import __version__
from .timeline import Span, Timeline, WorkerInfo

logger = get_logger(__name__)

__all__ = ["write_trace", "read_trace"]

#: ``otherData["format"]`` of a trace EzPool wrote; ``read_trace`` reads no other file.
FORMAT = "ezpool trace"
_HEAD = '{"otherData": '
#: How long a run's name (its task's ``repr``) may be, and its ``args.task``.
_NAME_CHARS = 60
_TASK_CHARS = 200

_TASK_EVENT = ('{"name":%s,"cat":"%s","ph":"X","ts":%d,"dur":%d,"pid":%d,"tid":%d,'
               '"args":{"task":%s,"attempt":%d,"worker":%s%s}}')


class _TracedError(RuntimeError):
    """A run's error read back from a trace: its text (``"Type: message"``), and the
    original type's name as ``type_name``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.type_name = text.partition(":")[0].strip() or "Exception"


def _describer() -> reprlib.Repr:
    describe = reprlib.Repr()
    describe.maxstring = describe.maxother = _TASK_CHARS
    describe.maxlong = _TASK_CHARS
    return describe


def _text(value: Any, describe: reprlib.Repr) -> str:
    """A task in words: a short ``repr``, whatever its ``repr`` does; text as it is (what
    executors and ``imap`` keep of their tasks, and what ``read_trace`` gives back)."""
    try:
        if type(value) is str:
            text = value
        elif type(value) is int and -10**18 < value < 10**18:
            text = repr(value)
        else:
            text = describe.repr(value)
    except Exception as exc:  # a task whose repr raises still has a place on the timeline
        text = f"<{type(value).__name__}: repr raised {type(exc).__name__}>"
    return text if len(text) <= _TASK_CHARS else text[: _TASK_CHARS - 3] + "..."


def _error_text(error: BaseException) -> str:
    """``"Type: message"`` (the original type of a ``RemoteError`` or a trace's error)."""
    name = getattr(error, "type_name", None) or type(error).__name__
    try:
        message = str(getattr(error, "message", None) or error)
    except Exception:  # an exception whose __str__ raises
        message = ""
    if message.startswith(f"{name}:"):
        return message
    return f"{name}: {message}" if message else name


def _micro(seconds: float) -> int:
    return round(seconds * 1_000_000)


def write_trace(timeline: Timeline, path: Union[str, os.PathLike[str]]) -> None:
    """Write ``timeline`` to ``path`` as a Chrome trace (see the module's text).

    One process per host, one thread per worker (its task runs), one ``X`` event per
    task run and per span. It streams: a million runs take a few seconds.
    """
    workers = dict(timeline.workers)
    for span in timeline.spans:  # a span of a worker that ran no task
        workers.setdefault(span.worker, WorkerInfo(span.worker, "", 0))
    hosts = {host: number for number, host in enumerate(dict.fromkeys(w.host for w in workers.values()), 1)}
    lanes = _span_lanes(timeline.spans)
    tracks: dict[str, int] = {}  # a worker's name -> the tid of its task runs
    metadata = [json.dumps({"name": "process_name", "ph": "M", "pid": pid,
                            "args": {"name": host or "unknown host"}}) for host, pid in hosts.items()]
    metadata += [json.dumps({"name": "process_sort_index", "ph": "M", "pid": pid,
                             "args": {"sort_index": pid}}) for pid in hosts.values()]
    span_tids: dict[tuple[str, int], int] = {}
    for name, info in workers.items():
        pid = hosts[info.host]
        for lane in range(1 + lanes.count.get(name, 0)):
            tid = len(tracks) + len(span_tids) + 1
            if lane == 0:
                tracks[name] = tid
                title = name
            else:
                span_tids[name, lane] = tid
                title = f"{name} · transfers" + (f" {lane}" if lane > 1 else "")
            metadata.append(json.dumps({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                                        "args": {"name": title}}))
            metadata.append(json.dumps({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                                        "args": {"sort_index": tid}}))
    other = {
        "format": FORMAT, "format_version": 1, "mode": timeline.mode, "settings": timeline.settings,
        "started_at": timeline.started_at, "wall_time": timeline.wall_time, "offsets": timeline.offsets,
        "stored": timeline.stored, "workers": {name: [w.host, w.pid] for name, w in workers.items()},
        "ezpool_version": __version__,
        "python_version": platform.python_version(),
    }
    with replacing(path, "ascii") as out:  # whole or not at all: two writers may race
        out.write(f'{_HEAD}{json.dumps(other)},\n"displayTimeUnit": "ms",\n"traceEvents": [\n')
        out.write(",\n".join(metadata))
        for index, span in enumerate(timeline.spans):
            info = workers[span.worker]
            start = _micro(span.start)
            out.write(",\n" + json.dumps({
                "name": f"{span.kind} {span.detail}".strip(), "cat": span.kind, "ph": "X", "ts": start,
                "dur": max(0, _micro(span.end) - start), "pid": hosts[info.host],
                "tid": span_tids[span.worker, lanes.lane[index]],
                "args": {"worker": span.worker, "detail": span.detail}}))
        clipped = _write_runs(out, timeline, [hosts[workers[name].host] for name in timeline.names],
                              [tracks[name] for name in timeline.names])
        out.write("\n]}\n")
    if clipped:
        logger.debug("%s: %d task runs clipped so as not to overlap the previous run on their worker",
                     path, clipped)
    logger.debug("wrote a trace of %d task runs and %d spans to %s", len(timeline), len(timeline.spans), path)


def _write_runs(out: IO[str], timeline: Timeline, pids: list[int], tids: list[int]) -> int:
    """Write one event per task run, clipping runs that overlap on a worker; how many were clipped."""
    starts, ends, owners = timeline.starts, timeline.ends, timeline.owners
    tasks, attempts, errors = timeline.tasks, timeline.attempts, timeline.errors
    count = len(starts)
    order: Any = range(count)
    if any(starts[i] > starts[i + 1] for i in range(count - 1)):
        order = sorted(order, key=starts.__getitem__)
    names = [_quote(name) for name in timeline.names]
    frontier = [-(2**62)] * len(names)
    describe = _describer()
    clipped = 0
    chunk: list[str] = []
    for index in order:
        owner = owners[index]
        start, end = _micro(starts[index]), _micro(ends[index])
        if start < frontier[owner]:
            start = frontier[owner]
            clipped += 1
        end = max(start, end)
        frontier[owner] = end
        text = _text(tasks[index], describe)
        error = errors.get(index)
        chunk.append(_TASK_EVENT % (
            _quote(text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 3] + "..."),
            "task" if error is None else "failed", start, end - start, pids[owner], tids[owner],
            _quote(text), attempts[index], names[owner],
            "" if error is None else ',"error":' + _quote(_error_text(error))))
        if len(chunk) >= 4096:
            out.write(",\n" + ",\n".join(chunk))
            chunk.clear()
    if chunk:
        out.write(",\n" + ",\n".join(chunk))
    return clipped


class _Lanes:
    """Which span track of its worker each span goes on (``lane[i]`` for span ``i``, from 1),
    and how many span tracks each worker has."""

    def __init__(self) -> None:
        self.lane: list[int] = []
        self.count: dict[str, int] = {}


def _span_lanes(spans: list[Span]) -> _Lanes:
    """Put each span (in order of start) on the first of its worker's tracks it does not overlap."""
    lanes = _Lanes()
    ends: dict[str, list[int]] = {}
    for span in spans:
        taken = ends.setdefault(span.worker, [])
        start, end = _micro(span.start), max(_micro(span.start), _micro(span.end))
        lane = next((number for number, last in enumerate(taken) if last <= start), len(taken))
        if lane == len(taken):
            taken.append(end)
        else:
            taken[lane] = end
        lanes.lane.append(lane + 1)
    lanes.count = {worker: len(taken) for worker, taken in ends.items()}
    return lanes


def read_trace(path: Union[str, os.PathLike[str]]) -> Timeline:
    """The ``Timeline`` of a trace ``write_trace`` wrote: tasks are their ``repr`` text,
    errors ``RuntimeError``\\ s carrying the original ``"Type: message"`` (and the type's
    name as ``type_name``), times are to the microsecond (and clipped as written).

    Raises:
        ValueError: ``path`` is not an EzPool trace.
    """
    where = repr(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as source:
            other, events = _head(source)
            if not isinstance(other, dict) or other.get("format") != FORMAT:
                raise ValueError(f"{where} is not an EzPool trace (its otherData has no \"format\": "
                                 f"{FORMAT!r}; ezpool.trace.write_trace did not write it)")
            return _timeline(other, events)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} is not an EzPool trace: not JSON ({exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where} is a damaged EzPool trace: {exc!r}") from None


def _head(source: IO[str]) -> tuple[Any, Iterable[dict[str, Any]]]:
    """The ``otherData`` of a trace and its events: read a line at a time as ``write_trace``
    laid them out (a million runs take no more memory than their timeline), else as a whole."""
    head = source.readline().strip()
    if head.startswith(_HEAD) and head.endswith(","):
        try:
            return json.loads(head[len(_HEAD):-1]), _events(source)
        except json.JSONDecodeError:  # laid out by some other tool
            pass
    source.seek(0)
    document = json.load(source)
    if not isinstance(document, dict):
        return None, ()
    return document.get("otherData"), document.get("traceEvents", ())


def _events(source: IO[str]) -> Iterator[dict[str, Any]]:
    for line in source:
        line = line.strip().rstrip(",")
        if line.startswith("{"):
            yield json.loads(line)


def _timeline(other: dict[str, Any], events: Iterable[dict[str, Any]]) -> Timeline:
    workers = {name: WorkerInfo(name, host, int(pid)) for name, (host, pid) in other["workers"].items()}
    number = {name: index for index, name in enumerate(workers)}
    runs = []
    spans = []
    for event in events:
        if event.get("ph") != "X":
            continue
        args = event["args"]
        start, end = event["ts"] / 1e6, (event["ts"] + event["dur"]) / 1e6
        if event.get("cat") in ("task", "failed"):
            runs.append((start, end, args["task"], int(args["attempt"]), number[args["worker"]],
                         args.get("error")))
        else:
            spans.append(Span(event["cat"], args["worker"], start, end, args.get("detail", "")))
    runs.sort(key=lambda run: run[0])
    return Timeline(
        mode=other["mode"], settings=other["settings"], started_at=other["started_at"],
        wall_time=other["wall_time"], workers=workers, tasks=[run[2] for run in runs],
        attempts=array("l", (run[3] for run in runs)), owners=array("l", (run[4] for run in runs)),
        starts=array("d", (run[0] for run in runs)), ends=array("d", (run[1] for run in runs)),
        errors={index: _TracedError(run[5]) for index, run in enumerate(runs) if run[5] is not None},
        spans=spans, offsets=other.get("offsets") or {}, stored=int(other.get("stored", 0)),
    )
