"""Run EzPool's benchmark suite: ``python -m bench`` or ``python bench/run.py``.

Every workload is run in this one process, contenders alternated and repeated;
a table is printed and ``results.json`` and ``results.png`` are written (to the
``bench/`` directory unless ``--out`` says otherwise). See ``bench/README.rst``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

if not __package__:  # run as a script: make ``bench`` (and this checkout's ezpool) importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Settings, measure
from bench.report import derived, machine, plot, table, write_json
from bench.suites import WORKLOADS

logger = logging.getLogger(__name__)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="EzPool against its peers, in one run."
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run, under a minute")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted(WORKLOADS),
        help=f"run only this workload (may be repeated): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per contender (default 5, quick 3)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds a contender may spend at one size before it is skipped at larger ones "
        "(default 20, quick 4)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where results.json and results.png go",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected workloads; 0 unless a contender failed (skips are not failures)."""
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        _parser().error(f"--repeats must be at least 1, got {args.repeats}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    settings = Settings(
        quick=args.quick,
        repeats=args.repeats or (3 if args.quick else 5),
        budget=args.budget if args.budget is not None else (4.0 if args.quick else 20.0),
    )
    names = list(dict.fromkeys(args.only or WORKLOADS))
    info = machine()
    revision = info["ezpool"]["revision"] or info["ezpool"]["version"]
    print(
        f"EzPool benchmarks {info['date']} on {info['cpu']}, {info['usable_cores']} usable cores, "
        f"load {_load(info['load_average'])}, Python {info['python']}, ezpool {revision}"
        f" ({info['ezpool']['path']}); {settings.repeats} repeats{', quick' if settings.quick else ''}",
        flush=True,
    )
    began = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    failed = False
    for name in names:
        for comparison in WORKLOADS[name](settings):
            print(f"\n... {comparison.name}: {comparison.title}", file=sys.stderr, flush=True)
            try:
                record = measure(comparison, settings)
            except Exception as exc:  # e.g. a pool that fails to shut down: report it, go on
                logger.exception("%s failed", comparison.name)
                records[comparison.name] = {"workload": name, "title": comparison.title, "error": repr(exc)}
                failed = True
                print(f"\n== {comparison.name}: failed: {exc!r}", flush=True)
                continue
            record["workload"] = name
            record["derived"] = derived(comparison.name, record)
            records[comparison.name] = record
            failed = failed or any(entry["status"] == "error" for entry in record["contenders"].values())
            print("\n" + table(comparison.name, record), flush=True)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload = {
        "machine": info,
        "settings": {
            "quick": settings.quick,
            "repeats": settings.repeats,
            "budget": settings.budget,
            "only": names,
        },
        "seconds": time.perf_counter() - began,
        "comparisons": records,
    }
    out: Path = args.out
    write_json(out / "results.json", payload)
    note = plot(out / "results.png", records, info)
    print(f"\nwrote {out / 'results.json'}" + (f"; {note}" if note else f" and {out / 'results.png'}"))
    print(f"took {payload['seconds']:.0f} s; load average at the end {_load(info['load_average_end'])}")
    return 1 if failed else 0


def _load(load: Optional[Sequence[float]]) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "unknown"


if __name__ == "__main__":
    sys.exit(main())
