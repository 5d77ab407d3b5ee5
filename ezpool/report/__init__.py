"""One self-contained HTML file that shows where a run's time went.

``write_report(timeline, path)`` writes it from a ``Timeline`` (``results.timeline``;
``results.save_report(path)`` and ``Pool(report=path)`` call it); ``python -m
ezpool.report STORE_OR_TRACE -o report.html`` makes one afterwards from a store or a
trace file (``__main__``)::

    Timeline ──▶ _model.chart_data ── rows, runs or buckets, spans, ──▶ JSON in the page
        │                             throughput, split                    │
        │                                                                  ▼ _script (inline)
        └──────▶ _tables ── failures, slowest, settings (escaped) ──▶ HTML ──▶ SVG charts

The page needs no network and no server: its style, data and script are inline.
Up to 20,000 task runs are drawn one rectangle each; above that, each worker's row
is drawn in buckets of time (how busy, how many tasks ended, how many failed), so
the file stays small. Measured on a loaded 2-core machine, for synthetic runs of
about 1 ms in chunks of 100 (one transfer span each), 1% failed, on 8 and on 64
workers: 10**3 runs, 52-59 kB written in under 10 ms; 10**5, 79-88 kB in 0.07-0.1 s;
10**6, 0.50-0.63 MB in 0.66-0.73 s (Chromium draws that one in about 0.3 s).

- ``_model``: the numbers the charts draw.
- ``_tables``: failures by type (with a traceback each), the slowest runs, the settings.
- ``_page`` and ``_script``: the page and the script that draws it.
- ``sources``: a ``Timeline`` from a store (laid out from run times) or a trace file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from .._core.logs import get_logger
from .._core.writing import replacing
from ..timeline import Timeline

logger = get_logger(__name__)

__all__ = ["write_report"]


def write_report(
    timeline: Timeline, path: Union[str, os.PathLike[str]], *, notes: Sequence[str] = ()
) -> None:
    """Write the HTML report of ``timeline`` to ``path`` (replaced whole, never left half-written).

    ``notes`` are shown at the top of the page, as they are (say, how the timeline was made).
    """
    if not isinstance(timeline, Timeline):
        raise TypeError(f"write_report needs an ezpool.timeline.Timeline, got {type(timeline).__name__}")
    from .._version import __version__
    from ._page import page

    target = os.fspath(path)
    text = page(timeline, __version__, notes)
    with replacing(target, "utf-8", "backslashreplace") as file:
        file.write(text)
    logger.debug("report of %r written to %s (%d bytes)", timeline, target, len(text))
