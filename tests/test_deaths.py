"""ezpool._core.deaths: a worker the kernel's OOM killer killed is said to have run out of memory.

The OOM tests make a real memory cgroup (v1 here, or v2) of 200 MB under the test
process's own, put the processes under test in it, and have one task allocate 600 MB:
the kernel kills a process of that cgroup, and nothing outside it (the limit holds
swap too, where the kernel offers it). Where no memory cgroup can be made they skip,
saying why. Every process left in the cgroup is killed, and the cgroup removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ezpool import Pool
from ezpool._core.deaths import MemoryWitness, how_it_ended
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(120)

#: The cgroup's limit, and what the greedy task allocates (in 10 MB steps, each touched).
LIMIT = 200 * 1024 * 1024
GREEDY_MB = 600


def eat(n: int) -> int:
    """Task 1 allocates ``GREEDY_MB`` MB, page by page; the others return at once."""
    if n == 1:
        blocks = []
        for _ in range(GREEDY_MB // 10):
            block = bytearray(10 * 1024 * 1024)
            block[::4096] = b"\1" * (len(block) // 4096)  # touch every page
            blocks.append(block)
    return n


# --- words ------------------------------------------------------------------------------------


def test_how_a_process_ended_in_words(tmp_path):
    assert how_it_ended(None) == "stopped answering"
    assert how_it_ended(3) == "exited with code 3"
    assert how_it_ended(-signal.SIGTERM) == "was killed by SIGTERM"
    assert how_it_ended(-signal.SIGKILL) == "was killed by SIGKILL"
    assert how_it_ended(-200) == "was killed by signal 200"
    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    witness = MemoryWitness(counter, 1)
    assert how_it_ended(-signal.SIGKILL, witness) == "was killed by SIGKILL"  # no kill since it started
    counter.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    assert how_it_ended(-signal.SIGKILL, witness) == (
        "was killed by the operating system's OOM killer (out of memory: its memory cgroup counted an OOM "
        f"kill in {counter})"
    )
    assert how_it_ended(-signal.SIGTERM, witness) == "was killed by SIGTERM"  # the OOM killer sends SIGKILL


def test_a_witness_reads_this_process_s_own_count():
    witness = MemoryWitness.of(os.getpid())
    if witness.source is None:
        pytest.skip("no OOM kill count can be read here (no memory cgroup, no /proc/vmstat oom_kill)")
    assert isinstance(witness.count, int) and witness.count >= 0
    assert not witness.oom_killed() or witness.source is not None


# --- a real memory cgroup ----------------------------------------------------------------------


def _own_memory_cgroup() -> tuple[Path, str]:
    """The directory of this process's memory cgroup, and the file of its limit; or a skip."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("making a memory cgroup needs root")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/self/cgroup: not Linux, or no cgroups")
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        v1 = Path("/sys/fs/cgroup/memory")
        if "memory" in controllers.split(",") and (v1 / "memory.oom_control").exists():
            return v1 / path.lstrip("/"), "memory.limit_in_bytes"
        v2 = Path("/sys/fs/cgroup")
        if hierarchy == "0" and (v2 / "cgroup.controllers").exists():
            where = v2 / path.lstrip("/")
            if "memory" in (where / "cgroup.subtree_control").read_text().split():
                return where, "memory.max"
    pytest.skip("no memory cgroup controller this test can use (cgroup v1 memory, or v2 with memory "
                "delegated to this process's cgroup)")


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A fresh memory cgroup of ``LIMIT`` bytes, swap included, under this process's own."""
    parent, limit_file = _own_memory_cgroup()
    cgroup = parent / f"ezpool-test-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {parent}: {exc}")
    try:
        try:
            (cgroup / limit_file).write_text(str(LIMIT))
            for swap in ("memory.memsw.limit_in_bytes", "memory.swap.max"):  # no swapping past it
                if (cgroup / swap).exists():
                    (cgroup / swap).write_text(str(LIMIT) if swap.endswith("bytes") else "0")
        except OSError as exc:
            pytest.skip(f"cannot limit the memory of {cgroup}: {exc}")
        yield cgroup
    finally:
        _empty_and_remove(cgroup)


