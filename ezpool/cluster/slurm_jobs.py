"""SLURM's commands as EzPool's launchers use them, and what their answers mean.

``Slurm`` (``slurm.py``) submits with ``sbatch``, watches with ``squeue`` (every state,
array tasks one by one) and ``scontrol show job`` (an ended job's exit code, node and
reason), and cancels with ``scancel``; no accounting database (``sacct``) is needed.
This module runs those commands, turning a missing command or a silent controller
into a ``ClusterError``, and holds what the launcher knows about SLURM's words: which
job states are over, and what a job that stays pending asks the user to change.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Optional, Union

from .._core.logs import get_logger
from ..errors import ClusterError

logger = get_logger(__name__)

__all__ = [
    "JobInfo", "run", "said", "check_time", "check_memory", "query", "ended_info", "advice",
    "is_over", "can_join", "partition_limits", "tail",
]

#: States after which a job runs nothing any more (or is about to).
_OVER = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT", "COMPLETING", "STAGE_OUT", "GONE",
})
#: Pending reasons that only say the job waits its turn: nothing to change.
_WAITING = frozenset({
    "None", "Priority", "Resources", "BeginTime", "Dependency", "JobArrayTaskLimit", "Prolog",
    "Reservation", "NodeDown", "Licenses", "Cleaning", "Configuring", "",
})
#: Pending reasons that will not pass by themselves, and what to change.
_ADVICE = {
    "PartitionConfig": "it asks for more than its partition allows (time, CPUs, nodes or memory): "
                       "lower time=, cpus= or memory=, or choose another partition= (`sinfo -s`)",
    "PartitionTimeLimit": "time= is longer than its partition's MaxTime: lower time=, or choose "
                          "another partition= (`sinfo -s` shows each one's limit)",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows: check the sbatch= options",
    "PartitionDown": "its partition is down: choose another partition=",
    "PartitionInactive": "its partition is inactive: choose another partition=",
    "ReqNodeNotAvail": "the nodes it may use are down, drained or reserved (`sinfo -R` says why): "
                       "choose another partition=, or drop --nodelist/--constraint from sbatch=",
    "BadConstraints": "no node has what it asks for: check cpus=, memory= and the sbatch= options",
    "InvalidAccount": "its account is not valid: pass sbatch=['--account=...'] with one of yours",
    "InvalidQOS": "its QOS is not valid: pass sbatch=['--qos=...'] with one you may use",
    "JobHeldUser": "it is held: `scontrol release` it",
    "JobHeldAdmin": "an administrator holds it",
}

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


class JobInfo(NamedTuple):
    """One job (or array task) as SLURM lists it."""

    job: str
    state: str  # a SLURM job state, or "GONE" once SLURM has forgotten the job
    reason: str  # why it is pending, or why it ended ("None" when there is nothing to say)
    node: str  # where it ran, "" before it starts
    exit_code: str = ""  # "EXIT:SIGNAL", for an ended job
    partition: str = ""


def run(
    argv: Sequence[str], input: Optional[str] = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command; its completed process, whatever it exited with.

    Raises ``ClusterError`` when the command is not there, or does not answer in time.
    """
    try:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise ClusterError(
            f"{argv[0]} is not on PATH: run this where SLURM's commands are (a login node), "
            "or put them on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"{argv[0]} did not answer within {timeout:g} s: is the SLURM controller up? (`scontrol ping`)"
        ) from None


