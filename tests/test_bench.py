"""A bounded smoke run of the benchmark suite, so that it cannot silently rot.

It checks that the suite runs and reports, never how fast anything is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_bench(
    *args: str, cwd: Path, timeout: float = 100.0, module: str = "bench"
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        # Whatever happened, nothing the suite started outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.timeout(110)
def test_quick_run_writes_results_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run_bench("--quick", "--only", "tiny", "--only", "startup", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    machine = payload["machine"]
    for key in ("date", "cpu", "cores", "python", "packages", "ezpool"):
        assert machine[key], key
    assert payload["settings"]["quick"] is True
    assert payload["settings"]["repeats"] >= 3
    cold = {f"startup_{method}" for method in ("fork", "spawn", "forkserver")}
    assert set(payload["comparisons"]) == {"tiny", "loop", "startup", *cold}

    for name, record in payload["comparisons"].items():
        for contender, entry in record["contenders"].items():
            assert entry["status"] in ("ok", "skipped"), (name, contender, entry)
            for point in entry["sizes"].values():
                if point["status"] == "ok":
                    assert len(point["samples"]) == payload["settings"]["repeats"]
                    assert point["median"] > 0

    ratios = {
        (r["ezpool"], r["peer"], r["size"]): r["ratio"] for r in payload["comparisons"]["tiny"]["ratios"]
    }
    # The standard library's pool is always there, so this ratio always exists.
    for size in payload["comparisons"]["tiny"]["sizes"]:
        ratio = ratios[("pmap", "multiprocessing.Pool.map", size)]
        assert math.isfinite(ratio) and ratio > 0
    assert payload["comparisons"]["loop"]["ratios"][0]["peer"] == "dict comprehension"

    # Cold start in a fresh interpreter, per start method, against multiprocessing.Pool.
    for name in cold:
        for entry in payload["comparisons"][name]["ratios"]:
            assert (entry["ezpool"], entry["peer"]) == ("pmap", "multiprocessing.Pool")
            assert math.isfinite(entry["ratio"]) and entry["ratio"] > 0
    assert payload["comparisons"]["startup_fork"]["ratios"], "fork is always there on Linux"

    dmap = payload["comparisons"]["startup"]["contenders"]["dmap auto-spawned worker"]
    if dmap["status"] == "skipped":
        assert "distributed mode not available" in dmap["reason"]
    assert "pmap" in done.stdout and "ratio EzPool / peer" in done.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in done.stdout
    else:
        assert (out / "results.png").stat().st_size > 0


@pytest.mark.timeout(110)
def test_the_big_data_workloads_report_mb_per_s_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("--quick", "--repeats", "1", "--only", "results", "--only", "arguments", "--out", str(out))
    done = _run_bench(*args, cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    comparisons = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]
    assert set(comparisons) == {"results_1mb", "arguments_5mb"}
    for record in comparisons.values():
        assert record["contenders"]["pmap"]["status"] == "ok"
        ratios = {(r["ezpool"], r["peer"]): r["ratio"] for r in record["ratios"]}
        assert math.isfinite(ratios[("pmap", "multiprocessing.Pool.map")])
        assert math.isfinite(ratios[("pmap", "ProcessPoolExecutor.map")])
        speeds = record["derived"]["mb_per_s"]
        assert set(speeds) == {n for n, e in record["contenders"].items() if e["status"] == "ok"}
        assert all(v > 0 for points in speeds.values() for v in points.values())
    assert "mb_per_s" in done.stdout


def test_unknown_workload_is_refused_by_name(tmp_path: Path) -> None:
    done = _run_bench("--only", "nonesuch", "--out", str(tmp_path), cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert "nonesuch" in done.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.timeout(100)
def test_the_imap_workload_times_imap_and_idle_retries_against_map(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run_bench("--quick", "--repeats", "1", "--only", "imap", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    comparisons = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]
    assert set(comparisons) == {"imap", "imap-distributed", "retries-idle"}
    expected = {
        "imap": {("imap", "map"), ("imap, ordered", "map")},
        "imap-distributed": {("imap", "map"), ("imap, ordered", "map")},
        "retries-idle": {("pmap, retries idle", "pmap"), ("dmap, retries idle", "dmap")},
    }
    for name, record in comparisons.items():
        assert {entry["status"] for entry in record["contenders"].values()} == {"ok"}, (name, record)
        ratios = {(r["ezpool"], r["peer"], r["size"]): r["ratio"] for r in record["ratios"]}
        assert {(ours, peer) for ours, peer, _ in ratios} == expected[name]
        assert {size for _, _, size in ratios} == set(record["sizes"])
        assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios.values()), ratios
    assert "imap, ordered / map" in done.stdout


@pytest.mark.timeout(100)
def test_joblib_bench_times_the_ezpool_backend_against_loky(tmp_path: Path) -> None:
    pytest.importorskip("joblib")
    out = tmp_path / "joblib.json"
    done = _run_bench(
        "--size", "2000", "--repeats", "1", "--json", str(out), cwd=tmp_path, module="bench.joblib_bench"
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    record = json.loads(out.read_text(encoding="utf-8"))["joblib"]
    assert {entry["status"] for entry in record["contenders"].values()} == {"ok"}
    ratios = {(r["ezpool"], r["peer"]): r["ratio"] for r in record["ratios"]}
    assert set(ratios) == {("ezpool, pool kept", "loky"), ("ezpool, pool per call", "loky")}
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios.values())
    assert "ezpool, pool kept / loky" in done.stdout


@pytest.mark.timeout(70)
def test_the_stragglers_bench_runs_and_writes_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "stragglers.json"
    args = ("--quick", "--tasks", "8", "--seconds", "0.02", "--slowdowns", "5", "--out", str(out))
    done = _run_bench(*args, cwd=tmp_path, timeout=60, module="bench.stragglers")
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert {row["contender"] for row in rows} == {"dmap", "backup=False", "backup=False, chunksize=1"}
    for row in rows:
        assert row["slowdown"] == 5 and len(row["samples"]) == 1
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert math.isfinite(row["ratio_to_measured"]) and row["ratio_to_measured"] > 0


@pytest.mark.timeout(100)
def test_the_captured_workload_reports_ratios_and_peak_memory(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    out = tmp_path / "out"
    done = _run_bench("--quick", "--repeats", "1", "--only", "captured", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]["captured"]
    peer = "multiprocessing.Pool, fork global"
    assert record["contenders"]["pmap"]["status"] == "ok" and record["contenders"][peer]["status"] == "ok"
    ratios = {(r["ezpool"], r["peer"]): r["ratio"] for r in record["ratios"]}
    for name in ("pmap", "pmap, context"):
        assert math.isfinite(ratios[(name, peer)]) and ratios[(name, peer)] > 0
    peaks = record["params"]["workers_peak_rss_mib"]
    assert peaks["pmap"] > record["params"]["megabytes"] / 2  # each worker holds the data once
    assert "workers_peak_rss_mib" in done.stdout
    comparisons = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]
    held = comparisons["captured bytes"]
    assert {entry["status"] for entry in held["contenders"].values()} == {"ok"}
    assert math.isfinite({(r["ezpool"], r["peer"]): r["ratio"] for r in held["ratios"]}[("pmap", peer)])
    assert held["params"]["workers_peak_rss_mib"]["pmap"] > held["params"]["megabytes"] / 2
    served = comparisons["captured dmap"]
    assert {entry["status"] for entry in served["contenders"].values()} == {"ok"}
    assert [math.isfinite(r["ratio"]) for r in served["ratios"]] == [True]


@pytest.mark.timeout(100)
def test_the_store_workload_times_new_and_full_stores_against_map_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the workload makes its store files
    done = _run_bench("--quick", "--repeats", "1", "--only", "store", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]["store"]
    assert {entry["status"] for entry in record["contenders"].values()} == {"ok"}
    ratios = {(r["ezpool"], r["peer"], r["size"]): r["ratio"] for r in record["ratios"]}
    assert set(ratios) == {(store, "map", size) for store in ("map, new store", "map, full store")
                           for size in record["sizes"]}
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios.values())
    assert set(record["params"]["store_bytes"]) == {str(size) for size in record["sizes"]}
    assert "map, full store / map" in done.stdout
    assert list(scratch.iterdir()) == []  # every store file is removed


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_memory_workload_measures_each_callers_peak_in_a_fresh_process() -> None:
    from bench.harness import Settings, measure
    from bench.report import table
    from bench.scale import memory

    settings = Settings(quick=True, repeats=1, budget=120)
    [comparison] = memory(settings, sizes=[3000])
    record = measure(comparison, settings)
    entries = record["contenders"]
    assert set(entries) == {"pmap", "dmap", "plain dict of the results", "multiprocessing.Pool.map"}
    for name, entry in entries.items():
        if name == "dmap" and entry["status"] == "skipped":
            assert "distributed mode not available" in entry["reason"]
            continue
        assert entry["status"] == "ok", (name, entry)
        peak = entry["sizes"][3000]["median"]
        assert 1 < peak < 10_000  # MiB of a whole interpreter, not seconds
    ratios = {(r["ezpool"], r["peer"]): r["ratio"] for r in record["ratios"]}
    assert math.isfinite(ratios[("pmap", "plain dict of the results")])
    assert "MiB" in table("memory", record)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_the_ray_workload_times_dmap_against_ray() -> None:
    """In a process of its own: Ray changes how this process unpickles exceptions (an
    exception whose ``__init__`` wants more arguments than it keeps comes back whole),
    which later tests of EzPool's own rebuilding would see."""
    pytest.importorskip("ray")
    import json
    import subprocess
    import sys

    script = (
        "import json\n"
        "from bench.harness import Settings, measure\n"
        "from bench.scale import ray\n"
        "settings = Settings(quick=True, repeats=1, budget=120)\n"
        "[comparison] = ray(settings, sizes=[2000])\n"
        "print(json.dumps(measure(comparison, settings)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=190,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = {name: entry["status"] for name, entry in record["contenders"].items()}
    assert statuses["Ray, tasks batched by hand"] == "ok", record["contenders"]
    assert statuses["ray.util.multiprocessing.Pool.map"] == "ok", record["contenders"]
    if statuses["dmap"] == "ok":
        pairs = {(r["ezpool"], r["peer"]) for r in record["ratios"]}
        assert ("dmap", "Ray, tasks batched by hand") in pairs


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_dialin_workload_times_dial_in_against_pyro_workers_with_client_figures() -> None:
    from bench.dialin import dialin_comparison
    from bench.harness import Settings, measure
    from bench.report import derived

    settings = Settings(quick=True, repeats=1, budget=120)
    comparison = dialin_comparison(2)
    record = measure(comparison, settings)
    statuses = {name: entry["status"] for name, entry in record["contenders"].items()}
    assert statuses == dict.fromkeys(["dial-in warm", "PYRO: warm", "dial-in cold", "PYRO: cold"], "ok")
    ratios = {(r["ezpool"], r["peer"]): r["ratio"] for r in record["ratios"]}
    assert set(ratios) == {("dial-in warm", "PYRO: warm"), ("dial-in cold", "PYRO: cold")}
    assert all(0.2 < ratio < 5 for ratio in ratios.values()), ratios
    figures = derived(comparison.name, record)
    for name, points in figures["efficiency"].items():
        assert 0.1 < points[40] <= 1.05, (name, points)  # 40 naps of 50 ms over 2 workers: 1 s ideal
    for name in ("dial-in warm", "PYRO: warm"):
        client = figures["client"][name]
        assert client["client_rss_mib"] > 1 and client["client_threads_per_worker"] > 0, client
    assert 0 < figures["dial-in joined (s, median)"] < 60


@pytest.mark.timeout(120)
def test_the_joining_workload_reports_the_share_the_latecomer_ran() -> None:
    from bench.dialin import joining
    from bench.harness import Settings, measure
    from bench.report import derived

    settings = Settings(quick=True, repeats=1, budget=120)
    [comparison] = joining(settings, cases=[(1, 1)])
    record = measure(comparison, settings)
    assert record["contenders"]["1 there + 1 joining"]["status"] == "ok", record["contenders"]
    figures = derived(comparison.name, record)
    assert figures["fair share"] == 0.5
    assert len(figures["shares"]) == 2  # the warm-up and the timed run
    # The worker that joined halfway ran some of what was left, and never more than all of it.
    assert 0 < figures["joiners' share of the rest (median)"] <= 1, figures


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_clusters_workload_times_the_first_result_or_says_why_not() -> None:
    from bench.clusters import clusters
    from bench.harness import Settings, measure
    from tests import hosts, slurm, sshd

    settings = Settings(quick=True, repeats=1, budget=300)
    # Where the machine can run a service, EzPool's contenders on it must run (the peers may
    # be missing: they are skipped, saying so).
    can_run = {"clusters-slurm": slurm.unavailable() is None,
               "clusters-ssh": hosts.unavailable() is None and sshd.unavailable() is None}
    for comparison in clusters(settings):
        record = measure(comparison, settings)
        for name, entry in record["contenders"].items():
            assert entry["status"] in ("ok", "skipped"), (comparison.name, name, entry)
            if entry["status"] == "skipped":
                assert entry["reason"], name
                assert not (entry["ezpool"] and can_run[comparison.name]), (name, entry)
            else:
                assert 0 < entry["sizes"][1]["median"] < 120, (name, entry)
        for ratio in record["ratios"]:
            assert math.isfinite(ratio["ratio"]) and ratio["ratio"] > 0, ratio


def test_the_512_workers_workloads_run_only_in_a_full_run() -> None:
    from bench.dialin import dialin_512
    from bench.harness import Settings
    from bench.suites import WORKLOADS, many_512

    quick = Settings(quick=True, repeats=1, budget=120)
    assert many_512(quick) == [] and dialin_512(quick) == []
    assert WORKLOADS["many-512"] is many_512 and WORKLOADS["dialin-512"] is dialin_512
    full = Settings(quick=False, repeats=1, budget=120)
    assert [c.name for c in many_512(full)] == ["many-512"]
    assert [c.name for c in dialin_512(full)] == ["dialin-512", "dialin-512-cold"]
    assert [c.sizes for c in many_512(full)] == [[5120]]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_512_workers_workloads_report_efficiency_and_the_clients_memory_and_threads() -> None:
    """Reduced to 3 workers: the same comparisons, warm and cold, PYRO: and dial-in."""
    from bench.dialin import dialin_512
    from bench.harness import Settings, measure
    from bench.report import derived
    from bench.suites import many_512

    full = Settings(quick=False, repeats=1, budget=120)
    for comparison in [*many_512(full, workers=3), *dialin_512(full, workers=3)]:
        record = measure(comparison, full)
        assert {entry["status"] for entry in record["contenders"].values()} == {"ok"}, record
        figures = derived(comparison.name, record)
        for name, points in figures["efficiency"].items():
            assert 0.1 < points[30] <= 1.05, (name, points)  # 30 naps of 0.5 s over 3 workers: 5 s
        assert set(figures["client"]) == set(record["contenders"])
        for client in figures["client"].values():
            assert client["client_rss_mib"] > 1 and client["client_threads_per_worker"] > 0, client


@pytest.mark.timeout(60)
def test_the_readme_and_docs_tables_are_those_of_the_committed_full_run(tmp_path: Path) -> None:
    done = _run_bench("--check", cwd=tmp_path, timeout=50, module="bench.tables")
    assert done.returncode == 0, done.stderr
    run = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    assert run["settings"]["quick"] is False
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert run["machine"]["ezpool"]["revision"] in readme  # the run it names is the run it shows


@pytest.mark.timeout(60)
def test_tables_refuse_a_quick_run_and_show_a_changed_figure_as_stale(tmp_path: Path) -> None:
    run = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.rst").write_text((ROOT / "README.rst").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "docs" / "bench_tables.txt").write_text(
        (ROOT / "docs" / "bench_tables.txt").read_text(encoding="utf-8"), encoding="utf-8")
    quick = dict(run, settings=dict(run["settings"], quick=True))
    (tmp_path / "quick.json").write_text(json.dumps(quick), encoding="utf-8")
    done = _run_bench(str(tmp_path / "quick.json"), "--root", str(tmp_path), cwd=tmp_path, timeout=50,
                      module="bench.tables")
    assert done.returncode != 0 and "not one full run (--quick)" in done.stderr
    changed = json.loads(json.dumps(run))
    for ratio in changed["comparisons"]["tiny"]["ratios"]:
        ratio["ratio"] += 1.0
    (tmp_path / "changed.json").write_text(json.dumps(changed), encoding="utf-8")
    args = (str(tmp_path / "changed.json"), "--root", str(tmp_path))
    stale = _run_bench(*args, "--check", cwd=tmp_path, timeout=50, module="bench.tables")
    assert stale.returncode == 1 and "README.rst" in stale.stderr and "bench_tables.txt" in stale.stderr
    assert _run_bench(*args, cwd=tmp_path, timeout=50, module="bench.tables").returncode == 0
    assert _run_bench(*args, "--check", cwd=tmp_path, timeout=50, module="bench.tables").returncode == 0
