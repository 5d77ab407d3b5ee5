"""examples/distributed_notebook.ipynb runs top to bottom in a real Jupyter kernel.

Code defined in a notebook cell has no file, so this is where shipping it to
generic workers is tested for real: a function, a lambda and a ``BaseWorker``
class from cells run on workers started by the pool (and on workers started by
hand), and a failing task's remote traceback shows the cell's source line.

The kernel is ipykernel's, run by this interpreter (``sys.executable``) from a
kernelspec written into a temporary ``JUPYTER_PATH``; Jupyter's and IPython's
own directories are temporary too, so nothing is read from or written to the
real home. The kernel inherits this process's environment (the tests' key
directory, ``PYTHONPATH`` on this checkout, ``EZPOOL_NOTEBOOK_WORKERS``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, free_port

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat (the 'test' extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient (the 'test' extra)")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel (the 'test' extra)")

NOTEBOOK = REPO_ROOT / "examples" / "distributed_notebook.ipynb"
WORKERS_ENV = "EZPOOL_NOTEBOOK_WORKERS"

#: Seconds for the kernel to start, and for any one cell to run.
STARTUP_TIMEOUT = 60
CELL_TIMEOUT = 60

pytestmark = pytest.mark.timeout(150)

#: What the notebook's cells compute, whoever runs them.
COLLATZ_STEPS = {1: 0, 2: 1, 3: 7, 4: 2, 5: 5, 6: 8, 7: 16, 8: 3, 9: 19, 10: 6}
SQUARES_PLUS_100 = {x: x * x + 100 for x in range(6)}
PRIMES_BELOW = {10: 4, 100: 25, 1000: 168, 10_000: 1229}
FAILING_LINE = 'raise ValueError(f"{x} has no real square root")'

@pytest.fixture
def jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core_child_env: dict[str, str]) -> Path:
    """A private Jupyter setup whose ``python3`` kernel runs ``sys.executable``; its folder."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    home = tmp_path / "jupyter"
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("JUPYTER_PATH", str(home / "share"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("PYTHONPATH", core_child_env["PYTHONPATH"])
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    write_kernel_spec(str(home / "share" / "kernels" / "python3"))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    work = tmp_path / "work"
    work.mkdir()
    return work


def execute(cwd: Path, notebook: Any = None) -> Any:
    """``notebook`` (default: the example), executed top to bottom in a fresh kernel started in ``cwd``.

    Skips if no kernel can start here; fails (with the cell's error) if a cell raises.
    """
    if notebook is None:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        startup_timeout=STARTUP_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.km = client.create_kernel_manager()
        client.start_new_kernel()
        client.start_new_kernel_client()
    except Exception as exc:
        with contextlib.suppress(Exception):
            client._cleanup_kernel()
        pytest.skip(f"a Jupyter kernel cannot start here: {type(exc).__name__}: {exc}")
    client.execute()  # owns its kernel manager, so it shuts the kernel down at the end
    return notebook


def cell_output(notebook: Any, cell_id: str) -> dict[str, str]:
    """What a cell printed on ``stdout`` and ``stderr``, and its value as ``result`` text."""
    (cell,) = (cell for cell in notebook.cells if cell.get("id") == cell_id)
    found = {"stdout": "", "stderr": "", "result": ""}
    for output in cell.outputs:
        if output.output_type == "stream":
            found[output.name] += output.text
        elif output.output_type == "execute_result":
            found["result"] += output.data["text/plain"]
    return found


def result(notebook: Any, cell_id: str) -> Any:
    """The value a cell showed, read back from its text."""
    return ast.literal_eval(cell_output(notebook, cell_id)["result"])


def stderr_lines(notebook: Any, but: frozenset[str] = frozenset()) -> list[str]:
    """What the code cells, but those whose ids are in ``but``, printed on stderr (red, in a notebook)."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.id not in but:
            lines += cell_output(notebook, cell.id)["stderr"].splitlines()
    return lines


#: The cell whose task fails on purpose (whatever is said of that on stderr is not this file's business).
FAILING_CELL = frozenset({"failure"})


def kernel_pid(notebook: Any) -> int:
    (pid,) = re.findall(r"this notebook runs in process (\d+)", cell_output(notebook, "setup")["stdout"])
    return int(pid)


def check_computed(notebook: Any, workers: list[str]) -> set[int]:
    """Every cell's values are right; the pids of the processes that ran ``PrimeCounter``."""
    assert result(notebook, "setup") == workers
    assert result(notebook, "function") == COLLATZ_STEPS
    assert set(result(notebook, "where")) <= set(workers)
    assert result(notebook, "lambda") == SQUARES_PLUS_100
    counts = result(notebook, "worker")
    assert {n: count for n, (count, _) in counts.items()} == PRIMES_BELOW
    pids = {pid for _, pid in counts.values()}
    assert kernel_pid(notebook) not in pids  # the class from a cell ran in other processes
    printed = cell_output(notebook, "worker-pids")["stdout"]
    assert f"the workers that ran PrimeCounter: {sorted(pids)}" in printed
    assert result(notebook, "pmap") is True
    return pids


def check_remote_traceback(notebook: Any) -> None:
    """The failing task's exception names the worker's frame in the cell, with its source line."""
    printed = cell_output(notebook, "failure")["stdout"]
    assert "values: {4: 2.0, -1: ValueError('-1 has no real square root'), 9: 3.0}" in printed
    assert "failed: ValueError('-1 has no real square root')" in printed
    remote = printed.split("on the worker:", 1)[1]
    frame = re.search(r'File "([^"]+)", line 3, in real_sqrt\n\s+(.*)\n', remote)
    assert frame is not None, remote
    filename, line = frame.groups()
    assert line.strip() == FAILING_LINE
    assert filename != "<dynamic-code>" and not os.path.exists(filename)  # a cell: no file to read
    assert "ValueError: -1 has no real square root" in remote


def gone(port: int, timeout: float = 15.0) -> bool:
    """Whether nothing accepts connections at ``127.0.0.1:port`` (waiting up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def process_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"


def test_notebook_on_workers_it_starts(jupyter: Path) -> None:
    notebook = execute(jupyter)

    workers = result(notebook, "setup")
    assert len(workers) == 2 and all(uri.startswith("PYRO:worker@127.0.0.1:") for uri in workers)
    check_computed(notebook, workers)
    check_remote_traceback(notebook)
    # Nothing went to stderr (which a notebook shows in red): starting the workers a pool
    # was asked to start is news at INFO, which nothing shows unless logging is set up to.
    assert stderr_lines(notebook, but=FAILING_CELL) == []
    assert not [line for line in stderr_lines(notebook) if "starting one there" in line]
    # pool.shutdown() in the last cell stopped them; the kernel is gone too.
    ports = [int(uri.rsplit(":", 1)[1]) for uri in workers]
    assert all(gone(port) for port in ports), f"a worker still answers at {workers}"
    assert process_gone(kernel_pid(notebook)), "the kernel is still running"


def test_notebook_on_hand_started_workers(jupyter: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = serve(""), serve("")
    workers = first.uris + second.uris
    monkeypatch.setenv(WORKERS_ENV, " ".join(workers))

    notebook = execute(jupyter)

    pids = check_computed(notebook, workers)
    assert pids <= {first.process.pid, second.process.pid}  # setup and run ran in those workers
    check_remote_traceback(notebook)
    assert stderr_lines(notebook, but=FAILING_CELL) == []  # nothing was started: the workers answered
    # Workers started by hand outlive the notebook's pool.
    assert first.process.poll() is None and second.process.poll() is None


def test_code_from_other_cells_shows_its_lines(jupyter: Path) -> None:
    """Frames of a helper, or of a base class, defined in another cell show their source lines too."""
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        "from ezpool import BaseWorker, Pool\n"
        f"pool = Pool(workers='PYRO:worker@127.0.0.1:{free_port()}', spawn=True)",
        "def check(x):\n    if x < 0:\n        raise ValueError(f'negative: {x}')\n    return x",
        "def outer(x):\n    return check(x) + 1",
        "class Base(BaseWorker):\n    def run(self, x):\n        return check(x) * 2",
        "class Child(Base):\n    def setup(self):\n        self.ready = True",
        "print(pool.dmap(outer, [-1]).errors[-1].__cause__.traceback_text)",
        "print(pool.dmap(Child, [-2]).errors[-2].__cause__.traceback_text)",
        "pool.shutdown()",
    ]
    notebook = new_notebook(cells=[new_code_cell(source, id=f"c{n}") for n, source in enumerate(cells)])

    execute(jupyter, notebook)

    through_function = cell_output(notebook, "c5")["stdout"]
    assert "    return check(x) + 1\n" in through_function
    assert "    raise ValueError(f'negative: {x}')\n" in through_function
    through_class = cell_output(notebook, "c6")["stdout"]
    assert "    return check(x) * 2\n" in through_class
    assert "    raise ValueError(f'negative: {x}')\n" in through_class


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from ezpool import BaseWorker, Pool

    class Scaled(BaseWorker):
        torn_down_in = sys.argv[1]  # a class attribute travels with the class

        def setup(self):
            self.factor = 10
            self.setups = getattr(self, "setups", 0) + 1

        def run(self, x):
            if x < 0:
                raise ValueError(f"negative: {x}")
            return x * self.factor, os.getpid(), self.setups

        def teardown(self):
            with open(os.path.join(self.torn_down_in, str(os.getpid())), "w") as out:
                out.write("torn down")

    workers = sys.argv[2:]
    with Pool(workers=workers, spawn=True) as pool:
        results = pool.dmap(Scaled, [1, 2, 3, 4, -1])
    error = results.errors[-1]
    print(json.dumps({
        "pid": os.getpid(),
        "values": {str(k): v for k, v in results.items() if k not in results.errors},
        "error": repr(error),
        "remote": error.__cause__.traceback_text,
    }))
    """
)


def test_script_ships_a_main_module_worker_class(tmp_path: Path, core_child_env: dict[str, str]) -> None:
    """The notebook-free equivalent: a ``BaseWorker`` defined in ``__main__`` of ``python -c``."""
    ports = [free_port(), free_port()]
    workers = [f"PYRO:worker@127.0.0.1:{port}" for port in ports]
    torn = tmp_path / "torn"
    torn.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(torn), *workers],
        capture_output=True,
        text=True,
        env=core_child_env,
        cwd=tmp_path,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    values = {int(k): v for k, v in report["values"].items()}
    assert {x: value for x, (value, _, _) in values.items()} == {1: 10, 2: 20, 3: 30, 4: 40}
    pids = {pid for _, pid, _ in values.values()}
    assert report["pid"] not in pids
    assert {setups for _, _, setups in values.values()} == {1}  # one instance per worker, set up once
    assert report["error"] == "ValueError('negative: -1')"
    assert 'File "<string>"' in report["remote"] and ", in run\n" in report["remote"]
    # Each worker set up its instance when the class arrived, and tore it down at pool.shutdown().
    torn_down = {int(path.name) for path in torn.iterdir()}
    assert len(torn_down) == 2 and pids <= torn_down
    assert all(gone(port) for port in ports)


