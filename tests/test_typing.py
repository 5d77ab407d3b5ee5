"""The public typing: ``Results`` is generic in the value type, and misspelt options are
caught by a type checker (mypy, run for real on a small file) and, at run time, by a
``TypeError`` that suggests the option meant."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ezpool import Options, Pool, PoolExecutor
from ezpool.options import (
    OPTIONS,
    DistributedOptions,
    ImapOptions,
    MapOptions,
    ParallelOptions,
    PoolOptions,
    SerialOptions,
)
from tests import _helpers as h
from tests.conftest import REPO_ROOT

SAMPLE = textwrap.dedent(
    """
    from ezpool import BaseWorker, Pool, PoolExecutor


    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)


    class FibWorker(BaseWorker):
        def run(self, n: int) -> int:
            return fib(n)


    with Pool(progress=False) as pool:
        results = pool.map(fib, range(5))
        reveal_type(results)
        reveal_type(results[3])
        reveal_type(pool.pmap(fib, range(5), ncpu=2)[3])
        reveal_type(pool.dmap(FibWorker, range(5))[3])
        reveal_type(results.errors)
        pool.pmap(fib, range(5), timout=3)
        pool.pmap(fib, range(5), timeout="3")
        pool.pmap(fib, range(5), workers="PYRO:worker@localhost:21000")
        pool.dmap(fib, range(5), ncpu=2)
        Pool(progres=False)
        PoolExecutor("parallel", timout=2)
    """
)

#: What mypy must say of the SAMPLE line that holds each snippet, in order.
EXPECTED = [
    ("reveal_type(results)", 'Revealed type is "ezpool.results.Results[int]"'),
    ("reveal_type(results[3])", 'Revealed type is "int"'),
    ("ncpu=2)[3]", 'Revealed type is "int"'),
    # A worker class: its run is not seen (mypy 2); mypy 1, the last for Python 3.9,
    # takes the class for a function returning an instance.
    ("FibWorker, range(5))[3]", ('Revealed type is "Any"', 'Revealed type is "sample.FibWorker"')),
    ("results.errors", 'Revealed type is "dict[Any, BaseException]"'),
    ("timout=3", 'error: Unexpected keyword argument "timout" for "pmap" of "Pool"; did you mean "timeout"?'),
    ('timeout="3"', 'error: Argument "timeout" to "pmap" of "Pool" has incompatible type "str"; '
                    'expected "float | None"'),
    # An option of another mode is a type error too: pmap has no workers, dmap no ncpu.
    ("workers=", 'error: Unexpected keyword argument "workers" for "pmap" of "Pool"'),
    ("dmap(fib, range(5), ncpu=2", 'error: Unexpected keyword argument "ncpu" for "dmap" of "Pool"'),
    ("progres=", 'error: Unexpected keyword argument "progres" for "Pool"; did you mean "progress"?'),
    ("timout=2", 'error: Unexpected keyword argument "timout" for "PoolExecutor"; did you mean "timeout"?'),
]


def _line_of(snippet: str) -> int:
    (number,) = [n for n, line in enumerate(SAMPLE.splitlines(), 1) if snippet in line]
    return number


#: Each method, and the options it takes beside its own parameters.
PUBLIC = {
    Pool.__init__: PoolOptions,
    Pool.map: MapOptions,
    Pool.smap: SerialOptions,
    Pool.pmap: ParallelOptions,
    Pool.dmap: DistributedOptions,
    Pool.imap: ImapOptions,
    Pool.executor: PoolOptions,
    PoolExecutor.__init__: PoolOptions,
}


@pytest.mark.timeout(120)
def test_mypy_sees_the_value_type_and_catches_a_misspelt_option(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the typing test needs mypy (the 'test' extra)")
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    done = subprocess.run(  # from the checkout, so that mypy reads this ezpool and its config
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(sample)],
        capture_output=True, text=True, timeout=110, cwd=REPO_ROOT,
    )
    said = [
        # Older mypy (the last for Python 3.9) spells builtins out: "builtins.int" for "int".
        (int(line.split(":")[1]), line.split(": ", 1)[1].replace("note: ", "").split("  [")[0]
         .replace("builtins.", ""))
        for line in done.stdout.splitlines()
        if line.startswith(str(sample)) and "defined in" not in line
    ]
    expected = [(_line_of(snippet), message) for snippet, message in EXPECTED]
    assert len(said) == len(expected), done.stdout + done.stderr
    for (line, message), (want_line, wanted) in zip(said, expected):
        assert line == want_line and message in (wanted if isinstance(wanted, tuple) else (wanted,)), (
            done.stdout + done.stderr
        )
    assert done.returncode == 1


@pytest.mark.parametrize("method", list(PUBLIC), ids=lambda method: method.__qualname__)
def test_each_method_takes_its_modes_options_and_lists_them_in_its_help(method) -> None:
    group = PUBLIC[method]
    parameters = inspect.signature(method).parameters
    options = [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]
    assert [p.annotation for p in options] == [f"Unpack[{group.__name__}]"]
    named = set(parameters) & set(OPTIONS)  # ncpu, workers: parameters of their own
    assert named.isdisjoint(group.__annotations__)
    if group is PoolOptions:  # every option: Options lists them all
        assert set(group.__annotations__) == set(OPTIONS)
    else:
        for name in group.__annotations__:
            assert f"\n    {name}: " in inspect.getdoc(method), f"{method.__qualname__} does not list {name}"


def test_every_option_is_written_once_with_its_default_and_its_meaning() -> None:
    assert list(Options.__slots__) == list(OPTIONS)
    for name, option in OPTIONS.items():
        assert getattr(Options(), name) == option.default
        assert option.meaning and "\n" not in option.meaning
    # Every mode's options are those of map, and only those, with ncpu and workers.
    modes = set(SerialOptions.__annotations__) | set(ParallelOptions.__annotations__)
    assert modes | set(DistributedOptions.__annotations__) == set(MapOptions.__annotations__)


@pytest.mark.timeout(60)
def test_help_of_pmap_fits_on_a_screen_and_names_what_pmap_takes() -> None:
    import pydoc

    text = pydoc.render_doc(Pool.pmap, renderer=pydoc.plaintext).splitlines()
    assert len(text) <= 60 and max(map(len, text)) <= 200
    assert any(line.strip().startswith("timeout:") for line in text)
    assert not any(line.strip().startswith(("workers:", "heartbeat:", "hmac_key:")) for line in text)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["map", "smap", "pmap", "dmap", "imap", "executor"])
def test_a_misspelt_option_suggests_the_right_one_at_run_time(name: str) -> None:
    with Pool() as pool:
        method = getattr(pool, name)
        arguments = () if name == "executor" else (h.square, [1])
        with pytest.raises(TypeError, match=r"unknown option 'timout'; did you mean 'timeout'\?"):
            method(*arguments, timout=3)


@pytest.mark.timeout(30)
def test_options_not_given_keep_the_pools_and_given_ones_override_them(capfd) -> None:
    with Pool(progress=True, msg="Pool label", timeout=5.0) as pool:
        pool.smap(h.square, range(2))
        assert "Pool label" in capfd.readouterr().err
        pool.smap(h.square, range(2), msg="Call label", timeout=None)
        assert "Call label" in capfd.readouterr().err
        assert pool.options.timeout == 5.0 and pool.options.msg == "Pool label"
