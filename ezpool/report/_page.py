"""The report's page: one HTML file holding its style, its data (JSON) and its script.

Nothing on the page is fetched: no font, no library, no image. The data sits in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as
JSON escapes, so no text in it can close the element.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from .._core.logs import get_logger
from ..timeline import Timeline
from ._model import EXACT_RUNS, SPAN_KINDS, chart_data
from ._script import SCRIPT
from ._tables import failures_table, settings_table, slowest_table, when

logger = get_logger(__name__)

__all__ = ["page"]

STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; padding: 16px 24px; max-width: 1400px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 4px 0; } h2 { font-size: 16px; margin: 22px 0 6px; }
.summary { color: #555; margin: 0 0 8px; }
.note { background: #fff6d6; border: 1px solid #e8d27a; padding: 6px 10px; margin: 8px 0; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -2px; border-radius: 2px; }
svg { display: block; font-size: 11px; }
svg .row { fill: #f6f6f6; } svg .axis { stroke: #888; } svg .grid { stroke: #eee; }
svg .tick { fill: #666; } svg .label { fill: #333; } svg .label.bad { fill: #c0392b; }
svg .run:hover, svg .span:hover, svg .part:hover { stroke: #000; stroke-width: 1; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #e4e4e4; }
thead th { background: #f2f2f2; white-space: nowrap; } #settings th { width: 260px; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; } td.type { font-weight: 600; white-space: nowrap; }
td.bad { color: #c0392b; } td.ok { color: #2e7d32; }
code { font: 12px ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
pre { font: 12px ui-monospace, Menlo, Consolas, monospace; background: #f7f7f7; padding: 8px;
      overflow-x: auto; white-space: pre-wrap; max-height: 320px; }
ul.tasks { margin: 0; padding-left: 18px; } li.more { color: #666; list-style: none; }
.none { color: #666; }
"""

_LEGEND = [("ok", "#4c78a8", "task ran"), ("failed", "#e45756", "task failed")] + [
    (kind, colour, kind) for kind, colour in zip(SPAN_KINDS, ("#b279a2", "#f2a93b", "#54a24b", "#333333"))
]
_SPLIT_LEGEND = [("start-up", "#b279a2"), ("working", "#4c78a8"), ("transfer", "#f2a93b"),
                 ("waiting", "#e8e8e8")]


def page(timeline: Timeline, version: str, notes: Sequence[str] = ()) -> str:
    """The whole report for ``timeline``, as one HTML document."""
    data = _json(chart_data(timeline))
    runs, failed, workers = len(timeline), len(timeline.errors), len(timeline.workers)
    title = f"EzPool run: {timeline.mode}, {runs} task runs on {workers} workers"
    summary = (f"{runs} task runs, {failed} failed, on {workers} workers; wall time "
               f"{timeline.wall_time:.3f} s; started {when(timeline.started_at)}")
    binned = "" if runs <= EXACT_RUNS else (
        f"<p class=\"summary\">{runs} runs are too many to draw one by one: each row shows how busy "
        "its worker was over time (darker is busier; red, from the bottom: the share of the tasks "
        "that failed there).</p>")
    legend = "".join(f'<span><i style="background:{colour}"></i>{escape(text)}</span>'
                     for _, colour, text in _LEGEND)
    split_legend = "".join(f'<span><i style="background:{colour}"></i>{name}</span>'
                           for name, colour in _SPLIT_LEGEND)
    banner = "".join(f'<p class="note">{escape(note)}</p>' for note in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head><body>
<h1>{escape(title)}</h1>
<p class="summary">{escape(summary)}</p>
{banner}
<section id="timeline"><h2>Task stream, per worker</h2>
<div class="legend">{legend}</div>{binned}<div class="chart"></div></section>
<section id="throughput"><h2>Tasks finished over time</h2>
<div class="legend"><span><i style="background:#4c78a8"></i>finished</span>
<span><i style="background:#e45756"></i>failed</span></div><div class="chart"></div></section>
<section id="split"><h2>Time split, per worker</h2>
<div class="legend">{split_legend}</div><div class="chart"></div></section>
<section id="failures"><h2>Failures, by exception type</h2>{failures_table(timeline)}</section>
<section id="slowest"><h2>Slowest tasks</h2>{slowest_table(timeline)}</section>
<section id="settings"><h2>Run and settings</h2>{settings_table(timeline, version)}</section>
<noscript><p class="note">The charts above need JavaScript; the tables do not.</p></noscript>
<script type="application/json" id="report-data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _json(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
