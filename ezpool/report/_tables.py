"""The report's tables, as escaped HTML: failures by type, the slowest runs, the settings.

Task reprs, error messages and tracebacks are the user's (or a worker's) text:
every one goes through ``html.escape``, so a task that prints ``<script>`` shows it.
"""

from __future__ import annotations

import platform
import time
from html import escape
from typing import Any, Optional

from .._core.logs import get_logger
from .._core.serialization import short_repr
from ..errors import RemoteError, RemoteTraceback
from ..timeline import Timeline
from ._model import error_line, error_type

logger = get_logger(__name__)

__all__ = ["failures_table", "slowest_table", "settings_table", "traceback_text", "when"]

#: Tasks listed under each type of failure; the rest are counted.
TASKS_LISTED = 20


def traceback_text(error: BaseException) -> str:
    """The traceback to show for ``error``: where it was raised, on the worker if it came from one."""
    if isinstance(error, RemoteError) and error.traceback_text:
        return error.traceback_text
    cause = error.__cause__
    if isinstance(cause, RemoteTraceback) and cause.traceback_text:
        return cause.traceback_text
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        return f"(no traceback was kept of it)\n{error_line(error, 2000)}"
    import traceback

    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def failures_table(timeline: Timeline) -> str:
    """Failed runs grouped by exception type, the most common first: count, one traceback, tasks."""
    groups: dict[str, list[int]] = {}
    errors = timeline.errors
    for index in sorted(errors):
        groups.setdefault(error_type(errors[index]), []).append(index)
    if not groups:
        return '<p class="none">No task failed.</p>'
    rows = []
    names = timeline.names
    for name, indices in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        first = errors[indices[0]]
        hit = []
        for index in indices[:TASKS_LISTED]:
            attempt = timeline.attempts[index]
            again = f" (attempt {attempt})" if attempt > 1 else ""
            hit.append(f"<li><code>{escape(short_repr(timeline.tasks[index], 80))}</code>{again} "
                       f"on {escape(names[timeline.owners[index]])}</li>")
        more = len(indices) - TASKS_LISTED
        if more > 0:
            hit.append(f'<li class="more">and {more} more</li>')
        rows.append(
            f'<tr><td class="type">{escape(name)}</td><td class="num">{len(indices)}</td>'
            f"<td><div>{escape(error_line(first, 300))}</div>"
            f"<details><summary>traceback of the first</summary>"
            f"<pre>{escape(traceback_text(first))}</pre></details></td>"
            f'<td><ul class="tasks">{"".join(hit)}</ul></td></tr>'
        )
    return ('<table><thead><tr><th>exception</th><th>runs</th><th>first one</th><th>tasks hit</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def slowest_table(timeline: Timeline, count: int = 20) -> str:
    """The ``count`` longest runs: duration, task, worker, attempt, start, outcome."""
    runs = timeline.slowest(count)
    if not runs:
        return '<p class="none">No task ran.</p>'
    rows = []
    for rank, run in enumerate(runs, 1):
        outcome = "ok" if run.error is None else escape(error_line(run.error, 120))
        rows.append(
            f'<tr><td class="num">{rank}</td><td class="num">{_seconds(run.end - run.start)}</td>'
            f"<td><code>{escape(short_repr(run.task, 80))}</code></td><td>{escape(run.worker)}</td>"
            f'<td class="num">{run.attempt}</td><td class="num">{_seconds(run.start)}</td>'
            f'<td class="{"ok" if run.error is None else "bad"}">{outcome}</td></tr>'
        )
    return ('<table><thead><tr><th>#</th><th>run time</th><th>task</th><th>worker</th>'
            '<th>attempt</th><th>started at</th><th>outcome</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def settings_table(timeline: Timeline, version: str) -> str:
    """The run's mode, workers, counts, times and settings, and what wrote the report."""
    hosts = sorted({info.host for info in timeline.workers.values() if info.host})
    rows: list[tuple[str, Any]] = [
        ("mode", timeline.mode),
        ("workers", f"{len(timeline.workers)}" + (f" on {', '.join(hosts)}" if hosts else "")),
        ("task runs", f"{len(timeline)} ({len(timeline.errors)} failed)"),
        ("started at", when(timeline.started_at)),
        ("wall time", _seconds(timeline.wall_time)),
    ]
    if timeline.stored:
        rows.append(("outcomes from a store", timeline.stored))
    shown = {key for key, _ in rows}
    rows += sorted((key, value) for key, value in timeline.settings.items() if key not in shown)
    listed = {str(key).lower() for key, _ in rows}
    if not any("ezpool" in key for key in listed):
        rows.append(("EzPool version (of this report)", version))
    if not any("python" in key for key in listed):
        rows.append(("Python version (of this report)", platform.python_version()))
    body = "".join(f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>"
                   for key, value in rows)
    return f"<table><tbody>{body}</tbody></table>"


def when(epoch: Optional[float]) -> str:
    """An epoch time as UTC and local text."""
    if not epoch:
        return "unknown"
    utc = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    return f"{utc} ({time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(epoch))})"


def _seconds(value: float) -> str:
    if abs(value) < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if abs(value) < 1:
        return f"{value * 1e3:.1f} ms"
    if abs(value) < 120:
        return f"{value:.3f} s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)} min {seconds:.1f} s"
