"""ezpool._core.advice and ezpool._core.vocabulary: what a call is told before it starts.

Options a mode ignores (``Pool().map(f, xs, ncpu=4)`` runs serially) warn at the
caller's line, except where the pool's mode was chosen (one namespace drives every
mode); names from other libraries (``processes``, ``n_jobs``, ``max_workers``) say what
EzPool calls them; swapped arguments and a worker pinned to another class say what to do.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import time
import warnings
from functools import partial

import pytest

from ezpool import Options, Pool, WorkerUnavailable
from ezpool.errors import IgnoredOptionWarning
from tests import _helpers as h
from tests._workers import Square
from tests.conftest import REPO_ROOT

URI = "PYRO:worker@127.0.0.1:1"  # never dialled: the warnings come before any work


def _children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]


def _one_warning(caught: list[warnings.WarningMessage]) -> str:
    """The text of the one IgnoredOptionWarning caught, checked to point at this file."""
    found = [w for w in caught if issubclass(w.category, IgnoredOptionWarning)]
    assert len(found) == 1, [str(w.message) for w in caught]
    assert found[0].filename == __file__, (found[0].filename, found[0].lineno)
    return str(found[0].message)


# --- options a mode ignores ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_map_on_a_pool_given_no_mode_warns_of_ncpu_at_the_callers_line():
    with Pool(progress=False) as pool, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line() + 1
        results = pool.map(h.square, [1, 2, 3], ncpu=4)
    assert results == {1: 1, 2: 4, 3: 9}
    assert _one_warning(caught) == (
        "Pool() runs map serially (mode='serial' is the default), which ignores ncpu=4: the 'parallel' "
        "mode uses it; give Pool(mode='parallel') or call pool.pmap"
    )
    assert [w.lineno for w in caught] == [line]
    assert not _children()


def _line() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("method", "given", "said"),
    [
        ("smap", {"timeout": 3}, "smap runs the 'serial' mode, which ignores timeout=3: the 'threads', "
         "'parallel' and 'distributed' modes use it; leave it out, or call pool.tmap, pool.pmap or "
         "pool.dmap"),
        ("smap", {"capture_output": True}, "smap runs the 'serial' mode, which ignores capture_output=True"),
        ("tmap", {"max_memory": "1GB"}, "tmap runs the 'threads' mode, which ignores max_memory='1GB': the "
         "'parallel' and 'distributed' modes use it; leave it out, or call pool.pmap or pool.dmap"),
        ("pmap", {"ncpu": 1, "workers": [URI]}, "pmap runs the 'parallel' mode, which ignores "
         f"workers=['{URI}']: the 'distributed' mode uses it; leave it out, or call pool.dmap"),
        ("pmap", {"ncpu": 1, "buffersize": 8}, "pmap runs the 'parallel' mode, which ignores buffersize=8: "
         "only imap and aimap use it; call pool.imap, or leave it out"),
    ],
)
def test_a_method_of_one_mode_warns_of_an_option_its_mode_cannot_use(method, given, said):
    with Pool("parallel", progress=False) as pool, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = getattr(pool, method)(h.square, [1, 2], **given)
    assert results == {1: 1, 2: 4}
    assert _one_warning(caught).startswith(said)


@pytest.mark.timeout(30)
def test_dmap_warns_of_ncpu_before_it_dials_any_worker():
    # Warnings are errors in this suite: the warning stops the call before it dials anyone.
    with Pool(progress=False) as pool, pytest.raises(IgnoredOptionWarning, match=(
        r"^dmap runs the 'distributed' mode, which ignores ncpu=2 \(the 'parallel' mode uses it\) and "
        r"start_method='spawn' \(the 'parallel' mode uses it\); leave them out, or call pool.pmap$"
    )):
        pool.dmap(h.square, [1], workers=[URI], ncpu=2, start_method="spawn")


@pytest.mark.timeout(30)
def test_imap_amap_and_aimap_on_a_pool_given_no_mode_warn_at_the_callers_line():
    async def main(pool: Pool) -> None:
        await pool.amap(h.square, [1], ncpu=2)
        async for _ in pool.aimap(h.square, [1], timeout=5):
            pass

    with Pool(progress=False) as pool, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [o.value for o in pool.imap(h.square, [3], nthreads=2)] == [9]
        asyncio.run(main(pool))
    said = [str(w.message) for w in caught if w.filename == __file__]
    assert said == [
        "Pool() runs imap serially (mode='serial' is the default), which ignores nthreads=2: the 'threads' "
        "mode uses it; give Pool(mode='threads') or call pool.tmap",
        "Pool() runs amap serially (mode='serial' is the default), which ignores ncpu=2: the 'parallel' "
        "mode uses it; give Pool(mode='parallel') or call pool.pmap",
        "Pool() runs aimap serially (mode='serial' is the default), which ignores timeout=5: the 'threads', "
        "'parallel' and 'distributed' modes use it; give Pool(mode=...) the mode meant, or call pool.tmap, "
        "pool.pmap or pool.dmap",
    ], [str(w.message) for w in caught]


@pytest.mark.timeout(30)
def test_pool_wide_options_warn_map_on_a_pool_given_no_mode_but_not_a_method_of_one_mode():
    with Pool(ncpu=4, hmac_key="s3cret", progress=False) as pool:
        assert pool.smap(h.square, [2]) == {2: 4}  # warnings are errors here: none
        with pytest.warns(IgnoredOptionWarning) as caught:
            pool.map(h.square, [2])
    (said,) = [str(w.message) for w in caught]
    assert said == (
        "Pool() runs map serially (mode='serial' is the default), which ignores ncpu=4 (the 'parallel' "
        "mode uses it) and hmac_key=<hidden> (the 'distributed' mode uses it); give Pool(mode=...) the "
        "mode meant, or call pool.pmap or pool.dmap"
    )
    assert "s3cret" not in said


@pytest.mark.timeout(30)
def test_map_on_a_pool_given_its_mode_ignores_other_modes_options_without_a_word():
    # Warnings are errors in this suite: any warning fails the test.
    with Pool("serial", progress=False) as pool:
        got = pool.map(h.square, [1, 2], ncpu=4, workers=[URI], spawn=True, timeout=3, max_memory="1GB")
        assert got == {1: 1, 2: 4}
        assert [o.value for o in pool.imap(h.square, [2], ncpu=2, buffersize=4)] == [4]
    with Pool(progress=False) as pool:  # options left at their defaults are no news either
        assert pool.map(h.square, [1], ncpu=None, workers=None, spawn=None, timeout=None) == {1: 1}
        assert pool.smap(h.square, [1], capture_output=False, max_attempts=2) == {1: 1}
        assert pool.tmap(h.square, [1, 2, 3], nthreads=2, chunksize=2) == {1: 1, 2: 4, 3: 9}  # threads use it


@pytest.mark.timeout(60)
def test_the_tutorials_program_runs_serially_without_a_warning(capsys):
    spec = importlib.util.spec_from_file_location("fib_for_advice", REPO_ROOT / "examples" / "fib.py")
    assert spec is not None and spec.loader is not None
    fib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fib)
    # --workers has a list default and --ncpu may be given: the serial mode ignores both, silently.
    assert fib.main(["--tasks", "1", "2", "3", "--ncpu", "2"]) == 0
    assert "fib(3) = 2" in capsys.readouterr().out


def _say(text: str) -> str:
    time.sleep(0.05)  # past its timeout, which the serial mode cannot enforce
    print(text)
    return text


@pytest.mark.timeout(30)
def test_the_serial_mode_really_ignores_capture_output_and_timeout(capsys):
    with Pool(progress=False) as pool, pytest.warns(IgnoredOptionWarning):
        results = pool.smap(_say, ["said here"], capture_output=True, timeout=0.01)
    assert results == {"said here": "said here"}
    assert capsys.readouterr().out == "said here\n"  # printed here, untagged: nothing was captured


@pytest.mark.timeout(30)
def test_a_bad_value_of_an_ignored_option_is_refused_not_warned_of():
    with Pool(progress=False) as pool, pytest.raises(ValueError, match="ncpu must be a positive integer"):
        pool.smap(h.square, [1], ncpu=0)


# --- other libraries' names ---------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("method", "name", "value", "said"),
    [
        ("pmap", "processes", 2, "unknown option 'processes': EzPool calls the number of worker processes "
         "ncpu (pool.pmap(fun, tasks, ncpu=2), or Pool(mode='parallel', ncpu=2))"),
        ("pmap", "n_jobs", 3, "unknown option 'n_jobs': EzPool calls the number of worker processes ncpu "
         "(pool.pmap(fun, tasks, ncpu=3), or Pool(mode='parallel', ncpu=3))"),
        ("map", "max_workers", 4, "unknown option 'max_workers': EzPool calls the number of worker "
         "processes ncpu"),
        ("tmap", "max_workers", 8, "unknown option 'max_workers': EzPool calls the number of threads "
         "nthreads (pool.tmap(fun, tasks, nthreads=8), or Pool(mode='threads', nthreads=8))"),
        ("dmap", "n_workers", 4, "unknown option 'n_workers': the distributed mode runs on the workers "
         "named by workers="),
        ("smap", "func", abs, "unknown option 'func': smap's parameters are fun and tasks: "
         "pool.smap(fun, tasks)"),
        ("map", "iterable", [1], "unknown option 'iterable': map's parameters are fun and tasks: "
         "pool.map(fun, tasks)"),
        ("pmap", "chunk_size", 4, "unknown option 'chunk_size'; did you mean 'chunksize'?"),
        ("pmap", "maxtasksperchild", 4, "unknown option 'maxtasksperchild'; did you mean "
         "'max_tasks_per_worker'?"),
        ("pmap", "mp_context", "spawn", "unknown option 'mp_context'; did you mean 'start_method'?"),
        ("map", "initializer", abs, "unknown option 'initializer': EzPool has no initializer; pass what "
         "every task needs as context="),
        ("map", "mode", "parallel", "unknown option 'mode': the mode is the pool's, not a call's: "
         "Pool(mode='parallel').map(...), or pool.pmap(...)"),
        ("pmap", "mode", "distributed", "unknown option 'mode': the mode is the pool's, not a call's: "
         "Pool(mode='distributed').pmap(...), or pool.dmap(...)"),
        ("imap", "mode", "threads", "unknown option 'mode': the mode is the pool's, not a call's: "
         "Pool(mode='threads').imap(...)"),
        ("map", "backend", "loky", "unknown option 'backend': EzPool calls it the mode, which is the pool's, "
         "not a call's: Pool(mode='parallel').map(...), or pool.pmap(...)"),
    ],
)
def test_another_librarys_name_says_what_ezpool_calls_it(method, name, value, said, tmp_path):
    record = partial(h.record_call, str(tmp_path))
    with Pool(progress=False) as pool, pytest.raises(TypeError) as info:
        result = getattr(pool, method)(record, [1, 2], **{name: value})
        if method == "imap":
            list(result)
    message = str(info.value)
    assert message.startswith(said), message
    assert "(options" not in message and "progress" not in message  # no list, no 'did you mean progress'
    assert h.calls(tmp_path) == {} and not _children()


@pytest.mark.timeout(30)
def test_the_constructor_and_options_say_it_too():
    with pytest.raises(TypeError, match=r"^unknown option 'processes': EzPool calls the number of worker "
                                         r"processes ncpu \(pool.pmap\(fun, tasks, ncpu=4\), or "
                                         r"Pool\(mode='parallel', ncpu=4\)\)$"):
        Pool(processes=4)
    with pytest.raises(TypeError, match=r"^unknown option 'max_workers': EzPool calls the number of threads"):
        Pool("threads", max_workers=4)
    with pytest.raises(TypeError, match=r"^unknown option 'n_jobs': EzPool calls the number of worker "
                                         r"processes ncpu \(pool.pmap\(fun, tasks, ncpu=N\)"):
        Options(n_jobs=2)


@pytest.mark.timeout(30)
def test_a_name_nothing_is_close_to_still_lists_the_options_of_the_method():
    with Pool(progress=False) as pool, pytest.raises(TypeError) as info:
        pool.smap(h.square, [1], zzz=1)
    said = str(info.value)
    assert said.startswith("unknown option 'zzz' (options of smap: context, msg, progress, report,"), said
    assert "ncpu" not in str(info.value)  # smap's own options, not every one


# --- fun and tasks swapped, and what is no function ----------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["map", "smap", "tmap", "pmap", "dmap", "imap", "amap", "aimap"])
def test_swapped_arguments_are_named_before_any_work_starts(method):
    with Pool(progress=False) as pool, pytest.raises(TypeError) as info:
        call = getattr(pool, method)(range(5), h.square)
        if method == "amap":
            asyncio.run(call)
    assert str(info.value) == (
        f"fun must be callable, got range(0, 5); the arguments look swapped: {method}(square, range(0, 5))"
    )
    assert not _children()


@pytest.mark.timeout(30)
def test_what_is_no_function_is_refused_in_every_mode_by_the_pool():
    with Pool(progress=False) as pool:
        for method in ("smap", "tmap", "pmap", "dmap"):
            with pytest.raises(TypeError, match=r"^fun must be callable, got 5$"):
                getattr(pool, method)(5, [1])
        with pytest.raises(TypeError, match=r"^fun must be a BaseWorker subclass or a function to serve"):
            pool.dmap(dict, [1], workers=[URI])
    assert not _children()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["map", "smap", "pmap", "imap", "amap", "aimap"])
def test_fun_and_tasks_under_other_librarys_names_are_named(method):
    with Pool(progress=False) as pool, pytest.raises(TypeError) as info:
        call = getattr(pool, method)(func=h.square, iterable=range(3))
        if method == "amap":
            asyncio.run(call)
    assert str(info.value) == (
        f"{method}() takes fun and tasks, not func=..., iterable=...: pool.{method}(fun, tasks), "
        f"or pool.{method}(fun=..., tasks=...)"
    )
    with Pool(progress=False) as pool:  # EzPool's own names, as keywords, still do
        assert pool.map(fun=h.square, tasks=range(3)) == {0: 0, 1: 1, 2: 4}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["map", "smap", "tmap", "pmap"])
def test_a_worker_class_given_to_a_mode_that_calls_functions_is_refused_before_any_work(method):
    with Pool(progress=False) as pool, pytest.raises(TypeError) as info:
        getattr(pool, method)(Square, range(3))
    mode = {"map": "serial", "smap": "serial", "tmap": "threads", "pmap": "parallel"}[method]
    assert str(info.value) == (
        f"fun is Square, a BaseWorker class, which only the distributed mode serves; the {mode!r} "
        f"mode calls a function: give Square().run, or the function its run calls"
    )
    assert not _children()


# --- a worker pinned to a class ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_pinned_to_a_class_says_how_to_run_a_function_on_it(serve):
    served = serve(f"{REPO_ROOT / 'examples' / 'fib.py'}:FibWorker")
    (uri,) = served.uris
    with Pool(progress=False) as pool, pytest.raises(WorkerUnavailable) as info:
        pool.dmap(h.square, [1, 2], workers=[uri])
    assert str(info.value) == (
        f"worker {uri}: it serves 'FibWorker', not 'square': give FibWorker itself as fun, or start a "
        "generic worker (python -m ezpool.serve with no MODULE:NAME), which runs any function sent to it"
    )


def test_a_pinned_servant_asked_to_load_code_says_the_same():
    import pickle

    from ezpool._core.serialization import rebuild
    from ezpool._worker.servant import Servant

    servant = Servant(h.square)
    try:
        status, reply = servant.load("f" * 32, b"")
    finally:
        servant.close()
    refused = rebuild(pickle.loads(reply))
    assert status == "error" and isinstance(refused, TypeError)
    assert str(refused) == (
        "this worker serves only 'square': give square itself as fun, or start a generic worker "
        "(python -m ezpool.serve with no MODULE:NAME), which runs any function sent to it"
    )
