"""Finding workers: resolving names, asking a worker who it is, starting local ones.

The rule for starting a worker (``may_start``): only on this machine's loopback,
only where nothing listens on the port, and, unless the user passed
``spawn=True``, only at the default address ``PYRO:worker@localhost:21000``.
A mistyped port or object name is then an error that names the address, not a
fresh worker that silently runs everything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from ... import _pyro
from ..._core.deaths import Watched
from ..._core.logs import get_logger
from ..._worker.launch import serve_command, worker_env
from ..._worker.servant import GENERIC, served_name, serving_hint
from ...errors import WorkerUnavailable
from ...options import DEFAULT_WORKER
from ...security import KEY_ENV, is_loopback_host, only_here
from .links import Link, LinkEvent

logger = get_logger(__name__)

__all__ = [
    "CONNECT_TIMEOUT",
    "SPAWN_TIMEOUT",
    "hello",
    "name_of",
    "fits",
    "version_table",
    "start_worker",
    "can_start",
    "is_default",
    "may_start",
    "not_started",
]

#: Seconds to wait for a worker to answer a check.
CONNECT_TIMEOUT = 5.0

#: Times a check is asked when the worker closes the connection under it.
_HELLO_TRIES = 3
#: Seconds to wait for an auto-started worker to answer.
SPAWN_TIMEOUT = 30.0
#: Seconds to wait for the exit status of a worker this pool started, once it stops
#: answering (its connections close a moment before its exit can be seen).
_DEATH_WAIT = 0.5


def hello(link: Link, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """Ask the worker behind ``link`` who it is, resolving a ``PYRONAME:`` URI first.

    Raises ``WorkerUnavailable`` (or ``AuthenticationError``) naming the worker; for a
    worker this pool started whose process has ended, it says how it ended (out of
    memory, for one the kernel's OOM killer killed).
    """
    try:
        return _hello(link, timeout)
    except WorkerUnavailable as exc:
        ended = link.process.ended(_DEATH_WAIT) if link.process is not None else None
        if ended is None:
            raise
        raise WorkerUnavailable(f"the worker this pool started for {link.text} {ended}") from exc


def _hello(link: Link, timeout: float) -> dict[str, Any]:
    if link.uri.protocol == "PYRONAME":
        try:
            link.address = _pyro.resolve(link.uri, link.key, timeout, link.tls)
        except WorkerUnavailable:
            if link.address is None:
                raise
            logger.debug("name server down; trying %s at its last address", link.text)
    for attempt in range(1, _HELLO_TRIES + 1):
        try:
            info = _ask(link, timeout)
            break
        except _pyro.ConnectionClosed as exc:
            # Closed under us (a worker shedding a flood of connections, or one that
            # just restarted): a fresh connection usually answers.
            if attempt == _HELLO_TRIES:
                raise _pyro.translate(exc, link.text) from None
            logger.debug("worker %s closed the connection of its check (%s); asking again", link.text, exc)
            time.sleep(0.2 * attempt)
        except _pyro.PyroError as exc:
            if isinstance(exc, _pyro.DaemonError):  # no object of that name there
                raise WorkerUnavailable(_wrong_name(link, timeout)) from None
            raise _pyro.translate(exc, link.text) from None
    if not isinstance(info, dict) or not info.get("identity"):
        raise WorkerUnavailable(f"worker {link.text} did not say who it is: is it an EzPool worker?")
    if info.get("restarting"):
        raise WorkerUnavailable(f"worker {link.text} is restarting (to stop a task past its timeout)")
    return dict(info)


def _ask(link: Link, timeout: float) -> Any:
    """``hello`` on the connection chunks will take, when there is one: a worker then
    costs one connection, not one for the check and one for the work. A connection
    that fails is closed, so that the next attempt opens a fresh one."""
    connection = link.connection
    keep = connection is not None and connection.uri == link.address
    if connection is None or not keep:
        connection = _pyro.Connection(link.address, link.key, timeout, link.tls)
    saved = connection.timeout
    failed = True
    try:
        connection.timeout = timeout
        info = connection.call("hello")
        failed = False
        return info
    finally:
        if keep:
            connection.timeout = saved
            if failed:
                connection.close()
        else:
            connection.close()


def _wrong_name(link: Link, timeout: float) -> str:
    """The message for a port that answers but serves no object of ``link``'s name.

    The daemon there lists its objects to a client with the key (the call is
    Pyro4's own ``registered()``, not an EzPool call, so it needs no session).
    """
    address = link.address
    asked = f"{link.text}: port {address.port} answers, but serves"
    daemon = _pyro.parse_uri(f"PYRO:Pyro.Daemon@{address.host}:{address.port}")
    connection = _pyro.Connection(daemon, link.key, timeout, link.tls, authenticate=False)
    try:
        names = [name for name in connection.call("registered") if name != "Pyro.Daemon"]
    except Exception:  # an old or foreign daemon: say what is known
        return f"{asked} no object named {address.object!r}"
    finally:
        connection.close()
    served = ", ".join(repr(name) for name in sorted(names)) or "nothing"
    return f"{asked} {served}, not {address.object!r}"


def name_of(fun: Any) -> str:
    """The name a worker serving ``fun`` (a function or a ``BaseWorker`` subclass, as the
    ``Pool`` checked) answers to."""
    return served_name(fun)


def fits(info: dict[str, Any], name: str, code: str) -> Optional[str]:
    """Why the worker that said ``info`` cannot run ``name`` (whose fingerprint is ``code``), or None.

    A generic worker runs anything; one that serves a named target must serve this
    name, and the same code.
    """
    serves = info.get("serves")
    if serves == GENERIC:
        return None
    if serves != name:
        return f"it serves {serves!r}, not {name!r}: {serving_hint(str(serves))}"
    if info.get("fingerprint") and code and info["fingerprint"] != code:
        return (
            f"it runs other code for {name!r} than this client (was the code changed after the "
            "worker started?): restart it"
        )
    return None


def unfit_for(info: dict[str, Any], name: str, code: str) -> str:
    """Why the worker that said ``info`` may not run ``name`` (whose fingerprint is
    ``code``), its versions included ("" if it may)."""
    refusal, _ = version_table(info, info.get("serves") == GENERIC)
    return fits(info, name, code) or refusal or ""


def rejoin(
    link: Link, name: str, code: str, restart: Callable[[Link], bool], finished: Callable[[], bool],
    stop: threading.Event,
) -> bool:
    """Check a lost worker again and again, until it may run ``name`` again (whether it
    does), the work is ``finished`` or the call stops; ``restart`` starts again a
    worker the pool started, if its process died. It was found lost just now: each
    check comes after a pause, which the end of the call cuts short."""
    pause = min(1.0, link.heartbeat / 2)
    wrong = ""
    while not (stop.is_set() or finished()):
        if restart(link):
            return True
        if stop.wait(pause):
            break
        try:
            info = hello(link, max(pause, 0.5))
        except Exception as exc:
            logger.debug("worker %s still does not answer: %s", link.text, exc)
        else:
            unfit = unfit_for(info, name, code)
            if not unfit:
                replaced = info["identity"] != link.identity
                # Back from a restart it was asked for (max_tasks_per_worker, a stop): no news.
                say = logger.info if link.lost_by is LinkEvent.RESTARTING else logger.warning
                link.admit(info)
                say("worker %s answers again%s; it gets work again",
                    link.text, " (a new process)" if replaced else "")
                return True
            if unfit != wrong:
                wrong = unfit
                logger.warning("worker %s answers, but %s; it gets no work", link.text, unfit)
    return False


def version_table(info: dict[str, Any], generic: bool) -> tuple[Optional[str], Optional[str]]:
    """``(refusal, warning)``: versions of this client and a worker that break unpickling, or may.

    Code travels to a generic worker as bytecode, so Python's minor version and
    cloudpickle must match there; elsewhere only data travels, and a difference is
    worth a warning.
    """
    import platform

    import cloudpickle

    from ..._version import __version__

    mine = {
        "python": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
        "ezpool": __version__,
    }
    if all(str(info.get(name, "?")) == mine[name] for name in mine):
        return None, None
    table = "\n".join(f"  {name:<12} {mine[name]:<12} {info.get(name, '?')}" for name in mine)
    table = f"  {'':<12} {'client':<12} worker\n{table}"
    breaking = any(_minor(mine[name]) != _minor(str(info.get(name, ""))) for name in mine)
    if generic and breaking:
        return (
            f"has other versions than this client, and the code it would run travels as "
            f"bytecode:\n{table}\nInstall the same Python (major.minor), cloudpickle and "
            "EzPool on both sides, or serve a named class there with python -m ezpool.serve "
            "MODULE:NAME"
        ), None
    return None, f"has other versions than this client:\n{table}"


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def start_worker(link: Link) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a generic ``ezpool.serve`` at ``link``'s local address, with the current directory
    off its import path (``ezpool._worker.launch``); its process and hello."""
    uri = link.address
    logger.info("no worker answers at %s: starting one there for this pool", link.text)  # as asked
    link.process = None  # an earlier one's death is no news about this one
    command = serve_command(["--host", str(uri.host), "--port", str(uri.port), "--name", str(uri.object),
                             "--parent-pid", str(os.getpid())])
    env = worker_env(os.environ, sys.path)  # the current directory only if no one else can write it
    if link.key is not None:  # through the environment, never the command line
        env[KEY_ENV] = link.key.decode()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while True:
        if process.poll() is not None:
            raise WorkerUnavailable(
                f"the worker started for {link.text} exited with code {process.returncode} "
                "(its error is above)"
            )
        try:
            info = hello(link)
        except WorkerUnavailable as exc:
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerUnavailable(f"the worker started for {link.text} did not answer: {exc}") from None
            time.sleep(0.05)
        else:
            link.process = Watched(process)
            return process, info


def can_start(link: Link) -> bool:
    """Whether a worker could be started for ``link``: only on this machine's loopback."""
    uri: Optional[Any] = link.address
    return uri is not None and uri.protocol == "PYRO" and is_loopback_host(str(uri.host))


def is_default(link: Link) -> bool:
    """Whether ``link`` names the default worker address (however the loopback host is written)."""
    uri, default = link.address, _pyro.parse_uri(DEFAULT_WORKER)
    return can_start(link) and (uri.object, uri.port) == (default.object, default.port)


def may_start(link: Link, spawn: Optional[bool]) -> bool:
    """Whether the pool starts a worker for ``link``, which did not answer (see the module's rule).
    Never for a name that only looks like another machine's (``security.only_here``)."""
    if not can_start(link) or only_here(str(link.address.host)):
        return False
    if not (spawn is not False and can_start(link) and (spawn or is_default(link))):
        return False
    return not _listening(str(link.address.host), int(link.address.port))


def not_started(link: Link) -> WorkerUnavailable:
    """No worker listens at ``link``: why the pool did not start one, and how to."""
    address = link.address
    here = only_here(str(address.host))
    if here:
        return WorkerUnavailable(
            f"no worker answers at {link.text} (connection refused): {address.host} resolves to {here}, "
            "an address of this machine only, so a worker elsewhere is never reached there. Give the "
            "URI an address of the worker's machine that this one reaches (its serve --host), or let "
            "the workers dial the pool (listen=..., ezpool-serve --connect)"
        )
    name = "" if address.object == "worker" else f" --name {address.object}"
    return WorkerUnavailable(
        f"no worker answers at {link.text} (connection refused), and EzPool starts one by itself "
        f"only at the default address {DEFAULT_WORKER}: is the address mistyped? Start a worker "
        f"there with python -m ezpool.serve --port {address.port}{name}, or pass spawn=True to "
        "let the pool start one"
    )


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections at ``host:port`` (a quick local check)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
