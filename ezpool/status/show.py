"""How ``python -m ezpool.status`` shows what it learnt: a table, or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from .._core.logs import get_logger
from .ask import Answer, Asked

logger = get_logger(__name__)

__all__ = ["table", "as_json", "duration"]

HEADERS = ("WORKER", "HOST", "PID", "SERVES", "STATE", "CLIENT", "TASKS", "UPTIME", "PYTHON", "EZPOOL")


def duration(seconds: Any) -> str:
    """``seconds`` for a person: ``42s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "?"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _state(row: dict[str, Any]) -> str:
    if row.get("restarting"):
        return "restarting"
    word = "busy" if row.get("busy") else "idle"
    if row.get("busy"):
        word = f"busy {duration(row.get('busy_for'))}"
    return f"{word}, leaving" if row.get("leaving") else word


def _cells(answer: Answer) -> list[str]:
    row = answer.row or {}
    tasks = str(row.get("tasks", "?"))
    if row.get("failed"):
        tasks += f" ({row['failed']} failed)"
    return [
        answer.worker, str(row.get("host", "?")), str(row.get("pid", "?")), str(row.get("serves", "?")),
        _state(row), str(row.get("client") or "-"), tasks, duration(row.get("uptime")),
        str(row.get("python", "?")), str(row.get("ezpool", "?")),
    ]


def table(asked: Asked) -> str:
    """A line a worker: those that answered in columns, the others with why they did not."""
    lines = [list(HEADERS)] + [_cells(answer) for answer in asked.answers if not answer.error]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADERS))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    if len(lines) == 1:  # nobody answered: no columns to head
        out, widths[0] = [], 0
    first = max([widths[0], *(len(answer.worker) for answer in asked.answers if answer.error)])
    out += [f"{answer.worker.ljust(first)}  {answer.error}" for answer in asked.answers if answer.error]
    out += asked.notes
    answered = sum(1 for answer in asked.answers if not answer.error)
    failed = len(asked.answers) - answered
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(asked.at))
    out.append(f"{answered} answered" + (f", {failed} did not" if failed else "") + f" ({stamp})")
    return "\n".join(out)


def as_json(asked: Asked) -> str:
    """One JSON document: ``time``, ``workers`` (each ``worker``, ``answered``, and its status
    or ``error``), ``notes``."""
    workers = []
    for answer in asked.answers:
        entry: dict[str, Any] = {"worker": answer.worker, "answered": not answer.error}
        if answer.error:
            entry["error"] = answer.error
        else:
            entry.update({k: v for k, v in (answer.row or {}).items() if k != "worker"})
        workers.append(entry)
    return json.dumps({"time": asked.at, "workers": workers, "notes": asked.notes}, sort_keys=True)
