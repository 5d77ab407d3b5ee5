"""Whether two big buffers hold the same bytes, at memory speed.

A pool compares what a function captures with what it sent last time (a segment,
a copy) rather than hashing it: 200 MB compare in ~15 ms here, and hash in ~230 ms.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, cast

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["same", "STEP"]

#: Bytes compared at a time (a bounded temporary when numpy does the comparing).
STEP = 1 << 22


def same(left: memoryview, right: memoryview) -> bool:
    """Whether two byte buffers of the same size are equal, as fast as this process can tell.

    Every call of a function that captures a big array pays this once per array:
    with numpy loaded (a big buffer usually comes from it), C's ``memcmp`` over
    the addresses numpy gives, at memory speed (200 MB: 15 ms here, against 22 ms
    for ``numpy.array_equal`` in slices and 600 ms for ``memoryview`` equality).
    """
    numpy = sys.modules.get("numpy")
    memcmp = _memcmp() if numpy is not None else None
    if numpy is not None and memcmp is not None:  # numpy gives the addresses
        here, there = (numpy.frombuffer(view, numpy.uint8).ctypes.data for view in (left, right))
        return memcmp(here, there, left.nbytes) == 0
    whole = left.nbytes - left.nbytes % 8
    if left[whole:] != right[whole:]:  # the last few bytes, then 8 at a time
        return False
    words, others = left[:whole].cast("Q"), right[:whole].cast("Q")
    if numpy is None:
        return words == others
    a, b, step = numpy.frombuffer(words, numpy.uint64), numpy.frombuffer(others, numpy.uint64), STEP // 8
    return all(numpy.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, len(a), step))


def _memcmp() -> Optional[Callable[[int, int, int], int]]:
    """C's ``memcmp`` through ``ctypes``, where this process can call it."""
    try:
        import ctypes

        memcmp = ctypes.CDLL(None).memcmp
    except (ImportError, OSError, AttributeError):
        return None
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return cast(Callable[[int, int, int], int], memcmp)
