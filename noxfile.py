"""Test sessions: ``python -m nox`` runs lint, the tests on this Python, joblib's tests
on EzPool's joblib backend, scikit-learn's ``n_jobs`` tests on it (parallel and
distributed), the docs, and CPython's own concurrent.futures tests against
PoolExecutor (``futures``, on 3.13).

``python -m nox -s tests`` runs the tests on every supported Python that pyenv (or
the PATH) has; ``python -m nox -s tests-3.12`` on one of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nox

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

#: The Python whose ``test`` package (CPython's own test suite) the ``futures`` session uses.
FUTURES_PYTHON = "3.13"

nox.options.sessions = ["lint", f"tests-{HERE_PYTHON}", "joblib", "sklearn", "docs", "futures"]
nox.options.error_on_missing_interpreters = False


def _expose_pyenv_versions() -> None:
    """Let nox find python3.X for every version pyenv has installed.

    nox looks for real interpreters on the PATH (pyenv's shims are scripts), so the
    ``bin`` folder of each installed version goes on the PATH, after what is there.
    """
    if not shutil.which("pyenv"):
        return
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False).stdout.strip()
    found = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False)
    versions = [v.strip() for v in found.stdout.split() if v.strip() and v[0].isdigit()]
    folders = [os.path.join(root, "versions", version, "bin") for version in versions]
    folders = [folder for folder in folders if os.path.isdir(folder)]
    if folders:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *folders])


_expose_pyenv_versions()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, with warnings as errors, under both start methods."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=HERE_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy, both clean."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", ".")
    session.run("mypy")


#: joblib's own test modules that exercise ``Parallel``, run on the "ezpool" backend.
JOBLIB_TESTS = ["joblib.test.test_parallel", "joblib.test.test_config", "joblib.test.test_memory"]


@nox.session(python=HERE_PYTHON)
def joblib(session: nox.Session) -> None:
    """joblib's own tests of Parallel with "ezpool" as joblib's default backend.

    tests/joblib_plugin.py makes it the default and prints the tests it deselects,
    with why; warnings are not errors in joblib's suite.
    """
    session.install("-e", ".", "joblib", "numpy", "threadpoolctl", "pytest>=7", "pytest-timeout>=2.1")
    session.run(
        "python", "-m", "pytest", "-p", "tests.joblib_plugin", "-q", "--pyargs", *JOBLIB_TESTS,
        *session.posargs,
    )


#: scikit-learn's test modules that use ``n_jobs``: searches, validation, forests,
#: multiclass, permutation importance and ``sklearn.utils.parallel``.
SKLEARN_TESTS = [
    "sklearn.model_selection.tests.test_search",
    "sklearn.model_selection.tests.test_validation",
    "sklearn.ensemble.tests.test_forest",
    "sklearn.tests.test_multiclass",
    "sklearn.inspection.tests.test_permutation_importance",
    "sklearn.utils.tests.test_parallel",
]


@nox.session(python=HERE_PYTHON)
@nox.parametrize("mode", ["parallel", "distributed"])
def sklearn(session: nox.Session, mode: str) -> None:
    """scikit-learn's own ``n_jobs`` tests with "ezpool" as joblib's default backend, in
    the parallel mode and on two distributed workers the pool starts itself.

    tests/sklearn_plugin.py makes it the default and prints the tests it deselects,
    with why; ``--ezpool-mode=loky`` (``nox -s sklearn -- --ezpool-mode=loky``) runs
    the same tests on loky, to compare with.
    """
    session.install("-e", ".", "scikit-learn", "pandas", "pytest>=7", "pytest-timeout>=2.1")
    session.run(
        "python", "-m", "pytest", "-p", "tests.sklearn_plugin", f"--ezpool-mode={mode}", "-q",
        "-p", "no:cacheprovider", "--pyargs", *SKLEARN_TESTS, *session.posargs,
    )


@nox.session(python=HERE_PYTHON)
def docs(session: nox.Session) -> None:
    """The Sphinx docs, nitpicky with warnings as errors; their examples are executed.

    tests/test_docs.py checks the code shown, runs the scripts, and builds the HTML
    once more to check every link between pages; here the furo theme it needs is
    installed, so it must not skip.
    """
    session.install("-e", ".[docs,test]")
    session.run("python", "-m", "pytest", "tests/test_docs.py", env={"EZPOOL_DOCS_REQUIRED": "1"})
    session.run("sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python=FUTURES_PYTHON)
def futures(session: nox.Session) -> None:
    """CPython's concurrent.futures tests (from the interpreter's own ``test`` package,
    never copied here) run against PoolExecutor in every mode; prints what is left out."""
    probe = (
        "import importlib.util as u\n"
        "try: print(u.find_spec('test.test_concurrent_futures') is not None)\n"
        "except ImportError: print(False)"
    )
    if "True" not in str(session.run("python", "-c", probe, silent=True)):
        session.skip(
            f"Python {FUTURES_PYTHON} here has no 'test' package (CPython's test suite), "
            "so there are no concurrent.futures tests to run"
        )
    session.install("-e", ".")
    session.run("python", "-u", "-m", "tests.cpython_futures", *session.posargs)
