"""The recipes of docs/cluster.rst, run as written (the SLURM and SSH ones against a real
SLURM and a real sshd, in tests/test_cluster_slurm.py and tests/test_cluster_ssh.py)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

PAGE = REPO_ROOT / "docs" / "cluster.rst"


def section_blocks(label: str, page: Path = PAGE) -> list[tuple[str, str]]:
    """The ``(language, body)`` of each code block in the section that ``.. _label:`` starts."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = lines.index(f".. _{label}:")
    blocks: list[tuple[str, str]] = []
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if line.startswith(".. _") and line.endswith(":") and number > start + 1:
            break
        if not line.startswith(".. code-block:: "):
            continue
        body = []
        for following in lines[number + 1:]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        blocks.append((line.split()[-1], textwrap.dedent("\n".join(body)).strip("\n")))
    return blocks


def console_commands(block: str) -> list[str]:
    """The commands of a ``console`` block (after each ``host$`` prompt)."""
    return [line.split("$ ", 1)[1] for line in block.splitlines() if "$ " in line]


def test_the_dial_in_recipe_runs_as_written(tmp_path, core_child_env):
    (_, script), (_, console) = section_blocks("dial-in")
    (command,) = console_commands(console)
    argv = shlex.split(command)
    assert argv[:3] == ["ezpool-serve", "--connect", "pool.json"]
    argv = [sys.executable, "-m", "ezpool.serve", *argv[1:]]
    argv[argv.index("--procs") + 1] = "2"  # 16 in the docs; two cores here
    (tmp_path / "sweep.py").write_text(script)
    env = dict(core_child_env, PYTHONPATH=str(REPO_ROOT))
    workers = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        done = subprocess.run([sys.executable, "sweep.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("10000 tasks, 0 failed"), done.stdout
        _, err = workers.communicate(timeout=30)  # they leave when the pool closes
        assert workers.returncode == 0, err
        assert err.count("joined the pool at") == 2, err
    finally:
        if workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.communicate()
