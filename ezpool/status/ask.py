"""Asking workers for their status: by URI, through a name server, or through a listening pool.

Every way is an authenticated EzPool connection (``ezpool._pyro``): a worker answers
``status`` only on a connection that proved the key, and this side checks the
worker's proof and the signature of every answer. A pool is reached by dialing
its listening address as a worker does (``ezpool._backends.distributed.pool_status``):
this side proves the key first, the pool proves it back, and only then hands over
its workers' rows. Nothing is unpickled on either side (``marshal`` only).

Every worker is asked at once; one that has not answered within ``timeout``
seconds is an ``Answer`` with the reason, and the rest are listed all the same.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from .. import _pyro
from .._core.listen_file import parse_address, read_listen_file
from .._core.logs import get_logger
from .._pyro.server import REFUSED_WRONG_KEY
from ..errors import EzPoolError

logger = get_logger(__name__)

__all__ = ["Answer", "Asked", "ask_all", "ask_worker", "ask_pool", "listed"]


class Answer(NamedTuple):
    """One worker: what it answered (``row``), or why it did not (``error``)."""

    worker: str  # the URI given or listed, or HOST:PID@POOL for a worker that joined a pool
    row: Optional[dict[str, Any]] = None
    error: str = ""


class Asked(NamedTuple):
    """Every answer of one look, and notes on sources that hold no worker."""

    answers: list[Answer]
    notes: list[str]
    at: float  # when it was asked (seconds since the epoch)

    @property
    def complete(self) -> bool:
        """Whether every worker answered."""
        return not any(answer.error for answer in self.answers)


def _why(exc: BaseException, timeout: float, where: str, proven: bool = True) -> str:
    """What a failure to get a status says, told apart by type (never by its text);
    ``proven``: whether the connection had proven the key both ways before it failed."""
    if isinstance(exc, _pyro.KeyRefused):
        return "refused: wrong key" if exc.wrong_key else "refused: one side has no key"
    if isinstance(exc, _pyro.SecurityError):
        return f"refused: {exc}"
    if isinstance(exc, _pyro.ConnectionRefused):
        return f"refused: nothing listens at {where}"
    if isinstance(exc, (_pyro.PyroTimeout, TimeoutError)):
        return f"no answer in {timeout:g} s"
    if isinstance(exc, _pyro.ConnectionClosed):
        if not proven:
            return "hung up before the key was proven (does it serve over TLS? give --tls-ca)"
        return "hung up without answering (an EzPool older than this one has no status)"
    return f"unreachable: {exc}"


def ask_worker(connection: _pyro.Connection, text: str, timeout: float) -> Answer:
    """``status`` of the worker at the end of ``connection`` (given as ``text``)."""
    where = f"{connection.uri.host}:{connection.uri.port}"
    proven = False
    try:
        connection.open()
        proven = True
        answer = connection.call("status")
    except (_pyro.PyroError, OSError) as exc:
        return Answer(text, None, _why(exc, timeout, where, proven))
    finally:
        connection.close()
    if not isinstance(answer, dict):
        return Answer(text, None, "answered no status (is it an EzPool worker?)")
    return Answer(text, dict(answer))


def listed(ns: str, prefix: str, key: Optional[bytes], tls_paths: Sequence[Any]) -> list[str]:
    """The workers a name server lists (``ezpool.list_workers``); ``EzPoolError`` if it cannot."""
    from ..naming import list_workers

    ca, cert, tls_key = tls_paths
    return list_workers(ns, prefix, hmac_key=key, insecure=key is None, tls_ca=ca, tls_cert=cert,
                        tls_key=tls_key)


def ask_pool(
    text: str, key: Optional[bytes], tls: Optional[ssl.SSLContext], timeout: float
) -> tuple[list[Answer], str]:
    """The workers that joined the pool listening at ``text`` (``HOST:PORT``, or its listen
    file), each with its status; and a note when none has joined."""
    name = f"pool {text}"
    try:
        host, port, uses_tls = _pool_address(text)
    except (OSError, ValueError, EzPoolError) as exc:
        return [Answer(name, None, f"cannot tell where it listens: {exc}")], ""
    if uses_tls and tls is None:
        return [Answer(name, None, "it uses TLS: give --tls-cert and --tls-key (a certificate its CA "
                                   "signed, as its workers have)")], ""
    rows: list[Any] = []

    def hello() -> dict[str, Any]:
        return {"identity": secrets.token_hex(16), "wants": "status", "timeout": timeout, "pid": os.getpid()}

    def workers(given: Any) -> bool:
        rows.append(given)
        return True

    methods: dict[str, Callable[..., Any]] = {"hello": hello, "workers": workers, "bye": lambda: True}
    try:
        sock = socket.create_connection((host, port), timeout)
    except ConnectionRefusedError:
        return [Answer(name, None, f"refused: nothing listens at {host}:{port}")], ""
    except OSError as exc:
        return [Answer(name, None, f"unreachable: {exc}")], ""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    waited = 2 * timeout + 1.0  # the pool asks its workers for timeout seconds
    late = threading.Event()

    def too_late() -> None:
        late.set()
        _shut(sock)

    timer = threading.Timer(waited, too_late)
    timer.daemon = True
    server = _pyro.Server(methods, "", 0, "worker", key, tls, dials=True)
    try:
        server.start()
        timer.start()
        refused = server.serve_dialed(sock)
    finally:
        timer.cancel()
        sock.close()
        server.shutdown()
    if refused:
        why = "refused: wrong key" if refused == REFUSED_WRONG_KEY else "refused: one side has no key"
        return [Answer(name, None, why)], ""
    if not rows or not isinstance(rows[0], (list, tuple)):
        why = f"no answer in {waited:g} s" if late.is_set() else \
            "hung up without answering (an EzPool older than this one answers no status)"
        return [Answer(name, None, why)], ""
    answers = [_pool_answer(text, row) for row in rows[0] if isinstance(row, dict)]
    return answers, "" if answers else f"pool {text}: no worker has joined"


def _pool_answer(pool: str, row: dict[str, Any]) -> Answer:
    worker = f"{row.get('worker', '?')}@{pool}"  # HOST:PID@POOL, as a URI's NAME@HOST:PORT
    error = row.get("error")
    if error:
        return Answer(worker, None, str(error))
    return Answer(worker, {k: v for k, v in row.items() if k != "worker"})


def _pool_address(text: str) -> tuple[str, int, bool]:
    """Where a pool listens, from ``HOST:PORT`` or its listen file; and whether it uses TLS."""
    if Path(text).is_file() or ":" not in text:
        written = read_listen_file(Path(text))
        host, port = parse_address(written.address)
        return host, port, written.tls
    host, port = parse_address(text)
    if not host:
        raise ValueError(f"{text!r}: name the pool's host (HOST:PORT)")
    return host, port, False


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def ask_all(
    uris: Sequence[str],
    pools: Sequence[str],
    key: Optional[bytes],
    client_tls: Optional[ssl.SSLContext],
    server_tls: Optional[ssl.SSLContext],
    timeout: float,
) -> Asked:
    """Ask every worker in ``uris`` and every pool in ``pools`` at once."""
    at = time.time()
    answers: list[list[Answer]] = [[Answer(text, None, f"no answer in {timeout:g} s")] for text in uris]
    notes: list[str] = []
    aborts: list[Callable[[], None]] = []
    threads = []
    for index, text in enumerate(uris):
        try:
            connection = _connection(text, key, client_tls, timeout)
        except (EzPoolError, ValueError) as exc:
            answers[index] = [Answer(text, None, str(exc))]
            continue
        aborts.append(connection.abort)
        asking = functools.partial(_one, ask_worker, connection, text, timeout)
        threads.append(_start(_into(answers, index, asking)))
    for text in pools:
        answers.append([Answer(f"pool {text}", None, f"no answer in {2 * timeout + 1:g} s")])
        asking = functools.partial(_noted, notes, ask_pool, text, key, server_tls, timeout)
        threads.append(_start(_into(answers, len(answers) - 1, asking)))
    deadline = time.monotonic() + timeout
    for thread in threads[: len(aborts)]:  # the workers asked by URI: timeout seconds at most
        thread.join(max(0.0, deadline - time.monotonic()))
    for abort in aborts:
        abort()
    for thread in threads[len(aborts):]:  # the pools end by themselves (see ask_pool)
        thread.join()
    return Asked([answer for group in answers for answer in group], notes, at)


def _connection(text: str, key: Optional[bytes], tls: Optional[ssl.SSLContext], timeout: float) -> Any:
    """A connection to the worker ``text`` names (a ``PYRONAME:`` is looked up first)."""
    uri = _pyro.resolve(_pyro.parse_uri(text), key, timeout, tls)
    return _pyro.Connection(uri, key, timeout, tls)


def _one(ask: Callable[..., Answer], *args: Any) -> list[Answer]:
    return [ask(*args)]


def _noted(notes: list[str], ask: Callable[..., tuple[list[Answer], str]], *args: Any) -> list[Answer]:
    answers, note = ask(*args)
    if note:
        notes.append(note)
    return answers


def _into(answers: list[list[Answer]], index: int, ask: Callable[[], list[Answer]]) -> Callable[[], None]:
    def run() -> None:
        try:
            answers[index] = ask()
        except Exception as exc:  # never let one worker hide the others
            logger.debug("asking for a status failed", exc_info=True)
            answers[index] = [Answer(answers[index][0].worker, None, f"failed: {exc}")]

    return run


def _start(run: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=run, daemon=True, name="ezpool-status")
    thread.start()
    return thread
