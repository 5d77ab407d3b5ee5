"""Workers on a real SLURM: ``ezpool.cluster.Slurm`` from outside, ``workers="slurm"`` inside.

A one-node SLURM 22.05 of the distribution's packages (munged, slurmctld, slurmd) runs
for the session (``tests/slurm.py``); skipped, saying why, where it cannot (not root,
not installed). Every test sees it through ``SLURM_CONF``, and leaves no job behind.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest

from ezpool.cluster import Joining, Slurm
from ezpool.cluster.slurm import Allocation
from ezpool.errors import ClusterError
from tests import slurm as local_slurm
from tests.conftest import REPO_ROOT


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
    per_node = Allocation(procs_per_node=3).srun_command(joining, {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2"})
    assert "--ntasks=6" in per_node and "--ntasks-per-node=3" in per_node


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
    cluster = Slurm(partition="debgu", time="00:05:00", log_dir=tmp_path / "logs")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"sbatch refuses the job script: .*invalid partition.*debgu"):
        cluster.start(Joining("127.0.0.1:4000"))
    assert time.monotonic() - started < 10
    assert slurm.live_jobs() == []
    cluster.stop()


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
    cluster = Slurm(jobs=2, python=missing, time="00:05:00", log_dir=tmp_path / "logs")
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
