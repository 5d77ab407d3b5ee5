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
        # A process that joined leaves when the pool closes; one that looked for pool.json
        # only after the pool had come and gone (10,000 tiny tasks take 0.1 s) waits for the
        # next pool: SIGTERM, as a job's end sends, stops it.
        try:
            _, err = workers.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            workers.send_signal(signal.SIGTERM)
            _, err = workers.communicate(timeout=30)
        assert workers.returncode == 0, err
        assert "joined the pool at" in err, err
    finally:
        if workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.communicate()


# --- SLURM: against the real one-node SLURM of tests/slurm.py ---------------------------

from tests.test_cluster_slurm import _slurm_daemons, slurm  # noqa: E402,F401 - the fixtures


def _sweep_script(label: str) -> str:
    """The ``sweep.py`` of a section, its summary on stdout as written."""
    (script,) = [body for language, body in section_blocks(label) if language == "python"]
    assert script.startswith("# sweep.py")
    return script


@pytest.mark.timeout(150)
def test_the_sbatch_recipe_runs_as_written(slurm, tmp_path):  # noqa: F811
    (batch,) = [body for language, body in section_blocks("slurm") if language == "bash"]
    assert "#SBATCH --ntasks=64" in batch and batch.rstrip().endswith("python sweep.py")
    batch = batch.replace("--ntasks=64", "--ntasks=3")  # the test SLURM has 8 CPUs
    batch = batch.replace("python sweep.py", f"{sys.executable} sweep.py")
    batch = batch.replace("#SBATCH --time", f"#SBATCH --output={tmp_path}/job.out\n#SBATCH --time")
    (tmp_path / "sweep.sbatch").write_text(batch)
    (tmp_path / "sweep.py").write_text(_sweep_script("slurm"))
    done = slurm.run(["sbatch", "--wait", "sweep.sbatch"], check=False, timeout=120)
    out = (tmp_path / "job.out").read_text()
    assert done.returncode == 0, (done.stderr, out)
    assert "10000 tasks, 0 failed" in out, out
    assert (tmp_path / "sweep.db").exists()  # what finished is on disk
    assert slurm.job_processes() == []


@pytest.mark.timeout(150)
def test_the_salloc_recipe_runs_as_written(slurm, tmp_path):  # noqa: F811
    (console,) = [body for language, body in section_blocks("slurm") if language == "console"]
    (command,) = console_commands(console)
    argv = shlex.split(command)
    assert argv[0] == "salloc" and argv[-2:] == ["python", "sweep.py"]
    (tmp_path / "sweep.py").write_text(_sweep_script("slurm"))
    done = slurm.run([*argv[:-2], sys.executable, "sweep.py"], check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "10000 tasks, 0 failed" in done.stdout, done.stdout


@pytest.mark.timeout(150)
def test_the_login_node_recipe_runs_as_written(slurm, tmp_path):  # noqa: F811
    script = _sweep_script("slurm-jobs")
    assert "Slurm(jobs=4, cpus=16, time=\"02:00:00\")" in script
    script = script.replace("jobs=4, cpus=16", "jobs=2, cpus=1")  # the test SLURM has 8 CPUs
    (tmp_path / "sweep.py").write_text(script)
    done = subprocess.run([sys.executable, "sweep.py"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("10000 tasks, 0 failed"), done.stdout
    assert slurm.live_jobs() == []  # cancelled when the pool closed


@pytest.mark.timeout(150)
def test_a_script_that_never_closes_its_pool_leaves_no_job(slurm, tmp_path):  # noqa: F811
    (tmp_path / "left_open.py").write_text(textwrap.dedent('''
        from ezpool import Pool
        from ezpool.cluster import Slurm

        pool = Pool(mode="distributed", workers=Slurm(jobs=1, time="00:05:00"))
        print(pool.map(abs, [-1, -2]), flush=True)
        # neither shutdown() nor a with block: the interpreter just ends
    '''))
    done = subprocess.run([sys.executable, "left_open.py"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{-1: 1, -2: 2}")
    assert slurm.live_jobs() == []
    assert slurm.job_processes() == []


@pytest.mark.timeout(150)
def test_when_every_job_is_cancelled_the_call_returns_with_every_task(slurm, tmp_path):  # noqa: F811
    from ezpool import Pool, WorkerCrashed
    from ezpool.cluster import Slurm

    cluster = Slurm(jobs=1, time="00:05:00", log_dir=tmp_path / "logs")

    def cancel_when_running():
        import time

        while not cluster.job_ids or slurm.jobs().get(cluster.job_ids[0]) != "RUNNING":
            time.sleep(0.2)
        time.sleep(3)
        slurm.run(["scancel", cluster.job_ids[0]])

    import threading

    with Pool(mode="distributed", workers=cluster, heartbeat=3.0) as pool:
        threading.Thread(target=cancel_when_running, daemon=True).start()
        results = pool.map(_nap, [0.2 + i * 1e-6 for i in range(200)])  # 40 s on one worker
    assert len(results) == 200
    done = [task for task in results if task not in results.errors]
    assert done, "no task finished before the job was cancelled"
    assert results.errors and all(isinstance(error, WorkerCrashed) for error in results.errors.values())


def _nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


# --- SSH: against real sshd servers in network-namespace hosts (tests/sshd.py) --------------

from tests.test_cluster_ssh import _ready, ssh_network, ssh_servers  # noqa: E402,F401 - the fixtures


@pytest.mark.timeout(120)
def test_the_ssh_recipe_runs_as_written(ssh_servers, ssh_network, tmp_path):  # noqa: F811
    script = _sweep_script("ssh-hosts")
    written = 'workers=SSH(["crunch1", "crunch2:8"])'
    assert written in script
    # The test's hosts, and the address they reach this machine at (they have no other route).
    ours = (f'workers=SSH(["h0", "h1:2"], ssh_options={ssh_servers.ssh_options!r}), '
            f'listen="{ssh_network.service_address}:0"')
    (tmp_path / "sweep.py").write_text(script.replace(written, ours))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "sweep.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("10000 tasks, 0 failed"), done.stdout
