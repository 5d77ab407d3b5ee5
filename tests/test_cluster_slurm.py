"""Workers on a real SLURM: ``ezpool.cluster.Slurm`` from outside, ``workers="slurm"`` inside.

A one-node SLURM 22.05 of the distribution's packages (munged, slurmctld, slurmd) runs
for the session (``tests/slurm.py``); skipped, saying why, where it cannot (not root,
not installed). Every test sees it through ``SLURM_CONF``, and leaves no job behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from ezpool import Pool
from ezpool.cluster import Joining, Slurm
from ezpool.cluster.slurm import Allocation
from ezpool.errors import ClusterError
from tests import hosts
from tests import slurm as local_slurm
from tests.conftest import REPO_ROOT, free_port


@pytest.fixture(scope="session")
def _slurm_daemons():
    """munged, slurmctld and slurmd for the session, once; what dead sessions left is swept first."""
    reason = local_slurm.unavailable()
    if reason:
        pytest.skip(reason)
    local_slurm.sweep()
    with local_slurm.LocalSlurm() as cluster:
        yield cluster


@pytest.fixture
def slurm(_slurm_daemons, monkeypatch, tmp_path):
    """The test SLURM, in this test's environment (and its jobs'); every job is gone afterwards."""
    cluster = _slurm_daemons
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.chdir(tmp_path)
    yield cluster
    cluster.cancel_all()


def _key_file(tmp_path: Path) -> tuple[bytes, Path]:
    key = os.urandom(16).hex().encode()
    path = tmp_path / "key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key, path


# --- bad input: no SLURM needed ---


@pytest.mark.parametrize(("arguments", "named"), [
    ({"jobs": 0}, "jobs=0"),
    ({"cpus": 0}, "cpus=0"),
    ({"procs": -1}, "procs=-1"),
    ({"time": "1:99:00"}, "'1:99:00'"),
    ({"time": "soon"}, "'soon'"),
    ({"time": "00:00:00"}, "'00:00:00'"),
    ({"time": 60}, "60"),
    ({"memory": "lots"}, "'lots'"),
    ({"partition": "de bug"}, "'de bug'"),
    ({"sbatch": ["qos=high"]}, "'qos=high'"),
    ({"sbatch": "--qos=high"}, "'--qos=high'"),
])
@pytest.mark.timeout(10)
def test_bad_arguments_are_refused_naming_the_value(arguments, named):
    with pytest.raises((ValueError, TypeError)) as raised:
        Slurm(**arguments)
    assert named in str(raised.value)


@pytest.mark.timeout(10)
def test_good_times_are_taken_as_slurm_writes_them():
    for time_limit in ("00:01:00", "90", "5:00", "1-12", "1-12:30", "2-00:00:30"):
        assert Slurm(time=time_limit).time == time_limit


@pytest.mark.timeout(10)
def test_workers_slurm_outside_an_allocation_says_what_to_do(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    expected = r"SLURM_JOB_ID is not set: run the script inside sbatch or salloc"
    with pytest.raises(ClusterError, match=expected):
        Allocation().start(Joining("127.0.0.1:1"))


@pytest.mark.timeout(10)
def test_allocation_asks_srun_for_one_worker_per_task_slot_and_passes_the_key_on_stdin():
    joining = Joining("10.0.0.1:4000", key=b"k" * 32)
    command = Allocation().srun_command(joining, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "6",
                                                  "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "2"})
    assert command[0] == "srun" and "--ntasks=6" in command and "--cpus-per-task=2" in command
    assert "--input=all" in command and "--key-stdin" in command and "k" * 32 not in " ".join(command)
    environ = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_CPUS_PER_NODE": "6(x2)"}
    per_node = Allocation(procs_per_node=3).srun_command(joining, environ)
    assert "--ntasks=6" in per_node and "--ntasks-per-node=3" in per_node and "--cpus-per-task=2" in per_node
    crowded = Allocation(procs_per_node=8).srun_command(joining, environ)
    assert "--cpus-per-task=1" in crowded and "--overcommit" in crowded


# --- the job script, and what sbatch refuses before anything waits ---


@pytest.mark.timeout(60)
def test_job_script_shows_what_it_submits_and_never_the_key(slurm, tmp_path):
    key, key_file = _key_file(tmp_path)
    cluster = Slurm(jobs=2, cpus=2, time="00:05:00", partition="debug", memory=100,
                    sbatch=["--comment=from-ezpool", "#SBATCH --nice=0"], setup=["echo set up >&2"],
                    log_dir=tmp_path / "logs")
    before = cluster.job_script()
    assert "--connect POOL-HOST:PORT" in before
    joining = Joining("127.0.0.1:4000", key=key, key_file=str(key_file))
    script = cluster.job_script(joining)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    for option in ("--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--time=00:05:00", "--partition=debug",
                   "--mem=100M", "--comment=from-ezpool", "--nice=0", f"--error={tmp_path / 'logs'}/%j.err"):
        assert f"#SBATCH {option}" in lines, option
    assert lines.index("echo set up >&2") < len(lines) - 1
    worker = lines[-1]
    assert worker.startswith(f"exec {sys.executable} -c ")
    assert f"--connect 127.0.0.1:4000 --procs 2 --hmac-key-file {key_file}" in worker
    assert "--end-at slurm --grace 3" in worker  # KillWait=5 here: the worker is done before SIGKILL
    assert key.decode() not in script
    trial = slurm.run(["sbatch", "--test-only"], input=script, check=False)
    assert trial.returncode == 0, trial.stderr
    array = Slurm(jobs=3, array=True, log_dir=tmp_path / "logs").job_script(joining)
    assert "#SBATCH --array=0-2" in array and f"--error={tmp_path / 'logs'}/%A_%a.err" in array


@pytest.mark.timeout(60)
def test_a_misspelt_partition_fails_at_once_quoting_sbatch(slurm, tmp_path):
    cluster = Slurm(partition="debgu", time="00:05:00")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"sbatch refuses the job script: .*invalid partition.*debgu"):
        cluster.start(Joining("127.0.0.1:4000"))
    assert time.monotonic() - started < 10
    assert slurm.live_jobs() == []
    cluster.stop()
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.name not in ("ezpool", "slurm")]


@pytest.mark.timeout(60)
def test_an_option_sbatch_does_not_know_fails_at_once(slurm, tmp_path):
    cluster = Slurm(sbatch=["--no-such-option=1"], log_dir=tmp_path / "logs")
    with pytest.raises(ClusterError, match=r"unrecognized option.*no-such-option"):
        cluster.start(Joining("127.0.0.1:4000"))
    more_than_there_is = Slurm(cpus=local_slurm.CPUS * 4, log_dir=tmp_path / "logs")
    with pytest.raises(ClusterError, match=r"sbatch refuses.*not available"):
        more_than_there_is.start(Joining("127.0.0.1:4000"))
    assert slurm.live_jobs() == []


def _check_until_error(cluster: Slurm, within: float) -> ClusterError:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            cluster.check()
        except ClusterError as exc:
            return exc
        time.sleep(0.2)
    raise AssertionError(f"check() raised nothing in {within} s; jobs {cluster.job_ids}")


@pytest.mark.timeout(90)
def test_a_job_whose_worker_cannot_start_is_reported_naming_job_node_and_its_error(slurm, tmp_path, caplog):
    missing = str(tmp_path / "no-python-here")
    cluster = Slurm(jobs=2, python=missing, time="00:05:00")
    with caplog.at_level(logging.WARNING, logger="ezpool"):
        cluster.start(Joining("127.0.0.1:4000"))
        jobs = cluster.job_ids
        error = _check_until_error(cluster, within=40)
    cluster.stop()
    assert "every SLURM job of this pool has ended" in str(error)
    assert all(f"job {job} on {local_slurm.NODE} FAILED" in str(error) for job in jobs), error
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for job in jobs:
        said = [m for m in warned if f"SLURM job {job} on {local_slurm.NODE} ended FAILED" in m]
        assert len(said) == 1, warned  # once each
        assert "before its worker joined" in said[0] and "no-python-here" in said[0], said[0]
        kept = re.search(r"the end of (\S+\.err)", said[0])
        assert kept and Path(kept.group(1)).is_file()  # stop() keeps what the warning points to


@pytest.mark.timeout(90)
def test_a_job_that_will_stay_pending_says_why_and_what_to_change(slurm, tmp_path, caplog):
    slurm.run(["scontrol", "create", "PartitionName=short", f"Nodes={local_slurm.NODE}", "MaxTime=1"])
    try:
        cluster = Slurm(partition="short", time="00:05:00", log_dir=tmp_path / "logs")
        with caplog.at_level(logging.WARNING, logger="ezpool"):
            cluster.start(Joining("127.0.0.1:4000"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not caplog.records:
                cluster.check()
                time.sleep(0.2)
        cluster.stop()
        assert slurm.live_jobs() == []
    finally:
        slurm.run(["scontrol", "delete", "PartitionName=short"], check=False)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and re.search(
        r"pending \(Reason=Partition(Config|TimeLimit)\).*lower time=.*partition short: MaxTime=00:01:00",
        said[0],
    ), said


# --- scale and stop: jobs whose workers dial a pool that is not there keep trying, and run ---


@pytest.mark.timeout(90)
def test_scale_submits_more_or_cancels_the_newest_and_stop_cancels_every_job(slurm, tmp_path):
    cluster = Slurm(jobs=1, time="00:05:00", log_dir=tmp_path / "logs")
    cluster.start(Joining(f"127.0.0.1:{free_port()}"))
    first = cluster.job_ids
    cluster.scale(jobs=3)
    assert len(cluster.job_ids) == 3 and cluster.job_ids[0] == first[0] and cluster.expected == 3
    assert sorted(slurm.live_jobs()) == sorted(cluster.job_ids)
    newest = cluster.job_ids[1:]
    cluster.scale(jobs=1)
    assert cluster.job_ids == first
    _wait_until(lambda: not set(newest) & set(slurm.live_jobs()), "scale(jobs=1) cancels the newest", 20)
    cluster.check()  # one job still runs: nothing to raise
    started = time.monotonic()
    cluster.stop()
    assert slurm.live_jobs() == [] and time.monotonic() - started < 16
    assert slurm.job_processes() == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.err"))
    cluster.stop()  # twice is fine


def _wait_until(condition, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.1)


# --- end to end: a pool, its workers on SLURM ---


def _square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def _slow_while(x: int, flag: str) -> int:
    """A task of 0.2 s while the file ``flag`` exists, of nothing after."""
    if os.path.exists(flag):
        time.sleep(0.2)
    return -x


@pytest.mark.timeout(120)
def test_jobs_from_outside_run_a_map_and_are_gone_when_the_pool_closes(slurm, tmp_path):
    cluster = Slurm(jobs=2, cpus=1, time="00:05:00")
    with Pool(mode="distributed", workers=cluster) as pool:
        results = pool.map(_square, range(40))
        jobs = cluster.job_ids
    assert not results.errors, results.errors
    assert dict(results) == {x: x * x for x in range(40)}
    assert len(jobs) == 2, jobs
    assert not set(jobs) & set(slurm.live_jobs()), slurm.jobs()
    assert slurm.job_processes() == []
    assert list((tmp_path / "cache" / "ezpool" / "slurm").iterdir()) == []  # the jobs' output is gone


@pytest.mark.timeout(120)
def test_a_job_array_runs_a_map(slurm, tmp_path):
    cluster = Slurm(jobs=2, time="00:05:00", array=True)
    with Pool(mode="distributed", workers=cluster) as pool:
        results = pool.map(_square, range(20))
        assert all(re.fullmatch(r"\d+_[01]", job) for job in cluster.job_ids), cluster.job_ids
    assert dict(results) == {x: x * x for x in range(20)}
    assert slurm.live_jobs() == [] and slurm.job_processes() == []


@pytest.mark.timeout(120)
def test_scancel_of_one_job_mid_run_loses_nothing_and_charges_no_attempt(slurm, tmp_path):
    cluster = Slurm(jobs=2, cpus=1, time="00:05:00")
    seen: set[str] = set()
    cancelled: list[str] = []

    def watch(outcome, done, total):
        seen.add(outcome.worker)
        if len(seen) == 2 and not cancelled:  # both jobs' workers are at work: cancel one
            cancelled.append(cluster.job_ids[-1])
            slurm.run(["scancel", cancelled[0]])

    with Pool(mode="distributed", workers=cluster) as pool:
        results = pool.map(_square, range(300), progress=watch, max_attempts=1, backup=False)
        assert cancelled, f"only {seen} ran tasks; jobs {slurm.jobs()}"
        assert cancelled[0] not in slurm.live_jobs()
    assert not results.errors, results.errors  # an attempt charged fails the task: max_attempts=1
    assert dict(results) == {x: x * x for x in range(300)}
    assert slurm.live_jobs() == [] and slurm.job_processes() == []


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_job_reaching_its_time_limit_mid_run_loses_nothing(slurm, tmp_path):
    flag = tmp_path / "slow"
    flag.touch()
    cluster = Slurm(jobs=1, cpus=1, time="00:01:00")  # SLURM's least
    tasks = [(x, str(flag)) for x in range(3000)]  # 300 s of work at first: more than the limit
    short: list[str] = []
    other: list[str] = []
    looked = [0.0]

    def watch(outcome, done, total):
        if not other:  # a worker of a job of 10 minutes, submitted by hand, joins too
            short.extend(cluster.job_ids)
            script = cluster.job_script().replace("--time=00:01:00", "--time=00:10:00")
            other.append(slurm.run(["sbatch", "--parsable"], input=script).stdout.strip())
        if flag.exists() and time.monotonic() - looked[0] > 0.5:
            looked[0] = time.monotonic()
            if short[0] not in slurm.live_jobs():  # the job of 1 minute has ended: the rest take no time
                flag.unlink()

    with Pool(mode="distributed", workers=cluster) as pool:
        results = pool.map(_slow_while, tasks, progress=watch, max_attempts=1, backup=False)
    assert not results.errors, list(results.errors.items())[:3]  # max_attempts=1: a charged attempt fails
    assert not flag.exists(), "the job of 1 minute did not end"
    assert dict(results) == {task: -task[0] for task in tasks}
    assert slurm.live_jobs() == other  # the job submitted by hand is the test's to cancel


_CLIENT = '''
import json, os, sys, time
from ezpool import Pool

PROCS_PER_NODE = int(sys.argv[2]) if len(sys.argv) > 2 else None

def square(x):
    time.sleep(0.05)
    return x * x

def serving_processes():
    """ezpool-serve processes of this SLURM job, still alive."""
    mine = "SLURM_JOB_ID=" + os.environ["SLURM_JOB_ID"]
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\\0")
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if mine in environ and "ezpool.serve" in command and not command.startswith("srun"):
            found.append(pid)
    return found

if __name__ == "__main__":
    with Pool(mode="distributed", workers="slurm", procs_per_node=PROCS_PER_NODE) as pool:
        results = pool.map(square, range(40))
        during = len(serving_processes())
    json.dump({"results": {str(k): v for k, v in results.items()}, "errors": len(results.errors),
               "during": during, "after": serving_processes()}, open(sys.argv[1], "w"))
'''


def _check_client_output(path: Path, workers: int) -> None:
    import json

    out = json.loads(path.read_text())
    assert out["results"] == {str(x): x * x for x in range(40)} and out["errors"] == 0
    assert out["during"] == workers  # every task slot got a worker
    assert out["after"] == []  # and none outlives the pool


def _job_ends_with_nothing_left(slurm) -> None:
    """The job (which ends as salloc or sbatch --wait returns) leaves SLURM's queue, and no
    process of it is left."""
    _wait_until(lambda: not slurm.live_jobs(), "the job leaves the queue", 20)
    assert slurm.job_processes() == []


@pytest.mark.timeout(120)
def test_workers_slurm_inside_sbatch(slurm, tmp_path):
    (tmp_path / "client.py").write_text(_CLIENT)
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/sh\n#SBATCH --ntasks=3\n#SBATCH --time=00:05:00\n#SBATCH --output={tmp_path}/job.out\n"
        f"exec {sys.executable} client.py {tmp_path}/out.json\n"
    )
    done = slurm.run(["sbatch", "--wait", str(script)], check=False, timeout=100)
    assert done.returncode == 0, (done.stderr, (tmp_path / "job.out").read_text())
    _check_client_output(tmp_path / "out.json", workers=3)
    _job_ends_with_nothing_left(slurm)


@pytest.mark.timeout(120)
def test_workers_slurm_inside_salloc(slurm, tmp_path):
    (tmp_path / "client.py").write_text(_CLIENT)
    done = slurm.run(["salloc", "--ntasks=2", "--time=00:05:00", sys.executable, "client.py",
                      str(tmp_path / "out.json")], check=False, timeout=100)
    assert done.returncode == 0, done.stderr
    _check_client_output(tmp_path / "out.json", workers=2)
    _job_ends_with_nothing_left(slurm)


@pytest.mark.timeout(120)
def test_workers_slurm_with_procs_per_node_inside_salloc(slurm, tmp_path):
    (tmp_path / "client.py").write_text(_CLIENT)
    done = slurm.run(["salloc", "--ntasks=1", "--cpus-per-task=4", "--time=00:05:00", sys.executable,
                      "client.py", str(tmp_path / "out.json"), "4"], check=False, timeout=100)
    assert done.returncode == 0, done.stderr
    _check_client_output(tmp_path / "out.json", workers=4)
    _job_ends_with_nothing_left(slurm)


@pytest.mark.timeout(120)
def test_a_job_of_several_cpus_runs_a_worker_process_on_each(slurm, tmp_path):
    cluster = Slurm(jobs=1, cpus=3, time="00:05:00", log_dir=tmp_path / "logs")
    with Pool(mode="distributed", workers=cluster) as pool:
        results = pool.map(_square, range(120))
        job = cluster.job_ids[0]
    assert dict(results) == {x: x * x for x in range(120)}
    said = (tmp_path / "logs" / f"{job}.err").read_text()
    assert said.count("joined the pool at") == 3, said  # --procs 3: each process dials in


_BROKEN_CLIENT = '''
import logging, sys
from ezpool import Pool
from ezpool.cluster.slurm import Allocation
from ezpool.errors import ClusterError

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        with Pool(mode="distributed", workers=Allocation(python=sys.argv[1])) as pool:
            pool.map(abs, range(4))
    except ClusterError as exc:
        print("ClusterError:", exc)
'''


@pytest.mark.timeout(90)
def test_in_an_allocation_a_worker_that_cannot_start_is_reported_at_once_naming_its_node(slurm, tmp_path):
    (tmp_path / "client.py").write_text(_BROKEN_CLIENT)
    started = time.monotonic()
    done = slurm.run(["salloc", "--ntasks=2", "--time=00:05:00", sys.executable, "client.py",
                      str(tmp_path / "no-python-here")], check=False, timeout=80)
    assert time.monotonic() - started < 30
    assert "ClusterError: srun, which ran the workers of SLURM job" in done.stdout, (done.stdout, done.stderr)
    warned = re.findall(r"WARNING:ezpool.cluster.slurm_allocation:(.*)", done.stderr)
    assert warned and f"on {local_slurm.NODE}" in warned[0], done.stderr
    assert "no-python-here" in done.stderr and "No such file" in done.stderr, done.stderr
    _job_ends_with_nothing_left(slurm)


_INTERRUPTED_CLIENT = '''
import faulthandler, signal, sys, time
from ezpool import Pool
faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if it hangs
# Ctrl-C raises KeyboardInterrupt even where this was started with SIGINT ignored (a shell's
# background job: Python then keeps it ignored, and the Ctrl-C below would be lost).
signal.signal(signal.SIGINT, signal.default_int_handler)
from ezpool.cluster import Slurm

def slow(x):
    time.sleep(0.5)
    return x

if __name__ == "__main__":
    say = lambda outcome, done, total: print("running", flush=True) if done == 1 else None
    with Pool(mode="distributed", workers=Slurm(jobs=2, time="00:05:00")) as pool:
        pool.map(slow, range(1000), progress=say)
'''


@pytest.mark.timeout(120)
def test_ctrl_c_of_the_client_leaves_no_job_and_no_process(slurm, tmp_path):
    import signal
    import subprocess

    (tmp_path / "client.py").write_text(_INTERRUPTED_CLIENT)
    client = subprocess.Popen([sys.executable, "client.py"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert client.stdout is not None and client.stdout.readline() == "running\n", client.stderr
        assert len(slurm.live_jobs()) == 2
        client.send_signal(signal.SIGINT)
        try:
            _, stderr = client.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            client.send_signal(signal.SIGUSR1)
            time.sleep(2)
            client.kill()
            _, stderr = client.communicate()
            pytest.fail(f"the client did not end within 40 s of Ctrl-C; its threads then:\n{stderr}")
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert "KeyboardInterrupt" in stderr
    assert slurm.live_jobs() == [], "the client's jobs are still in squeue"
    assert slurm.job_processes() == []


# --- two nodes: a slurmd in each of two network namespaces ("hosts", tests/hosts.py) ---


@pytest.fixture(scope="module")
def _two_nodes():
    """A SLURM of two nodes, node1 and node2, each a netns host with its own host name; the
    controller and the clients here, at the network's service address."""
    reason = local_slurm.unavailable() or hosts.unavailable()
    if not reason and not (shutil.which("unshare") and shutil.which("nsenter")):
        reason = "unshare or nsenter is missing (util-linux): the nodes need them"
    if reason:
        pytest.skip(reason)
    hosts.sweep()
    with hosts.Network(2) as network, local_slurm.LocalSlurm(cpus=4, network=network) as cluster:
        yield cluster


