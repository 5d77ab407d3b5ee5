"""ezpool.report: one self-contained HTML file per run, checked in a real headless Chromium.

The browser tests start the distribution's ``chromium`` with the network off
(``tests/browser.py``), open the report from its file, and read what its script drew
through the DevTools protocol; their screenshots are kept in ``$EZPOOL_ARTIFACTS``
(else the test's own folder), and their paths printed. They skip, saying why, where
Chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from ezpool import Pool, RemoteError, RemoteTraceback
from ezpool.report import write_report
from ezpool.report.__main__ import main
from ezpool.report._model import EXACT_RUNS, chart_data
from ezpool.timeline import Span, Timeline, WorkerInfo
from tests.browser import Browser, find_chromium

needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium on the PATH (apt-get install chromium; .ci/run does)"
)

#: Text that would run if the page put it in as markup.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def synthetic(runs: int, workers: int = 4, fail_every: int = 0, tasks: Any = None) -> Timeline:
    """A timeline of ``runs`` runs of 1 ms, dealt in turn to ``workers`` workers (each busy
    end to end after 0.1 s of start-up); every ``fail_every``-th run failed."""
    names = [f"PYRO:worker@127.0.0.1:{21000 + n}" for n in range(workers)]
    owners = array("l", (index % workers for index in range(runs)))
    starts = array("d", (0.1 + (index // workers) * 0.001 for index in range(runs)))
    ends = array("d", (start + 0.001 for start in starts))
    errors: dict[int, BaseException] = {}
    if fail_every:
        errors = {index: ValueError(f"bad {index}") for index in range(0, runs, fail_every)}
    return Timeline(
        mode="distributed", settings={"chunksize": "auto"}, started_at=time.time(),
        wall_time=(ends[-1] if runs else 0.1), workers={n: WorkerInfo(n, "127.0.0.1", 0) for n in names},
        tasks=tasks if tasks is not None else range(runs), attempts=array("l", [1]) * runs,
        owners=owners, starts=starts, ends=ends, errors=errors,
        spans=[Span("start-up", name, 0.0, 0.1, "connected") for name in names],
    )


def page_data(path: Path) -> dict[str, Any]:
    """The JSON the report embeds for its script."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert found, "the report embeds no data"
    return json.loads(found.group(1))


