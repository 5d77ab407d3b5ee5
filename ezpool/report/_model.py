"""The numbers a report draws, computed once from a ``Timeline`` into plain lists.

Everything here is sized by what a page can show, not by the number of runs: up to
``EXACT_RUNS`` runs, each is one rectangle on its worker's row; above that, each
row is cut into ``bins`` buckets of equal time and a bucket keeps how busy the
worker was in it (in tenths), how many tasks ended there and how many failed;
neighbouring buckets alike are merged into one rectangle. Spans (start-up,
transfer, backup, lost) are merged per worker and kind once they are too many to
draw one by one. Each pass over the runs is one loop over the timeline's columns.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from .._core.logs import get_logger
from .._core.serialization import short_repr
from ..timeline import Timeline

logger = get_logger(__name__)

__all__ = ["EXACT_RUNS", "SPAN_KINDS", "chart_data", "error_type", "short_label"]

#: Up to this many runs, each is drawn as its own rectangle.
EXACT_RUNS = 20_000
#: Up to this many spans, each is drawn as its own rectangle; above, they are merged.
EXACT_SPANS = 5_000
#: At most this many buckets on a row when runs are binned (fewer for many workers).
MAX_BINS = 1_000
#: Buckets in all rows together, at most (so that many workers keep the data small).
ALL_BINS = 100_000
#: Points of the chart of tasks finished over time.
THROUGHPUT_POINTS = 300
#: The kinds of span, in the order the page's legend and data number them.
SPAN_KINDS = ("start-up", "transfer", "backup", "lost")


def chart_data(timeline: Timeline) -> dict[str, Any]:
    """What the page's script draws: rows, runs (or buckets), spans, throughput and the split."""
    wall = _wall(timeline)
    data: dict[str, Any] = {
        "wall": wall,
        "workers": [[short_label(name), name] for name in timeline.names],
        "kinds": list(SPAN_KINDS),
        "spans": _spans(timeline, wall),
        "done": _throughput(timeline, wall),
        "split": [
            [_r(t.startup), _r(t.working), _r(t.transfer), _r(t.waiting), t.tasks, t.failed]
            for t in timeline.split().values()
        ],
    }
    if len(timeline) <= EXACT_RUNS:
        data["runs"] = _exact_runs(timeline)
    else:
        data["bins"], data["bars"], data["fails"] = _binned_runs(timeline, wall)
    return data


def short_label(name: str, limit: int = 28) -> str:
    """A worker's name short enough for the start of its row: ``host:port`` of a URI."""
    if name.startswith(("PYRO:", "PYRONAME:")) and "@" in name:
        name = name.rsplit("@", 1)[1]
    return name if len(name) <= limit else name[: limit - 1] + "…"


def error_type(error: BaseException) -> str:
    """The name a failure is grouped under: a remote error's own type name, else its class's."""
    name = getattr(error, "type_name", None)
    return name if isinstance(name, str) and name else type(error).__name__


def error_line(error: BaseException, limit: int = 200) -> str:
    """``Type: message``, cut to ``limit`` characters."""
    try:
        message = str(error)
    except Exception:
        message = ""
    name = error_type(error)
    text = message if message.startswith(name) else f"{name}: {message}" if message else name
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _wall(timeline: Timeline) -> float:
    """The time the page spans: the call's wall time, or the last end if that is later."""
    ends = timeline.ends
    last = max(ends) if len(ends) else 0.0
    spans = max((span.end for span in timeline.spans), default=0.0)
    return max(timeline.wall_time, last, spans, 1e-6)


def _r(seconds: float) -> float:
    """Seconds rounded to the microsecond, for the page's data."""
    return round(seconds, 6)


def _exact_runs(timeline: Timeline) -> list[list[Any]]:
    """One entry a run: ``[row, start, end, attempt, task, error or 0]``."""
    errors = timeline.errors
    runs: list[list[Any]] = []
    for index, (task, attempt, owner, start, end) in enumerate(
        zip(timeline.tasks, timeline.attempts, timeline.owners, timeline.starts, timeline.ends)
    ):
        error = errors.get(index)
        runs.append([owner, _r(start), _r(end), attempt, short_repr(task, 80),
                     0 if error is None else error_line(error)])
    return runs


