"""``python -m ezpool.report STORE_OR_TRACE -o report.html``: a report made afterwards.

From a trace file (``results.save_trace``, ``Pool(trace=...)``) the report shows the
run as recorded. From a store (``map(..., store=...)``) it shows what the store
keeps: each task's outcome, run time and worker, laid out end to end per worker (the
page says the layout is approximate). A store with several sweeps needs ``--sweep
NAME`` (``python -m ezpool.store PATH`` lists them). Exits 2, with one line naming
the path, when the file is missing or is neither a store nor a trace.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .._core.cli import command_line
from .._core.logs import get_logger
from ..errors import EzPoolError
from . import write_report
from .sources import load

logger = get_logger(__name__)

__all__ = ["main"]


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        timeline, notes = load(args.source, args.sweep)
    except (OSError, ValueError, EzPoolError) as exc:  # missing, not ours, damaged, not the user's
        message = str(exc)
        if args.source not in message:
            message = f"{args.source}: {message}"
        print(f"ezpool.report: error: {message}", file=sys.stderr)
        return 2
    try:
        write_report(timeline, args.output, notes=notes)
    except OSError as exc:
        print(f"ezpool.report: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: report of {len(timeline)} task runs on {len(timeline.workers)} workers")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ezpool.report",
        description="Write one self-contained HTML report of a run, from a trace file or a store.",
    )
    parser.add_argument("source", metavar="STORE_OR_TRACE", help="a trace file (JSON) or a store file")
    parser.add_argument("-o", "--output", metavar="PATH", default="report.html",
                        help="the HTML file to write (default: report.html)")
    parser.add_argument("--sweep", "--key", metavar="NAME", dest="sweep",
                        help="for a store with several sweeps: the one to show (NAME or NAME[store_key], "
                        "as python -m ezpool.store PATH lists them)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
