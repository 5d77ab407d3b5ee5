"""How a comparison is timed: contenders alternated in one process, repeated, medians.

A *contender* is a name and a context manager that prepares it once (starts its
pool) and yields ``run(size)``, the thing timed. A *comparison* times several
contenders over one or more sizes::

    for each size:
        warm-up: every contender runs once, its result is checked, not timed
        repeat R times: every contender runs once, in turn (the order rotates)
    median of the R times, and the ratio EzPool / peer for each pair

Alternating contenders, instead of timing one after the other, spreads the drift of
a shared machine over all of them. A contender that cannot run here raises ``Skip``
when it is entered (a peer not installed, the distributed mode not merged yet);
it is reported as skipped, never as a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import traceback
from collections.abc import Iterator, Mapping, Sequence
from time import perf_counter
from typing import Any, Callable, ContextManager, NamedTuple, Optional

logger = logging.getLogger(__name__)

__all__ = ["Skip", "Timed", "Contender", "Comparison", "Settings", "measure", "simple"]

Runner = Callable[[int], Any]


class Timed(NamedTuple):
    """Returned by a run that times itself (e.g. leaving out a pool's shut-down)."""

    seconds: float
    value: Any


class Skip(Exception):
    """This contender cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How hard to measure."""

    quick: bool
    repeats: int
    #: A contender is skipped at a size where its runs would take longer than this
    #: in all (estimated from its time at the previous size), so that a contender
    #: costing 50 µs a task does not eat the whole run at a million tasks.
    budget: float


@dataclasses.dataclass(frozen=True)
class Contender:
    """One way of doing the work.

    ``prepare()`` returns a context manager that yields ``run(size)``; everything
    that should not be timed (starting a pool) happens on entering it.
    ``ezpool`` marks EzPool's own contenders: ratios are EzPool / the others.
    """

    name: str
    prepare: Callable[[], ContextManager[Runner]]
    ezpool: bool = False


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Contenders timed against each other over ``sizes``.

    ``check(size, result)`` raises if a contender's result is wrong, so that no
    broken contender is ever timed. ``pairs`` are the ``(ezpool, peer)`` ratios to
    report (default: every EzPool contender against every other contender).
    """

    name: str
    title: str
    unit: str  # what a size counts, e.g. "tasks"
    sizes: Sequence[int]
    contenders: Sequence[Contender]
    check: Callable[[int, Any], None]
    pairs: Optional[Sequence[tuple[str, str]]] = None
    #: Facts about the workload that its derived figures need (e.g. worker counts).
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The fewest timed runs, whatever ``--repeats`` says: for quick but noisy runs
    #: (a fresh interpreter each), whose median needs more samples to settle.
    least_repeats: int = 0

    def ratio_pairs(self) -> list[tuple[str, str]]:
        if self.pairs is not None:
            return list(self.pairs)
        ours = [c.name for c in self.contenders if c.ezpool]
        theirs = [c.name for c in self.contenders if not c.ezpool]
        return [(a, b) for a in ours for b in theirs]


def measure(comparison: Comparison, settings: Settings) -> dict[str, Any]:
    """Time every contender of ``comparison``; return a JSON-ready record of it.

    Each contender is ``{"status": "ok"|"skipped"|"error", "reason", "sizes":
    {size: {"status", "median", "samples", "reason"}}}``; ``ratios`` holds
    ``{"ezpool", "peer", "size", "ratio"}`` entries.
    """
    record: dict[str, Any] = {
        "title": comparison.title,
        "unit": comparison.unit,
        "sizes": list(comparison.sizes),
        "params": dict(comparison.params),
        "contenders": {},
        "ratios": [],
    }
    contenders = record["contenders"]
    with contextlib.ExitStack() as stack:
        runners: dict[str, Runner] = {}
        for contender in comparison.contenders:
            entry: dict[str, Any] = {"ezpool": contender.ezpool, "status": "ok", "reason": "", "sizes": {}}
            contenders[contender.name] = entry
            try:
                runners[contender.name] = stack.enter_context(contender.prepare())
            except Skip as skip:
                entry.update(status="skipped", reason=str(skip))
            except Exception as exc:
                logger.error(
                    "%s: %s failed to start:\n%s", comparison.name, contender.name, traceback.format_exc()
                )
                entry.update(status="error", reason=f"failed to start: {exc!r}")
        previous: dict[str, tuple[int, float]] = {}
        for size in comparison.sizes:
            active = _affordable(runners, previous, size, settings, contenders)
            samples: dict[str, list[float]] = {name: [] for name in active}
            repeats = max(settings.repeats, comparison.least_repeats)
            for repeat in range(-1, repeats):  # -1: the warm-up round, checked, not timed
                order = list(active)
                shift = repeat % len(order) if order and repeat > 0 else 0
                for name in order[shift:] + order[:shift]:
                    try:
                        began = perf_counter()
                        outcome = active[name](size)
                        took = perf_counter() - began
                        if repeat < 0:
                            comparison.check(size, outcome.value if isinstance(outcome, Timed) else outcome)
                    except Exception as exc:
                        logger.error(
                            "%s: %s failed at %d:\n%s", comparison.name, name, size, traceback.format_exc()
                        )
                        contenders[name]["sizes"][size] = {"status": "error", "reason": repr(exc)}
                        contenders[name]["status"] = "error"
                        del active[name], runners[name], samples[name]
                        continue
                    if repeat >= 0:
                        samples[name].append(outcome.seconds if isinstance(outcome, Timed) else took)
            for name, times in samples.items():
                median = statistics.median(times)
                contenders[name]["sizes"][size] = {
                    "status": "ok",
                    "median": median,
                    "best": min(times),
                    "samples": times,
                }
                previous[name] = (size, median)
            logger.info("%s: size %d done", comparison.name, size)
    for ours, theirs in comparison.ratio_pairs():
        for size in comparison.sizes:
            a = contenders.get(ours, {}).get("sizes", {}).get(size, {})
            b = contenders.get(theirs, {}).get("sizes", {}).get(size, {})
            if a.get("status") == "ok" and b.get("status") == "ok" and b["median"] > 0:
                record["ratios"].append(
                    {"ezpool": ours, "peer": theirs, "size": size, "ratio": a["median"] / b["median"]}
                )
    return record


def _affordable(
    runners: dict[str, Runner],
    previous: dict[str, tuple[int, float]],
    size: int,
    settings: Settings,
    contenders: dict[str, Any],
) -> dict[str, Runner]:
    """The runners whose runs at ``size`` fit in the budget, judged linearly."""
    active = {}
    for name, run in runners.items():
        if name in previous:
            last_size, last_median = previous[name]
            estimate = last_median * size / last_size
            total = estimate * (settings.repeats + 1)
            if total > settings.budget:
                contenders[name]["sizes"][size] = {
                    "status": "skipped",
                    "reason": f"too slow: about {estimate:.1f} s a run, over the budget of "
                    f"{settings.budget:.0f} s for {settings.repeats + 1} runs",
                }
                continue
        active[name] = run
    return active


@contextlib.contextmanager
def simple(run: Runner) -> Iterator[Runner]:
    """A contender with nothing to prepare."""
    yield run
