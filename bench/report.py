"""What a run leaves behind: the machine it ran on, a table, results.json and a plot."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

__all__ = ["machine", "table", "derived", "write_json", "plot", "figure_path", "main"]

_PACKAGES = (
    "Pyro4",
    "cloudpickle",
    "tqdm",
    "loky",
    "joblib",
    "mpire",
    "dask",
    "distributed",
    "matplotlib",
    "numpy",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ezpool_revision(root: Path) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    """Where and when this ran: CPU, cores, load, Python and package versions."""
    import ezpool

    versions: dict[str, Optional[str]] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    root = Path(ezpool.__file__).resolve().parent.parent
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "ezpool": {"version": ezpool.__version__, "path": str(root), "revision": _ezpool_revision(root)},
        "packages": versions,
    }


def derived(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """The figures a workload is judged by, beyond medians and ratios."""
    medians = {
        contender: {
            int(size): point["median"]
            for size, point in entry["sizes"].items()
            if point.get("status") == "ok"
        }
        for contender, entry in record["contenders"].items()
    }
    out: dict[str, Any] = {}
    if name in ("tiny", "distributed", "ray"):
        out["us_per_task"] = {
            contender: {size: 1e6 * t / size for size, t in points.items()}
            for contender, points in medians.items()
        }
    elif name in ("captured", "captured bytes"):
        out["workers_peak_rss_mib"] = dict(record["params"].get("workers_peak_rss_mib", {}))
    elif name == "cpu":
        # Medians, and best runs: when other work takes a core for a while, it slows
        # a parallel run far more than the serial one, so the best run is also shown.
        best = {
            contender: {
                int(size): point["best"]
                for size, point in entry["sizes"].items()
                if point.get("status") == "ok"
            }
            for contender, entry in record["contenders"].items()
        }
        for key, times in (("speedup_over_smap", medians), ("speedup_over_smap_best_runs", best)):
            serial = times.get("smap", {})
            out[key] = {
                contender: {size: serial[size] / t for size, t in points.items() if size in serial}
                for contender, points in times.items()
                if contender != "smap"
            }
    elif name == "skewed":
        pmap, longest, serial = (medians.get(k, {}) for k in ("pmap", "longest task alone", "smap"))
        for size, t in pmap.items():
            if size in longest and size in serial:
                bound = max(longest[size], serial[size] / 2)
                out[str(size)] = {"lower_bound": bound, "pmap_over_lower_bound": t / bound}
    elif "megabytes_per_task" in record["params"]:
        megabytes = record["params"]["megabytes_per_task"]
        out["mb_per_s"] = {
            contender: {size: size * megabytes / t for size, t in points.items()}
            for contender, points in medians.items()
            if points  # a contender skipped (not installed, too slow) has no speed
        }
    elif name == "stragglers":
        params = record["params"]
        slowdown, seconds = params["slowdown"], params["task_seconds"]
        equal = medians.get(params["equal"], {})
        for contender, points in medians.items():
            if contender == params["equal"]:
                continue
            for size, t in points.items():
                ideal = size * seconds * slowdown / (slowdown + 1)
                out.setdefault("over_ideal", {}).setdefault(contender, {})[size] = t / ideal
                if size in equal:  # the pool's own cost per task charged to the ideal
                    measured = equal[size] * 2 * slowdown / (slowdown + 1)
                    out.setdefault("over_measured_ideal", {}).setdefault(contender, {})[size] = t / measured
    elif name.startswith(("many", "dialin")):
        workers, seconds = record["params"]["workers"], record["params"]["task_seconds"]
        out["efficiency"] = {
            contender: {size: (size * seconds / workers) / t for size, t in points.items()}
            for contender, points in medians.items()
        }
    out.update(record["params"].get("figures") or {})  # what a workload measured besides time
    return out


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _mib(value: float) -> str:
    return f"{value:.0f} MiB"


def table(name: str, record: dict[str, Any]) -> str:
    """A plain-text table of one comparison: medians, then ratios, then derived figures."""
    sizes = record["sizes"]
    labels = [*record["contenders"], *(f"{r['ezpool']} / {r['peer']}" for r in record["ratios"])]
    width = min(60, max(len(label) for label in [*labels, "ratio EzPool / peer"]) + 2)
    # A comparison of something else than time says so in its params (see bench.scale).
    in_mib = record.get("params", {}).get("measures") == "peak_mib"
    show = _mib if in_mib else _seconds
    lines = [
        f"== {name}: {record['title']}",
        f"{'median peak' if in_mib else 'median time':<{width}}" + "".join(f"{s:>12,}" for s in sizes),
    ]
    for contender, entry in record["contenders"].items():
        if entry["status"] != "ok" and not entry["sizes"]:
            lines.append(f"{contender:<{width}}  {entry['status']} ({entry['reason']})")
            continue
        cells = []
        for size in sizes:
            point = entry["sizes"].get(size) or entry["sizes"].get(str(size)) or {}
            status = point.get("status")
            cells.append(show(point["median"]) if status == "ok" else (status or "-"))
        lines.append(f"{contender:<{width}}" + "".join(f"{c:>12}" for c in cells))
    if record["ratios"]:
        lines.append(f"{'ratio EzPool / peer':<{width}}" + "".join(f"{s:>12,}" for s in sizes))
        pairs = dict.fromkeys((r["ezpool"], r["peer"]) for r in record["ratios"])
        for ours, theirs in pairs:
            found = {
                r["size"]: r["ratio"] for r in record["ratios"] if (r["ezpool"], r["peer"]) == (ours, theirs)
            }
            label = f"{ours} / {theirs}"
            if len(label) > width:
                label = label[: width - 1] + "…"
            lines.append(
                f"{label:<{width}}"
                + "".join(f"{found[s]:>12.2f}" if s in found else f"{'-':>12}" for s in sizes)
            )
    notes = [
        f"  {contender} at {size}: {point['status']} ({point['reason']})"
        for contender, entry in record["contenders"].items()
        for size, point in entry["sizes"].items()
        if point.get("status") in ("skipped", "error")
    ]
    if notes:
        lines.append("notes:")
        lines.extend(dict.fromkeys(notes))
    extra = dict(record.get("derived") or {})
    per_task = extra.pop("us_per_task", None)
    if per_task:
        lines.append(f"{'µs per task':<{width}}" + "".join(f"{s:>12,}" for s in sizes))
        for contender, points in per_task.items():
            lines.append(
                f"{contender:<{width}}"
                + "".join(f"{points[s]:>12.2f}" if s in points else f"{'-':>12}" for s in sizes)
            )
    for path, value in _flatten(extra):
        lines.append(
            f"  {' / '.join(path)}: {value:.3g}"
            if isinstance(value, float)
            else f"  {' / '.join(path)}: {value}"
        )
    return "\n".join(lines)


def _flatten(tree: dict[Any, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, (*path, str(key))))
        else:
            out.append(((*path, str(key)), value))
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _curves(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The comparisons drawn: those timed at more than one size."""
    return {
        name: r
        for name, r in records.items()
        if len(r.get("sizes", ())) > 1 and not r.get("params", {}).get("measures")  # times only
    }


