"""``serve --procs N``: one ``ezpool.serve`` process per port, each started again when it dies.

::

    serve (this process)                           a child per port (--parent-pid: this one)
    ────────────────────                           ─────────────────────────────────────────
    start N children (``launch.serve_command``) ─▶ listen at port + i, print the URI
    copy their stdout to ours, line by line ◀────  (a restarted child's URI is not copied
                                                   again: it is the same)
    every 0.2 s, a child that died:
      ├─ before its first URI, at the first start: stop them all, exit 1 (its error is above)
      ├─ exit status 0 (it was asked to stop): say so, go on with the others
      ├─ else: say on stderr which, and how (a SIGKILL after an OOM kill in its memory
      │   cgroup: out of memory), and start it again at the same port, hence the same URI
      └─ past ``RESTARTS`` restarts within ``WINDOW`` seconds: give it up, the others go on
    SIGINT or SIGTERM: say which died since the last look, stop them all (SIGTERM, then
    SIGKILL after 5 s), exit 0

``serve_many`` returns 1 once no child is left serving, if any of them failed.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional

from .._core.deaths import Watched
from .._core.logs import get_logger
from .launch import serve_command, worker_env

logger = get_logger(__name__)

__all__ = ["RESTARTS", "WINDOW", "serve_many"]

#: Restarts a process may have within ``WINDOW`` seconds; one more dies, and it is given up.
RESTARTS = 5
#: Seconds the restarts of a process are counted over.
WINDOW = 60.0
#: Seconds between two looks at the children.
_LOOK_EVERY = 0.2
#: Seconds the children have to leave after SIGTERM, before SIGKILL.
_STOP_GRACE = 5.0


class _Relay(threading.Thread):
    """Copies a child's stdout to ours, line by line (but for its first line, the URI,
    when ``echo_first`` is false); ``first`` is set once the URI came."""

    def __init__(self, child: subprocess.Popen[str], writing: threading.Lock, echo_first: bool) -> None:
        super().__init__(daemon=True)
        self.child = child
        self.writing = writing
        self.echo_first = echo_first
        self.first = threading.Event()
        self.line = ""

    def run(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            if self.echo_first or self.first.is_set():
                with self.writing:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            if not self.first.is_set():
                self.line = line.strip()
                self.first.set()


class _Slot:
    """One port, and the child serving it now."""

    def __init__(self, index: int, port: int, argv: list[str], writing: threading.Lock) -> None:
        self.index = index
        self.port = port
        self.argv = argv
        self.writing = writing
        self.restarts: collections.deque[float] = collections.deque()  # when it was started again
        self.served = False  # whether a child of this slot ever printed its URI
        self.done = False  # stopped, or given up
        self.child: Optional[Watched] = None
        self.relay: Optional[_Relay] = None

    def start(self) -> None:
        command = serve_command(self.argv)
        env = worker_env(os.environ, sys.path)  # the current directory only if no one else can write it
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        self.child = Watched(process)
        self.relay = _Relay(process, self.writing, echo_first=not self.served)
        self.relay.start()

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self.child is not None
        return self.child.process

    @property
    def uri(self) -> str:
        return self.relay.line if self.relay is not None else ""

    def name(self, count: int) -> str:
        return f"process {self.index + 1} of {count} (port {self.port}, pid {self.process.pid})"


def serve_many(
    args_for: Callable[[int], list[str]], ports: Sequence[int], say: Callable[[str], None],
    announce: Callable[[str], None], grace: Optional[float] = None,
) -> int:
    """Serve from one child per port of ``ports`` (``args_for(port)``: its command line
    arguments) until SIGINT or SIGTERM; ``say`` a line on stderr, ``announce`` where
    they all serve once every one has printed its URI. The exit status."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    writing = threading.Lock()
    slots = [_Slot(index, port, args_for(port), writing) for index, port in enumerate(ports)]
    status = 0
    announced = False
    try:
        for slot in slots:
            slot.start()
        while not stop.wait(_LOOK_EVERY):
            for slot in slots:
                if slot.relay is not None and slot.relay.first.is_set():
                    slot.served = True
            if not announced and all(slot.served for slot in slots):
                announce(f"{slots[0].uri} to {slots[-1].uri} ({len(slots)} processes)")
                announced = True
            for slot in slots:
                if slot.done or slot.process.poll() is None:
                    continue
                if not _after_death(slot, len(slots), say):
                    return 1
                status = 1 if slot.done and slot.process.returncode != 0 else status
            if all(slot.done for slot in slots):
                break
        else:  # asked to stop: a death since the last look is still said, not restarted
            for slot in slots:
                child = None if slot.done else slot.child
                code = None if child is None else child.process.poll()
                if child is not None and code not in (None, 0, -signal.SIGINT, -signal.SIGTERM):
                    say(f"{slot.name(len(slots))} {child.ended() or 'ended'}; not started again: "
                        "serve is stopping")
    finally:
        _stop_all(slots, _STOP_GRACE if grace is None else grace)
    return status


def _after_death(slot: _Slot, count: int, say: Callable[[str], None]) -> bool:
    """A child of ``slot`` ended: start it again, or give it up. False: stop every child."""
    assert slot.child is not None
    how = slot.child.ended() or "ended"
    code = slot.process.returncode
    name = slot.name(count)
    if not slot.served:
        say(f"{name} {how} before it served (its error is above); stopping the others")
        return False
    if code == 0:
        say(f"{name} {how} (it was asked to stop); the others serve on")
        slot.done = True
        return True
    now = time.monotonic()
    while slot.restarts and now - slot.restarts[0] > WINDOW:
        slot.restarts.popleft()
    if len(slot.restarts) >= RESTARTS:
        say(f"{name} {how}, after {len(slot.restarts)} restarts within {WINDOW:.0f} s: giving it "
            f"up; the others serve on")
        slot.done = True
        return True
    slot.restarts.append(now)
    say(f"{name} {how}; starting it again at the same address (restart {len(slot.restarts)} of "
        f"at most {RESTARTS} within {WINDOW:.0f} s)")
    try:
        slot.start()
    except OSError as exc:  # no memory to fork, say: the next look counts another restart
        say(f"could not start process {slot.index + 1} of {count} again: {exc}")
    return True


def _stop_all(slots: list[_Slot], grace: float = _STOP_GRACE) -> None:
    """SIGTERM every child still running, SIGKILL those left after ``grace`` seconds."""
    children = [slot.process for slot in slots if slot.child is not None]
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
