"""Workers on SLURM: batch jobs submitted from a login node (``Slurm``), or one ``srun`` inside
the allocation the script runs in (``Allocation``, what ``workers="slurm"`` becomes).

``Slurm`` submits ``jobs`` batch jobs (or one job array), each running one
``ezpool-serve --connect`` with ``procs`` processes on ``cpus`` CPUs of one node. The
worker finds the key as any ``ezpool-serve`` does (the pool's key file, named on its
command line, else the user's own); the key is never written into the job script.
The jobs' output goes to a private folder::

    Slurm.start(joining)
      sbatch --test-only  < script      a misspelt partition or option: ClusterError, now
      sbatch --parsable   < script      once a job (or once, with --array=0-N)
    Slurm.check()                       at most every 2 s, then every 10 s once all run
      squeue -j IDS --states=all        a job that stays pending for a reason that will not
                                          pass: one warning saying what to change
      scontrol show job ID              a job that ended by itself: its state, node, exit code,
                                          and the last lines of LOG_DIR/ID.err, logged once;
                                          ClusterError once no job is left that could join
    Slurm.scale(jobs=N)                 sbatch more, or scancel the newest
    Slurm.stop()                        scancel every job, wait until SLURM has ended them

Workers get ``--end-at slurm`` (they stop taking chunks they could not finish before
the job's time limit) and a ``--grace`` below the cluster's ``KillWait``, so that a
worker told to stop by ``scancel`` or the time limit hands back its chunk before
SLURM kills it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from .._core.logs import get_logger
from .._core.private import make_private_dir
from ..errors import ClusterError
from . import slurm_jobs as sj
from .base import Cluster, Joining, shell_line, worker_command
from .slurm_allocation import Allocation

logger = get_logger(__name__)

__all__ = ["Slurm", "Allocation"]

#: What a worker prints on stderr once it has joined (so its job's .err file says so).
_JOINED = "joined the pool at"
#: Seconds between looks at the queue: soon after a submission, and once all run.
_POLL_SOON, _POLL_LATER, _SOON = 2.0, 10.0, 60.0
#: Seconds ``stop`` waits for SLURM to end the jobs it cancels.
_STOP_WAIT = 15.0
#: The grace given to workers when SLURM's KillWait cannot be read.
_DEFAULT_GRACE = 10


class Slurm(Cluster):
    """Workers in SLURM batch jobs, submitted from here; pass it as ``Pool(workers=...)``.

    Args:
        jobs: how many jobs (each one worker on one node).
        cpus: CPUs per job (``--cpus-per-task``).
        time: each job's time limit, ``"HH:MM:SS"`` (``None``: the partition's default).
        partition: the partition (``None``: the cluster's default).
        memory: memory per job (``"4G"``, or a number of megabytes; ``None``: the default).
        procs: worker processes per job (``None``: ``cpus``).
        sbatch: more sbatch options, each a flag (``"--qos=high"``) or an ``#SBATCH`` line.
        python: the interpreter on the compute nodes.
        serve_args: more ``ezpool-serve`` arguments.
        setup: shell lines the job runs before the worker (``"module load python"``).
        array: submit the jobs as one job array.
        log_dir: where the jobs' output goes (``None``: a private folder under
            ``~/.cache/ezpool/slurm``, removed by ``stop()`` unless a job failed before its
            worker joined); it must be on a file system the compute nodes share.
    """

    def __init__(
        self,
        jobs: int = 1,
        cpus: int = 1,
        time: Optional[str] = None,
        partition: Optional[str] = None,
        memory: Union[str, int, None] = None,
        procs: Optional[int] = None,
        sbatch: Sequence[str] = (),
        python: str = sys.executable,
        serve_args: Sequence[str] = (),
        setup: Sequence[str] = (),
        array: bool = False,
        log_dir: Union[str, os.PathLike[str], None] = None,
    ) -> None:
        self._jobs = _count("jobs", jobs)
        self.cpus = _count("cpus", cpus)
        self.time = sj.check_time(time)
        named = isinstance(partition, str) and re.fullmatch(r"[\w.,-]+", partition)
        if partition is not None and not named:
            raise ValueError(f"partition={partition!r} is not a partition name")
        self.partition = partition
        self.memory = sj.check_memory(memory)
        self.procs = self.cpus if procs is None else _count("procs", procs)
        self.sbatch = [_sbatch_option(line) for line in _strings("sbatch", sbatch)]
        self.python = python
        self.serve_args = _strings("serve_args", serve_args)
        self.setup = _strings("setup", setup)
        self.array = bool(array)
        self._own_logs = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else _default_log_dir()
        self._joining: Optional[Joining] = None
        self._grace: Optional[int] = None
        self._lock = threading.RLock()
        self._live: list[str] = []  # jobs (or array tasks) that may still run a worker, oldest first
        self._ended: dict[str, sj.JobInfo] = {}
        self._cancelled: set[str] = set()
        self._warned: set[str] = set()
        self._next_look = 0.0
        self._last_submit = 0.0
        self._stopped = False
        self._keep_logs = False

    def __repr__(self) -> str:
        return (f"Slurm(jobs={self._jobs}, cpus={self.cpus}, time={self.time!r}, "
                f"partition={self.partition!r}, procs={self.procs})")

    @property
    def expected(self) -> int:
        return self._jobs * self.procs

    @property
    def job_ids(self) -> list[str]:
        """The jobs (or array tasks, ``ID_INDEX``) submitted that have not ended, oldest first."""
        with self._lock:
            return list(self._live)

    # --- the script ---

    def job_script(self, joining: Optional[Joining] = None) -> str:
        """The script ``start`` submits (for a job array: the one it submits first).

        Before the pool has started, the address it dials is a placeholder.
        """
        return self._script(joining or self._joining, self._jobs)

    def _script(self, joining: Optional[Joining], count: int) -> str:
        shown = joining or Joining(address="POOL-HOST:PORT")
        serve = ["--end-at", "slurm", "--grace", str(self._worker_grace()), *self.serve_args]
        command = worker_command(shown, python=self.python, procs=self.procs, serve_args=serve)
        output = "%A_%a" if self.array else "%j"
        options = ["--job-name=ezpool-worker", "--nodes=1", "--ntasks=1", f"--cpus-per-task={self.cpus}"]
        options += [f"--time={self.time}"] * (self.time is not None)
        options += [f"--partition={self.partition}"] * (self.partition is not None)
        options += [f"--mem={self.memory}"] * (self.memory is not None)
        options += [f"--array=0-{count - 1}"] * self.array
        options += [f"--output={self.log_dir / output}.out", f"--error={self.log_dir / output}.err"]
        lines = ["#!/bin/sh", *(f"#SBATCH {option}" for option in [*options, *self.sbatch])]
        lines += list(self.setup)
        lines.append("# The worker dials in to the pool; it reads the key where ezpool-serve finds it.")
        lines.append("exec " + shell_line(command))
        return "\n".join(lines) + "\n"

    def _worker_grace(self) -> int:
        """Seconds a stopped worker may take, within SLURM's KillWait (read once)."""
        if self._grace is None:
            self._grace = _DEFAULT_GRACE
            try:
                done = sj.run(["scontrol", "show", "config"], timeout=20)
                found = re.search(r"^KillWait\s*=\s*(\d+)", done.stdout, re.MULTILINE)
                if found:
                    self._grace = max(1, int(found.group(1)) * 3 // 4)
            except ClusterError as exc:
                logger.debug("cannot read KillWait (%s): workers get --grace %d", exc, self._grace)
        return self._grace

    # --- the cluster ---

    def start(self, joining: Joining) -> None:
        with self._lock:
            if self._joining is not None:
                raise ClusterError("this Slurm has started already: a Slurm serves one pool")
            self._joining = joining
            make_private_dir(self.log_dir, "the SLURM jobs' output")
            trial = sj.run(["sbatch", "--test-only"], input=self._script(joining, self._jobs))
            if trial.returncode:
                if self._own_logs:
                    shutil.rmtree(self.log_dir, ignore_errors=True)
                raise ClusterError(
                    f"sbatch refuses the job script: {sj.said(trial)} (the script: Slurm(...).job_script())"
                )
            logger.debug("sbatch --test-only: %s", sj.said(trial))
            try:
                self._submit(self._jobs)
            except BaseException:
                self._cancel(list(self._live))
                raise

    def _submit(self, count: int) -> None:
        assert self._joining is not None
        rounds = [count] if self.array else [1] * count
        for size in rounds:
            done = sj.run(["sbatch", "--parsable"], input=self._script(self._joining, size))
            if done.returncode:
                raise ClusterError(f"sbatch refuses the job: {sj.said(done)}")
            job = done.stdout.strip().split(";")[0]
            self._live += [f"{job}_{i}" for i in range(size)] if self.array else [job]
            logger.debug("submitted SLURM job %s (%d worker(s))", job, size)
        self._last_submit = self._next_look = time.monotonic()

    def check(self) -> None:
        with self._lock:
            if self._joining is None or self._stopped:
                return
            now = time.monotonic()
            if now >= self._next_look and self._live:
                soon = now - self._last_submit < _SOON
                self._next_look = now + (_POLL_SOON if soon else _POLL_LATER)
                self._look()
            if not self._live and self._ended and self._jobs > 0:
                raise ClusterError(
                    "every SLURM job of this pool has ended, and none is left that could start a "
                    f"worker: {self._summary()}; submit more with scale(jobs=N)"
                )

    def _look(self) -> None:
        listed = sj.query(self._live)
        if listed is None:
            return
        pending_long = False
        for job in list(self._live):
            info = listed.get(job)
            if info is None or sj.is_over(info.state):
                self._live.remove(job)
                self._ended[job] = sj.ended_info(job, info.state if info else "GONE")
                self._report_end(self._ended[job])
            elif info.state == "PENDING":
                pending_long = True
                self._warn_pending(info)
        if pending_long:
            self._next_look = min(self._next_look, time.monotonic() + _POLL_SOON)

    def _report_end(self, info: sj.JobInfo) -> None:
        if info.job in self._cancelled:
            return
        where = f" on {info.node}" if info.node else ""
        code = f", exit code {info.exit_code}" if info.exit_code not in ("", "0:0") else ""
        err = self.log_dir / f"{info.job}.err"
        lines = sj.tail(err)
        joined = any(_JOINED in line for line in sj.tail(err, lines=10**6, limit=1 << 20))
        if joined:
            logger.info("SLURM job %s%s ended (%s%s)", info.job, where, info.state, code)
            return
        self._keep_logs = True  # its .err file stays, for whoever reads this warning
        said = (":\n    " + "\n    ".join(lines)) if lines else f" (nothing in {err})"
        reason = f", reason {info.reason}" if info.reason not in ("None", "") else ""
        logger.warning("SLURM job %s%s ended %s%s%s, before its worker joined; the end of %s%s",
                       info.job, where, info.state, code, reason, err, said)

    def _warn_pending(self, info: sj.JobInfo) -> None:
        change = sj.advice(info.reason)
        word = re.split(r"[,(\s]", info.reason, maxsplit=1)[0]
        if change and word not in self._warned:
            self._warned.add(word)
            limits = sj.partition_limits(info.partition) if word.startswith("Partition") else ""
            logger.warning("SLURM job %s is pending (Reason=%s), and will stay so: %s%s", info.job,
                           info.reason, change, f"; partition {info.partition}: {limits}" if limits else "")

    def _summary(self) -> str:
        parts = []
        for info in list(self._ended.values())[-5:]:
            where = f" on {info.node}" if info.node else ""
            last = sj.tail(self.log_dir / f"{info.job}.err", lines=1)
            parts.append(f"job {info.job}{where} {info.state}" + (f" ({last[0]})" if last else ""))
        more = len(self._ended) - len(parts)
        return ", ".join(parts) + (f" and {more} more" if more > 0 else "")

    def scale(self, jobs: int) -> None:
        """Have ``jobs`` jobs from now on: submit more, or cancel the newest."""
        jobs = _count("jobs", jobs, least=0)
        with self._lock:
            self._jobs = jobs
            if self._joining is None or self._stopped:
                return
            if jobs > len(self._live):
                self._submit(jobs - len(self._live))
            elif jobs < len(self._live):
                self._cancel(self._live[jobs:])

    def _cancel(self, jobs: list[str]) -> None:
        if not jobs:
            return
        done = sj.run(["scancel", *jobs])
        if done.returncode:
            logger.warning("scancel %s: %s", " ".join(jobs), sj.said(done))
        self._cancelled.update(jobs)
        self._live = [job for job in self._live if job not in jobs]
        logger.debug("cancelled SLURM job(s) %s", " ".join(jobs))

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            submitted = [*self._live, *self._cancelled]
            try:
                self._cancel(list(self._live))
            except ClusterError as exc:
                logger.warning("could not cancel the SLURM jobs %s: %s", " ".join(submitted), exc)
                return
            deadline = time.monotonic() + _STOP_WAIT
            left: list[str] = []
            while submitted and time.monotonic() < deadline:
                listed = sj.query(submitted) or {}
                left = [job for job, info in listed.items() if not sj.is_over(info.state)
                        or info.state == "COMPLETING"]
                if not left:
                    break
                time.sleep(0.25)
            if left:
                logger.warning("SLURM job(s) %s still listed %g s after scancel", " ".join(left), _STOP_WAIT)
            if self._own_logs and not self._keep_logs:
                shutil.rmtree(self.log_dir, ignore_errors=True)


def _count(name: str, value: object, least: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r}: give a whole number of at least {least}")
    return value


def _strings(name: str, value: object) -> list[str]:
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):  # type: ignore[attr-defined]
        raise TypeError(f"{name} must be a list of strings, got {value!r}")
    return list(value)  # type: ignore[call-overload]


def _sbatch_option(line: str) -> str:
    option = line.strip()
    if option.startswith("#SBATCH"):
        option = option[len("#SBATCH"):].strip()
    if not option.startswith("-") or "\n" in option:
        raise ValueError(f"sbatch option {line!r} is not an option: write '--qos=high' (or an #SBATCH line)")
    return option


def _default_log_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return base / "ezpool" / "slurm" / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
