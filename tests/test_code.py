"""``ezpool.code``: file-less code (as from notebook cells) travels with its source lines.

Cells are imitated the way IPython makes them: source compiled under a file name
that does not exist, with its lines put in ``linecache``. tests/test_notebook.py
does the same through a real Jupyter kernel.
"""

from __future__ import annotations

import functools
import linecache
import pickle
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from ezpool import BaseWorker
from ezpool.code import ship, unpack


@pytest.fixture
def cells() -> Iterator[Callable[[str], dict[str, Any]]]:
    """``cell(source)`` runs ``source`` as a new notebook cell; the namespace all cells share."""
    namespace: dict[str, Any] = {"__name__": "__main__", "BaseWorker": BaseWorker}
    names: list[str] = []

    def cell(source: str) -> dict[str, Any]:
        name = f"/nonexistent/ipykernel_test/cell{len(names)}.py"
        names.append(name)
        lines = source.splitlines(keepends=True)
        linecache.cache[name] = (len(source), None, lines, name)
        exec(compile(source, name, "exec"), namespace)
        return namespace

    yield cell
    for name in names:
        linecache.cache.pop(name, None)


def shipped_sources(fun: Any) -> dict[str, list[str]]:
    _, sources = pickle.loads(ship(fun).blob)
    return sources


def test_a_function_carries_its_cell(cells) -> None:
    space = cells("def half(x):\n    return x / 2\n")
    lines = ["def half(x):\n", "    return x / 2\n"]
    assert shipped_sources(space["half"]) == {"/nonexistent/ipykernel_test/cell0.py": lines}


def test_helpers_from_other_cells_travel_too(cells) -> None:
    cells("def check(x):\n    assert x >= 0\n    return x\n")
    cells("def scale(x):\n    return check(x) * 2\n")
    space = cells("def outer(x):\n    return [scale(y) for y in range(x)]\n")
    assert sorted(shipped_sources(space["outer"])) == [
        f"/nonexistent/ipykernel_test/cell{n}.py" for n in range(3)
    ]


def test_a_class_carries_its_bases_and_their_helpers(cells) -> None:
    cells("def check(x):\n    return x\n")
    cells("class Base(BaseWorker):\n    def run(self, x):\n        return check(x)\n")
    space = cells("class Child(Base):\n    def setup(self):\n        self.ready = True\n")
    assert sorted(shipped_sources(space["Child"])) == [
        f"/nonexistent/ipykernel_test/cell{n}.py" for n in range(3)
    ]


def test_closures_and_partials_carry_what_they_hold(cells) -> None:
    cells("def check(x):\n    return x\n")
    space = cells("def make():\n    helper = check\n    return lambda x: helper(x)\n")
    assert len(shipped_sources(space["make"]())) == 2
    assert len(shipped_sources(functools.partial(space["make"]()))) == 2


def test_unpacking_puts_the_lines_back(cells) -> None:
    space = cells("def boom(x):\n    raise ValueError(x)\n")
    blob = ship(space["boom"]).blob
    linecache.cache.pop("/nonexistent/ipykernel_test/cell0.py")
    unpack(blob)
    assert linecache.getline("/nonexistent/ipykernel_test/cell0.py", 2) == "    raise ValueError(x)\n"


def test_code_with_a_file_sends_no_lines() -> None:
    assert shipped_sources(shipped_sources) == {}
