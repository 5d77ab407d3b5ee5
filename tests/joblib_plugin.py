"""A pytest plugin that runs joblib's own test suite on EzPool's ``"ezpool"`` backend.

Load it with ``-p tests.joblib_plugin`` when running joblib's tests, as the ``joblib``
nox session does::

    python -m pytest -p tests.joblib_plugin --pyargs joblib.test.test_parallel

Before joblib's test modules are collected it imports ``ezpool.joblib`` and makes
``"ezpool"`` joblib's default backend, so every ``Parallel`` that names no backend
runs on an EzPool pool, and the tests that loop over every registered backend
include ``"ezpool"``. Tests that check another backend's internals or exact
messages are deselected, each for the reason given in ``DESELECTED``; the reasons
are printed in the header and again in the summary.

Warnings are not errors here (joblib's tests expect some), unlike in EzPool's own suite.
"""

from __future__ import annotations

from typing import Any

import pytest

#: ``module::test`` (every parametrization) or ``module::test[params]`` -> why it is left out.
DESELECTED: dict[str, str] = {
    "test_parallel::test_nested_loop[loky-ezpool]": (
        "runs Parallel(backend='ezpool') inside a loky worker, a process that never imported "
        "ezpool.joblib, where joblib has no 'ezpool' backend"
    ),
    "test_parallel::test_nested_loop[back_compat_backend-ezpool]": (
        "the same, inside a worker of a loky subclass"
    ),
    "test_parallel::test_backend_hinting_and_constraints": (
        "expects prefer='processes' to swap the default for loky, joblib's default process "
        "backend; the 'ezpool' backend is a process backend itself and is kept"
    ),
    "test_parallel::test_parallel_unordered_generator_returns_fastest_first[ezpool-2]": (
        "in the parallel mode each process holds a second batch queued behind the one it runs, "
        "so one batch waits for the 30 s task and comes out after it"
    ),
    "test_parallel::test_parallel_unordered_generator_returns_fastest_first[ezpool-4]": (
        "the same, with 4 processes"
    ),
    "test_parallel::test_threadpool_limitation_in_child_override": (
        "sets a variable in this process's environment and expects the processes of the next "
        "call to see it; it shuts down loky's reusable executor first, but not the pool the "
        "'ezpool' backend keeps between calls (started earlier, with the old environment)"
    ),
    "test_config::test_parallel_config_no_backend": (
        "expects prefer='processes' to give loky, and checks loky's memory mapping of arrays "
        "(max_nbytes, temp_folder); EzPool pickles arguments instead"
    ),
    "test_config::test_parallel_config_params_explicit_set": "the same",
}

#: Marks joblib's tests use; joblib registers them in its own (unshipped) configuration.
_MARKERS = {
    "thread_unsafe": "a joblib test that must not run in threads (pytest-run-parallel)",
    "no_cover": "a joblib test left out of coverage runs",
    "asyncio": "a joblib test run by an asyncio plugin",
}


def pytest_configure(config: pytest.Config) -> None:
    import ezpool.joblib

    ezpool.joblib.register(make_default=True)
    # Added last, so it takes precedence over EzPool's own "error" filter.
    config.addinivalue_line("filterwarnings", "default")
    for name, text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _key(item: pytest.Item) -> tuple[str, str]:
    module = getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]
    name = getattr(item, "originalname", None) or item.name.partition("[")[0]
    return f"{module}::{name}", f"{module}::{item.name}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        whole, exact = _key(item)
        (dropped if whole in DESELECTED or exact in DESELECTED else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _lines() -> list[str]:
    lines = [f"ezpool: joblib's default backend is 'ezpool'; {len(DESELECTED)} test(s) deselected:"]
    lines += [f"  {name}: {reason}" for name, reason in DESELECTED.items()]
    return lines


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _lines()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("joblib tests deselected for the ezpool backend")
    for line in _lines()[1:]:
        terminalreporter.write_line(line)
