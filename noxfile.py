"""Test sessions: ``python -m nox`` runs lint, the tests on this Python, and the docs.

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

nox.options.sessions = ["lint", f"tests-{HERE_PYTHON}", "docs"]
nox.options.error_on_missing_interpreters = False


def _expose_pyenv_versions() -> None:
    """Let nox find python3.X for every version pyenv has installed."""
    if not shutil.which("pyenv") or "PYENV_VERSION" in os.environ:
        return
    found = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False)
    versions = [v.strip() for v in found.stdout.split() if v.strip() and v[0].isdigit()]
    if versions:
        current = [v for v in versions if v.startswith(HERE_PYTHON + ".")]
        os.environ["PYENV_VERSION"] = ":".join(current + [v for v in versions if v not in current])


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


@nox.session(python=HERE_PYTHON)
def docs(session: nox.Session) -> None:
    """The Sphinx docs, built with warnings as errors; their examples are executed."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest")