STARTS_ITS_OWN = textwrap.dedent(
    """
    import sys
    from ezpool import Pool

    def square(x):
        return x * x

    if __name__ == "__main__":
        workers = sys.argv[1:] or None  # none: the default address, where a worker is started
        with Pool(progress=False) as pool:
            results = pool.dmap(square, range(40), workers=workers, spawn=True if workers else None,
                                max_tasks_per_worker=10)  # and started again three times
        print(sum(results.values()), len(results.errors))
    """
)


@pytest.mark.parametrize("where", ["default", "spawn"], ids=["default address", "spawn=True"])
def test_a_pool_that_starts_its_own_worker_says_nothing_on_stderr(
    where: str, tmp_path: Path, core_child_env: dict[str, str]
) -> None:
    """Starting a worker as asked, and starting it again after its ``max_tasks_per_worker``, is
    no warning: a notebook would show it in red, as an error."""
    port = 21000 if where == "default" else free_port()
    if where == "default" and not gone(port, timeout=0):
        pytest.skip("something else listens at the default worker address, 127.0.0.1:21000, now")
    script = tmp_path / "starts_its_own.py"
    script.write_text(STARTS_ITS_OWN)
    args = [] if where == "default" else [f"PYRO:worker@127.0.0.1:{port}"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=core_child_env,
        cwd=tmp_path, timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sum(x * x for x in range(40))), "0"]
    assert done.stderr == ""
    assert gone(port), f"the worker the pool started still answers at 127.0.0.1:{port}"


