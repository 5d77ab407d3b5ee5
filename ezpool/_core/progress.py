"""Progress reporting: the per-task hook and the tqdm bar, fed once per batch.

Where the bar goes: on a terminal, tqdm's text bar on stderr; in a Jupyter kernel,
``tqdm.auto``'s choice (a widget where ipywidgets is installed, else the text bar
in the cell's output). While a bar is shown, log records that would go to the
console (EzPool's own warnings included) are written above it, through
``tqdm.contrib.logging``, so that no line tears it.

A widget's output in a saved notebook also keeps a plain-text form, which GitHub
and nbviewer show instead of the widget: the bar as it was when displayed. The
widget is therefore displayed under a display id, and displayed again there when
the bar closes, so that the text kept is the last state (``100%|...| 40/40``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence, Set
from typing import Any, Optional, TextIO

from ..options import ProgressHook
from ..results import TaskOutcome
from .logs import get_logger
from .records import Batch

logger = get_logger(__name__)

__all__ = ["Progress"]


class Progress:
    """Reports finished tasks to the user's hook and to a progress bar.

    ``progress=None`` shows the bar only when stderr is a terminal or this process is
    a Jupyter kernel, ``True`` always, ``False`` never, and a callable is called once per finished task with a
    ``TaskOutcome``, the number of tasks done so far and the total (``None`` when
    streaming tasks whose number is not known). ``live``, where given, is the set of
    workers answering now: the bar shows how many, and the failures so far.
    """

    def __init__(
        self, option: Any, msg: str, keys: Sequence[Any], total: Optional[int],
        live: Optional[Set[str]] = None,
    ) -> None:
        self._keys = keys
        self._total = total
        self._live = live
        self._hook: Optional[ProgressHook] = (
            option if callable(option) and not isinstance(option, bool) else None
        )
        self.done = 0
        self.failed = 0
        self._bar: Any = None
        self._shown: Any = None  # the display of a widget bar (see the module's text)
        self._logging: Optional[contextlib.ExitStack] = None
        if option is True or option is None:
            notebook = _in_notebook()
            if option is True or notebook or _stderr_is_terminal():
                bar_class = _bar_class(notebook)
                options = dict(
                    total=total, desc=msg, file=sys.stderr, unit="task", dynamic_ncols=not notebook
                )
                if _is_widget(bar_class):
                    self._bar = bar_class(display=False, **options)
                    self._shown = _display(self._bar.container)
                else:
                    self._bar = bar_class(**options)
                self._logging = contextlib.ExitStack()
                self._logging.enter_context(self.redirect_logging())

    @property
    def per_task(self) -> bool:
        """Whether someone wants to hear of every task as soon as it finishes."""
        return self._hook is not None

    def update(self, batch: Batch) -> None:
        count = len(batch.values)
        self.failed += len(batch.failed)
        if self._hook is not None:
            keys, total = self._keys, self._total
            for offset in range(count):
                self.done += 1
                outcome = TaskOutcome(
                    keys[batch.start + offset],
                    batch.values[offset],
                    batch.elapsed[offset],
                    batch.worker,
                    offset in batch.failed,
                )
                self._hook(outcome, self.done, total)
        else:
            self.done += count
        if self._bar is not None:
            if self._live is not None:
                self._bar.set_postfix(workers=len(self._live), failed=self.failed, refresh=False)
            elif batch.failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(count)

    def write(self, text: str, file: TextIO) -> None:
        """Write whole lines to ``file`` without tearing the bar, if one is shown."""
        if self._bar is None:
            file.write(text)
            file.flush()
        else:
            type(self._bar).write(text, file=file, end="")

    @contextlib.contextmanager
    def redirect_logging(self) -> Iterator[None]:
        """While a bar is shown, let the root logger's console handlers write around it."""
        if self._bar is None:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(tqdm_class=type(self._bar)):
            yield

    def close(self) -> None:
        if self._logging is not None:
            self._logging.close()  # the console handlers are back before the bar goes
            self._logging = None
        if self._bar is not None:
            self._bar.close()
            if self._shown is not None:  # the text kept beside the widget: its last state
                self._shown.update(self._bar.container)
                self._shown = None
            self._bar = None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (notebook, lab, VS Code, Colab).

    Only looks at what is imported already: a kernel has imported IPython and
    ipykernel long before any map call, and a plain script never pays for them.
    """
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def _is_widget(bar_class: Any) -> bool:
    """Whether ``bar_class`` is tqdm's notebook widget (``tqdm.auto`` falls back to the text bar
    without ipywidgets)."""
    notebook = sys.modules.get("tqdm.notebook")
    return notebook is not None and issubclass(bar_class, notebook.tqdm_notebook)


def _display(widget: Any) -> Any:
    """Show ``widget`` in the cell's output under a display id; the handle to show it again."""
    from IPython.display import display

    return display(widget, display_id=True)


def _bar_class(notebook: bool = False) -> Any:
    """tqdm (``tqdm.auto``'s in a notebook), without its monitor thread: a thread left
    running would make every later ``fork`` of a worker process unsafe (and a warning
    on Python 3.12+)."""
    with warnings.catch_warnings():
        # Without ipywidgets tqdm.auto warns that it falls back to the text bar:
        # that text bar is what EzPool means to show then.
        warnings.simplefilter("ignore")
        base: Any = importlib.import_module("tqdm.auto" if notebook else "tqdm").tqdm

    class Bar(base):
        monitor_interval = 0

    return Bar
