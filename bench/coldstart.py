"""Cold start in a fresh interpreter, per start method: ``pmap`` against ``multiprocessing.Pool``.

Every run is a new ``python`` process running a short script written as a user
would write it: the library imported at the top, the task function defined there,
the work under ``if __name__ == "__main__":`` (so ``spawn`` children, which import
the script again, also import the library). The script times itself, so the
interpreter's own start-up, the same for every contender, is left out. Two clocks:

- ``pmap`` / ``multiprocessing.Pool``: from creating the pool to holding the result
  of one task, the library already imported (as by the script's first line);
- ``... incl. import``: from before the import statement (``from ezpool import Pool``,
  ``import multiprocessing``) to the same point (not with ``--quick``).

Shutting the pool down is not timed. Each contender runs at least 15 times (not
with ``--quick``). One comparison per start method, each EzPool
figure over the standard library's under the same method.

Compiled bytecode is kept (in a scratch ``PYTHONPYCACHEPREFIX``, even where
``PYTHONDONTWRITEBYTECODE`` is set), as it is for an installed package: the
untimed warm-up run compiles, the timed runs load. Without it every run would
compile EzPool's modules from source, a cost no installed copy pays.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from .harness import Comparison, Contender, Runner, Settings, Skip, Timed
from .serving import child_environment

__all__ = ["START_METHODS", "cold_start"]

#: The start methods measured (those this platform lacks are skipped).
START_METHODS = ("fork", "spawn", "forkserver")

#: The value of the one task, ``square(3)``.
_EXPECTED = 9

#: Timed runs of each contender at least (not with ``--quick``): a fresh interpreter
#: varies by tens of milliseconds from run to run, and each run costs a fraction of a
#: second.
_LEAST_REPEATS = 15

#: Seconds a fresh interpreter may take to give its result (spawn, on a loaded machine).
_RUN_TIMEOUT = 120.0

# Both scripts print: seconds of the import, seconds from the pool's creation to the
# result, and the result. ``{ncpu}`` is filled in; the start method is argv[1].
_EZPOOL_SCRIPT = """\
import time
began = time.perf_counter()
from ezpool import Pool
imported = time.perf_counter()


def square(x):
    return x * x


if __name__ == "__main__":
    import sys

    created = time.perf_counter()
    with Pool() as pool:
        results = pool.pmap(square, [3], ncpu={ncpu}, start_method=sys.argv[1], progress=False)
        done = time.perf_counter()
    print(imported - began, done - created, results[3])
"""

_MULTIPROCESSING_SCRIPT = """\
import time
began = time.perf_counter()
import multiprocessing
imported = time.perf_counter()


def square(x):
    return x * x


if __name__ == "__main__":
    import sys

    created = time.perf_counter()
    with multiprocessing.get_context(sys.argv[1]).Pool({ncpu}) as pool:
        results = pool.map(square, [3])
        done = time.perf_counter()
    print(imported - began, done - created, results[0])
"""


def _check(size: int, result: Any) -> None:
    if result != _EXPECTED:
        raise AssertionError(f"the fresh interpreter gave {result!r}, not {_EXPECTED}")


def _fresh(script: str, method: str, ncpu: int, with_import: bool) -> Callable[[], Any]:
    """A contender: run ``script`` in a new interpreter with start method ``method``."""

    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        if method not in multiprocessing.get_all_start_methods():
            raise Skip(f"start method {method!r} not available on this platform")
        env = child_environment()
        with tempfile.TemporaryDirectory(prefix="ezpool-cold-") as scratch:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(scratch, "bytecode"))
            path = Path(scratch, "cold.py")
            path.write_text(script.format(ncpu=ncpu), encoding="utf-8")

            def run(size: int) -> Timed:
                done = subprocess.run(
                    [sys.executable, str(path), method],
                    cwd=scratch,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=_RUN_TIMEOUT,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"the fresh interpreter failed ({done.returncode}):\n{done.stderr}")
                imported, called, value = done.stdout.split()
                seconds = float(called) + (float(imported) if with_import else 0.0)
                return Timed(seconds, int(value))

            yield run

    return prepare


def cold_start(settings: Settings, ncpu: int) -> list[Comparison]:
    """One comparison per start method: time to the first result in a fresh interpreter."""
    comparisons = []
    for method in START_METHODS:
        contenders = [
            Contender("pmap", _fresh(_EZPOOL_SCRIPT, method, ncpu, False), ezpool=True),
            Contender("multiprocessing.Pool", _fresh(_MULTIPROCESSING_SCRIPT, method, ncpu, False)),
        ]
        pairs = [("pmap", "multiprocessing.Pool")]
        if not settings.quick:  # the same runs again, on the other clock
            contenders += [
                Contender("pmap incl. import", _fresh(_EZPOOL_SCRIPT, method, ncpu, True), ezpool=True),
                Contender(
                    "multiprocessing.Pool incl. import", _fresh(_MULTIPROCESSING_SCRIPT, method, ncpu, True)
                ),
            ]
            pairs.append(("pmap incl. import", "multiprocessing.Pool incl. import"))
        comparisons.append(
            Comparison(
                name=f"startup_{method}",
                title=f"Cold start ({method}): first result in a fresh interpreter, {ncpu} processes",
                unit="tasks",
                sizes=[1],
                check=_check,
                contenders=contenders,
                pairs=pairs,
                params={"start_method": method},
                least_repeats=0 if settings.quick else _LEAST_REPEATS,
            )
        )
    return comparisons
