"""``Pool``: one facade over the three modes, and the one place results are assembled."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from time import perf_counter
from types import TracebackType
from typing import Any, Callable, Optional

from . import backends
from .options import Options
from .output import Relay
from .progress import Progress
from .results import Results, ResultsBuilder
from .tasks import unique_tasks

logger = logging.getLogger(__name__)

__all__ = ["Pool", "EzPool"]

#: What each public method runs.
_SERIAL, _PARALLEL, _DISTRIBUTED = backends.MODES


class Pool:
    """Runs a function over many tasks and returns a ``Results`` dict.

    ``mode`` is the mode ``map`` runs: ``'serial'`` (a loop here), ``'parallel'``
    (processes on this machine) or ``'distributed'`` (workers anywhere, over Pyro4).
    ``smap``, ``pmap`` and ``dmap`` run one mode whatever ``mode`` says.

    Keyword options given here (see ``ezpool.Options``: ``progress``, ``msg``,
    ``timeout``, ``ncpu``, ``chunksize``, ``start_method``, ``workers``, ``spawn``,
    ``hmac_key``, ``max_attempts``, ``capture_output``, ...) are defaults for every call; a call may
    override any of them. Use the pool as a context manager, or call
    ``shutdown()``, to stop the processes and workers it started.
    """

    def __init__(self, mode: str = "serial", **options: Any) -> None:
        self.mode = backends.check_mode(mode)
        self.options = Options().replace(**options)
        self._backends: dict[str, backends.Backend] = {}
        self._closed = False

    def map(
        self,
        fun: Any,
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        workers: Any = None,
        **options: Any,
    ) -> Results:
        """Run ``fun`` over ``tasks`` in the pool's mode.

        ``ncpu`` is used by the parallel mode and ``workers`` by the distributed
        one; each mode ignores what it has no use for.
        """
        return self._run(self.mode, fun, tasks, _given(options, ncpu=ncpu, workers=workers))

    def smap(self, fun: Callable[..., Any], tasks: Iterable[Hashable], **options: Any) -> Results:
        """Run ``fun`` over ``tasks`` one after the other, in this process."""
        return self._run(_SERIAL, fun, tasks, options)

    def pmap(
        self,
        fun: Callable[..., Any],
        tasks: Iterable[Hashable],
        ncpu: Optional[int] = None,
        **options: Any,
    ) -> Results:
        """Run ``fun`` over ``tasks`` on ``ncpu`` worker processes of this machine.

        ``fun`` may be a lambda, a closure or a function defined in ``__main__``.
        The processes live as long as the pool, so later calls reuse them.
        """
        return self._run(_PARALLEL, fun, tasks, _given(options, ncpu=ncpu))

    def dmap(
        self,
        fun: Any,
        tasks: Iterable[Hashable],
        workers: Any = None,
        **options: Any,
    ) -> Results:
        """Run ``fun`` (a ``BaseWorker`` subclass, or a function) on distributed workers.

        ``workers`` are Pyro4 URIs such as ``'PYRO:worker@localhost:21000'``.
        """
        return self._run(_DISTRIBUTED, fun, tasks, _given(options, workers=workers))

    def shutdown(self) -> None:
        """Stop every process and worker this pool started. Safe to call twice."""
        self._closed = True
        backends_, self._backends = self._backends, {}
        for backend in backends_.values():
            backend.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Pool(mode={self.mode!r}, {state})"

    def _run(self, mode: str, fun: Any, tasks: Iterable[Hashable], overrides: dict[str, Any]) -> Results:
        if self._closed:
            raise RuntimeError("this Pool has been shut down; create a new one")
        options = self.options.replace(**overrides)
        keys = unique_tasks(tasks)
        backend = self._backends.get(mode)
        if backend is None:
            backend = self._backends[mode] = backends.create(mode)
        began = perf_counter()
        builder = ResultsBuilder(keys)
        progress = Progress(options.progress, options.msg, keys)
        relay = Relay(keys, progress)
        batches = backend.run(fun, keys, options, progress.per_task)
        try:
            for batch in batches:
                builder.add(batch)
                if batch.outputs:
                    relay.show(batch)
                progress.update(batch)
        finally:
            batches.close()
            progress.close()
        results = builder.finish(perf_counter() - began)
        logger.debug("%s ran %d tasks (%d failed)", mode, len(keys), len(results.errors))
        return results

#: The name the tutorial also uses for ``Pool``.
EzPool = Pool


def _given(options: dict[str, Any], **arguments: Any) -> dict[str, Any]:
    """Add the positional-or-keyword arguments that were actually given."""
    options.update((name, value) for name, value in arguments.items() if value is not None)
    return options
