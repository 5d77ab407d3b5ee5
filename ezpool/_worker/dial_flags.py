"""The flags of ``ezpool-serve`` for a worker that dials its pool (``--connect`` and its
companions), and the command line each of its ``--procs`` processes gets."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..errors import ServeError

__all__ = ["add_dialing_flags", "check_dialing_flags", "dialing_child_args"]


def add_dialing_flags(parser: Any, seconds: Callable[[str], float]) -> None:
    """The flags of ``ezpool-serve`` for a worker that dials its pool."""
    dial = parser.add_argument_group("dialing a pool (no port opens here)")
    dial.add_argument(
        "--connect", metavar="ADDRESS",
        help="dial the pool at HOST:PORT, or at the address in a pool's listen file, or - (the "
        "line after the key on standard input), instead of listening; keep trying until it answers",
    )
    dial.add_argument(
        "--key-stdin", action="store_true",
        help="read the key from the first line of standard input, and leave when it ends",
    )
    dial.add_argument("--stay", action="store_true", help="when the pool closes, wait for the next one")
    dial.add_argument(
        "--grace", type=seconds, default=10.0, metavar="SECONDS",
        help="on SIGTERM, finish or hand back the running chunk within this time (default 10)",
    )
    dial.add_argument(
        "--end-at", metavar="WHEN",
        help="take no chunk that cannot finish by then: an ISO time, seconds since the epoch, or "
        "'slurm' (the end of this SLURM job)",
    )
    dial.add_argument("--leave-at-eof", action="store_true", help=argparse.SUPPRESS)
    dial.add_argument(
        "--patience", type=seconds, default=60.0, metavar="SECONDS",
        help="after losing the pool, try to reach it again this long before leaving (default 60)",
    )


def check_dialing_flags(args: Any) -> None:
    """Flags that only a worker dialing its pool (``--connect``) uses, or that it cannot use."""
    if args.connect:
        if args.ns:
            raise ServeError("--connect dials the pool: a name server (--ns) has no use there")
        if args.connect == "-" and not args.key_stdin:
            raise ServeError("--connect - reads the pool's address from standard input: add --key-stdin")
        return
    for flag in ("stay", "end_at", "key_stdin"):
        if getattr(args, flag):
            raise ServeError(f"--{flag.replace('_', '-')} is for a worker that dials its pool: add --connect")


def dialing_child_args(args: Any) -> list[str]:
    """The command line of one of the ``--procs`` processes of a worker that dials."""
    import os

    address = getattr(args, "connect_line", None) if args.connect == "-" else args.connect
    command = [*([args.spec] if args.spec else []), "--connect", str(address)]
    command += ["--parent-pid", str(os.getpid())]
    command += ["--grace", str(args.grace), "--patience", str(args.patience)]
    if args.stay:
        command.append("--stay")
    if args.end_at:
        command += ["--end-at", args.end_at]
    if args.hmac_key_file is not None:
        command += ["--hmac-key-file", str(args.hmac_key_file)]
    if args.insecure:
        command.append("--insecure")
    for flag in ("tls_cert", "tls_key", "tls_ca"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for flag in ("max_tasks_per_worker", "max_memory"):
        if getattr(args, flag, None):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.verbose:
        command.append("-" + "v" * args.verbose)
    return command
