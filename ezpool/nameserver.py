"""``python -m ezpool.nameserver``: EzPool's name server for its workers, keyed by default.

It is served like a worker (``ezpool._pyro.registry``): every call is signed with
the same key as workers and clients (``$EZPOOL_HMAC_KEY``, ``--hmac-key-file``,
else your per-user key file) over a nonce and a counter, so nothing recorded can
be replayed, and a peer without the key gets a waiting slot for 5 s at most and
nothing signed. It never broadcasts, and serves up to a thousand connections at
once, so hundreds of workers can register together. ``--tls-cert``/``--tls-key``
(and ``--tls-ca``, ``--tls-require-client-cert``) serve it over TLS, as for
``serve``. It prints the ``HOST:PORT`` to give to ``serve --ns`` and
``list_workers(ns=...)``, and stops on Ctrl-C or SIGTERM. ``--insecure`` runs it
without a key, which lets anyone who can reach it list, add or overwrite names.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from ._core.cli import command_line, stdout_line
from ._core.logs import get_logger
from ._core.tls_contexts import add_server_tls_flags, server_tls_from_flags
from .errors import SecurityError

logger = get_logger(__name__)

__all__ = ["main"]


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    from . import _pyro
    from .security import is_loopback_host, resolve_key

    try:
        key = resolve_key(None, key_file=args.hmac_key_file, insecure=args.insecure)
        tls = server_tls_from_flags(args)
    except SecurityError as exc:
        print(f"ezpool.nameserver: error: {exc}", file=sys.stderr)
        return 1
    if key is None and not is_loopback_host(args.host):
        logger.warning("name server on %s without a key: anyone who can reach it can change it", args.host)
    try:
        server = _pyro.NameServerProcess(args.host, args.port, key, tls)
    except OSError as exc:
        print(f"ezpool.nameserver: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    stdout_line(server.address)  # if no one reads it, it serves all the same
    try:
        stop.wait()
    finally:
        server.shutdown()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ezpool.nameserver",
        description="Run a keyed name server for EzPool workers (serve --ns, list_workers).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="port to listen on (default 9090)")
    parser.add_argument("--hmac-key-file", type=Path, metavar="PATH", help="file holding the shared key")
    parser.add_argument("--insecure", action="store_true", help="run without a key (anyone may change it)")
    add_server_tls_flags(parser, "name server")
    return parser


if __name__ == "__main__":
    sys.exit(main())
