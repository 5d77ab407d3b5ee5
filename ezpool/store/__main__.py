"""``python -m ezpool.store PATH``: what a store holds, without running anything.

Prints the summary of every sweep in the file (or of the one ``--sweep`` names):
how many tasks are done and failed, the task time, the wall span and the slowest
tasks. The file is opened read-only. Exits 2, with a one-line error, when the file
is missing, is not a store, or is not the user's own (see ``ezpool.store``).

``--upgrade`` signs a store made by an older EzPool (format 2) with the user's key,
so that this one reads it: only for a store you made yourself (see ``upgrade``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .._core.cli import command_line
from .._core.logs import get_logger
from ..errors import EzPoolError
from . import Store
from .upgrade import upgrade

logger = get_logger(__name__)

__all__ = ["main"]


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.upgrade:
            signed = upgrade(args.path)
            print(f"{args.path}: signed {signed} rows with your key; this ezpool reads it now")
            return 0
        with Store(args.path, readonly=True) as store:
            labels = [args.sweep] if args.sweep else [info.label for info in store.sweeps()]
            texts = [store.find(label).summary(slowest=args.slowest) for label in labels]
    except (OSError, EzPoolError) as exc:  # StoreError, or SecurityError for the key
        print(f"ezpool.store: error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(texts) if texts else f"{args.path} holds no sweeps")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ezpool.store",
        description="Summarise the sweeps in an ezpool store file: counts, times, slowest tasks.",
    )
    parser.add_argument("path", metavar="PATH", help="the store file")
    parser.add_argument("--sweep", metavar="NAME", help="only this sweep (NAME or NAME[store_key])")
    parser.add_argument(
        "--upgrade", action="store_true",
        help="sign a store made by an older ezpool (format 2) with your key, so that this one reads it; "
        "only for a store you made yourself",
    )
    parser.add_argument(
        "--slowest", metavar="N", type=_count, default=5, help="list the N slowest tasks (default 5)"
    )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
