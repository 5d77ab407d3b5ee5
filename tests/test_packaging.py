"""The sdist and the wheel, built as a release would be, checked as PyPI and a packager would.

``python -m build`` makes the sdist from a copy of this checkout, then the wheel from
that sdist (so a file the sdist forgets breaks the wheel too). Its build backend comes
from the package index, into an isolated environment, as it does for ``pip install``.
Then: ``twine check --strict``; the sdist holds what its tests and docs need, and its
tests run from the unpacked archive; the wheel's metadata; and the wheel installed
into a fresh venv (offline: ``--no-deps``, the dependencies seen from this
environment) imports, and its ``ezpool-serve`` script starts a worker.
"""

from __future__ import annotations

import contextlib
import email
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import ezpool
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent

#: Seconds for a test that builds: the first one fetches the build backend into an
#: isolated environment and builds both archives (a minute or two here).
BUILD_TIMEOUT = 600

#: What a copy of the checkout leaves out: caches, builds and version control.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".nox", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", ".benchmarks", "_build", ".ipynb_checkpoints",
    "results-*.json",
)

#: The folders whose every file the sdist must carry, for its tests, docs and benchmarks.
_SHIPPED_FOLDERS = ["ezpool", "tests", "examples", "docs", "bench"]


def _run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@contextlib.contextmanager
def _scratch(prefix: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Built:
    """The copy the archives were built from, and the two archives."""

    def __init__(self, source: Path, out: Path) -> None:
        self.source = source
        (self.sdist,) = out.glob("ezpool-*.tar.gz")
        (self.wheel,) = out.glob("ezpool-*-py3-none-any.whl")

    def sdist_files(self) -> set[str]:
        with tarfile.open(self.sdist) as archive:
            top = self.sdist.name[: -len(".tar.gz")]
            return {m.name[len(top) + 1 :] for m in archive.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    with _scratch("ezpool-build-") as scratch:
        source, out = scratch / "source", scratch / "dist"
        shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
        _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=scratch, timeout=500)
        yield Built(source, out)


@pytest.fixture
def unpacked_sdist(built: Built) -> Iterator[Path]:
    with _scratch("ezpool-sdist-") as scratch:
        with tarfile.open(built.sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # 3.12, and the security releases before it
                archive.extractall(scratch, filter="data")
            else:
                archive.extractall(scratch)
        (top,) = scratch.iterdir()
        yield top


@pytest.fixture
def wheel_venv(built: Built) -> Iterator[Path]:
    """A fresh venv with only the wheel installed; the dependencies come from this environment."""
    with _scratch("ezpool-venv-") as scratch:
        env_dir = scratch / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / "bin" / "python"
        site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=scratch, timeout=60).strip()
        here = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
        # Lines of a .pth only join sys.path: this environment's own .pth files (an
        # editable ezpool among them) are not run, so the wheel's ezpool is the one found.
        Path(site, "zz_dependencies.pth").write_text("\n".join(sorted(here)) + "\n", encoding="utf-8")
        install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir"]
        _run([*install, str(built.wheel)], cwd=scratch, timeout=120, env=_clean_env())
        yield env_dir


def _clean_env() -> dict[str, str]:
    """This environment without anything that points Python at the checkout."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_twine_check_strict_passes_on_both(built: Built) -> None:
    out = _run([sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)],
               cwd=built.source, timeout=120)
    assert out.count("PASSED") == 2, out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_sdist_carries_every_file_its_tests_docs_and_benchmarks_use(built: Built) -> None:
    files = built.sdist_files()
    for needed in [
        "examples/fib.py", "examples/montecarlo_pi.py", "docs/conf.py", "docs/index.rst", "bench/results.png",
        "tests/conftest.py", "noxfile.py", "CHANGELOG.rst", "LICENSE", "README.rst", "pyproject.toml",
        "setup.py", ".ci/run", "ezpool/py.typed",
    ]:
        assert needed in files, needed
    for folder in _SHIPPED_FOLDERS:
        found = (built.source / folder).rglob("*")
        present = {str(path.relative_to(built.source)) for path in found if path.is_file()}
        assert present <= files, sorted(present - files)
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_tests_run_from_the_unpacked_sdist(unpacked_sdist: Path) -> None:
    env = dict(_clean_env(), PYTHONPATH=str(unpacked_sdist))
    chosen = "fib_serial or fib_parallel or montecarlo_serial or readme_example_runs"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", chosen,
               "tests/test_examples.py", "tests/test_docs.py"]
    out = _run(command, cwd=unpacked_sdist, env=env, timeout=300)
    assert "4 passed" in out, out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_wheel_metadata_is_what_pypi_shows(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"ezpool-{ezpool.__version__}.dist-info"
        meta = email.message_from_bytes(wheel.read(f"{dist_info}/METADATA"))
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert meta["Version"] == ezpool.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert f"{dist_info}/licenses/LICENSE" in names
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # deprecated by the SPDX expression
    assert meta["Requires-Python"] == ">=3.9"
    assert {"test", "tls", "docs", "bench"} <= set(meta.get_all("Provides-Extra"))
    assert meta.get_all("Project-URL")
    assert meta["Description-Content-Type"] == "text/x-rst"
    assert meta.get_payload().lstrip().startswith("EzPool\n======")
    assert "ezpool-serve = ezpool.serve:main" in entry_points
    assert "ezpool/py.typed" in names
    assert {name.split("/")[0] for name in names} == {"ezpool", dist_info}  # no tests, no examples


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_wheel_imports_from_a_fresh_venv_and_its_script_serves(wheel_venv: Path, tmp_path: Path) -> None:
    python, script = wheel_venv / "bin" / "python", wheel_venv / "bin" / "ezpool-serve"
    env = _clean_env()
    probe = "import ezpool as e; print(e.__version__, e.__file__, e.Pool().smap(abs, [-3]), sep='\\n')"
    version, where, result = _run([str(python), "-c", probe], cwd=tmp_path, env=env, timeout=60).splitlines()
    assert version == ezpool.__version__
    assert Path(where).is_relative_to(wheel_venv), where
    assert result == "{-3: 3}"

    assert _run([str(script), "--version"], cwd=tmp_path, env=env, timeout=60).split()[:2] == [
        "ezpool", ezpool.__version__
    ]
    assert _run([str(script), "--help"], cwd=tmp_path, env=env, timeout=60).startswith("usage: ezpool-serve ")

    port = free_port()
    worker = subprocess.Popen([str(script), "--port", str(port)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = _until_started(worker, timeout=60)
        assert out == f"PYRO:worker@127.0.0.1:{port}"
        serving = "any function or BaseWorker class a client sends"
        assert err == f"ezpool-serve: serving {serving} at {out}; Ctrl-C to stop"
        worker.send_signal(signal.SIGINT)
        assert worker.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=20)


@pytest.mark.timeout(30)
def test_the_changelog_has_this_version_and_an_unreleased_section() -> None:
    import docutils.core
    import docutils.utils

    text = (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8")
    settings = {"halt_level": docutils.utils.Reporter.WARNING_LEVEL, "report_level": 5}
    docutils.core.publish_doctree(text, settings_overrides=settings)  # valid reStructuredText, or it raises
    headings = [line for line, under in zip(text.splitlines(), text.splitlines()[1:]) if set(under) == {"-"}]
    assert headings[0] == "Unreleased"
    assert headings[1].startswith(f"{ezpool.__version__} - ")


def _until_started(worker: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The worker's URI line (stdout) and its start line (stderr), within ``timeout`` seconds."""
    import selectors

    lines: dict[str, str] = {}
    with selectors.DefaultSelector() as selector:
        selector.register(worker.stdout, selectors.EVENT_READ, "out")
        selector.register(worker.stderr, selectors.EVENT_READ, "err")
        while len(lines) < 2:
            ready = selector.select(timeout)
            assert ready, f"no start within {timeout} s: {lines}"
            for key, _ in ready:
                lines[key.data] = key.fileobj.readline().rstrip("\n")
                selector.unregister(key.fileobj)
    return lines["out"], lines["err"]
