"""Each module's logger, with :mod:`logging` imported only once something is logged.

``logger = get_logger(__name__)`` stands for ``logging.getLogger(__name__)``. Importing
:mod:`logging` (with the ``traceback`` and ``string`` it brings) takes a fresh
interpreter about 3 to 5 ms, as long as the rest of ``import ezpool``, and a script that
configures no logging has no use for it. Until some code has imported :mod:`logging`,
no logger can have been given a level below ``WARNING``, so a debug or info record
would be dropped anyway: such a call does nothing. A warning or worse imports
:mod:`logging` and goes to the real logger, as does every call once :mod:`logging`
is imported (``multiprocessing`` keeps its own logger out of the way likewise).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import logging

__all__ = ["get_logger"]

#: The methods whose records are below ``WARNING``, the least level a logger has
#: before anyone imports :mod:`logging`.
_BELOW_WARNING = frozenset({"debug", "info"})


def get_logger(name: str) -> logging.Logger:
    """The logger called ``name``, made when first needed (see the module's text)."""
    return _Deferred(name)  # type: ignore[return-value]  # it answers as a Logger does


def _drop(*args: Any, **kwargs: Any) -> None:
    """A debug or info record before :mod:`logging` is imported: nobody can want it."""


class _Deferred:
    """Stands for ``logging.getLogger(name)``, which it asks for on first real use."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Optional[logging.Logger] = None

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # copy and pickle asking for hooks: not a Logger's business
            raise AttributeError(attribute)
        logger = self._logger
        if logger is None:
            if attribute in _BELOW_WARNING and "logging" not in sys.modules:
                return _drop
            import logging  # waits, if another thread is importing it right now

            logger = self._logger = logging.getLogger(self.name)
        return getattr(logger, attribute)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return get_logger, (self.name,)  # as a Logger pickles: by its name

    def __repr__(self) -> str:
        return f"<logger {self.name} (deferred)>"