def said(done: subprocess.CompletedProcess[str]) -> str:
    """What a command said on stderr (else stdout), on one line."""
    text = done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def check_time(value: Optional[str]) -> Optional[str]:
    """``value`` if it is a SLURM time limit (``"HH:MM:SS"``, ``"MM"``, ``"D-HH:MM"``...), else
    ``ValueError`` naming it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"time must be a string such as '01:30:00', got {value!r}")
    match = _TIME.match(value.strip())
    problem = "" if match else "is not a SLURM time limit"
    if match:
        days, first, second, third = match.groups()
        parts = [int(p) for p in (first, second, third) if p is not None]
        if days is not None:  # D-HH[:MM[:SS]]: every part after the hours is below 60
            if parts[0] > 23 or any(p > 59 for p in parts[1:]):
                problem = "has hours over 23 or minutes or seconds over 59"
        elif any(p > 59 for p in parts[1:]):  # MM, MM:SS, HH:MM:SS
            problem = "has minutes or seconds over 59"
        if not problem and int(days or 0) == 0 and not any(parts):
            problem = "is zero"
    if problem:
        raise ValueError(
            f"time={value!r} {problem}: write 'HH:MM:SS' (such as '01:30:00'), or SLURM's 'MM', "
            "'MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS'"
        )
    return value.strip()


def check_memory(value: Union[str, int, None]) -> Optional[str]:
    """``value`` as sbatch's ``--mem`` wants it (an int is megabytes), else ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}M"
    if isinstance(value, str) and _MEMORY.match(value.strip()) and int(re.sub(r"\D", "", value)) > 0:
        return value.strip().upper()
    raise ValueError(f"memory={value!r} is not an amount of memory: write '4G', '500M', or megabytes (int)")


def query(jobs: Iterable[str]) -> Optional[dict[str, JobInfo]]:
    """What ``squeue`` says of ``jobs`` (ended ones too, while SLURM keeps them); ``None`` when it
    could not be asked (a busy controller: try again later). Jobs it no longer lists are left out."""
    wanted = list(jobs)
    if not wanted:
        return {}
    done = run(["squeue", "-h", "-r", "--states=all", "-j", ",".join(wanted), "-o", "%i|%T|%r|%N|%P"])
    if done.returncode:
        if "Invalid job id" in done.stderr:
            return {}
        logger.debug("squeue failed, asking again later: %s", said(done))
        return None
    found = {}
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 5:
            found[fields[0]] = JobInfo(fields[0], fields[1], fields[2], fields[3], partition=fields[4])
    return found


def ended_info(job: str, state: str = "GONE") -> JobInfo:
    """An ended job as ``scontrol show job`` tells it: state, reason, node and exit code
    (``state``, with nothing else known, where SLURM has forgotten it)."""
    done = run(["scontrol", "-o", "show", "job", job])
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}
    node = fields.get("NodeList", "")
    return JobInfo(
        job, fields.get("JobState", state), fields.get("Reason", "None"),
        "" if node == "(null)" else node, fields.get("ExitCode", ""),
    )


def is_over(state: str) -> bool:
    """Whether a job in ``state`` runs nothing any more (or is about to)."""
    return state in _OVER


def can_join(state: str) -> bool:
    """Whether a job in ``state`` may still start (or run) a worker."""
    return not is_over(state)


def advice(reason: str) -> Optional[str]:
    """For a pending reason that will not pass by itself, what to change (``None``: it just waits)."""
    word = re.split(r"[,(\s]", reason.strip(), maxsplit=1)[0]
    if word in _WAITING:
        return None
    if word in _ADVICE:
        return _ADVICE[word]
    if word.startswith(("QOS", "Assoc", "MaxCpu", "MaxJob", "MaxNode")):
        return "a limit of your account or QOS holds it: ask for fewer jobs= or cpus=, or wait"
    return f"see `scontrol show job` for what {word} means on this cluster"


def partition_limits(partition: str) -> str:
    """The limits of ``partition`` a job may run into ("MaxTime=01:00:00 MaxNodes=2 ..."), or ""."""
    try:
        done = run(["scontrol", "-o", "show", "partition", partition], timeout=20)
    except ClusterError:
        return ""
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}
    shown = ("MaxTime", "MaxNodes", "MaxCPUsPerNode", "MaxMemPerNode", "MaxMemPerCPU", "TotalCPUs", "State")
    return " ".join(f"{name}={fields[name]}" for name in shown
                    if fields.get(name) not in (None, "", "UNLIMITED"))


def tail(path: Path, lines: int = 5, limit: int = 4096) -> list[str]:
    """The last ``lines`` non-blank lines of the file at ``path`` ([] when it is not there)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
