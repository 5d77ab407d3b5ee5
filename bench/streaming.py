"""Streaming: ``imap`` consumed fully against ``map`` of the same tasks (issue 29).

Registered in ``bench.suites.WORKLOADS`` as ``imap``.
"""

from __future__ import annotations

from .harness import Comparison, Settings

__all__ = ["streaming"]


def streaming(settings: Settings) -> list[Comparison]:
    """The comparisons of ``imap`` against ``map`` (being written)."""
    return []
