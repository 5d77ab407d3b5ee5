"""ezpool._core.progress: the tqdm bar on stderr, and when it is shown."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import textwrap
import time

import pytest

from ezpool import Pool
from tests import _helpers as h

MODES = [("smap", {}), ("pmap", {"ncpu": 2, "start_method": "fork"})]
MODE_IDS = ["smap", "pmap-fork"]


@pytest.mark.parametrize(("method", "extra"), MODES, ids=MODE_IDS)
def test_progress_false_shows_nothing(capfd, method, extra):
    with Pool() as pool:
        results = getattr(pool, method)(h.fail_on_odd, range(6), progress=False, msg="Quiet please", **extra)
    assert len(results.errors) == 3
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.parametrize(("method", "extra"), MODES, ids=MODE_IDS)
def test_progress_none_shows_nothing_when_stderr_is_not_a_terminal(capfd, method, extra):
    with Pool() as pool:
        getattr(pool, method)(h.square, range(6), msg="Not a terminal", **extra)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(("method", "extra"), MODES, ids=MODE_IDS)
def test_progress_true_draws_a_bar_with_the_label_and_the_failures(capfd, method, extra):
    with Pool() as pool:
        getattr(pool, method)(h.fail_on_odd, range(7), progress=True, msg="Computation process", **extra)
    out, err = capfd.readouterr()
    assert out == ""
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("Computation process")
    assert "7/7" in final and "100%" in final
    assert "failed=3" in final


def test_a_pool_wide_progress_default_applies_to_every_call(capfd):
    with Pool(progress=True, msg="Pool label") as pool:
        pool.smap(h.square, range(3))
        pool.smap(h.square, range(2), msg="Call label")
    err = capfd.readouterr().err
    assert "Pool label" in err and "3/3" in err and "Call label" in err and "2/2" in err


_SCRIPT = textwrap.dedent(
    """
    import sys
    from ezpool import Pool
    from tests._helpers import square

    with Pool() as pool:
        pool.smap(square, range(5), msg="Shown on a terminal")
    print("done", flush=True)
    """
)


def _run_with_stderr_on_a_terminal(python: str, env: dict) -> str:
    controller, terminal = pty.openpty()
    # a new pty is 0 columns wide, and tqdm would cut its bar to nothing
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        child = subprocess.Popen(
            [python, "-c", _SCRIPT],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            stdin=subprocess.DEVNULL,
        )
        os.close(terminal)
        terminal = -1
        chunks: list[bytes] = []
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([controller], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(controller, 4096)
                    except OSError:  # the child closed its end
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif child.poll() is not None:
                    break
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


def test_progress_none_draws_the_bar_when_stderr_is_a_terminal(core_python, core_child_env):
    shown = _run_with_stderr_on_a_terminal(core_python, core_child_env)
    assert "Shown on a terminal" in shown and "5/5" in shown


def test_the_progress_hook_runs_in_the_calling_process_for_every_task():
    calls: list[tuple[int, int, int]] = []
    with Pool() as pool:
        pool.pmap(
            h.square,
            range(20),
            ncpu=2,
            start_method="fork",
            progress=lambda outcome, done, total: calls.append((os.getpid(), done, total)),
        )
    assert calls == [(os.getpid(), done, 20) for done in range(1, 21)]


_LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from ezpool import Pool
    from tests._helpers import square

    logging.getLogger("ezpool").setLevel(logging.INFO)  # to hear of the worker the pool starts
    with Pool(progress=True, msg="Label") as pool:
        pool.dmap(square, range(20), workers=[sys.argv[1]], spawn=True)  # logs that it starts one
    logging.getLogger("ezpool.test").warning("after the bar: handlers %s", logging.getLogger().handlers)
    """
)


def rendered(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return writes over the line."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return [line for line in lines if line]


@pytest.mark.timeout(90)
def test_ezpool_log_lines_go_above_the_bar_and_logging_is_restored_after(core_python, core_child_env):
    from tests.conftest import free_port

    uri = f"PYRO:worker@127.0.0.1:{free_port()}"
    done = subprocess.run(
        [core_python, "-c", _LOGGING_SCRIPT, uri],
        capture_output=True, text=True, timeout=60, env=core_child_env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    lines = rendered(done.stderr)
    # The warning is a line of its own, not glued to the bar drawn before it.
    assert f"no worker answers at {uri}: starting one there for this pool" in lines, lines
    assert any(line.startswith("Label: 100%") and "20/20" in line for line in lines), lines
    # After the call the root logger has its handlers back (none), and logs as before.
    assert lines[-1] == "after the bar: handlers []", lines
