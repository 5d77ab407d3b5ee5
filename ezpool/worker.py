"""``BaseWorker``: what users subclass to serve tasks in the distributed mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["BaseWorker"]


class BaseWorker:
    """A worker of the distributed mode: subclass it and implement ``run``.

    One ``run`` call is made per task, with the task unpacked exactly as in every
    mode (a tuple becomes the positional arguments). ``setup`` and ``teardown``
    run once per worker process, e.g. to load data once.
    """

    if TYPE_CHECKING:
        # A worker class handed to map or dmap stands for the values its run returns,
        # which a type checker cannot see through the class: calling it is typed Any,
        # so that those calls give Results[Any], not Results[the worker class].
        def __new__(cls, *args: Any, **kwargs: Any) -> Any: ...

    def setup(self) -> None:
        """Prepare the worker before its first task (optional)."""

    def run(self, *args: Any) -> Any:
        """Compute one task. Subclasses must implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(self, *args)")

    def teardown(self) -> None:
        """Release what ``setup`` acquired, when the worker stops (optional)."""
