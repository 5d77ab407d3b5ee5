"""``ezpool-status`` (or ``python -m ezpool.status``): the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .._core.cli import command_line
from .._core.logs import get_logger
from ..errors import EzPoolError

logger = get_logger(__name__)

__all__ = ["main"]

#: The ANSI codes that put the cursor home and clear the screen (``--watch`` on a terminal).
CLEAR = "\x1b[H\x1b[2J"

_EPILOG = """\
examples:
  {prog} PYRO:worker@node1:21000 PYRO:worker@node2:21000
  {prog} --ns nshost:9090 --watch
  {prog} --pool ~/pool.json --json

Each worker is one line: host, pid, what it serves, idle or busy (for how long, and
for which client: its address, for a worker that dialed in its pool's), tasks run
since it started, uptime, Python and EzPool versions. A worker answers only a
client that proves it holds the key (--hmac-key-file, else $EZPOOL_HMAC_KEY, else
your per-user key file); one that does not answer within --timeout is named, with
why. Exit status: 0 if every worker answered, 1 if some did not, 2 for bad flags;
with --watch, Ctrl-C ends it with 0.
"""


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser(_prog(sys.argv[0] if sys.argv else ""))
    args = parser.parse_args(argv)
    if not (args.uris or args.ns or args.pool):
        parser.error("name the workers: worker URIs, --ns HOST:PORT, or --pool HOST:PORT|LISTEN_FILE")
    from .. import _pyro

    for text in args.uris:
        try:
            _pyro.parse_uri(text)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        key, client_tls, server_tls = _security(args)
    except EzPoolError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.pool:  # this process serves the connection it dials to a pool: marshal only
        from .._pyro.server import configure_server_process

        configure_server_process(4)
    try:
        while True:
            asked = _look(args, key, client_tls, server_tls)
            _print(args, asked)
            if args.watch is None:
                return 0 if asked.complete else 1
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0 if args.watch is not None else 130


def _look(args: argparse.Namespace, key: Optional[bytes], client_tls: Any, server_tls: Any) -> Any:
    from .ask import Answer, Asked, ask_all, listed

    uris = list(args.uris)
    failed: list[Answer] = []
    notes: list[str] = []
    for ns in args.ns or ():
        try:
            found = listed(ns, args.ns_prefix, key, (args.tls_ca, args.tls_cert, args.tls_key))
        except EzPoolError as exc:
            failed.append(Answer(f"name server {ns}", None, str(exc)))
            continue
        uris += [uri for uri in found if uri not in uris]
        if not found:
            notes.append(f"name server {ns}: no worker is registered under {args.ns_prefix!r}")
    asked = ask_all(uris, args.pool or (), key, client_tls, server_tls, args.timeout)
    return Asked(failed + asked.answers, notes + asked.notes, asked.at)


def _print(args: argparse.Namespace, asked: Any) -> None:
    from .show import as_json, table

    text = as_json(asked) if args.json else table(asked)
    if args.watch is not None and not args.json:
        if sys.stdout.isatty():
            text = CLEAR + text
        else:
            text += "\n"  # blocks apart
    print(text, flush=True)


def _security(args: argparse.Namespace) -> tuple[Optional[bytes], Any, Any]:
    """The key; the TLS context to reach workers and name servers with, and the one to
    serve the connection dialed to a pool with (its workers' kind: --tls-cert)."""
    from ..security import client_tls_context, resolve_key, server_tls_context

    key = resolve_key(None, key_file=args.hmac_key_file, insecure=args.insecure)
    given = (args.tls_ca, args.tls_cert, args.tls_key)
    client = client_tls_context(*given) if any(given) else None
    server = None
    if args.pool and args.tls_cert is not None:
        server = server_tls_context(args.tls_cert, args.tls_key, args.tls_ca, False)
    return key, client, server


def _prog(argv0: str) -> str:
    return "ezpool-status" if Path(argv0).name == "ezpool-status" else "python -m ezpool.status"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    from ..security import KEY_ENV

    parser = argparse.ArgumentParser(
        prog=prog,
        description="List the EzPool workers you can reach, and what each is doing.",
        epilog=_EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("uris", nargs="*", metavar="URI", help="a worker's PYRO: (or PYRONAME:) URI")
    parser.add_argument("--ns", action="append", metavar="HOST[:PORT]",
                        help="every worker this name server lists (repeatable)")
    parser.add_argument("--ns-prefix", default="ezpool.", help="prefix of the names listed (default ezpool.)")
    parser.add_argument("--pool", action="append", metavar="HOST:PORT|LISTEN_FILE",
                        help="every worker that joined the pool listening there (repeatable)")
    parser.add_argument("--timeout", type=_seconds, default=2.0, metavar="SECONDS",
                        help="how long a worker may take to answer (default 2)")
    parser.add_argument("--watch", type=_seconds, nargs="?", const=2.0, metavar="SECONDS",
                        help="look again every SECONDS (default 2) until Ctrl-C (put URIs before it)")
    parser.add_argument("--json", action="store_true", help="one JSON document a look")
    parser.add_argument(
        "--hmac-key-file", type=Path, metavar="PATH",
        help=f"file holding the shared key (default: ${KEY_ENV}, else your per-user key file)",
    )
    parser.add_argument("--insecure", action="store_true", help="use no key (for workers started --insecure)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA that signed the workers' certificates")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="this side's certificate (a worker's kind, for a pool that uses TLS)")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    return parser
