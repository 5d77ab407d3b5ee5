"""Failures a test can ask a served worker to show, and nothing else: clients never reach this.

``python -m ezpool.serve`` reads ``EZPOOL_TEST_FAULTS`` from its own environment
(and only there) and gives the result to its servant, which asks it one thing at
the places a fault may be shown: ``faults.at(place, value)``, what to do where it
would do ``value``. Without the variable every answer is ``value`` itself.

``EZPOOL_TEST_FAULTS="drop_reply=3"`` makes the third ``run_chunk`` run its chunk
and then hang up instead of answering (``at("reply", ...)`` gives ``None``);
``python=3.0.1`` (or ``cloudpickle=``, ``ezpool=``) makes ``hello`` report that
version (``at("hello", info)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FAULTS_ENV", "Faults", "NO_FAULTS"]

#: The environment variable a test sets to make a served worker misbehave.
FAULTS_ENV = "EZPOOL_TEST_FAULTS"

_VERSIONS = ("python", "cloudpickle", "ezpool")


class Faults:
    """The faults a test asked for (``ValueError`` naming an unknown one)."""

    __slots__ = ("_drop_reply", "_versions")

    def __init__(self, text: str = "") -> None:
        self._drop_reply: set[int] = set()
        self._versions: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name == "drop_reply" and value.isdigit():
                self._drop_reply.add(int(value))
            elif name in _VERSIONS and value:
                self._versions[name] = value
            else:
                known = "drop_reply=N, python=, cloudpickle=, ezpool="
                raise ValueError(f"unknown fault {item!r} (known: {known})")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Faults:
        return cls(environ.get(FAULTS_ENV, ""))

    def at(self, place: str, value: Any, call: int = 0) -> Any:
        """What the worker does at ``place`` where it would do ``value``: ``value``, unless
        a test asked otherwise. ``"hello"``: what it says of itself; ``"reply"``: its
        answer to the ``call``-th ``run_chunk`` (``None``: no answer, it hangs up)."""
        if place == "hello" and self._versions:
            return {**value, **self._versions}
        if place == "reply" and call in self._drop_reply:
            return None
        return value


#: A worker that shows no fault.
NO_FAULTS = Faults()