def figure_path(path: Path, name: str) -> Path:
    """Where ``plot`` draws comparison ``name`` alone, next to ``path`` (``results-tiny.png``)."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return path.with_name(f"{path.stem}-{safe}{path.suffix}")


def _panel(axis: Any, record: dict[str, Any]) -> None:
    """Draw one comparison's curves: median time per task against the number of tasks."""
    for contender, entry in record["contenders"].items():
        points = sorted(
            (int(size), point["median"])
            for size, point in entry["sizes"].items()
            if point.get("status") == "ok"
        )
        if points:
            xs = [size for size, _ in points]
            ys = [1e6 * t / size for size, t in points]
            axis.plot(xs, ys, marker="o", linewidth=2.5 if entry["ezpool"] else 1.2, label=contender)
    from matplotlib import ticker

    axis.set_xscale("log")
    axis.set_yscale("log")
    # Plain numbers (0.1, 0.113) rather than powers of ten; the minor ticks are labelled
    # only where the axis spans less than two decades (too few major ticks to read it).
    plain = ticker.FuncFormatter(lambda value, _: f"{value:.3g}")
    low, high = axis.get_ylim()
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain if high < 100 * low else ticker.NullFormatter())
    axis.set_xlabel(f"number of {record['unit']}")
    axis.set_ylabel("median wall time per task (µs)")
    axis.set_title(textwrap.fill(record["title"], 60), fontsize="medium")
    axis.grid(True, which="both", alpha=0.3)
    # Below the axes, where it hides no curve.
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def plot(path: Path, records: dict[str, dict[str, Any]], info: dict[str, Any]) -> Optional[str]:
    """Draw the scaling curves (time per task vs. tasks): every comparison side by side at
    ``path``, and each alone at ``figure_path(path, name)``, readable at a page's width.
    Return a note if none was drawn."""
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e .[bench])"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(records)
    if not curves:
        return "plot skipped: no workload with more than one size was run"
    machine_line = (
        f"EzPool benchmarks, {info['date']}, {info['cpu']} ({info['usable_cores']} cores), "
        f"Python {info['python']}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(curves), figsize=(7 * len(curves), 6.5), squeeze=False)
    for axis, record in zip(axes[0], curves.values()):
        _panel(axis, record)
    figure.suptitle(machine_line, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    for name, record in curves.items():
        figure, axis = plt.subplots(figsize=(7, 6.5))
        _panel(axis, record)
        figure.text(0.01, 0.01, machine_line, fontsize="x-small", color="0.4")
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        figure.savefig(figure_path(path, name), dpi=110)
        plt.close(figure)
    return None


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m bench.report [RESULTS_JSON]``: draw the figures again from a run's
    ``results.json`` (default: ``bench/results.json``), next to it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    run = json.loads(args.results.read_text(encoding="utf-8"))
    out = args.results.with_name("results.png")
    note = plot(out, run["comparisons"], run["machine"])
    if note:
        print(note, file=sys.stderr)
        return 1
    drawn = [out, *(figure_path(out, name) for name in _curves(run["comparisons"]))]
    print("drew " + ", ".join(str(p) for p in drawn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
