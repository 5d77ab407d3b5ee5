"""A script without ``if __name__ == "__main__":`` under ``spawn`` or ``forkserver``: its worker
processes run it again, meet the pool's call, and leave quietly (``processes.leave_if_starting``);
the caller ends with one message (``MainNotGuarded``), the first worker's fate in one more
line, and no traceback from anyone."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: No main guard: every worker process runs the pool's call again as it starts.
_UNGUARDED = """
    import sys
    from ezpool import Pool

    def square(x):
        return x * x

    print(Pool(mode="parallel", start_method=sys.argv[1], ncpu=2, progress=False).map(square, range(10)))
"""

#: The same, guarded, and catching the error as any other exception (it is a WorkerCrashed).
_CAUGHT = """
    import sys
    from ezpool import MainNotGuarded, Pool, WorkerCrashed

    def square(x):
        return x * x

    pool = Pool(mode="parallel", start_method=sys.argv[1], ncpu=2, progress=False)
    try:
        pool.map(square, range(10))
    except WorkerCrashed as exc:
        print("caught", isinstance(exc, MainNotGuarded), isinstance(exc, SystemExit))
    finally:
        pool.shutdown()
"""


def _run(source: str, start_method: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"this platform has no {start_method} start method")
    script = folder / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script), start_method], capture_output=True, text=True,
                          timeout=100, env=env, cwd=folder)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_script_without_a_main_guard_ends_with_one_message(
    start_method: str, tmp_path: Path, core_child_env: dict[str, str]
) -> None:
    done = _run(_UNGUARDED, start_method, tmp_path, core_child_env)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr, done.stderr
    assert len(lines) == 2, done.stderr  # was 64 to 164 lines of the workers' tracebacks
    assert f"the {start_method!r} start method runs the main script again" in lines[0]
    assert 'Put that work under if __name__ == "__main__":' in lines[0]
    assert lines[1].startswith("  the first worker process, pid ")
    assert f"{tmp_path / 'script.py'}, line 8: print(Pool(" in lines[1]
    assert done.stdout == "", done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_the_error_is_caught_as_a_worker_crash(
    start_method: str, tmp_path: Path, core_child_env: dict[str, str]
) -> None:
    done = _run(_CAUGHT, start_method, tmp_path, core_child_env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == "caught True True\n", done.stdout
