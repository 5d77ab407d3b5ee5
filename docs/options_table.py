"""A Sphinx extension: the API page's one table of options, and short method entries.

Every keyword option is written once, in ``ezpool/options.py`` (its default, its
meaning, and the ``TypedDict`` groups of the modes that use it). This extension
reads that at build time, so the page cannot drift from the code:

- ``.. ezpool-options::`` makes one table: each option, its default, the modes
  that use it and what it means, with an anchor ``#option-NAME`` per row;
- on each method of ``Pool``, the list of options that ``ezpool.options.described``
  appends to its docstring (what ``help()`` shows) becomes one line naming the
  options, each a link to its row; and the method's own parameters (``fun``,
  ``tasks``, ``ncpu``, ...) get their description from ``PARAMETERS`` below;
- on ``Options``, the per-option attribute list of its docstring is dropped: the
  table says it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: The parameters of ``Pool``'s methods that are not options, described once here and
#: shown on every method that has them.
PARAMETERS = {
    "mode": "the mode ``map`` runs: ``'serial'`` (a loop here, the default), ``'threads'``, "
    "``'parallel'`` or ``'distributed'``; ``smap``, ``tmap``, ``pmap`` and ``dmap`` run their own "
    "mode whatever it says.",
    "fun": "the function to run: each task ``t`` calls ``fun(t)``, and a tuple task is spread over "
    "its parameters, ``fun(*t)``; for ``dmap`` (and ``map`` in the distributed mode) it may also be a "
    "``BaseWorker`` subclass, whose ``run`` is called.",
    "tasks": "the inputs, one call of ``fun`` each; where the method returns ``Results`` they must "
    "be hashable, since they become its keys, and a task given twice runs once.",
    "ncpu": "the number of worker processes of the parallel mode (``None``: one per CPU this "
    "process may use); the other modes ignore it.",
    "nthreads": "the number of threads (``None``: as many as ``ThreadPoolExecutor`` would start).",
    "workers": "the workers of the distributed mode (see the option "
    "`workers <#option-workers>`__); the other modes ignore it.",
    "ordered": "``True``: yield the outcomes in the order of the tasks, holding back those that "
    "finish early; ``False`` (the default): as they finish.",
}

_RESULTS = "a ``Results`` dict: each task's value, or its exception (also in ``results.errors``)"

#: What the methods of ``Pool`` return, said once here (the type goes with it).
RETURNS = {
    "map": _RESULTS,
    "smap": _RESULTS,
    "tmap": _RESULTS,
    "pmap": _RESULTS,
    "dmap": _RESULTS,
    "amap": _RESULTS + ", once awaited",
    "imap": "an iterator of ``TaskOutcome``, one per task, as they finish",
    "aimap": "an asynchronous iterator of ``TaskOutcome``, one per task, as they finish",
    "executor": "a new ``PoolExecutor``",
}

#: Each mode, and the method that runs only it.
MODES = (("serial", "smap"), ("threads", "tmap"), ("parallel", "pmap"), ("distributed", "dmap"))

_HEADER = re.compile(r"^(\s*)Options \(.*\):\s*$")
_LISTED = re.compile(r"^\s+(\w+): ")


def _group(method: Any) -> type:
    """The ``TypedDict`` of a method's ``**options`` (``Unpack[ParallelOptions]``)."""
    import ezpool.options

    annotation = str(inspect.signature(method).parameters["options"].annotation)
    return getattr(ezpool.options, re.search(r"Unpack\[(\w+)\]", annotation).group(1))  # type: ignore[union-attr]


def uses() -> dict[str, str]:
    """Which modes use each option, in words, from the groups of smap, tmap, pmap and dmap."""
    import ezpool
    from ezpool.options import OPTIONS, ImapOptions, MapOptions

    by_mode = {}
    for mode, name in MODES:
        method = getattr(ezpool.Pool, name)
        by_mode[mode] = set(_group(method).__annotations__) | set(inspect.signature(method).parameters)
    words = {}
    for option in OPTIONS:
        modes = [mode for mode, _ in MODES if option in by_mode[mode]]
        if option in ImapOptions.__annotations__ and option not in MapOptions.__annotations__:
            words[option] = "imap and aimap, in every mode"
        elif len(modes) == len(MODES):
            words[option] = "every mode"
        elif modes:
            words[option] = ", ".join(modes)
        else:
            words[option] = "none"
            logger.warning("option %r is used by no mode's method", option)
    return words


def _link(name: str) -> str:
    return f"`{name} <#option-{name}>`__"


def _process_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if name == "ezpool.Options" and "Attributes:" in [line.strip() for line in lines]:
        cut = [line.strip() for line in lines].index("Attributes:")
        del lines[cut:]
        lines.append("Every option, its default and the modes that use it: see "
                     "`the table of options <#options>`__.")
        return
    if not (name == "ezpool.Pool" or (name.startswith("ezpool.Pool.") and what == "method")):
        return
    if name == "ezpool.Pool":
        lines.extend(["", "**Options**: every option, as defaults for every call: see `the table of options "
                      "<#options>`__."])
    for number, line in enumerate(lines):
        header = _HEADER.match(line)
        if header:
            listed = []
            end = number + 1
            while end < len(lines) and _LISTED.match(lines[end]):
                listed.append(_LISTED.match(lines[end]).group(1))  # type: ignore[union-attr]
                end += 1
            indent = header.group(1)
            lines[number:end] = [
                f"{indent}**Options** (where not given, the pool's): " + ", ".join(map(_link, listed)) + ".",
                "",
            ]
            break
    try:
        parameters = [p for p in inspect.signature(obj).parameters if p not in ("self", "options")]
    except (TypeError, ValueError):
        return
    fields = []
    for parameter in parameters:
        if parameter not in PARAMETERS:
            logger.warning("%s: parameter %r has no description in docs/options_table.py", name, parameter)
            continue
        fields.append(f":param {parameter}: {PARAMETERS[parameter]}")
    returned = RETURNS.get(name.rsplit(".", 1)[-1])
    if returned and what == "method":
        fields.append(f":returns: {returned}")
    if fields:
        lines.extend(["", *fields])


class OptionsTable(SphinxDirective):
    """``.. ezpool-options::``: every option of ``ezpool.options.OPTIONS``, one row each."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from ezpool.options import OPTIONS

        used = uses()
        table = nodes.table(classes=["ezpool-options"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (18, 14, 16, 52):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["Option", "Default", "Used by", "Meaning"], header=True)
        body = nodes.tbody()
        group += body
        for name, option in OPTIONS.items():
            row = self._row([nodes.literal(text=name), nodes.literal(text=repr(option.default)), used[name],
                             option.meaning])
            row["ids"].append(f"option-{name}")
            body += row
        return [table]

    @staticmethod
    def _row(cells: list[Any], header: bool = False) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            # As written in ezpool/options.py, where ``--insecure`` and quotes are code.
            paragraph = nodes.paragraph(support_smartquotes=False)
            paragraph += cell if isinstance(cell, nodes.Node) else nodes.Text(cell)
            entry += paragraph
            row += entry
        return row


def setup(app: Sphinx) -> dict[str, Any]:
    # Before napoleon (priority 500), which turns the docstrings' sections into fields.
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    app.add_directive("ezpool-options", OptionsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
