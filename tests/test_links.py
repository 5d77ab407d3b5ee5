"""ezpool._backends.distributed.links: what a worker is seen to do, and the state the table picks."""

from __future__ import annotations

import pytest

from ezpool import _pyro
from ezpool._backends.distributed.links import MOVES, Link, LinkEvent, State


def _link(state: State = State.NEW) -> Link:
    link = Link("PYRO:worker@127.0.0.1:1", _pyro.parse_uri("PYRO:worker@127.0.0.1:1"), None)
    link.state = state
    return link


def test_every_state_has_its_moves_and_every_move_leads_to_a_state():
    assert set(MOVES) == set(State)
    assert all(set(moves.values()) <= set(State) for moves in MOVES.values())
    # Whatever the state, a worker can be found unreachable, or its driver can fail: never a bug.
    assert all(MOVES[state][LinkEvent.UNREACHABLE] is State.LOST for state in State)
    assert all(MOVES[state][LinkEvent.FAILED] is State.LOST for state in State)


@pytest.mark.parametrize("start", list(State))
@pytest.mark.parametrize("event", list(LinkEvent))
def test_the_table_picks_the_state_and_nothing_else_happens(start, event):
    link = _link(start)
    if event in MOVES[start]:
        assert link.on(event, "why") is MOVES[start][event] is link.state
        assert link.reason == ("why" if link.state is State.LOST else "")
    else:
        with pytest.raises(AssertionError, match=f"{event.name} cannot happen while {start.name}"):
            link.on(event)
        assert link.state is start


def test_only_a_running_worker_can_be_found_silent():
    link = _link()
    link.admit({"identity": "abc", "serves": "Square"})
    assert link.identity == "abc" and link.serves == "Square" and link.state is State.READY
    assert link.on(LinkEvent.SILENT) is State.READY
    link.on(LinkEvent.SENT)
    assert link.on(LinkEvent.SILENT) is State.SILENT
    # Its connection then breaks: it is lost; a late answer would have made it ready.
    assert link.on(LinkEvent.BROKEN, "silent") is State.LOST and link.reason == "silent"


def test_a_broken_connection_leaves_a_running_worker_running_until_a_check_says_more():
    link = _link(State.RUNNING)
    assert link.on(LinkEvent.BROKEN) is State.RUNNING
    assert link.on(LinkEvent.IDLE) is State.READY  # the same process still answers


def test_a_lost_workers_latest_news_is_kept_and_news_without_a_reason_changes_nothing():
    link = _link(State.RUNNING)
    link.on(LinkEvent.UNREACHABLE, "refused")
    since = link.since
    assert link.on(LinkEvent.IDLE) is State.LOST and link.reason == "refused" and link.since == since
    link.on(LinkEvent.UNREACHABLE, "timed out")
    assert link.reason == "timed out" and link.since >= since
    link.admit({"identity": "new", "serves": "*"})
    assert link.state is State.READY and link.reason == ""
