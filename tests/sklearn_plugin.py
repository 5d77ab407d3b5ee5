"""A pytest plugin that runs scikit-learn's own ``n_jobs`` tests on EzPool's ``"ezpool"``
joblib backend, in the mode ``--ezpool-mode`` names, as the ``sklearn`` nox session does::

    python -m pytest -p tests.sklearn_plugin --ezpool-mode distributed \
        --pyargs sklearn.ensemble.tests.test_forest

Before scikit-learn's test modules are collected it makes ``"ezpool"`` joblib's
default backend, in that mode: ``parallel`` (processes on this machine) or
``distributed`` (two generic workers that the pool starts itself on free local
ports, kept for the whole run as loky keeps its executor). ``loky`` changes nothing:
the same tests on joblib's own default backend, to compare with. Every ``Parallel``
that names no backend then runs on EzPool, and ``prefer="threads"`` and
``require="sharedmem"`` still pick joblib's threads, as with loky. Tests left out
are listed in ``DESELECTED``, each with why; the mode and that list are printed in
the header and again in the summary.

Warnings are not errors here (scikit-learn's tests expect some), unlike in EzPool's own suite.
"""

from __future__ import annotations

from typing import Any

import pytest

#: The modes this plugin runs scikit-learn's tests in.
MODES = ("parallel", "distributed", "loky")

#: ``module::test`` (every parametrization) or ``module::test[params]`` -> why it is left out.
DESELECTED: dict[str, str] = {}

#: Marks scikit-learn's tests use; it registers them in its own (unshipped) configuration.
_MARKERS = {
    "thread_unsafe": "a scikit-learn test that must not run in threads (pytest-run-parallel)",
    "network": "a scikit-learn test that downloads data",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ezpool-mode", choices=MODES, default="parallel",
        help="the mode of joblib's default 'ezpool' backend; loky: joblib's own default, unchanged",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Added last, so it takes precedence over EzPool's own "error" filter.
    config.addinivalue_line("filterwarnings", "default")
    for name, text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    mode = config.getoption("ezpool_mode")
    if mode == "loky":
        return
    import functools

    import joblib

    from ezpool.joblib import BACKEND_NAME, EzPoolBackend
    from tests.conftest import free_port

    options: dict[str, Any] = {"mode": mode}
    if mode == "distributed":
        options.update(workers=[f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(2)], spawn=True)
    factory = functools.partial(EzPoolBackend, **options)
    joblib.register_parallel_backend(BACKEND_NAME, factory, make_default=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("ezpool_mode") != "loky":
        from ezpool.joblib import kept_pools

        kept_pools.shutdown()


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


def _lines(config: pytest.Config) -> list[str]:
    mode = config.getoption("ezpool_mode")
    default = "loky (unchanged)" if mode == "loky" else f"'ezpool', {mode} mode"
    lines = [f"ezpool: joblib's default backend is {default}; {len(DESELECTED)} test(s) deselected"]
    lines += [f"  {name}: {reason}" for name, reason in DESELECTED.items()]
    return lines


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _lines(config)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("scikit-learn tests on the ezpool backend")
    for line in _lines(terminalreporter.config):
        terminalreporter.write_line(line)