def bar_notebook(*first: str) -> Any:
    """A notebook that runs ``first`` cells, then ``smap`` with the default progress (cell "run")."""
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        *first,
        "from ezpool import Pool\n"
        "with Pool() as pool:\n    results = pool.smap(abs, range(40), msg='In a notebook')",
        "len(results)",
    ]
    ids = [*(f"c{n}" for n in range(len(first))), "run", "count"]
    return new_notebook(cells=[new_code_cell(source, id=i) for i, source in zip(ids, cells)])


def test_the_default_progress_is_a_widget_in_a_notebook_with_ipywidgets(jupyter: Path) -> None:
    pytest.importorskip("ipywidgets", reason="the widget bar needs ipywidgets (the 'test' extra)")
    notebook = execute(jupyter, bar_notebook())

    assert result(notebook, "count") == 40
    (cell,) = (cell for cell in notebook.cells if cell.get("id") == "run")
    shown = [output for output in cell.outputs if output.output_type == "display_data"]
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0].data, cell.outputs
    assert cell_output(notebook, "run")["stderr"] == ""  # no text bar besides
    # The widgets' last state, kept by nbclient: the label, and the bar full at 40 of 40.
    state = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    models = [model["state"] for model in state.values()]
    assert any(m.get("_model_name") == "FloatProgressModel" and m.get("value") == m.get("max") == 40
               for m in models), models
    labels = [str(m.get("value", "")).replace("\u2007", " ") for m in models]  # tqdm pads with figure spaces
    assert "In a notebook: 100%" in labels, labels


