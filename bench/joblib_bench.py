"""joblib's ``Parallel`` on the "ezpool" backend against its default, loky: ``python -m bench.joblib_bench``.

10⁵ tiny tasks (``x * x``) through ``Parallel(n_jobs=2)(delayed(square)(x) for x in ...)``,
with joblib's automatic batching, timed by the suite's harness (``bench/harness.py``):
contenders alternated in this one process, a warm-up run checked and not timed,
then ``--repeats`` timed runs each (default 3), medians compared. Contenders:

- ``ezpool, pool kept``: ``with Parallel(backend="ezpool") as parallel``, so that the
  processes live across calls, as loky's reusable executor does;
- ``ezpool, pool per call``: a plain ``Parallel(backend="ezpool")``, which starts and
  stops its processes in every call (what a one-off call costs);
- ``loky``: joblib's default backend, workers kept between calls.

Ratios are EzPool / loky: below 1.0 the "ezpool" backend is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from bench.harness import Comparison, Contender, Runner, Settings, measure
from bench.report import machine, table
from bench.workloads import square

__all__ = ["main", "comparison"]

#: Processes (joblib's ``n_jobs``) on each side.
NCPU = 2


def _check(size: int, result: Any) -> None:
    if len(result) != size or result[-1] != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {len(result)} values")


@contextlib.contextmanager
def _kept(backend: str) -> Iterator[Runner]:
    from joblib import Parallel, delayed

    if backend == "ezpool":
        import ezpool.joblib  # noqa: F401  (registers the backend)
    with Parallel(n_jobs=NCPU, backend=backend) as parallel:
        yield lambda size: parallel(delayed(square)(x) for x in range(size))


@contextlib.contextmanager
def _per_call() -> Iterator[Runner]:
    from joblib import Parallel, delayed

    import ezpool.joblib  # noqa: F401  (registers the backend)

    yield lambda size: Parallel(n_jobs=NCPU, backend="ezpool")(delayed(square)(x) for x in range(size))


def comparison(sizes: Sequence[int]) -> Comparison:
    """The contenders over ``sizes`` tasks."""
    return Comparison(
        name="joblib",
        title=f"joblib Parallel, tiny tasks (x*x), n_jobs={NCPU}",
        unit="tasks",
        sizes=sizes,
        check=_check,
        contenders=[
            Contender("ezpool, pool kept", lambda: _kept("ezpool"), ezpool=True),
            Contender("ezpool, pool per call", _per_call, ezpool=True),
            Contender("loky", lambda: _kept("loky")),
        ],
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.joblib_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, action="append", help="tasks per call (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (default 3)")
    parser.add_argument("--json", type=Path, help="also write the record to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    settings = Settings(quick=False, repeats=args.repeats, budget=float("inf"))
    record = measure(comparison(args.size or [10**5]), settings)
    print(table("joblib", record))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "joblib": record}, indent=2) + "\n")
    failed = any(entry["status"] == "error" for entry in record["contenders"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
