"""The README's and the docs' benchmark tables, made from one full run's ``results.json``.

``python -m bench.tables`` checks that ``bench/results.json`` is a full run (not
``--quick``, every default workload), then rewrites the table between the
``.. bench-tables`` markers of ``README.rst`` and the file ``docs/bench_tables.txt``
(which ``docs/benchmarks.rst`` includes). ``--check`` only says whether both are
what the run gives (the test suite runs it), so no figure in them can drift from
the run it claims to come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

if not __package__:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import table

__all__ = ["main", "readme_table", "docs_tables", "HEADLINE"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = ".. bench-tables: begin (made by python -m bench.tables from bench/results.json; do not edit)"
END = ".. bench-tables: end"

#: The workloads a run must have measured for its tables to be published.
REQUIRED = ("tiny", "cpu", "skewed", "distributed", "many", "many-512", "startup", "captured", "results",
            "arguments", "scale", "stragglers", "dialin", "dialin-512", "imap", "store", "lean")


class Row(NamedTuple):
    """One headline figure: ``label``, and how it is read from the run."""

    label: str
    cell: Callable[[dict[str, Any]], Optional[str]]


Cell = Callable[[dict[str, Any]], Optional[str]]


def _ratio(comparison: str, ours: str, peer: str, size: Optional[int] = None) -> Cell:
    def cell(run: dict[str, Any]) -> Optional[str]:
        record = run["comparisons"].get(comparison)
        if not record:
            return None
        found = [r for r in record.get("ratios", ()) if (r["ezpool"], r["peer"]) == (ours, peer)
                 and (size is None or int(r["size"]) == size)]
        return f"{found[-1]['ratio']:.2f}" if found else None

    return cell


def _derived(comparison: str, *path: str, digits: int = 2, unit: str = "") -> Cell:
    def cell(run: dict[str, Any]) -> Optional[str]:
        value: Any = (run["comparisons"].get(comparison) or {}).get("derived") or {}
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return f"{value:,.{digits}f}{unit}" if isinstance(value, (int, float)) else None

    return cell


#: The README's table: one line per claim, each read from the run.
_MP, _TINY, _FORK = "``multiprocessing.Pool.map``", "tiny tasks", "multiprocessing.Pool, fork global"
_EFFICIENCY = "efficiency (1.0 is ideal)"
HEADLINE: tuple[Row, ...] = (
    Row(f"``pmap`` / {_MP}, 10^5 {_TINY}", _ratio("tiny", "pmap", "multiprocessing.Pool.map", 10**5)),
    Row(f"``pmap`` / {_MP}, 10^6 {_TINY}", _ratio("tiny", "pmap", "multiprocessing.Pool.map", 10**6)),
    Row(f"``pmap`` / loky (tuned), 10^6 {_TINY}", _ratio("tiny", "pmap", "loky tuned", 10**6)),
    Row(f"``pmap`` / joblib, 10^6 {_TINY}", _ratio("tiny", "pmap", "joblib", 10**6)),
    Row(f"``dmap`` / Ray (batched by hand), 10^6 {_TINY}",
        _ratio("ray", "dmap", "Ray, tasks batched by hand", 10**6)),
    Row("``dmap`` on 2 local workers, µs per tiny task",
        _derived("distributed", "us_per_task", "dmap", "20000")),
    Row(f"``imap`` consumed whole / ``map``, 10^5 {_TINY}", _ratio("imap", "imap", "map", 10**5)),
    Row(f"``imap`` consumed whole / ``map``, 10^6 {_TINY}", _ratio("imap", "imap", "map", 10**6)),
    Row(f"``map(store=new file)`` / ``map``, 10^5 {_TINY}", _ratio("store", "map, new store", "map", 10**5)),
    Row(f"``map(store=new file)`` / ``map``, 10^6 {_TINY}", _ratio("store", "map, new store", "map", 10**6)),
    Row(f"``map`` resumed from a full store / ``map``, 10^5 {_TINY}",
        _ratio("store", "map, full store", "map", 10**5)),
    Row(f"``map`` with ``retries`` set, none needed / ``map``, 10^5 {_TINY}",
        _ratio("retries-idle", "pmap, retries idle", "pmap", 10**5)),
    Row("``pmap`` capturing 200 MB of ``bytes`` / a forked global", _ratio("captured bytes", "pmap", _FORK)),
    Row("``pmap`` capturing a 200 MB array / a forked global", _ratio("captured", "pmap", _FORK)),
    Row("``dmap`` capturing a 200 MB array / the array made by each worker",
        _ratio("captured dmap", "dmap, lambda capturing the array", "dmap, the array made by each worker")),
    Row("``dmap``, lean path / Pyro4's request path, 10^6 tiny tasks",
        _ratio("lean", "dmap", "dmap, Pyro4's request path", 10**6)),
    Row(f"``dmap``, 128 workers, {_EFFICIENCY}",
        _derived("many-128", "efficiency", "dmap", "2560", digits=3)),
    Row(f"``dmap``, 128 workers, new pool, {_EFFICIENCY}",
        _derived("many-128", "efficiency", "dmap cold", "2560", digits=3)),
    Row(f"``dmap``, 512 workers, {_EFFICIENCY}",
        _derived("many-512", "efficiency", "dmap", "5120", digits=3)),
    Row(f"``dmap``, 512 workers, new pool, {_EFFICIENCY}",
        _derived("many-512", "efficiency", "dmap cold", "5120", digits=3)),
    Row(f"``dmap``, 512 dial-in workers, {_EFFICIENCY}",
        _derived("dialin-512", "efficiency", "dial-in warm", "5120", digits=3)),
    Row(f"``dmap``, 512 dial-in workers, new pool, {_EFFICIENCY}",
        _derived("dialin-512-cold", "efficiency", "dial-in cold", "5120", digits=3)),
)


def _run(path: Path, partial: bool) -> dict[str, Any]:
    run = json.loads(path.read_text(encoding="utf-8"))
    settings = run["settings"]
    if not partial:
        missing = [name for name in REQUIRED if name not in settings["only"]]
        if settings["quick"] or missing:
            why = "--quick" if settings["quick"] else "missing " + ", ".join(missing)
            raise SystemExit(f"{path} is not one full run ({why}): run python -m bench, or pass --partial")
    return run


def _heading(run: dict[str, Any]) -> str:
    machine = run["machine"]
    load = machine.get("load_average") or [0.0]
    end = machine.get("load_average_end") or [0.0]
    revision = machine["ezpool"].get("revision") or machine["ezpool"]["version"]
    return (f"{machine['date'][:10]}, EzPool {revision}, {machine['usable_cores']} cores "
            f"({machine['cpu']}), CPython {machine['python']}, "
            f"load average {load[0]:.2f} at the start and {end[0]:.2f} at the end")


def readme_table(run: dict[str, Any]) -> str:
    """The README's table, with the run it comes from."""
    rows = [(row.label, row.cell(run) or "not measured") for row in HEADLINE]
    width = max(len(label) for label, _ in rows)
    rule = f"{'=' * width}  {'=' * 12}"
    lines = [BEGIN, "", f"One full run of ``python -m bench`` ({_heading(run)}). A ratio is EzPool's "
             "median time over the other's, in the same run (below 1.0 EzPool is faster); an "
             "efficiency is the ideal time over the measured one:", "", rule,
             f"{'comparison':<{width}}  measured", rule]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    lines += [rule, "", END]
    return "\n".join(lines)