def test_a_saved_notebook_keeps_the_bars_last_state_as_text(jupyter: Path) -> None:
    """Beside the widget, a saved output keeps a plain-text form (what GitHub and nbviewer show):
    the bar as it ended, not as it began."""
    pytest.importorskip("ipywidgets", reason="the widget bar needs ipywidgets (the 'test' extra)")
    from nbformat.v4 import new_code_cell, new_notebook

    run = (
        "from ezpool import Pool\n"
        "with Pool(ncpu=2) as pool:\n    results = pool.pmap(abs, range(40), msg='In a notebook')"
    )
    notebook = new_notebook(cells=[new_code_cell(run, id="run"), new_code_cell("len(results)", id="count")])
    execute(jupyter, notebook)

    assert result(notebook, "count") == 40
    (cell,) = (cell for cell in notebook.cells if cell.get("id") == "run")
    (shown,) = (output for output in cell.outputs if output.output_type == "display_data")
    assert "application/vnd.jupyter.widget-view+json" in shown.data, cell.outputs
    text = shown.data["text/plain"]
    assert text.startswith("In a notebook: 100%") and "| 40/40 [" in text, text


def test_the_default_progress_is_one_text_line_in_a_notebook_without_ipywidgets(jupyter: Path) -> None:
    hide = "import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed"
    notebook = execute(jupyter, bar_notebook(hide))

    assert result(notebook, "count") == 40
    text = cell_output(notebook, "run")["stderr"]
    lines = [line for line in text.split("\n") if line]
    # One line, redrawn with carriage returns, whose last drawing is the full bar.
    assert len(lines) == 1, text
    assert lines[0].split("\r")[-1].startswith("In a notebook: 100%") and "40/40" in lines[0], text


def test_amap_and_aimap_run_in_the_kernels_own_running_loop(jupyter: Path) -> None:
    """``await pool.amap(...)`` in a cell runs in the loop the kernel already runs, which
    keeps running meanwhile: a coroutine started in that loop ticks while the call waits."""
    from nbformat.v4 import new_code_cell, new_notebook

    cells = {
        "setup": "import asyncio, time\nfrom ezpool import Pool\n"
                 "pool = Pool('parallel', ncpu=2, progress=False)\n"
                 "def nap_square(x):\n    time.sleep(0.1)\n    return x * x",
        "amap": "ticks = 0\n"
                "async def beat():\n    global ticks\n    while True:\n"
                "        await asyncio.sleep(0.01)\n        ticks += 1\n"
                "beating = asyncio.ensure_future(beat())\n"
                "results = await pool.amap(nap_square, range(16))\n"
                "beating.cancel()\n"
                "(sorted(results.items()), ticks >= 20)",
        "aimap": "[outcome.value async for outcome in pool.aimap(abs, [-1, -2, -3], ordered=True)]",
        "close": "pool.shutdown()",
    }
    notebook = new_notebook(cells=[new_code_cell(source, id=name) for name, source in cells.items()])
    notebook = execute(jupyter, notebook)

    assert result(notebook, "amap") == ([(x, x * x) for x in range(16)], True)
    assert result(notebook, "aimap") == [1, 2, 3]
