"""CPython's own tests of ``concurrent.futures``, run against ``PoolExecutor`` in every mode.

    python -m tests.cpython_futures [--mode serial|fork|spawn|distributed ...] [-v]

The tests are imported from the ``test`` package of the interpreter that runs this
module (``test.test_concurrent_futures``: a package since 3.12, one module in 3.9
and 3.10), never copied here. Its executor-protocol suites (``ExecutorTest``,
``WaitTests``, ``AsCompletedTests``, ``ExecutorShutdownTest``) run in every mode;
the serial and threads modes also run ``ThreadPoolExecutorTest`` and the parallel mode
``ProcessPoolExecutorTest``, the suites of the stdlib executors they stand in for.
Each mode is a mixin, as in CPython's ``util``: ``executor_type`` is a small
``PoolExecutor`` subclass taking the arguments the tests pass (``max_workers``,
``mp_context``). The tests left out are in ``EXCLUDED``, each with its reason; the
list is printed first. Exit status 0 when everything ran passed, 1 if a test
failed, 2 when this interpreter has no ``test`` package (nothing ran).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import socket
import sys
import time
import types
import unittest
from typing import Any, Optional

from ezpool import PoolExecutor
from tests.modes import MODES

#: Distributed workers an executor starts (on free local ports), whatever max_workers says.
_MOST_DISTRIBUTED = 2

#: Workers of the executor each test makes (CPython's suites use 5; they only need a few).
_WORKERS = 2

_CHILD_SCRIPT = (
    "runs a child interpreter that imports the executor class by name from "
    "concurrent.futures; tests/test_executor.py checks the same behaviour for PoolExecutor"
)

#: (suite, test) -> why it is not run. Every mode that runs the suite leaves it out.
EXCLUDED: dict[tuple[str, str], str] = {
    ("ExecutorShutdownTest", "test_interpreter_shutdown"): _CHILD_SCRIPT,
    ("ExecutorShutdownTest", "test_submit_after_interpreter_shutdown"): _CHILD_SCRIPT,
    ("ExecutorShutdownTest", "test_hang_gh83386"): _CHILD_SCRIPT,
    ("ThreadPoolExecutorTest", "test_default_workers"):
        "reads the private _max_workers of ThreadPoolExecutor, min(32, cpus + 4); the serial mode "
        "has one thread, and the threads mode starts that many (tests/test_threads.py)",
    ("ThreadPoolExecutorTest", "test_saturation"): "counts ThreadPoolExecutor's private _threads",
    ("ThreadPoolExecutorTest", "test_idle_thread_reuse"): "counts ThreadPoolExecutor's private _threads",
    ("ThreadPoolExecutorTest", "test_hang_global_shutdown_lock"):
        "exercises ThreadPoolExecutor and ProcessPoolExecutor themselves, not the executor under test",
    ("ProcessPoolExecutorTest", "test_killed_child"):
        "expects BrokenProcessPool from every future and later submit; by design EzPool gives the "
        "killed call's future WorkerCrashed and goes on (tests/test_executor.py)",
    ("ProcessPoolExecutorTest", "test_traceback"):
        "expects ProcessPoolExecutor's private _RemoteTraceback as __cause__; EzPool's is "
        "ezpool.RemoteTraceback (tests/test_executor.py)",
    ("ProcessPoolExecutorTest", "test_saturation"): "counts ProcessPoolExecutor's private _processes",
    ("ProcessPoolExecutorTest", "test_idle_process_reuse_one"):
        "counts ProcessPoolExecutor's private _processes",
    ("ProcessPoolExecutorTest", "test_idle_process_reuse_multiple"):
        "counts ProcessPoolExecutor's private _processes",
    ("ProcessPoolExecutorTest", "test_max_tasks_per_child"):
        "max_tasks_per_child is a ProcessPoolExecutor option that EzPool does not have",
    ("ProcessPoolExecutorTest", "test_max_tasks_per_child_defaults_to_spawn_context"):
        "max_tasks_per_child is a ProcessPoolExecutor option that EzPool does not have",
    ("ProcessPoolExecutorTest", "test_max_tasks_early_shutdown"):
        "max_tasks_per_child is a ProcessPoolExecutor option that EzPool does not have",
    ("ProcessPoolExecutorTest", "test_python_finalization_error"):
        "makes ProcessPoolExecutor's own threads fail to start and expects BrokenProcessPool, "
        "a state EzPool does not have",
}

#: (suite, test) -> why it is not run where a running call can be stopped (parallel, distributed).
EXCLUDED_WHERE_STOPPED: dict[tuple[str, str], str] = {
    ("ExecutorShutdownTest", "test_cancel_futures"):
        "expects some running calls to finish; EzPool's shutdown(cancel_futures=True) stops the "
        "running calls too where it can (issue 28; tests/test_executor_cancel.py)",
}

#: Modules of the package that are not run at all, and why.
NOT_RUN = {
    "test_deadlock": "expects BrokenProcessPool when a call or its result cannot be (un)pickled or kills its "
                     "process; EzPool fails that call's future alone (tests/test_executor.py)",
    "test_init": "initializer/initargs are stdlib executor options that EzPool does not have",
    "test_future": "tests Future itself, which PoolExecutor uses unchanged",
}


class SerialExecutor(PoolExecutor):
    """The serial mode, built as the tests build a ``ThreadPoolExecutor``."""

    def __init__(self, max_workers: Optional[int] = None, **options: Any) -> None:
        super().__init__("serial", max_workers, **options)


class ThreadsExecutor(PoolExecutor):
    """The threads mode, built as the tests build a ``ThreadPoolExecutor``."""

    def __init__(self, max_workers: Optional[int] = None, **options: Any) -> None:
        super().__init__("threads", max_workers, **options)


class ParallelExecutor(PoolExecutor):
    """The parallel mode, built as the tests build a ``ProcessPoolExecutor``."""

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None, **options: Any) -> None:
        if mp_context is not None:
            options.setdefault("start_method", mp_context.get_start_method())
        super().__init__("parallel", max_workers, **options)


class DistributedExecutor(PoolExecutor):
    """The distributed mode over generic workers it starts on free local ports."""

    def __init__(self, max_workers: Optional[int] = None, **options: Any) -> None:
        count = max_workers if isinstance(max_workers, int) and max_workers > 0 else 1
        workers = [f"PYRO:worker@127.0.0.1:{_free_port()}" for _ in range(min(count, _MOST_DISTRIBUTED))]
        super().__init__("distributed", max_workers, workers=workers, spawn=True, **options)


class DialInExecutor(PoolExecutor):
    """The distributed mode over generic workers that dial in to it, started on this machine."""

    def __init__(self, max_workers: Optional[int] = None, **options: Any) -> None:
        from tests.modes import LocalDialers

        count = max_workers if isinstance(max_workers, int) and max_workers > 0 else 1
        dialers = LocalDialers(min(count, _MOST_DISTRIBUTED))
        super().__init__("distributed", max_workers, workers=dialers, listen="127.0.0.1:0", **options)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_cpython_tests() -> types.SimpleNamespace:
    """The suites and helpers of this interpreter's ``test.test_concurrent_futures``.

    Raises ``ImportError`` when the interpreter has no ``test`` package.
    """
    found: dict[str, Any] = {}
    names = ("ExecutorMixin", "BaseTestCase", "setup_module", "ExecutorTest", "WaitTests", "AsCompletedTests",
             "ExecutorShutdownTest", "ThreadPoolExecutorTest", "ProcessPoolExecutorTest")
    try:  # 3.12 and later: a package of modules
        parts = ("util", "executor", "test_wait", "test_as_completed", "test_shutdown", "test_thread_pool",
                 "test_process_pool")
        modules = [importlib.import_module(f"test.test_concurrent_futures.{part}") for part in parts]
    except ImportError:  # 3.9, 3.10: one module
        modules = [importlib.import_module("test.test_concurrent_futures")]
    for module in modules:
        found.update({name: getattr(module, name) for name in names if hasattr(module, name)})
    missing = [name for name in names if name not in found]
    if missing:
        raise ImportError(f"test.test_concurrent_futures has no {', '.join(missing)}")
    return types.SimpleNamespace(**found)


def build_suite(cpython: types.SimpleNamespace, mode: str) -> unittest.TestSuite:
    """Every suite that ``mode`` runs, as test cases of classes made here, exclusions skipped."""
    kind, start_method = MODES[mode].kind, MODES[mode].start_method
    executor_type = {"serial": SerialExecutor, "threads": ThreadsExecutor, "parallel": ParallelExecutor,
                     "distributed": DistributedExecutor}[kind]
    if MODES[mode].dial_in:
        executor_type = DialInExecutor
    attributes: dict[str, Any] = {"executor_type": executor_type}
    if start_method is not None:
        attributes["ctx"] = start_method  # ExecutorMixin then passes mp_context=get_context()
    attributes["worker_count"] = _WORKERS
    mixin = type(f"{mode.title()}Mixin", (cpython.ExecutorMixin,), attributes)
    suites: list[type] = [cpython.WaitTests, cpython.AsCompletedTests, cpython.ExecutorShutdownTest]
    if kind in ("serial", "threads"):
        suites.append(cpython.ThreadPoolExecutorTest)  # ExecutorTest, and the thread pool's own
    elif kind == "parallel":
        suites.append(cpython.ProcessPoolExecutorTest)  # ExecutorTest, and the process pool's own
    else:
        suites.append(cpython.ExecutorTest)
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    excluded = {**EXCLUDED, **(EXCLUDED_WHERE_STOPPED if kind in ("parallel", "distributed") else {})}
    for tests in suites:
        skipped = {
            test: unittest.skip(f"excluded: {reason}")(lambda self: None)
            for (owner, test), reason in excluded.items()
            if owner == tests.__name__
        }
        is_case = issubclass(tests, unittest.TestCase)
        bases = (mixin, tests) if is_case else (mixin, tests, cpython.BaseTestCase)
        case = type(f"{mode.title()}{tests.__name__}", bases, {**skipped, "__module__": __name__})
        suite.addTests(loader.loadTestsFromTestCase(case))
    return suite


def print_exclusions() -> None:
    print("Left out of CPython's concurrent.futures tests, and why:")
    for (owner, test), reason in EXCLUDED.items():
        print(f"  {owner}.{test}: {reason}")
    for (owner, test), reason in EXCLUDED_WHERE_STOPPED.items():
        print(f"  {owner}.{test} (parallel and distributed modes): {reason}")
    for module, reason in NOT_RUN.items():
        print(f"  {module} (whole module): {reason}")
    print("  (test_thread_pool runs only in the serial and threads modes, test_process_pool in the parallel)")


def main(argv: Optional[list[str]] = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m tests.cpython_futures", description=summary)
    parser.add_argument("--mode", action="append", choices=list(MODES), help="a mode to run (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="name every test as it runs")
    args = parser.parse_args(argv)
    try:
        cpython = load_cpython_tests()
    except ImportError as exc:
        version = ".".join(map(str, sys.version_info[:3]))
        print(f"SKIPPED: Python {version} at {sys.executable} has no CPython test package ({exc}); "
              "run this with an interpreter that has one, e.g. python3.13", file=sys.stderr)
        return 2
    from test import support

    # Each distributed test starts its workers; saying so every time is noise here.
    logging.getLogger("ezpool._backends.distributed.connect").setLevel(logging.ERROR)
    print_exclusions()
    cpython.setup_module()
    failed = False
    totals: list[str] = []
    for mode in args.mode or list(MODES):
        print(f"\n=== {mode} ===", flush=True)
        began = time.monotonic()
        support.environment_altered = False
        runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1, stream=sys.stdout)
        result = runner.run(build_suite(cpython, mode))
        altered = support.environment_altered
        failed = failed or not result.wasSuccessful() or altered
        ran = result.testsRun - len(result.skipped)
        totals.append(f"{mode}: {ran} ran, {len(result.failures) + len(result.errors)} failed, "
                      f"{len(result.skipped)} skipped{', ENVIRONMENT ALTERED' if altered else ''} "
                      f"({time.monotonic() - began:.0f} s)")
    unittest.case.doModuleCleanups()
    print("\n" + "\n".join(totals))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