def docs_tables(run: dict[str, Any]) -> str:
    """Every comparison of the run, as printed by ``python -m bench``, for the docs."""
    lines = [f"Every table of one full run of ``python -m bench`` ({_heading(run)}). Ratios are "
             "EzPool's median time over the peer's, in the same run; below 1.0 EzPool is faster.", ""]
    for name, record in run["comparisons"].items():
        if "error" in record:
            lines += [f"``{name}``: failed ({record['error']})", ""]
            continue
        lines += ["::", ""]
        lines += [f"    {line}" if line else "" for line in table(name, record).splitlines()]
        lines.append("")
    return "\n".join(lines)


def _replaced(text: str, block: str) -> str:
    begin, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:begin] + block + text[end:]


def _targets(run: dict[str, Any], root: Path) -> Iterator[tuple[Path, str]]:
    readme = root / "README.rst"
    yield readme, _replaced(readme.read_text(encoding="utf-8"), readme_table(run))
    yield root / "docs" / "bench_tables.txt", docs_tables(run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tables", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--check", action="store_true", help="only say whether the tables are the run's")
    parser.add_argument("--partial", action="store_true", help="accept a run of some workloads only")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose files to write")
    args = parser.parse_args(argv)
    run = _run(args.results, args.partial)
    stale = []
    for path, text in _targets(run, args.root):
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"not made from {args.results}: {', '.join(stale)}; run python -m bench.tables",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
