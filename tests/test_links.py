"""ezpool._backends.distributed.links: a worker's states and the only moves between them."""

from __future__ import annotations

import pytest

from ezpool import _pyro
from ezpool._backends.distributed.links import MOVES, Link, State


def _link() -> Link:
    return Link("PYRO:worker@127.0.0.1:1", _pyro.parse_uri("PYRO:worker@127.0.0.1:1"), None)


def test_every_state_has_its_moves_and_every_move_leads_to_a_state():
    assert set(MOVES) == set(State)
    assert all(targets <= set(State) for targets in MOVES.values())


@pytest.mark.parametrize("start", list(State))
@pytest.mark.parametrize("target", list(State))
def test_a_link_makes_exactly_the_moves_in_the_table(start, target):
    link = _link()
    link.state = start
    if target in MOVES[start]:
        link.move(target, "why")
        assert link.state is target
        assert link.reason == ("why" if target is State.LOST else "")
    else:
        with pytest.raises(AssertionError, match=f"from {start.name} to {target.name}"):
            link.move(target)
        assert link.state is start


def test_only_a_running_worker_can_be_found_silent():
    link = _link()
    link.admit({"identity": "abc", "serves": "Square"})
    assert link.identity == "abc" and link.serves == "Square" and link.state is State.READY
    assert not link.silence() and link.state is State.READY
    link.move(State.RUNNING)
    assert link.silence() and link.state is State.SILENT