def artifact(tmp_path: Path, name: str) -> Path:
    """Where a screenshot is kept: ``$EZPOOL_ARTIFACTS`` if set, else the test's folder."""
    folder = Path(os.environ.get("EZPOOL_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def straggle_or_fail(n: int) -> int:
    """The real runs' task: task 5 is a straggler; tasks 4, 13, 22, ... raise; task 30 a KeyError."""
    time.sleep(1.0 if n == 5 else 0.02)
    if n % 9 == 4:
        raise ValueError(f"task {n} says {HOSTILE}")
    if n == 30:
        raise KeyError(n)
    return n * n


# -- the file ------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_the_report_is_one_file_that_asks_for_nothing_from_outside(tmp_path):
    path = tmp_path / "report.html"
    write_report(synthetic(100, fail_every=7), path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for outside in ("<link", " src=", "url(", "@import", "<iframe", "<object"):
        assert outside not in text, outside
    # the only address is the SVG namespace the script creates its elements in
    assert set(re.findall(r"https?://[^\s\"']+", text)) == {"http://www.w3.org/2000/svg"}
    for section in ("timeline", "throughput", "split", "failures", "slowest", "settings"):
        assert f'<section id="{section}">' in text
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.timeout(60)
def test_untrusted_text_is_escaped_in_the_tables_and_the_data(tmp_path):
    tasks = [f"{HOSTILE} {n}" for n in range(30)]
    timeline = synthetic(30, fail_every=3, tasks=tasks)
    timeline.errors[0] = RemoteError(HOSTILE, HOSTILE, f"Traceback (most recent call last):\n{HOSTILE}\n")
    path = tmp_path / "report.html"
    write_report(timeline, path)
    text = path.read_text(encoding="utf-8")
    assert text.count("<script") == 2  # the page's data and its script, nothing else
    assert "<img" not in text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    assert page_data(path)["runs"][1][4] == repr(tasks[1])  # the data keeps the text as it was


@pytest.mark.timeout(60)
def test_a_failure_shows_its_remote_traceback_grouped_by_its_own_type_name(tmp_path):
    timeline = synthetic(60)
    remote = "Traceback (most recent call last):\n  File \"/srv/job.py\", line 7, in step\nmymod.Boom: no\n"
    for index in range(0, 50, 2):  # 25 failures of a type this process does not know
        timeline.errors[index] = RemoteError("mymod.Boom", "no", remote)
    rebuilt = KeyError("k")
    rebuilt.__cause__ = RemoteTraceback("Traceback (most recent call last):\n  File \"/w.py\", line 3\n")
    timeline.errors[51] = rebuilt
    path = tmp_path / "report.html"
    write_report(timeline, path)
    text = path.read_text(encoding="utf-8")
    failures = text.split('<section id="failures">')[1].split("</section>")[0]
    assert failures.index("mymod.Boom") < failures.index("KeyError")  # the most common first
    assert ">25<" in failures and "and 5 more" in failures  # 20 tasks listed, the rest counted
    assert "File &quot;/srv/job.py&quot;, line 7, in step" in failures
    assert "File &quot;/w.py&quot;, line 3" in failures


@pytest.mark.timeout(60)
def test_a_small_run_draws_a_rectangle_per_run_with_its_task_attempt_and_error(tmp_path):
    timeline = synthetic(40, fail_every=10)
    data = chart_data(timeline)
    assert len(data["runs"]) == 40 and "bars" not in data
    row, start, end, attempt, task, error = data["runs"][10]
    assert (row, attempt, task, error) == (2, 1, "10", "ValueError: bad 10")
    assert end - start == pytest.approx(0.001)
    assert data["spans"][0][:4] == [0, 0, 0.0, 0.1]


@pytest.mark.timeout(120)
def test_many_runs_are_binned_and_every_task_and_failure_is_counted(tmp_path):
    runs = EXACT_RUNS * 3
    timeline = synthetic(runs, workers=6, fail_every=101)
    path = tmp_path / "report.html"
    write_report(timeline, path)
    data = page_data(path)
    assert "runs" not in data and data["bins"] >= 50
    ended = sum(sum(flat[3::4]) for flat in data["bars"])
    failed = sum(sum(flat[3::4]) for flat in data["fails"])
    assert (ended, failed) == (runs, len(timeline.errors))
    # each worker is busy end to end after its start-up: one merged rectangle a row, or nearly
    assert all(len(flat) <= 4 * 3 for flat in data["bars"])
    assert data["done"]["ok"][-1] == runs and data["done"]["failed"][-1] == len(timeline.errors)
    assert path.stat().st_size < 200_000


@pytest.mark.timeout(30)
def test_write_report_refuses_what_is_not_a_timeline(tmp_path):
    with pytest.raises(TypeError, match="Timeline, got dict"):
        write_report({}, tmp_path / "report.html")  # type: ignore[arg-type]


# -- the command line ----------------------------------------------------------------------------

def _cli(core_python: str, core_child_env: dict[str, str], *args: Any) -> subprocess.CompletedProcess:
    return subprocess.run([core_python, "-m", "ezpool.report", *map(str, args)], capture_output=True,
                          text=True, env=core_child_env, timeout=90)


@pytest.mark.timeout(120)
def test_the_command_line_reports_a_store_saying_the_layout_is_approximate(
    tmp_path, core_python, core_child_env
):
    store = tmp_path / "sweep.db"
    with Pool() as pool:
        results = pool.pmap(straggle_or_fail, range(20), ncpu=2, store=store)
    assert sorted(results.errors) == [4, 13]
    done = _cli(core_python, core_child_env, store, "-o", tmp_path / "store.html")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "store.html").read_text(encoding="utf-8")
    assert "approximate (from run times only)" in text
    data = page_data(tmp_path / "store.html")
    assert len(data["runs"]) == 20 and sum(1 for run in data["runs"] if run[5]) == 2
    assert sorted(run[4] for run in data["runs"]) == sorted(map(repr, range(20)))
    # laid end to end: on each worker, each run starts where the one before ended
    for row in range(len(data["workers"])):
        mine = [run for run in data["runs"] if run[0] == row]
        assert mine[0][1] == 0.0
        assert all(later[1] == pytest.approx(earlier[2]) for earlier, later in zip(mine, mine[1:]))


@pytest.mark.timeout(120)
def test_a_store_with_several_sweeps_needs_one_named(tmp_path, core_python, core_child_env):
    store = tmp_path / "two.db"
    with Pool() as pool:
        pool.smap(straggle_or_fail, [1, 2], store=store)
        pool.smap(straggle_or_fail, [3], store=store, store_key="v2")
    done = _cli(core_python, core_child_env, store, "-o", tmp_path / "r.html")
    assert done.returncode == 2 and not (tmp_path / "r.html").exists()
    assert str(store) in done.stderr and "--sweep" in done.stderr and len(done.stderr.splitlines()) == 1
    name = f"{straggle_or_fail.__module__}.straggle_or_fail[v2]"
    done = _cli(core_python, core_child_env, store, "--sweep", name, "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    assert len(page_data(tmp_path / "r.html")["runs"]) == 1


@pytest.mark.timeout(120)
def test_the_command_line_reports_a_trace(tmp_path, core_python, core_child_env):
    with Pool() as pool:
        results = pool.pmap(straggle_or_fail, range(12), ncpu=2)
    trace = tmp_path / "run.json"
    results.save_trace(trace)
    done = _cli(core_python, core_child_env, trace, "-o", tmp_path / "trace.html")
    assert done.returncode == 0, done.stderr
    data = page_data(tmp_path / "trace.html")
    assert sorted(run[4] for run in data["runs"]) == sorted(map(repr, range(12)))  # not quoted again
    assert {run[5] for run in data["runs"] if run[5]} == {f"ValueError: task 4 says {HOSTILE}"}
    assert len(data["workers"]) == len(results.timeline.workers)


@pytest.mark.timeout(60)
def test_bad_input_exits_2_with_one_line_naming_the_path(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "other.json"
    other.write_text('{"traceEvents": []}')
    sqlite = tmp_path / "plain.db"
    import sqlite3

    sqlite3.connect(sqlite).close()
    sqlite.write_bytes(b"SQLite format 3\x00" + bytes(100))
    for bad in (tmp_path / "missing.db", tmp_path, text, other, sqlite):
        assert main([str(bad), "-o", str(tmp_path / "out.html")]) == 2, bad
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and str(bad) in err and err.startswith("ezpool.report: error:")
    assert not (tmp_path / "out.html").exists()


# -- in a real browser ---------------------------------------------------------------------------

def _checked_in_chromium(path: Path, shot: Path) -> tuple[dict[str, Any], Browser]:
    """Open ``path`` in Chromium, return what its script drew, and keep a screenshot."""
    browser = Browser(width=1280)
    try:
        browser.open(path.as_uri())
        drawn = browser.evaluate("""(() => {
            const s = id => document.getElementById(id);
            const out = {};
            for (const id of ["timeline", "throughput", "split"]) {
                out[id] = {drawn: s(id).dataset.drawn || null, rects: Number(s(id).dataset.rects),
                           svg: s(id).querySelectorAll("svg rect").length};
            }
            out.rows = s("timeline").querySelectorAll("svg text.label").length;
            out.failures = [...s("failures").querySelectorAll("tbody tr")].map(r => r.cells[0].textContent);
            out.slowest = s("slowest").querySelectorAll("tbody tr").length;
            out.settings = s("settings").innerText;
            out.text = document.body.innerText;
            out.titles = [...document.querySelectorAll("svg rect.run title")].map(t => t.textContent);
            out.pwned = window.__pwned === undefined ? null : window.__pwned;
            return out;
        })()""")
        print(f"screenshot: {browser.screenshot(str(shot))}")
    except BaseException:
        browser.close()
        raise
    return drawn, browser


@needs_chromium
@pytest.mark.timeout(180)
def test_the_report_of_a_real_dmap_is_drawn_in_chromium_with_the_network_off(tmp_path, serve):
    uris = serve("", procs=4).uris
    with Pool() as pool:
        results = pool.dmap(straggle_or_fail, range(60), workers=uris, spawn=False)
    assert len(results.errors) == 8  # tasks 4, 13, ..., 58 and 30
    path = tmp_path / "report.html"
    results.save_report(path)
    drawn, browser = _checked_in_chromium(path, artifact(tmp_path, "report-dmap.png"))
    with browser:
        assert browser.exceptions == [] and browser.console == [], (browser.exceptions, browser.console)
        assert browser.requests == [path.as_uri()] and browser.failed == []  # nothing else was asked for
    runs = len(results.timeline)
    assert drawn["timeline"]["drawn"] == "yes" and drawn["timeline"]["rects"] >= runs
    assert drawn["timeline"]["svg"] >= runs + 4  # the runs, the spans and each worker's row
    assert drawn["rows"] == 4
    assert drawn["throughput"]["drawn"] == "yes"
    assert drawn["split"]["drawn"] == "yes" and drawn["split"]["rects"] >= 4  # working, at least
    assert drawn["failures"] == ["ValueError", "KeyError"] and drawn["slowest"] == 20
    assert "distributed" in drawn["settings"] and platform.python_version() in drawn["settings"]
    slowest = max(results.timeline.runs(), key=lambda run: run.end - run.start)
    assert slowest.task == 5 and slowest.end - slowest.start >= 1.0  # the straggler
    assert sum("failed: ValueError" in title for title in drawn["titles"]) >= 7
    assert any(title.startswith("task 5\nattempt 1\n1.0") for title in drawn["titles"])
    # the hostile text is shown as text, and never ran
    assert drawn["pwned"] is None and HOSTILE in drawn["text"]


@needs_chromium
@pytest.mark.timeout(180)
def test_a_binned_report_is_drawn_in_chromium_with_few_rectangles(tmp_path):
    timeline = synthetic(200_000, workers=8, fail_every=997)
    path = tmp_path / "big.html"
    write_report(timeline, path)
    drawn, browser = _checked_in_chromium(path, artifact(tmp_path, "report-binned.png"))
    with browser:
        assert browser.exceptions == [] and browser.console == [], (browser.exceptions, browser.console)
    assert drawn["timeline"]["drawn"] == "yes" and 8 <= drawn["timeline"]["rects"] < 2_000
    assert drawn["split"]["drawn"] == "yes" and drawn["rows"] == 8
    assert drawn["failures"] == ["ValueError"]


@needs_chromium
@pytest.mark.timeout(120)
def test_a_script_error_in_the_page_would_be_seen(tmp_path):
    """The browser checks above can fail: a page whose script throws is caught."""
    path = tmp_path / "report.html"
    write_report(synthetic(10), path)
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text(encoding="utf-8").replace('getElementById("report-data")',
                                                               'getElementById("no-such-data")'))
    drawn, browser = _checked_in_chromium(broken, tmp_path / "broken.png")
    with browser:
        assert len(browser.exceptions) == 1 and "TypeError" in browser.exceptions[0]
    assert drawn["timeline"]["drawn"] is None


def test_chromium_is_found_only_on_the_path(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert find_chromium() is None


@pytest.mark.timeout(30)
def test_results_not_made_by_a_call_still_have_a_report(tmp_path):
    from ezpool import Results

    Results().save_report(tmp_path / "empty.html")
    text = (tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "No task ran." in text and "No task failed." in text
    assert page_data(tmp_path / "empty.html")["runs"] == []
