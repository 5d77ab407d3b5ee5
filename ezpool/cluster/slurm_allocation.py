"""Workers on the SLURM allocation the script runs in (``workers="slurm"``): one ``srun``.

Inside ``sbatch`` or ``salloc`` (``SLURM_JOB_ID`` is set), ``Allocation`` starts one
worker per task slot of the allocation with a single job step, and hands every
worker the key on its standard input, never on a command line or in a file::

    pool (the batch script, or salloc's command)         srun --input=all --label
    ────────────────────────────────────────────         ──────────────────────────────────────
    srun's stdin:  KEY \\n ──── broadcast ─────────────▶  task 0..N-1: ezpool-serve --key-stdin
                   (kept open)                             --connect ADDRESS, one per slot
    srun's stderr: "3: <what task 3 said>" ◀────────────  each task's stderr, labelled
                   "srun: error: NODE: task 3: Exited with exit code 2"
                   → logged at once: the node, the task, and its last lines
    stop(): close stdin ─────────────────────────────────▶ every worker leaves at EOF
            then SIGTERM, SIGKILL srun if it lingers

``srun`` runs in a session of its own, so that Ctrl-C at the terminal reaches the
pool, which stops it, and not ``srun`` (which would cancel the step at once).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Optional

from .._core.logs import get_logger
from ..errors import ClusterError
from .base import Cluster, Joining, worker_command

logger = get_logger(__name__)

__all__ = ["Allocation"]

#: Seconds ``stop`` waits after closing srun's stdin, then after SIGTERM, then after SIGKILL.
_STOP_WAITS = (10.0, 5.0, 5.0)
#: Lines of each task's stderr kept, to quote when it fails.
_KEPT = 8
#: srun's line for a task that ended badly: "srun: error: NODE: task(s) N[,M-K]: WHAT".
_TASK_ENDED = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<tasks>[\d,\-]+): (?P<what>.*)$")
_LABELLED = re.compile(r"^\s*(?P<task>\d+): ?(?P<text>.*)$")


class Allocation(Cluster):
    """One worker per task slot of the SLURM allocation this process runs in, by one ``srun``.

    Args:
        procs_per_node: workers on each node (``None``: one per task slot, ``SLURM_NTASKS``).
        python: the interpreter on the nodes.
        serve_args: more ``ezpool-serve`` arguments.
    """

    def __init__(self, procs_per_node: Optional[int] = None, python: str = sys.executable,
                 serve_args: Sequence[str] = ()) -> None:
        if procs_per_node is not None and (
            not isinstance(procs_per_node, int) or isinstance(procs_per_node, bool) or procs_per_node < 1
        ):
            raise ValueError(f"procs_per_node={procs_per_node!r}: give a whole number of at least 1")
        if isinstance(serve_args, str):
            raise TypeError(f"serve_args must be a list of strings, got {serve_args!r}")
        self.procs_per_node = procs_per_node
        self.python = python
        self.serve_args = list(serve_args)
        self._tasks = 0
        self._srun: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._said: dict[str, collections.deque[str]] = {}
        self._srun_said: collections.deque[str] = collections.deque(maxlen=_KEPT)
        self._lock = threading.Lock()
        self._stopping = False

    def __repr__(self) -> str:
        return f"Allocation(procs_per_node={self.procs_per_node!r})"

    @property
    def expected(self) -> int:
        return self._tasks

    def srun_command(self, joining: Joining, environ: Optional[Mapping[str, str]] = None) -> list[str]:
        """The ``srun`` command ``start`` runs, in the allocation ``environ`` describes."""
        env = os.environ if environ is None else environ
        if not env.get("SLURM_JOB_ID"):
            raise ClusterError(
                "workers='slurm' starts workers with srun in the SLURM allocation this script runs in, "
                "but SLURM_JOB_ID is not set: run the script inside sbatch or salloc, or submit jobs "
                "from here with workers=ezpool.cluster.Slurm(jobs=..., cpus=..., time=...)"
            )
        nodes = _number(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1
        argv = ["srun", "--overlap", "--kill-on-bad-exit=0", "--input=all", "--label",
                "--job-name=ezpool-worker"]
        if self.procs_per_node is not None:
            tasks = nodes * self.procs_per_node
            argv += [f"--nodes={nodes}", f"--ntasks={tasks}", f"--ntasks-per-node={self.procs_per_node}"]
            # the node's CPUs shared out among its workers (srun would otherwise take the
            # allocation's --cpus-per-task for each), or more workers than CPUs if asked
            cpus = _number(env, "SLURM_JOB_CPUS_PER_NODE", "SLURM_CPUS_ON_NODE")
            argv.append(f"--cpus-per-task={max(1, cpus // self.procs_per_node)}")
            if cpus and self.procs_per_node > cpus:
                argv.append("--overcommit")
        else:
            tasks = _number(env, "SLURM_NTASKS", "SLURM_NPROCS") or nodes
            argv += [f"--ntasks={tasks}"]
            cpus = _number(env, "SLURM_CPUS_PER_TASK")
            if cpus:
                argv.append(f"--cpus-per-task={cpus}")
        self._tasks = tasks
        key_on_stdin = joining.key is not None and not joining.insecure
        return [*argv, *worker_command(joining, python=self.python, key_on_stdin=key_on_stdin,
                                       serve_args=self.serve_args)]

    def start(self, joining: Joining) -> None:
        argv = self.srun_command(joining)
        with self._lock:
            if self._srun is not None:
                raise ClusterError("this Allocation has started already: it serves one pool")
            logger.debug("starting %d worker(s) on SLURM job %s: %s", self._tasks,
                         os.environ.get("SLURM_JOB_ID"), " ".join(argv[:9]))
            try:
                self._srun = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                              start_new_session=True)
            except FileNotFoundError:
                raise ClusterError("srun is not on PATH, though SLURM_JOB_ID is set: put SLURM's commands "
                                   "on PATH") from None
            assert self._srun.stdin is not None and self._srun.stderr is not None
            self._reader = threading.Thread(target=self._read, args=(self._srun.stderr,),
                                            name="ezpool-srun-stderr", daemon=True)
            self._reader.start()
        if argv.count("--key-stdin") and joining.key is not None:
            try:
                self._srun.stdin.write(joining.key + b"\n")
                self._srun.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # srun is gone already: check() says why

    def _read(self, stream: IO[bytes]) -> None:
        """Keep what each task says, and report at once a task that ended badly."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            labelled = _LABELLED.match(line)
            if labelled:
                with self._lock:
                    kept = self._said.setdefault(labelled["task"], collections.deque(maxlen=_KEPT))
                    kept.append(labelled["text"])
                logger.debug("worker task %s: %s", labelled["task"], labelled["text"])
                continue
            with self._lock:
                self._srun_said.append(line)
            ended = _TASK_ENDED.match(line)
            if ended and not self._stopping:
                self._report(ended["node"], ended["tasks"], ended["what"])
            else:
                logger.debug("%s", line)

    def _report(self, node: str, tasks: str, what: str) -> None:
        with self._lock:
            said = [f"task {task}: {text}" for task in _expand(tasks) for text in self._said.get(task, ())]
        plural = "s" if not tasks.isdigit() else ""
        quoted = (":\n    " + "\n    ".join(said[-_KEPT:])) if said else ""
        logger.warning("the worker of SLURM task%s %s on %s could not start or died (%s)%s",
                       plural, tasks, node, what, quoted)

    def check(self) -> None:
        srun = self._srun
        if srun is None or self._stopping:
            return
        code = srun.poll()
        if code is None:
            return
        if self._reader is not None:
            self._reader.join(timeout=2)
        with self._lock:
            said = list(self._srun_said)[-3:] + [text for kept in self._said.values() for text in kept][-2:]
        raise ClusterError(
            f"srun, which ran the workers of SLURM job {os.environ.get('SLURM_JOB_ID')}, exited with "
            f"code {code}: no worker is left to join" + (": " + "; ".join(said) if said else "")
        )

    def stop(self) -> None:
        srun = self._srun
        if srun is None or self._stopping:
            return
        self._stopping = True
        if srun.stdin is not None:
            with contextlib.suppress(OSError):
                srun.stdin.close()
        for sig, wait in zip((None, signal.SIGTERM, signal.SIGKILL), _STOP_WAITS):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(srun.pid, sig)
            try:
                srun.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                logger.debug("srun still runs %g s after %s", wait, sig or "closing its stdin")
        if self._reader is not None:
            self._reader.join(timeout=2)
        if srun.stderr is not None:
            with contextlib.suppress(OSError):
                srun.stderr.close()


def _number(env: Mapping[str, str], *names: str) -> int:
    """The first of SLURM's variables ``names`` that holds a number ("4(x2)" reads as 4); 0 if none."""
    for name in names:
        found = re.match(r"\d+", env.get(name, ""))
        if found:
            return int(found.group())
    return 0


def _expand(tasks: str) -> list[str]:
    """srun's "0,3-5" as ["0", "3", "4", "5"]."""
    found: list[str] = []
    for part in tasks.split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            found += [str(n) for n in range(int(first), int(last or first) + 1)]
    return found
