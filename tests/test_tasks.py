"""ezpool._core.tasks: which tasks are distinct, in what order, and how a task becomes arguments."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezpool import Pool
from ezpool._core.tasks import call, unique_tasks

Pair = collections.namedtuple("Pair", "a b")


class TupleChild(tuple):
    """A tuple subclass: not exactly a tuple, so it is passed whole."""


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, min_value=-3, max_value=3),
    st.text(max_size=2),
    st.binary(max_size=2),
)
hashables = st.recursive(
    scalars,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)


def _first_seen(items: list) -> list:
    """The distinct items, each as the object first seen, by the definition of equality."""
    kept: list = []
    for item in items:
        if not any(item == other and hash(item) == hash(other) for other in kept):
            kept.append(item)
    return kept


@settings(deadline=None)
@given(st.lists(hashables, max_size=30))
def test_unique_tasks_keeps_the_first_of_equal_tasks_in_first_seen_order(items):
    result = list(unique_tasks(items))
    expected = _first_seen(items)
    assert len(result) == len(expected)
    # repr shows which of equal objects was kept (1, 1.0 and True are equal keys).
    assert [repr(task) for task in result] == [repr(task) for task in expected]
    assert len(set(result)) == len(result)


@settings(deadline=None)
@given(st.lists(hashables, max_size=30))
def test_unique_tasks_accepts_any_iterable(items):
    assert list(unique_tasks(iter(items))) == list(unique_tasks(items))
    assert list(unique_tasks(task for task in items)) == list(unique_tasks(tuple(items)))


def test_unique_tasks_keeps_a_range_and_a_set():
    assert list(unique_tasks(range(3, 7))) == [3, 4, 5, 6]
    assert sorted(unique_tasks({3, 1, 2})) == [1, 2, 3]
    assert list(unique_tasks({"b": 1, "a": 2})) == ["b", "a"]


@pytest.mark.parametrize("bad", [[1, [2, 3]], [{"a": 1}], [1, {5}], [(1, [2])]])
def test_an_unhashable_task_is_a_type_error_naming_it(bad):
    culprit = next(task for task in bad if not isinstance(task, int))
    with pytest.raises(TypeError, match="unhashable") as info:
        unique_tasks(bad)
    assert repr(culprit) in str(info.value)


@pytest.mark.timeout(10)
def test_the_unhashable_advice_respects_the_tuple_rule_and_following_it_works():
    with pytest.raises(TypeError) as info:
        unique_tasks([[1, 2]])
    assert str(info.value) == (
        "task [1, 2] is unhashable (unhashable type: 'list'); tasks are the keys of the results. "
        "A tuple is hashable, but a tuple task is spread into arguments (fun(*task)): to pass "
        "(1, 2) as one argument, wrap it as ((1, 2),)"
    )
    advised = ((1, 2),)  # what the message says to write
    with Pool() as pool:
        assert pool.smap(len, [advised]) == {advised: 2}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [{"a": 1}, {5}, [1, [2]]])
def test_other_unhashable_tasks_get_the_tuple_rule_too(bad):
    with pytest.raises(TypeError) as info:
        unique_tasks([bad])
    assert "wrap it as (t,) to pass one tuple t" in str(info.value) and repr(bad) in str(info.value)


def test_an_unhashable_task_in_a_generator_is_named_too():
    with pytest.raises(TypeError, match=r"\['late'\]"):
        unique_tasks(x for x in [1, 2, ["late"]])


@pytest.mark.parametrize("bad", [None, 5, "abc", b"abc", 2.5])
def test_tasks_that_are_not_an_iterable_of_tasks_are_a_type_error_naming_them(bad):
    with pytest.raises(TypeError, match="tasks must be an iterable") as info:
        unique_tasks(bad)
    assert repr(bad) in str(info.value)


def _arguments(*args):
    return args


@settings(deadline=None)
@given(st.tuples() | st.tuples(hashables) | st.tuples(hashables, hashables, hashables))
def test_an_exact_tuple_is_unpacked_into_arguments(task):
    assert call(_arguments, task) == task


@settings(deadline=None)
@given(
    st.one_of(
        hashables.filter(lambda task: type(task) is not tuple),
        st.builds(Pair, hashables, hashables),
        st.builds(TupleChild, st.lists(scalars, max_size=3)),
    )
)
def test_anything_but_an_exact_tuple_is_passed_whole(task):
    received = call(_arguments, task)
    assert len(received) == 1 and received[0] is task


def test_strings_are_one_argument_not_characters():
    assert call(_arguments, "abc") == ("abc",)
    assert call(_arguments, Pair(1, 2)) == (Pair(1, 2),)