@pytest.fixture
def two_nodes(_two_nodes, monkeypatch, tmp_path):
    """The two-node SLURM, in this test's environment; every job is gone afterwards."""
    monkeypatch.setenv("SLURM_CONF", str(_two_nodes.conf))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.chdir(tmp_path)
    yield _two_nodes
    _two_nodes.cancel_all()


def _node_name(x: int) -> str:
    time.sleep(0.05)
    return socket.gethostname()


_NODES_CLIENT = '''
import json, socket, sys, time
from ezpool import Pool

def where(x):
    time.sleep(0.05)
    return socket.gethostname()

if __name__ == "__main__":
    with Pool(mode="distributed", workers="slurm") as pool:
        results = pool.map(where, range(40))
    json.dump({"nodes": sorted(set(results.values())), "errors": len(results.errors)}, open(sys.argv[1], "w"))
'''


@pytest.mark.timeout(120)
def test_workers_slurm_inside_sbatch_on_two_nodes(two_nodes, tmp_path):
    import json

    (tmp_path / "client.py").write_text(_NODES_CLIENT)
    done = two_nodes.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=2", "--time=00:05:00",
                          f"--output={tmp_path}/job.out", "--wrap", f"{sys.executable} client.py out.json"],
                         check=False, timeout=100)
    assert done.returncode == 0, (done.stderr, (tmp_path / "job.out").read_text())
    assert json.loads((tmp_path / "out.json").read_text()) == {"nodes": ["node1", "node2"], "errors": 0}
    _job_ends_with_nothing_left(two_nodes)


@pytest.mark.timeout(120)
def test_jobs_from_outside_run_on_two_nodes(two_nodes, tmp_path):
    listen = f"{two_nodes.network.service_address}:0"  # the one address here the hosts reach
    cluster = Slurm(jobs=2, cpus=3, time="00:05:00")  # 3 of each node's 4 CPUs: one job a node
    with Pool(mode="distributed", workers=cluster, listen=listen) as pool:
        results = pool.map(_node_name, range(40))
    assert sorted(set(results.values())) == ["node1", "node2"] and not results.errors
    assert two_nodes.live_jobs() == [] and two_nodes.job_processes() == []
