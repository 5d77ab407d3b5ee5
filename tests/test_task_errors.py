"""A task's exception made plainer where it is caught (``ezpool._core.task_errors``).

- A tuple task spread into arguments that do not fit the function: its ``TypeError``
  carries a note saying so and how to pass the task whole (PEP 678 on 3.11+, the end of
  the message before), in every mode, through ``imap``, and across processes;
- a ``TypeError`` raised inside the function gets no note;
- the traceback of a task's exception starts at the user's frames: the text recorded in
  another process (``RemoteTraceback``) and, in this process, ``__traceback__``; one with
  no frame of the user's is kept whole.
"""

from __future__ import annotations

import functools
import pickle
import traceback
from typing import Any

import pytest

import ezpool._core.task_errors as task_errors
from ezpool import Pool, RemoteTraceback
from ezpool._core.serialization import rebuild, record_exception
from ezpool._core.task_errors import caught, spread_note
from tests import _helpers as h
from tests import _workers as w

SPREAD = ("is a tuple, so it was spread into 2 arguments; to pass it whole as one argument, "
          "wrap it as ((1, 2),)")


def _shown(error: BaseException) -> str:
    """The exception as ``traceback`` prints its last line(s): message and notes."""
    return "".join(traceback.format_exception_only(type(error), error))


def _tail(error: BaseException) -> str:
    """Where the task's exception was raised, as the user sees it: the remote text for an
    exception rebuilt here, else its own traceback."""
    if isinstance(error.__cause__, RemoteTraceback):
        return error.__cause__.traceback_text
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@pytest.fixture(scope="module")
def mode_pool(mode):
    pool = mode.pool()
    try:
        yield mode, pool
    finally:
        pool.shutdown()


def _first_frame(text: str) -> str:
    return text.split("Traceback (most recent call last):\n", 1)[1].splitlines()[0]


# --- the note on a spread task --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_spread_task_that_does_not_fit_says_so_in_every_mode(mode_pool):
    mode, pool = mode_pool
    results = pool.map(h.square, [(1, 2), 3, (4, 5)])
    assert results[3] == 9
    error = results[(1, 2)]
    assert type(error) is TypeError
    assert "square() takes 1 positional argument but 2 were given" in str(error)
    assert f"the task (1, 2) {SPREAD}, or let square take *args" in _shown(error)
    assert "the task (4, 5) is a tuple" in _shown(results[(4, 5)])
    if mode.remote:  # the note travelled with the exception, and in its recorded text
        assert f"the task (1, 2) {SPREAD}" in error.__cause__.traceback_text


@pytest.mark.timeout(120)
def test_a_type_error_inside_the_function_gets_no_note(mode_pool):
    _, pool = mode_pool
    results = pool.map(h.add, [(1, "x"), (1, 2)])
    assert results[(1, 2)] == 3
    error = results[(1, "x")]
    assert type(error) is TypeError
    assert "was spread" not in _shown(error) and "was spread" not in _tail(error)


@pytest.mark.timeout(120)
def test_imap_and_a_context_get_the_note_too(mode_pool):
    _, pool = mode_pool
    outcomes = {outcome.task: outcome for outcome in pool.imap(h.square, [(1, 2), 3])}
    assert outcomes[3].value == 9
    assert f"the task (1, 2) {SPREAD}" in _shown(outcomes[(1, 2)].value)
    # with a context, add(context, *task): 3 arguments where add takes 2
    results = pool.map(h.add, [(1, 2), 3], context=10)
    assert results[3] == 13
    assert f"the task (1, 2) {SPREAD}, or let add take *args" in _shown(results[(1, 2)])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("options", [{"timeout": 60}, {"capture_output": True}, {"chunksize": 1}],
                         ids=["timeout", "capture_output", "chunksize"])
def test_every_loop_that_runs_tasks_adds_the_note(options):
    """Each loop of ``ezpool._worker.running`` (groups, task by task, capturing output), and the
    threads' loop under a deadline."""
    threads = {} if "capture_output" in options else options  # (which the threads mode ignores)
    with Pool(progress=False) as pool:
        for results in (pool.pmap(h.square, [(1, 2), 3], ncpu=1, **options),
                        pool.tmap(h.square, [(1, 2), 3], nthreads=1, **threads)):
            assert results[3] == 9
            assert f"the task (1, 2) {SPREAD}" in _shown(results[(1, 2)])


class _Pairs:
    def total(self, pair: tuple[int, int]) -> int:
        return pair[0] + pair[1]


@functools.wraps(h.square)
def _wrapped(*args: Any, **kwargs: Any) -> Any:
    return h.square(*args, **kwargs)


@pytest.mark.parametrize(
    ("fun", "name"),
    [
        (lambda pair: pair, "<lambda>"),
        (functools.partial(h.add, 1), "add"),  # add(1, 1, 2)
        (_Pairs().total, "_Pairs.total"),
        (_wrapped, "square"),  # the wrapper's frame ran: its signature (square's) tells
        (len, "len"),
    ],
    ids=["lambda", "partial", "method", "wrapped", "builtin"],
)
@pytest.mark.timeout(60)
def test_lambdas_partials_methods_wrappers_and_builtins_get_the_note(fun, name):
    with Pool(progress=False) as pool:
        results = pool.smap(fun, [(1, 2)])
    assert f"the task (1, 2) {SPREAD}, or let {name} take *args" in _shown(results[(1, 2)])


