"""Storing: ``map(store=...)`` into a new file and resumed from a full one, against
``map`` computing the same tasks (issue 29).

Registered in ``bench.suites.WORKLOADS`` as ``store``.
"""

from __future__ import annotations

from .harness import Comparison, Settings

__all__ = ["storing"]


def storing(settings: Settings) -> list[Comparison]:
    """The comparisons of a stored ``map`` against a plain one (being written)."""
    return []
