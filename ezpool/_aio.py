"""``Pool.amap`` and ``Pool.aimap``: a call run for ``asyncio`` without blocking its loop.

(Being written for issue 28; until then, both say so.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from ._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["amap", "aimap"]


async def amap(pool: Any, mode: str, fun: Any, tasks: Iterable[Any], given: dict[str, Any]) -> Any:
    raise NotImplementedError("Pool.amap is being written (issue 28)")


def aimap(
    pool: Any, mode: str, fun: Any, tasks: Iterable[Any], ordered: bool, given: dict[str, Any]
) -> AsyncIterator[Any]:
    raise NotImplementedError("Pool.aimap is being written (issue 28)")
