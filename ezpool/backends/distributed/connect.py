"""Finding workers: resolving names, asking a worker who it is, starting local ones."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any, Optional

from ... import _pyro
from ...errors import WorkerUnavailable
from ...security import KEY_ENV, is_loopback_host
from ...servant import served_name
from ...worker import BaseWorker
from .links import Link

logger = logging.getLogger(__name__)

__all__ = ["CONNECT_TIMEOUT", "SPAWN_TIMEOUT", "hello", "name_of", "start_worker", "can_start"]

#: Seconds to wait for a worker to answer a check.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an auto-started worker to answer.
SPAWN_TIMEOUT = 30.0


def hello(link: Link, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """Ask the worker behind ``link`` who it is, resolving a ``PYRONAME:`` URI first.

    Raises ``WorkerUnavailable`` (or ``AuthenticationError``) naming the worker.
    """
    if link.uri.protocol == "PYRONAME":
        try:
            link.address = _pyro.resolve(link.uri, link.key, timeout)
        except WorkerUnavailable:
            if link.address is None:
                raise
            logger.debug("name server down; trying %s at its last address", link.text)
    connection = _pyro.Connection(link.address, link.key, timeout, link.tls)
    try:
        info = connection.call("hello")
    except _pyro.PyroError as exc:
        raise _pyro.translate(exc, link.text) from None
    finally:
        connection.close()
    if not isinstance(info, dict) or not info.get("identity"):
        raise WorkerUnavailable(f"worker {link.text} did not say who it is: is it an EzPool worker?")
    if info.get("restarting"):
        raise WorkerUnavailable(f"worker {link.text} is restarting (to stop a task past its timeout)")
    return dict(info)


def name_of(fun: Any) -> str:
    """The name a worker serving ``fun`` answers to; ``TypeError`` if it cannot be served."""
    is_worker = isinstance(fun, type) and issubclass(fun, BaseWorker)
    if not is_worker and (isinstance(fun, type) or not callable(fun)):
        raise TypeError(f"fun must be a BaseWorker subclass or a function to serve, got {fun!r}")
    return served_name(fun)


def start_worker(link: Link, fun: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``python -m ezpool.serve`` for ``fun`` at ``link``'s local address; its process and hello."""
    spec = _spec_of(fun)
    uri = link.address
    logger.warning("no worker answers at %s: starting one that serves %s", link.text, spec)
    command = [sys.executable, "-m", "ezpool.serve", spec, "--host", str(uri.host)]
    command += ["--port", str(uri.port), "--name", str(uri.object), "--parent-pid", str(os.getpid())]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path or os.getcwd() for path in sys.path))
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
            return process, hello(link)
        except WorkerUnavailable as exc:
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerUnavailable(f"the worker started for {link.text} did not answer: {exc}") from None
            time.sleep(0.05)


def can_start(link: Link) -> bool:
    """Whether a worker may be started for ``link``: only on this machine's loopback."""
    uri: Optional[Any] = link.address
    return uri is not None and uri.protocol == "PYRO" and is_loopback_host(str(uri.host))


def _spec_of(fun: Any) -> str:
    """``MODULE:NAME`` for ``python -m ezpool.serve``, also for a class in the user's script."""
    qualname = served_name(fun)
    if "<" in qualname:
        raise WorkerUnavailable(
            f"cannot start a worker for {fun!r}: lambdas and nested definitions cannot be "
            "served; define it at the top level of a module"
        )
    module = getattr(fun, "__module__", None)
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise WorkerUnavailable(
                f"cannot start a worker for {qualname!r} defined interactively; "
                "start one with python -m ezpool.serve"
            )
        return f"{os.path.abspath(path)}:{qualname}"
    return f"{module}:{qualname}"
