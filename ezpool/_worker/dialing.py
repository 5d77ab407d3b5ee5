"""A worker that dials its pool (``ezpool-serve --connect ADDRESS``): no port opens here.

The worker keeps two connections to the pool, one for chunks and one for the
pool's checks, each dialed by a thread of its own and served exactly as an
accepted one would be (``Server.serve_dialed``: the key both ways, this side
first). The pool then drives them as it drives a worker it dialed itself::

    Dialer line (x2)                               pool (its listener)
    ────────────────                               ───────────────────
    resolve ADDRESS (HOST:PORT, or the
      pool's listen file, read at every try)
    TCP connect ─────────────────────────────────▶ accepted
                        ◀─────────────────────────  CONNECT + the pool's nonce
    nonce + MAC over both (this side proves first) ▶ checked; then the pool proves
    hello, load, run_chunk, ping ◀─────────────────  as with any worker
    bye ◀──────────────────────────────────────────  the pool closes: leave (or, with
                                                      ``stay``, dial the next one)

A line that cannot connect tries again (every 0.1 s at first, then every
``_RETRY_MOST`` s) until the pool answers: workers may start before their pool.
A listen file that was there and is gone means its pool has closed: the worker
leaves, even if it never joined (unless ``stay``).
Once joined, a connection that breaks without a ``bye`` is dialed again for
``patience`` seconds, then the worker gives up. A pool that refuses this worker's
key ends it at once (exit status ``REFUSED``).
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from .._core.cli import stdout_line
from .._core.listen_file import parse_address, read_listen_file
from .._core.logs import get_logger
from ..errors import SecurityError, ServeError
from .leaving import Leaving

logger = get_logger(__name__)

__all__ = ["Dialer", "where_to_dial", "end_time", "serve_dialing", "prepare_dialing_children", "REFUSED"]

#: The exit status of a worker whose pool refused its key.
REFUSED = 3
#: Connections a worker keeps to its pool: one for chunks, one for the pool's checks.
LINES = 2
#: Seconds between two tries to reach a pool that does not answer, at most.
_RETRY_MOST = 2.0
#: Seconds the main thread of a dialing worker sleeps between two looks (a safety net).
_IDLE_WAKE = 60.0
#: Seconds a try to connect may take.
_CONNECT_TIMEOUT = 5.0
#: TCP keep-alive of a dialed connection: a pool whose machine vanished is noticed
#: within about IDLE + INTERVAL * COUNT seconds, though it may stay silent for hours.
_KEEPALIVE = (10, 5, 3)


def where_to_dial(text: str, given: Optional[str] = None) -> Callable[[], tuple[str, int]]:
    """What ``--connect`` names, as a function giving the address to dial at each try.

    ``HOST:PORT`` is checked at once (``ServeError``); ``-`` is ``given`` (the line read
    from standard input); anything else is a pool's listen file, read at every try
    (a missing file is waited for; one that others could write is refused).
    """
    if text == "-":
        if not given:
            raise ServeError("--connect - reads the pool's address from standard input, but none came")
        text = given.strip()
    if ":" in text and not Path(text).exists():
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        if not address[0]:
            raise ServeError(f"--connect {text}: name the pool's host (HOST:PORT)")
        return lambda: address
    path = Path(text)

    def from_file() -> tuple[str, int]:
        return parse_address(read_listen_file(path).address)

    return from_file


def end_time(text: Optional[str], environ: Mapping[str, str]) -> Optional[float]:
    """``--end-at``: an ISO time, seconds since the epoch, or ``slurm`` (the end of the job
    in ``SLURM_JOB_ID``, asked of ``squeue``), as seconds since the epoch."""
    if text is None:
        return None
    if text == "slurm":
        job = environ.get("SLURM_JOB_ID")
        if not job:
            raise ServeError("--end-at slurm: SLURM_JOB_ID is not set (is this a SLURM job?)")
        try:
            asked = ["squeue", "-h", "-j", job, "-o", "%e"]
            answer = subprocess.run(asked, capture_output=True, text=True, timeout=30, check=True)
            text = answer.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServeError(f"--end-at slurm: cannot ask squeue for the end of job {job}: {exc}") from None
        if not text or text in ("N/A", "NONE", "Unknown"):
            return None  # no time limit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ServeError(f"--end-at {text!r}: give an ISO time, seconds since the epoch, or slurm") from None


class Dialer:
    """Keeps ``LINES`` connections to the pool at ``where()``, served by ``serve`` (a
    ``Server.serve_dialed``) until the pool says ``bye``, refuses the key, or ``stop``."""

    def __init__(
        self,
        serve: Callable[[socket.socket], Any],
        where: Callable[[], tuple[str, int]],
        stay: bool = False,
        patience: float = 60.0,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._serve = serve
        self._where = where
        self._stay = stay
        self._patience = patience
        self._say = say
        self.stop = threading.Event()  # set: dial no more
        self._lock = threading.Lock()
        self._joined: Optional[str] = None  # the address of the pool joined, once it said hello
        self._bye = False  # the pool said it closes
        self._socks: set[socket.socket] = set()  # the connections served now
        self._seen = False  # whether an address was found (a listen file that goes means its pool went)
        self.status = 0  # the exit status, once stopped

    # --- what the pool calls (added to the worker's methods) ----------------------------

    def methods(self, hello: Callable[[], Any]) -> dict[str, Callable[..., Any]]:
        """``hello``, which also marks the pool joined, and ``bye``."""

        def joined_hello() -> Any:
            self._mark_joined()
            return hello()

        return {"hello": joined_hello, "bye": self._said_bye}

    def _mark_joined(self) -> None:
        with self._lock:
            first = self._joined is None
            host, port = self._dialing
            self._joined = f"{host}:{port}" if first else self._joined
        if first:
            self._say(f"joined the pool at {self._joined}")

    def _said_bye(self) -> bool:
        with self._lock:
            self._bye = True
        logger.info("the pool says it closes")
        return True

    # --- the lines -----------------------------------------------------------------------

    def run(self) -> int:
        """Dial until done; the exit status (0, or ``REFUSED``)."""
        self._dialing: tuple[str, int] = ("?", 0)
        threads = [threading.Thread(target=self._line, name=f"ezpool-dial-{n}", daemon=True)
                   for n in range(LINES)]
        for thread in threads:
            thread.start()
        while not self.stop.wait(_IDLE_WAKE):  # an idle worker sleeps here (signals still wake it)
            pass
        for thread in threads:
            thread.join(_CONNECT_TIMEOUT + 1.0)
        return self.status

    def _line(self) -> None:
        pause, lost_at = 0.1, None
        while not self.stop.is_set():
            try:
                address = self._where()
            except FileNotFoundError:
                address = None  # the pool has not written it yet, or has closed and removed it
                if self._seen and not self._stay:
                    self._end(0, "the pool's listen file is gone: the pool has closed")
                    return
            except (SecurityError, ValueError, OSError) as exc:
                self._end(1, f"cannot read where to dial: {exc}")
                return
            if address is not None:
                self._seen = True
                self._dialing = address
                sock = _dial(address)
                if sock is not None:
                    pause = 0.1
                    refused = self._served(sock)
                    if refused:
                        self._end(REFUSED, f"the pool at {address[0]}:{address[1]} refused this worker's "
                                           f"key ({refused}): give it the pool's key")
                        return
                    with self._lock:
                        bye, joined = self._bye, self._joined is not None
                    if bye and not self._stay:
                        self._end(0, "")
                        return
                    lost_at = time.monotonic() if joined and not bye else None
                    if bye:
                        with self._lock:
                            self._bye, self._joined = False, None
                    continue
            if lost_at is not None and time.monotonic() - lost_at > self._patience:
                self._end(0, f"lost the pool at {self._joined} and could not reach it again for "
                             f"{self._patience:.0f} s: leaving")
                return
            self.stop.wait(pause)
            pause = min(_RETRY_MOST, pause * 2)

    def _served(self, sock: socket.socket) -> Any:
        with self._lock:
            if self.stop.is_set():
                sock.close()
                return ""
            self._socks.add(sock)
        try:
            return self._serve(sock)
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    @property
    def connected(self) -> bool:
        """Whether a connection to a pool is served now."""
        with self._lock:
            return bool(self._socks)

    def close(self) -> None:
        """Dial no more, and hang up the connections served now."""
        with self._lock:
            self.stop.set()
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _end(self, status: int, line: str) -> None:
        with self._lock:
            first = not self.stop.is_set()
            if first:
                self.status = status
                self.stop.set()
        if first and line:
            self._say(line)
        if first:
            self.close()


def _dial(address: tuple[str, int]) -> Optional[socket.socket]:
    try:
        sock = socket.create_connection(address, timeout=_CONNECT_TIMEOUT)
    except OSError as exc:
        logger.debug("cannot reach the pool at %s:%d yet: %s", address[0], address[1], exc)
        return None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the pool's end: answers leave at once
    idle, interval, count = _KEEPALIVE
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    sock.settimeout(None)  # silence is the pool's right between calls; keep-alive finds a dead one
    return sock


def prepare_dialing_children(args: Any, key: Optional[bytes]) -> None:
    """``--connect`` with ``--procs``: what the processes need from this one. A key read
    from standard input reaches them in the environment (never a command line), and
    the end of standard input stops them all, as SIGTERM does."""
    import os
    import signal

    from ..security import KEY_ENV

    if args.key_stdin and key is not None:
        os.environ[KEY_ENV] = key.decode()

        def stop() -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=_leave_at_end_of_input, args=(stop,), daemon=True).start()


def serve_dialing(args: Any, instance: Any, key: Optional[bytes], tls: Any, faults: Any) -> int:
    """``ezpool-serve --connect``: serve ``instance`` (``None``: whatever the pool sends) to the
    pool at ``args.connect`` until it closes; leave cleanly on SIGINT or SIGTERM (and, with
    ``--key-stdin``, when standard input ends). The exit status."""
    import os
    import signal
    import sys

    from .. import _pyro
    from .servant import Servant

    where = where_to_dial(args.connect, getattr(args, "connect_line", None))
    leaving = Leaving(end_time(args.end_at, os.environ))
    restart: list[Callable[[], None]] = []  # set below, once the dialer exists
    servant = Servant(instance, on_restart=lambda: restart[0](), faults=faults, leaving=leaving,
                      limits=(getattr(args, "max_tasks_per_worker", None), getattr(args, "max_memory", None)))

    def say(line: str) -> None:
        print(f"{args.prog}: {line}", file=sys.stderr, flush=True)

    dialer = Dialer(lambda sock: server.serve_dialed(sock), where, args.stay, args.patience, say)
    methods = _pyro.worker_methods(servant)
    methods.update(dialer.methods(servant.hello))
    server = _pyro.Server(methods, "", 0, "worker", key, tls, dials=True)
    restart.append(lambda: threading.Thread(target=_restart, args=(args, key, dialer), daemon=True).start())

    def leave(*_: Any) -> None:
        leaving.leave(args.grace)

    leaving.on_leave = lambda: threading.Thread(
        target=_go_when_idle, args=(servant, dialer, args.grace), daemon=True).start()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)
    if args.key_stdin or args.leave_at_eof:
        threading.Thread(target=_leave_at_end_of_input, args=(leave,), daemon=True).start()
    elif _output_to_an_ssh_session():
        threading.Thread(target=_leave_when_output_closes, args=(leave,), daemon=True).start()
    if args.parent_pid:
        from .parent import stop_with_parent

        threading.Thread(target=stop_with_parent, args=(args.parent_pid, leave), daemon=True).start()
    host, port = where() if args.connect == "-" else ("", 0)
    stdout_line(f"dialing {args.connect if args.connect != '-' else f'{host}:{port}'}")
    server.start()
    try:
        status = dialer.run()
    finally:
        server.shutdown()
        servant.close()
        if instance is not None and hasattr(instance, "teardown"):
            instance.teardown()
    return status


#: Seconds a worker that restarts (to stop a task past its timeout) leaves for its
#: last answers to go out before it replaces itself.
_RESTART_GRACE = 0.3


def _restart(args: Any, key: Optional[bytes], dialer: Dialer) -> None:
    """Become a fresh worker, dialing the same pool: the one way to stop a stuck task.
    A key read from standard input goes to the new process in its environment."""
    import os
    import sys

    from ..security import KEY_ENV
    from .launch import serve_command, worker_env

    time.sleep(_RESTART_GRACE)  # the answer with the task that overran goes out first
    dialer.close()
    env = worker_env(os.environ, sys.path)
    argv: list[str] = []
    for arg in args.argv:
        if arg == "--key-stdin":
            argv.append("--leave-at-eof")  # it still leaves when its input ends
            if key is not None:
                env[KEY_ENV] = key.decode()
        else:
            argv.append(arg)
    if args.connect == "-":
        argv[argv.index("-", argv.index("--connect"))] = getattr(args, "connect_line", "")
    logger.info("restarting: a fresh process replaces this one (see above why)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, serve_command(argv), env)


def _go_when_idle(servant: Any, dialer: Dialer, grace: float) -> None:
    """Hang up once no chunk runs and the pool has been told this worker leaves (a chunk
    it sent was answered ``LEAVING``), or ``grace`` seconds on, whichever comes first; at
    once where no pool is connected."""
    deadline = time.monotonic() + grace + 1.0
    leaving = servant.leaving
    while time.monotonic() < deadline and dialer.connected and (servant.busy() or not leaving.told.is_set()):
        leaving.told.wait(0.05)
    time.sleep(0.2)  # the last answer goes out
    dialer.close()


def _output_to_an_ssh_session() -> bool:
    """Whether standard output goes back through the ssh session that started this worker
    (``ssh host ezpool-serve --connect ...``, without a terminal): once that ssh has gone,
    sshd closes it, and the worker leaves with it. (Not its input, which ``ssh -n`` or
    ``< /dev/null`` ends at once.)"""
    import os
    import stat

    if not os.environ.get("SSH_CONNECTION"):
        return False
    try:
        mode = os.fstat(1).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _leave_when_output_closes(leave: Callable[[], None]) -> None:
    """Call ``leave`` once nothing reads standard output any more (its reader closed it)."""
    import select

    poller = select.poll()
    poller.register(1, 0)  # no event asked for: POLLERR and POLLHUP come anyway
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        except OSError:
            return
        if any(event & (select.POLLERR | select.POLLHUP) for _, event in events):
            leave()
            return


def _leave_at_end_of_input(leave: Callable[[], None]) -> None:
    import os
    import sys

    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    leave()
