"""How a process ended, in words; and whether the kernel's OOM killer ended it.

A worker killed by SIGKILL may have been killed by a person, or by the kernel's OOM
killer when memory ran out. The kernel counts the OOM killer's kills, before it sends
the signal: in the memory cgroup of the victim (``oom_kill`` in ``memory.events`` under
cgroup v2, in ``memory.oom_control`` under v1) and for the whole system (``oom_kill``
in ``/proc/vmstat``). A ``MemoryWitness`` reads the count of a process's memory cgroup
(the system's where it has none) when the process starts; a SIGKILL with that count
up since then is put down to memory; the parallel backend then fails the task the worker
ran with ``WorkerOutOfMemory`` (``ezpool._backends.parallel.control``), not as a crash.

It can be wrong one way: another process of the same cgroup killed by the OOM killer
while this one lived, and this one then killed by SIGKILL for another reason, reads
as memory. With only the system's count, the words say "most likely".
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any, Optional

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["MemoryWitness", "Watched", "how_it_ended"]

_SYSTEM_COUNT = Path("/proc/vmstat")


class MemoryWitness:
    """The OOM kill count of one process's memory cgroup, as it was when it was made."""

    __slots__ = ("source", "count")

    def __init__(self, source: Optional[Path], count: Optional[int]) -> None:
        self.source = source  # the file the count is read from (None: none could be read)
        self.count = count

    @classmethod
    def of(cls, pid: int) -> MemoryWitness:
        """The witness for process ``pid`` (alive now); never raises."""
        for source in (_cgroup_count_file(pid), _SYSTEM_COUNT):
            if source is not None:
                count = _read_count(source)
                if count is not None:
                    return cls(source, count)
        return cls(None, None)

    @property
    def system_wide(self) -> bool:
        """Whether the count is the whole system's (no memory cgroup of its own was found)."""
        return self.source == _SYSTEM_COUNT

    def oom_killed(self) -> bool:
        """Whether the OOM killer has killed a process of the cgroup since the witness was made."""
        if self.source is None or self.count is None:
            return False
        now = _read_count(self.source)
        return now is not None and now > self.count


def how_it_ended(exitcode: Optional[int], witness: Optional[MemoryWitness] = None) -> str:
    """``exitcode`` (``returncode`` of ``subprocess``, ``exitcode`` of ``multiprocessing``:
    a negative number is a signal) as the end of a sentence: "was killed by SIGTERM"."""
    if exitcode is None:
        return "stopped answering"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    if exitcode == -signal.SIGKILL and witness is not None and witness.oom_killed():
        if witness.system_wide:
            return ("was killed by SIGKILL, most likely by the operating system's OOM killer (out of memory: "
                    f"the system's count of OOM kills, in {witness.source}, went up while it ran)")
        return (f"was killed by the operating system's OOM killer (out of memory: its memory cgroup counted "
                f"an OOM kill in {witness.source})")
    try:
        return f"was killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"was killed by signal {-exitcode}"


class Watched:
    """A process started with ``subprocess``, and the witness of its memory."""

    __slots__ = ("process", "witness")

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        self.process = process
        self.witness = MemoryWitness.of(process.pid)

    def ended(self, wait: float = 0.0) -> Optional[str]:
        """How it ended, or None while it runs (waiting up to ``wait`` seconds for it to end:
        its connections close a moment before its parent can see its exit status)."""
        code = self.process.poll()
        if code is None and wait > 0:
            try:
                code = self.process.wait(wait)
            except subprocess.TimeoutExpired:
                return None
        return None if code is None else how_it_ended(code, self.witness)


def _cgroup_count_file(pid: int) -> Optional[Path]:
    """The file that counts the OOM kills of ``pid``'s memory cgroup, if it has one."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            found = _under(mounts, "cgroup2", None, path, "memory.events")
        elif "memory" in controllers.split(","):
            found = _under(mounts, "cgroup", "memory", path, "memory.oom_control")
        else:
            continue
        if found is not None:
            return found
    return None


def _under(mounts: list[str], fstype: str, option: Optional[str], path: str, name: str) -> Optional[Path]:
    """``name`` in the cgroup at ``path`` of the hierarchy mounted as ``fstype`` (with
    ``option`` among its options), if this process can see it."""
    for line in mounts:
        fields, _, after = line.partition(" - ")
        parts, described = fields.split(), after.split()
        if len(parts) < 5 or len(described) < 3 or described[0] != fstype:
            continue
        if option is not None and option not in described[2].split(","):
            continue
        root, point = parts[3], parts[4]
        if root != "/" and not (path == root or path.startswith(root + "/")):
            continue
        inner = path[len(root):] if root != "/" else path
        candidate = Path(point, inner.lstrip("/"), name)
        if candidate.is_file():
            return candidate
    return None


def _read_count(source: Path) -> Optional[int]:
    """The ``oom_kill`` line of ``source`` (memory.events, memory.oom_control, /proc/vmstat)."""
    try:
        text = source.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None