@pytest.mark.timeout(60)
def test_a_worker_class_served_in_the_distributed_mode_gets_the_note(tmp_path):
    from tests.conftest import free_port

    workers = [f"PYRO:worker@127.0.0.1:{free_port()}"]
    with Pool(progress=False) as pool:
        results = pool.dmap(w.Square, [(1, 2), 3], workers=workers, spawn=True)
    assert results[3] == 9
    assert f"the task (1, 2) {SPREAD}, or let Square.run take *args" in _shown(results[(1, 2)])
    assert "was spread" in results[(1, 2)].__cause__.traceback_text


@pytest.mark.timeout(60)
def test_before_python_3_11_the_note_ends_the_message_and_travels_with_it(monkeypatch):
    """Python 3.9 and 3.10 have no ``add_note``: the note is in ``str(exc)``, and a forked
    process (which has the patched module) sends it back in the exception's pickle."""
    monkeypatch.setattr(task_errors, "_NOTES", False)
    error = caught(_raised(h.square, (1, 2)), h.square, (1, 2))
    message = "square() takes 1 positional argument but 2 were given"
    assert str(error) == f"{message}\n{spread_note(h.square, (1, 2))}"
    assert not getattr(error, "__notes__", None)
    assert str(rebuild(record_exception(error))) == str(error)
    with Pool("parallel", ncpu=1, start_method="fork", progress=False) as pool:
        results = pool.pmap(h.square, [(1, 2)])
    assert str(results[(1, 2)]) == str(error)


def _raised(fun: Any, task: tuple[Any, ...]) -> BaseException:
    try:
        fun(*task)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fun}{task} did not raise")


def test_the_note_is_added_only_to_a_spread_tuple_task():
    error = caught(_raised(h.square, (1, 2)), h.square, [1, 2])  # a list is passed whole
    assert "was spread" not in _shown(error)
    error = caught(_raised(h.square, (1, 2)), w.Square, (1, 2))  # a worker class called as a function
    assert "was spread" not in _shown(error)
    assert pickle.loads(pickle.dumps(caught(_raised(h.square, (1, 2)), h.square, (1, 2)))).args


# --- tracebacks start at the user's frames ---------------------------------------------------


@pytest.mark.timeout(120)
def test_a_tasks_traceback_starts_at_the_users_frames_in_every_mode(mode_pool):
    _, pool = mode_pool
    error = pool.map(h.fail_on_odd, [1])[1]
    tail = _tail(error)
    first = _first_frame(tail)
    assert "_helpers.py" in first and "fail_on_odd" in first, tail
    assert "ezpool" not in tail.replace("ezpool.", ""), tail  # no frame of EzPool's own
    if not isinstance(error.__cause__, RemoteTraceback):
        assert error.__traceback__.tb_frame.f_code.co_name == "fail_on_odd"


@pytest.mark.timeout(120)
def test_a_spread_call_that_never_entered_the_function_shows_no_frame_of_ezpool(mode_pool):
    _, pool = mode_pool
    tail = _tail(pool.map(h.square, [(1, 2)])[(1, 2)])  # the call itself failed: only EzPool's frame
    assert "Traceback" not in tail and "ezpool/" not in tail, tail
    assert tail.startswith("TypeError: square() takes 1 positional argument but 2 were given\n"), tail
    assert "the task (1, 2) is a tuple" in tail, tail


def test_a_traceback_with_no_frame_of_the_users_is_kept_whole():
    from ezpool._core.task_errors import user_frames

    namespace = {"__name__": "ezpool._core.somewhere"}  # a frame's module name says whose it is
    exec("def own():\n    raise ValueError(\"EzPool's own\")", namespace)
    try:
        namespace["own"]()
    except ValueError as exc:
        tb = exc.__traceback__
    assert user_frames(tb) is tb  # this test's frame is the user's: from there on
    assert user_frames(tb.tb_next) is tb.tb_next  # EzPool's frame alone: kept whole


@pytest.mark.timeout(120)
def test_an_executors_traceback_starts_at_the_users_frames(mode_pool):
    mode, _ = mode_pool
    with mode.executor() as executor:
        error = executor.submit(h.fail_on_odd, 1).exception(timeout=60)
        mapped = executor.map(h.fail_on_odd, [1])
        with pytest.raises(ValueError) as raised:
            list(mapped)
    assert "fail_on_odd" in _first_frame(_tail(error)), _tail(error)
    # raised here, it shows where it was raised (the executor's result) above the user's frames
    tail = _tail(raised.value)
    assert tail.split("\n  File ")[-1].split("\n")[0].endswith("in fail_on_odd"), tail
    assert "run_task" not in tail and "_backends" not in tail and "_worker" not in tail, tail


def test_printing_a_failed_pmap_task_shows_the_users_frames_first():
    with Pool(progress=False) as pool:
        error = pool.pmap(h.fail_on_odd, [3], ncpu=1)[3]
    printed = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert printed.startswith('ezpool.errors.RemoteTraceback: \n"""\nTraceback (most recent call last):\n')
    assert "_worker/running.py" not in printed
    assert _first_frame(printed).endswith("in fail_on_odd")