def _empty_and_remove(cgroup: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            pids = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            cgroup.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


CLIENT = textwrap.dedent("""\
    import json, os, sys
    with open(sys.argv[1] + "/cgroup.procs", "w") as procs:  # into the cgroup before any work
        procs.write(str(os.getpid()))
    from ezpool import Pool
    from tests.test_deaths import eat

    mode, port = sys.argv[2], int(sys.argv[3])
    own = dict(workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=True)  # a worker the pool starts
    where = dict(ncpu=2) if mode == "parallel" else own
    with Pool(mode=mode, progress=False) as pool:
        results = pool.map(eat, range(4), **where)
    print(json.dumps({str(task): repr(value) for task, value in results.items()}))
""")


def _run_in(cgroup: Path, mode: str, core_child_env) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, str(cgroup), mode, str(free_port())], env=core_child_env,
        capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _oom_kills(cgroup: Path) -> int:
    for name in ("memory.oom_control", "memory.events"):
        if (cgroup / name).exists():
            for line in (cgroup / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    return 0


def test_pmap_says_out_of_memory_for_a_task_the_oom_killer_killed(memory_cgroup, core_child_env):
    results = _run_in(memory_cgroup, "parallel", core_child_env)
    assert _oom_kills(memory_cgroup) >= 1
    assert results["0"] == "0" and results["2"] == "2" and results["3"] == "3"
    error = results["1"]
    # Memory, not a crash: the task fails at once (it would only eat again), the others go on.
    assert error.startswith("WorkerOutOfMemory(") and error.count("task 1 ran out of memory") == 1, error
    assert "was killed by the operating system's OOM killer (out of memory" in error, error


def test_dmap_says_out_of_memory_for_a_worker_the_pool_started(memory_cgroup, core_child_env):
    results = _run_in(memory_cgroup, "distributed", core_child_env)
    assert _oom_kills(memory_cgroup) >= 1
    assert results["0"] == "0" and results["2"] == "2" and results["3"] == "3"
    error = results["1"]
    assert error.startswith("WorkerCrashed(") and "task 1 (attempt 2 of 2)" in error
    assert "OOM killer (out of memory" in error, error


def test_serve_procs_says_out_of_memory_and_starts_the_process_again(memory_cgroup, start_daemon,
                                                                    core_child_env):
    port = free_port(count=2)
    into = f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$0" "$@"'
    command = ["sh", "-c", into, sys.executable, "-m", "ezpool.serve", "--procs", "2", "--port", str(port)]
    served = start_daemon(command, expect=2, env=core_child_env)
    # backup=False: a backup copy of task 1 would eat beside it, and two eaters in one
    # 200 MB cgroup let the kernel kill any process there, serve itself included.
    with Pool(progress=False) as pool:  # this client is outside the cgroup
        results = pool.dmap(eat, range(4), workers=served.uris, spawn=False, backup=False)
    assert {task: results[task] for task in (0, 2, 3)} == {0: 0, 2: 2, 3: 3}
    assert "task 1 (attempt 2 of 2)" in str(results[1])
    # The second try of task 1 dies just before dmap returns: give serve its next look
    # (every 0.2 s) before asking it to stop.
    said = _stderr_until(served.process, "starting it again", timeout=20)
    served.process.send_signal(signal.SIGINT)
    served.process.wait(20)
    said += served.process.stderr.read()
    assert _oom_kills(memory_cgroup) >= 1
    assert "OOM killer (out of memory" in said, said
    assert "starting it again at the same address (restart 1 of at most 5 within 60 s)" in said, said


def _stderr_until(process: subprocess.Popen, words: str, timeout: float) -> str:
    """What ``process`` writes to stderr until it holds ``words`` (or ``timeout`` passes),
    read from the pipe itself, never through a buffer that ``select`` cannot see."""
    import select

    fd = process.stderr.fileno()
    said = b""
    deadline = time.monotonic() + timeout
    while words.encode() not in said and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        said += chunk
    return said.decode()