def _binned_runs(timeline: Timeline, wall: float) -> tuple[int, list[list[int]], list[list[int]]]:
    """Each worker's row in buckets, merged: per row, flat ``[first, count, tenths, tasks]``, where
    ``tenths`` is how busy the worker was there (1 at least where a task ended); and likewise
    ``[first, count, tenths, failed]`` where tasks failed, ``tenths`` of the tasks that ended there.
    """
    rows = max(1, len(timeline.names))
    bins = max(50, min(MAX_BINS, ALL_BINS // rows))
    width = wall / bins
    scale = bins / wall
    last = bins - 1
    busy = array("d", bytes(8 * bins * rows))
    ended = array("l", bytes(array("l").itemsize * bins * rows))
    for owner, start, end in zip(timeline.owners, timeline.starts, timeline.ends):
        start = 0.0 if start < 0.0 else wall if start > wall else start
        end = start if end < start else wall if end > wall else end
        first = int(start * scale)
        stop = int(end * scale)
        if first > last:
            first = last
        if stop > last:
            stop = last
        base = owner * bins
        if first == stop:
            busy[base + first] += end - start
        else:
            busy[base + first] += (first + 1) * width - start
            for middle in range(base + first + 1, base + stop):
                busy[middle] += width
            busy[base + stop] += end - stop * width
        ended[base + stop] += 1
    failed = array("l", bytes(array("l").itemsize * bins * rows))
    owners, ends = timeline.owners, timeline.ends
    for index in timeline.errors:
        failed[owners[index] * bins + min(last, max(0, int(ends[index] * scale)))] += 1
    bars, fails = [], []
    for row in range(rows):
        base = row * bins
        busy_tenths = [min(10, round(busy[base + at] / width * 10)) or (1 if ended[base + at] else 0)
                       for at in range(bins)]
        bars.append(_merged(busy_tenths, ended[base : base + bins]))
        failed_row = failed[base : base + bins]
        fail_tenths = [-(-10 * lost // tasks) if lost else 0  # rounded up: 1 in 1000 shows
                       for lost, tasks in zip(failed_row, ended[base : base + bins])]
        fails.append(_merged(fail_tenths, failed_row))
    return bins, bars, fails


def _merged(levels: list[int], counts: Sequence[int]) -> list[int]:
    """Runs of neighbouring buckets at one level (0 left out): flat ``[first, count, level, total]``."""
    flat: list[int] = []
    for at, level in enumerate(levels):
        if not level:
            continue
        if flat and flat[-4] + flat[-3] == at and flat[-2] == level:
            flat[-3] += 1
            flat[-1] += counts[at]
        else:
            flat += [at, 1, level, counts[at]]
    return flat


def _spans(timeline: Timeline, wall: float) -> list[list[Any]]:
    """``[row, kind, start, end, count, detail]`` a span, merged per worker and kind when there
    are many: spans closer than a pixel or so become one, ``count`` saying how many."""
    rows = {name: index for index, name in enumerate(timeline.names)}
    kinds = {kind: index for index, kind in enumerate(SPAN_KINDS)}
    gap = 0.0 if len(timeline.spans) <= EXACT_SPANS else wall / 1_500
    merged: dict[tuple[int, int], list[list[Any]]] = {}
    for span in timeline.spans:  # by start
        row, kind = rows.get(span.worker), kinds.get(span.kind)
        if row is None or kind is None:
            continue
        lane = merged.setdefault((row, kind), [])
        if gap and lane and span.start <= lane[-1][3] + gap:
            lane[-1][3] = max(lane[-1][3], span.end)
            lane[-1][4] += 1
        else:
            lane.append([row, kind, span.start, span.end, 1, span.detail[:120]])
    found = [entry for lane in merged.values() for entry in lane]
    for entry in found:
        entry[2], entry[3] = _r(entry[2]), _r(entry[3])
    return found


def _throughput(timeline: Timeline, wall: float) -> dict[str, Any]:
    """Tasks finished (and failed) by the end of each of ``THROUGHPUT_POINTS`` equal steps."""
    points = THROUGHPUT_POINTS
    scale = points / wall
    last = points - 1
    done = [0] * points
    for end in timeline.ends:
        at = int(end * scale)
        done[last if at > last else 0 if at < 0 else at] += 1
    failed = [0] * points
    ends = timeline.ends
    for index in timeline.errors:
        at = int(ends[index] * scale)
        failed[last if at > last else 0 if at < 0 else at] += 1
    return {"step": wall / points, "ok": _cumulative(done), "failed": _cumulative(failed)}


def _cumulative(counts: list[int]) -> list[int]:
    total, out = 0, []
    for count in counts:
        total += count
        out.append(total)
    return out
