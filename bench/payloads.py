"""The task functions of the big-data workloads (``bench/bigdata.py``).

Light on purpose: every worker process of every contender imports it.
"""

from __future__ import annotations

__all__ = ["MEGABYTE", "RESULT_BYTES", "ARGUMENT_BYTES", "megabyte", "length", "argument"]

#: 2**20 bytes: the unit of the MB/s figures.
MEGABYTE = 1 << 20

#: Bytes a task of the big-results workload returns.
RESULT_BYTES = MEGABYTE

#: Bytes of a task of the big-arguments workload.
ARGUMENT_BYTES = 5 * MEGABYTE


def megabyte(index: int) -> bytes:
    """1 MB, starting with ``index`` (so that a wrong or mixed-up result shows)."""
    return index.to_bytes(8, "little") + bytes(RESULT_BYTES - 8)


def length(data: bytes) -> int:
    """The length of a big argument: all the cost is in moving it."""
    return len(data)


def argument(index: int) -> bytes:
    """A 5 MB argument, distinct from every other (a pool must not merge equal tasks)."""
    return index.to_bytes(8, "little") + bytes(ARGUMENT_BYTES - 8)
