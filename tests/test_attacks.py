"""Secure by default: another local user can do nothing to EzPool's distributed mode.

Every attack here is made by a second user, uid 65534, running ``tests/_attacker.py``
under ``setpriv`` with plain Pyro4 and no secret of ours. The victims (workers,
clients, name servers) run as root, with their per-user key under a config dir
of their own (``XDG_CONFIG_HOME``, 0700) that the attacker cannot read. All of it
is real processes and sockets on 127.0.0.1.

The attacker's proof of success is a marker (a directory, ``markers/<attack name>``)
that a pickle payload creates when a victim unpickles it, or for a replay a task
that runs twice. Each test collects every proof it finds and fails naming them all,
with the attacker's own account of what got through, and its stderr.

The harness: ``attacker.run(SUBCOMMAND, ...)`` runs one attack to its end and
returns an ``Attack`` (``got_through``, ``tried``, ``info()``); ``attacker.start(...,
ready=NAME)`` starts one that keeps running (a fake server, a flood), stopped at
teardown; ``attacker.verdict(problems, *attacks)`` fails with everything found.
Victims: ``victim_env`` for their child processes, ``victim_key`` to make the
per-user key file ahead of time, ``victim_client(...)`` for a ``dmap`` in a root
process of its own that is killed if it overruns.

Run as root with ``setpriv`` installed; elsewhere the attack tests skip saying why.
The weak-key tests need neither, and always run.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from ezpool import AuthenticationError, EzPoolError, Pool, WorkerUnavailable, _pyro, list_workers
from tests._workers import Napper, Recorder
from tests.conftest import eventually, free_port, listening

pytestmark = pytest.mark.timeout(150)

#: The user every attack runs as.
ATTACKER_UID = 65534
#: The attacker's script: run by path, as a file, never imported by the victims.
ATTACKER_SCRIPT = Path(__file__).with_name("_attacker.py")
#: The environment variable naming the config dir that holds the per-user key.
CONFIG_ENV = "XDG_CONFIG_HOME"
#: Variables that would hand a key to victims behind the tests' back.
KEY_ENVS = ("EZPOOL_HMAC_KEY", "PYRO_HMAC_KEY")


# --- the attacker: a second user with plain Pyro4 -----------------------------------------


def _as_attacker(*args: Any) -> list[str]:
    """A command line that runs ``sys.executable`` with ``args`` as uid 65534, with no groups."""
    ids = str(ATTACKER_UID)
    setpriv = ["setpriv", "--reuid", ids, "--regid", ids, "--clear-groups"]
    return [*setpriv, sys.executable, "-s", *map(str, args)]


class _Runtime:
    """Where the attacker's script lives, and the environment it runs in (nothing of the victims')."""

    def __init__(self, stage: Path, env: dict[str, str]) -> None:
        self.stage = stage
        self.script = stage / ATTACKER_SCRIPT.name
        self.env = env

    def command(self, *args: Any) -> list[str]:
        return _as_attacker(self.script, *args)


def _probe(stage: Path, env: dict[str, str]) -> Optional[str]:
    """Why uid 65534 cannot import Pyro4 with ``sys.executable`` in ``env``; ``None`` if it can."""
    check = f"import os, Pyro4; assert os.getuid() == {ATTACKER_UID}, os.getuid()"
    try:
        done = subprocess.run(_as_attacker("-c", check), env=env, cwd=stage, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def _stage_module(name: str, site: Path) -> None:
    """Copy an installed pure-Python module or package into ``site``, readable by everyone."""
    found = Path(importlib.import_module(name).__file__ or "")
    if found.name == "__init__.py":
        shutil.copytree(found.parent, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        site.mkdir(exist_ok=True)
        shutil.copy(found, site)
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="session")
def attacker_runtime() -> Iterator[_Runtime]:
    """The attacker's runtime, or a skip saying why the attacks cannot run here.

    The script is copied to a world-readable temporary dir, so that the checkout's
    permissions do not matter. When uid 65534 cannot reach the interpreter's own
    site-packages (an interpreter or a venv under /root), Pyro4 and serpent are
    copied there too: still plain Pyro4 run by ``sys.executable``, and no ezpool.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"the attacks run as a second user (uid {ATTACKER_UID}), which needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("the attacks run as a second user with setpriv (util-linux), which is missing")
    stage = Path(tempfile.mkdtemp(prefix="ezpool-attacker-"))
    try:
        stage.chmod(0o755)
        shutil.copy(ATTACKER_SCRIPT, stage)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(stage),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
        why = _probe(stage, env)
        if why is not None:
            for name in ("Pyro4", "serpent"):
                _stage_module(name, stage / "site")
            env["PYTHONPATH"] = str(stage / "site")
            again = _probe(stage, env)
            if again is not None:
                pytest.skip(f"uid {ATTACKER_UID} cannot import Pyro4 with {sys.executable}: {why}; "
                            f"nor a copy of it: {again}")
        yield _Runtime(stage, env)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class Attack:
    """What one run of the attacker said: its JSON lines, and its stderr."""

    def __init__(self, command: str, lines: list[str], stderr: str) -> None:
        self.command = command
        self.lines = [json.loads(line) for line in lines if line.startswith("{")]
        self.stderr = stderr

    @property
    def got_through(self) -> list[str]:
        """The attacks that succeeded, by the attacker's own account."""
        return [f"{line['name']}: {line['detail']}" for line in self.lines
                if line["kind"] == "attack" and line["ok"]]

    @property
    def tried(self) -> list[str]:
        return [line["name"] for line in self.lines if line["kind"] == "attack"]

    def info(self, name: str) -> list[str]:
        """The details of its ``info`` lines whose name starts with ``name``."""
        return [f"{line['name']}: {line['detail']}" for line in self.lines
                if line["kind"] == "info" and line["name"].startswith(name)]


class _Background:
    """An attacker process that keeps running (a fake server, a flood); stopped at teardown."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        with log.open("w") as stderr:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.strip())
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, name: str, timeout: float) -> None:
        """Wait until it reports ``name`` (e.g. ``listening``); fail with its stderr if it does not."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while not any(line.get("name") == name for line in Attack("", self.lines, "").lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"the attacker never said {name!r} (exit {self.process.poll()}): "
                                         f"{self.lines}\n{self.stderr()}")
                self._new_line.wait(min(left, 0.2))

    def stop(self) -> Attack:
        """SIGTERM, then SIGKILL after 5 s: what it said."""
        for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(grace)
        self._reader.join(5)
        if not self._reader.is_alive():
            self.process.stdout.close()
        return Attack(" ".join(self.process.args), list(self.lines), self.stderr())

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Attacker:
    """Runs ``_attacker.py`` as uid 65534, with a dir both users can write.

    ``markers`` is where payloads leave their proof; ``created()`` lists it.
    """

    def __init__(self, runtime: _Runtime, logs: Path) -> None:
        self.runtime = runtime
        self.logs = logs
        self.shared = Path(tempfile.mkdtemp(prefix="ezpool-attack-"))
        self.shared.chmod(0o777)
        self.markers = self.shared / "markers"
        self.markers.mkdir()
        self.markers.chmod(0o777)
        self.background: list[_Background] = []

    def run(self, *args: Any, timeout: float = 120.0) -> Attack:
        """Run one attack to its end; a crash or a hang of the script is a harness failure."""
        command = self.runtime.command(*args)
        try:
            done = subprocess.run(command, env=self.runtime.env, cwd=self.runtime.stage, capture_output=True,
                                  text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the attacker ran over {timeout} s: {args}\n{exc.stderr}") from None
        attack = Attack(" ".join(command), done.stdout.splitlines(), done.stderr)
        if done.returncode != 0:
            raise AssertionError(f"the attacker failed (exit {done.returncode}): {args}\n{done.stderr}")
        return attack

    def start(self, *args: Any, ready: str, timeout: float = 60.0) -> _Background:
        """Start an attack that keeps running; wait until it reports ``ready``."""
        log = self.logs / f"attacker-{len(self.background)}.stderr"
        process = _Background(self.runtime.command(*args), self.runtime.env, self.runtime.stage, log)
        self.background.append(process)
        process.wait_for(ready, timeout)
        return process

    def created(self) -> list[str]:
        """The markers: each names an attack whose payload a victim unpickled."""
        return sorted(path.name for path in self.markers.iterdir())

    def verdict(self, problems: list[str], *attacks: Attack) -> None:
        """Fail naming every proof of success, the other ``problems``, and the attacker's stderr."""
        found = list(problems)
        if self.created():
            found.append(f"payloads were unpickled by a victim (markers created): {self.created()}")
        for attack in attacks:
            if attack.got_through:
                found.append(f"attacks that got through: {attack.got_through}")
        if found:
            stderr = "\n".join(f"--- {attack.command}\n{attack.stderr[-4000:]}" for attack in attacks)
            raise AssertionError("\n".join(found) + f"\nattacker's stderr:\n{stderr}")

    def close(self) -> None:
        for process in self.background:  # what each said is shown when the test fails
            stopped = process.stop()
            print(f"attacker {stopped.command}:\n{stopped.lines}\n{stopped.stderr}")
        shutil.rmtree(self.shared, ignore_errors=True)


@pytest.fixture
def attacker(attacker_runtime: _Runtime, tmp_path: Path) -> Iterator[Attacker]:
    made = Attacker(attacker_runtime, tmp_path)
    try:
        yield made
    finally:
        made.close()


# --- the victims: root, with their own key under a config dir only they can read ----------


@pytest.fixture(autouse=True)
def victim_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root-only ``XDG_CONFIG_HOME`` for this test's victims, and no key in their environment."""
    config = tmp_path / "victim-config"
    config.mkdir(mode=0o700)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)
    return config


@pytest.fixture
def victim_env(victim_config: Path, core_child_env: dict[str, str]) -> dict[str, str]:
    """The environment of the victims' child processes (serve, clients, name servers)."""
    assert core_child_env.get(CONFIG_ENV) == str(victim_config), "victim_config must come first"
    assert not any(name in core_child_env for name in KEY_ENVS)
    return dict(core_child_env)


@pytest.fixture
def key_path(victim_config: Path) -> Path:
    """Where the victims' per-user key lives (created 0600 on first use)."""
    return victim_config / "ezpool" / "key"


@pytest.fixture
def victim_key(key_path: Path) -> bytes:
    """A per-user key made ahead of time, for tests that must hand it to a Pyro4 name server."""
    key = secrets.token_hex(32)
    key_path.parent.mkdir(mode=0o700)
    key_path.touch(mode=0o600)
    key_path.write_text(key + "\n")
    return key.encode()


#: A victim client in a process of its own: one ``dmap`` with default settings, its outcome as JSON.
_VICTIM_CLIENT = r"""
import json, sys, time
from importlib import import_module
from ezpool import EzPoolError, Pool
request = json.loads(sys.argv[1])
module, _, name = request["fun"].partition(":")
fun = getattr(import_module(module), name)
tasks = [tuple(task) if isinstance(task, list) else task for task in request["tasks"]]
began = time.monotonic()
try:
    with Pool(progress=False) as pool:
        results = pool.dmap(fun, tasks, workers=request["workers"], **request["options"])
except Exception as exc:
    outcome = {"raised": type(exc).__name__, "ezpool": isinstance(exc, EzPoolError), "message": str(exc)}
else:
    outcome = {"count": len(results), "errors": [repr(error) for error in results.errors.values()]}
outcome["seconds"] = time.monotonic() - began
print(json.dumps(outcome), flush=True)
"""


class VictimClient:
    """A root process running one keyed ``dmap``; killed (with its session) if it overruns."""

    def __init__(self, env: dict[str, str], fun: str, tasks: list[Any], workers: list[str], **options: Any):
        request = json.dumps({"fun": fun, "tasks": tasks, "workers": workers, "options": options})
        self.process = subprocess.Popen([sys.executable, "-c", _VICTIM_CLIENT, request], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)

    def outcome(self, timeout: float) -> dict[str, Any]:
        """Its JSON outcome, or ``{"overran": ...}`` when it did not finish in ``timeout`` s."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.process.communicate()
            return {"overran": timeout, "stderr": err[-3000:]}
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self.process.returncode != 0 or not lines:
            return {"crashed": self.process.returncode, "stderr": err[-3000:]}
        return {**json.loads(lines[-1]), "stderr": err[-3000:]}

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            self.process.communicate(timeout=10)


@pytest.fixture
def victim_client(victim_env: dict[str, str]) -> Iterator[Any]:
    started: list[VictimClient] = []

    def start(fun: str, tasks: list[Any], workers: list[str], **options: Any) -> VictimClient:
        client = VictimClient(victim_env, fun, tasks, workers, **options)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


def _worker_uri(port: int) -> str:
    return f"PYRO:worker@127.0.0.1:{port}"


def _serve(serve: Any, spec: str, env: dict[str, str], *flags: str) -> tuple[Any, int]:
    """A real ``ezpool.serve`` as root with default settings; it and its port."""
    port = free_port()
    return serve(spec, *flags, port=port, env=env), port




def _raised(call: Any) -> tuple[Optional[BaseException], Any]:
    try:
        return None, call()
    except Exception as exc:
        return exc, None


def _is_ezpool_refusal(error: Optional[BaseException]) -> Optional[str]:
    """What is wrong with how a victim failed, if anything: it must be EzPool's own error."""
    if error is None:
        return "the victim did not fail"
    if not isinstance(error, (AuthenticationError, WorkerUnavailable)):
        return f"the victim failed with {type(error).__module__}.{type(error).__name__}: {error}"
    return None


# --- 1, 2: a worker runs nothing for another user ------------------------------------------


def test_another_user_cannot_run_code_in_a_default_worker(serve, attacker, victim_env, key_path):
    """pickle handshake, pickle arguments, marshal with pickle bytes, no key, stolen keys: all refused."""
    _, port = _serve(serve, "tests._workers:Recorder", victim_env)
    attack = attacker.run("call", _worker_uri(port), "--markers", attacker.markers, "--steal", key_path)
    assert "marshal-run_chunk" in attack.tried
    attacker.verdict([], attack)


def test_another_user_cannot_run_code_in_a_worker_dmap_started(attacker, victim_client, key_path):
    """The worker a pool starts for itself: attacked on its port while the pool's dmap runs."""
    port = free_port()
    uri = _worker_uri(port)
    tasks = [round(0.25 + i / 10_000, 4) for i in range(40)]  # ~10 s of work, one task per chunk
    client = victim_client("tests._workers:Napper", tasks, [uri], chunksize=1, spawn=True)
    attack = attacker.run("call", uri, "--markers", attacker.markers, "--wait-up", 30, "--steal", key_path)
    running = client.process.poll() is None
    outcome = client.outcome(timeout=90)
    problems = []
    if not running:
        problems.append(f"harness: the dmap ended before the attack did, so it proves nothing: {outcome}")
    if outcome.get("count") != len(tasks) or outcome.get("errors"):
        problems.append(f"the victim's dmap did not finish cleanly: {outcome}")
    attacker.verdict(problems, attack)


# --- 3, 4: fake servers cannot run code in a client -----------------------------------------

FAKE_MODES = ("handshake", "refusal", "result", "embedded")
SETTINGS = {"default": {}, "insecure": {"insecure": True}}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("mode", FAKE_MODES)
def test_a_fake_worker_cannot_run_code_in_the_client(attacker, mode, setting):
    """The attacker's keyless Pyro4 "worker" answers the root client with pickles."""
    port = free_port()
    attacker.start("fake-server", "--port", port, "--mode", mode, "--markers", attacker.markers,
                   "--serves", Napper.__qualname__, ready="listening")

    def dmap() -> Any:
        with Pool(progress=False, **SETTINGS[setting]) as pool:
            return pool.dmap(Napper, [0.01], workers=[_worker_uri(port)], spawn=False)

    error, results = _raised(dmap)
    problem = _is_ezpool_refusal(error)
    if error is None:
        problem = f"the client's dmap returned {results!r} (errors: {results.errors!r})"
    attacker.verdict([problem] if problem else [])


def test_a_fake_worker_relaying_to_a_real_one_cannot_run_code_through_run_chunk(serve, attacker, victim_env):
    """The attacker's "worker" passes the client's handshake, ``auth``, ``hello`` and ``load``
    on to a real worker, so the client authenticates and checks it as it would any worker;
    then it answers ``run_chunk`` itself with a pickle payload under the real worker's last
    signature. The client must refuse that answer before it unpickles it."""
    _, upstream = _serve(serve, "tests._workers:Napper", victim_env)
    port = free_port()
    fake = attacker.start("fake-server", "--port", port, "--mode", "relay", "--upstream", upstream,
                          "--markers", attacker.markers, ready="listening")

    def dmap() -> Any:
        with Pool(progress=False) as pool:
            return pool.dmap(Napper, [0.01], workers=[_worker_uri(port)], spawn=False, max_attempts=2)

    error, results = _raised(dmap)
    attack = fake.stop()
    problems = []
    if not any(line["name"] == "forged run_chunk reply" for line in attack.lines):
        problems.append(f"harness: no run_chunk came through the relay ({error!r}): {attack.lines}")
    failure = str(error) if error is not None else " ".join(map(str, results.errors.values()))
    if error is not None and not isinstance(error, EzPoolError):
        problems.append(f"the client failed with {type(error).__name__}: {error}")
    elif "bad signature" not in failure:
        problems.append(f"the client did not refuse the forged answer for its MAC: {error!r} {results!r}")
    attacker.verdict(problems, attack)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("mode", FAKE_MODES[:3])
def test_a_fake_name_server_cannot_run_code_in_list_workers(attacker, mode, setting):
    """The attacker's keyless "name server" answers ``list_workers`` with pickles."""
    port = free_port()
    attacker.start("fake-server", "--port", port, "--mode", mode, "--markers", attacker.markers,
                   ready="listening")
    error, found = _raised(lambda: list_workers(ns=f"127.0.0.1:{port}", **SETTINGS[setting]))
    problem = _is_ezpool_refusal(error)
    if error is None:
        problem = f"list_workers returned {found!r}"
    attacker.verdict([problem] if problem else [])


# --- 5: names at a keyed name server -----------------------------------------------------


def start_name_server(start_daemon: Any, env: dict[str, str], *flags: Any) -> tuple[Any, str]:
    """A real ``python -m ezpool.nameserver`` as root with default settings; it and its address."""
    port = free_port()
    served = start_daemon([sys.executable, "-m", "ezpool.nameserver", "--port", str(port), *map(str, flags)],
                          env=env)
    (address,) = served.lines
    eventually(lambda: listening(port), f"name server on {address}")
    return served, address


def ns_entries(address: str, key: bytes) -> dict[str, str]:
    """What a keyed name server lists under ``ezpool.``, asked as root with the key."""
    with _pyro.NameServer(_pyro.name_server_uri(address), key, 5.0) as server:
        return {name: uri for name, (uri, _) in server.entries("ezpool.").items()}


def test_another_user_cannot_take_over_a_name_at_a_keyed_name_server(
    serve, start_daemon, attacker, victim_env, victim_key, key_path
):
    """The name server users run (``python -m ezpool.nameserver``), attacked with plain Pyro4."""
    _, address = start_name_server(start_daemon, victim_env)
    # A long refresh: the worker must not quietly repair what the attacker did.
    _, port = _serve(serve, "tests._workers:Square", victim_env, "--ns", address, "--ns-refresh", "120")
    name, real = f"ezpool.worker.127.0.0.1.{port}", _worker_uri(port)
    eventually(lambda: ns_entries(address, victim_key).get(name), f"registration of {name}")
    evil = f"PYRO:worker@127.0.0.1:{free_port()}"
    attack = attacker.run("ns-attack", address, name, evil, "--steal", key_path)
    problems = []
    entries = ns_entries(address, victim_key)
    if entries != {name: real}:
        problems.append(f"the name server now lists {entries}, not only {name} -> {real}")
    error, listed = _raised(lambda: list_workers(ns=address))
    if error is not None or listed != [real]:
        problems.append(f"list_workers with the default key gave {listed!r} ({error!r}), not [{real!r}]")
    attacker.verdict(problems, attack)


# --- 6: replays ----------------------------------------------------------------------------


class _Tap:
    """A TCP forwarder on 127.0.0.1 that records what each client sends, connection by connection."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.sent: list[bytearray] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            record = bytearray()
            self.sent.append(record)
            thread = threading.Thread(target=self._pump, args=(client, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, record: bytearray) -> None:
        with client, socket.create_connection(self.target, timeout=5) as upstream:
            ends = {client: upstream, upstream: client}
            while not self._stop.is_set():
                readable, _, _ = select.select(list(ends), [], [], 0.2)
                for sock in readable:
                    try:
                        data = sock.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if sock is client:
                        record.extend(data)
                    ends[sock].sendall(data)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.server.close()


def _runs(directory: Path) -> collections.Counter:
    """How many times ``Recorder`` ran each task."""
    return collections.Counter(int(path.name.rsplit("-", 1)[0]) for path in directory.iterdir())


def test_a_recorded_request_replayed_runs_nothing(serve, attacker, victim_env, victim_key, tmp_path):
    """Every byte a keyed client sent, replayed to its worker and to another with the same key."""
    _, port = _serve(serve, "tests._workers:Recorder", victim_env)
    _, other = _serve(serve, "tests._workers:Recorder", victim_env)
    records = tmp_path / "records"
    records.mkdir()
    tasks = [(str(records), task, 0.0) for task in range(6)]
    tap = _Tap(port)
    try:
        with Pool(progress=False) as pool:
            results = pool.dmap(Recorder, tasks, workers=[_worker_uri(tap.port)], spawn=False)
    finally:
        tap.close()
    assert not results.errors and _runs(records) == dict.fromkeys(range(6), 1), "the keyed dmap itself"
    replays = attacker.shared / "replays"
    replays.mkdir(mode=0o755)
    files = []
    for number, data in enumerate(record for record in tap.sent if record):
        path = replays / f"connection-{number}.bin"
        path.write_bytes(bytes(data))
        path.chmod(0o644)
        files.append(path)
    assert files, "harness: the tap recorded nothing"
    attacks = [attacker.run("replay", f"127.0.0.1:{target}", *files) for target in (port, other)]
    time.sleep(1.0)  # a replayed chunk that slipped through has long finished by now
    runs = _runs(records)
    problems = []
    if runs != dict.fromkeys(range(6), 1):
        problems.append(f"tasks ran again on a replay: runs per task {dict(sorted(runs.items()))}")
        for target, attack in zip((port, other), attacks):
            problems.append(f"replays to port {target}: {attack.info('replay')}")
    attacker.verdict(problems, *attacks)


# --- 7: floods -------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class _RssWatch:
    """Samples a process's resident memory every 0.1 s, in a thread, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = _rss_mb(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, _rss_mb(self.pid))

    def stop(self) -> float:
        """The growth over the base, in MB."""
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.base


#: The dmap must finish within this many seconds under the flood.
FLOOD_DEADLINE = 60.0
#: And the worker may grow by less than this many MB.
FLOOD_RSS_MB = 100.0


@pytest.mark.timeout(240)
def test_keyless_floods_do_not_starve_a_keyed_client(serve, attacker, victim_env, victim_key, victim_client):
    """300 connections sending a byte every 3 s, and 2 announcing 400 MB frames, during a keyed dmap."""
    served, port = _serve(serve, "tests._workers:Square", victim_env)
    address = f"127.0.0.1:{port}"
    watch = _RssWatch(served.process.pid)
    flood = attacker.start("flood", address, "--slow", 300, "--interval", 3, "--huge", 2,
                           "--frame-bytes", 400_000_000, "--duration", 200, ready="ready")
    began = time.monotonic()
    time.sleep(3.0)  # let the slow connections settle in and the huge frames flow
    client = victim_client("tests._workers:Square", list(range(20)), [_worker_uri(port)], spawn=False)
    outcome = client.outcome(timeout=FLOOD_DEADLINE)
    time.sleep(max(0.0, 15.0 - (time.monotonic() - began)))  # at least 15 s of flood for the memory
    growth = watch.stop()
    attack = flood.stop()
    problems = []
    if outcome.get("count") != 20 or outcome.get("errors"):
        problems.append(f"the keyed dmap did not finish cleanly within {FLOOD_DEADLINE} s: {outcome}")
    if growth >= FLOOD_RSS_MB:
        problems.append(f"the worker's RSS grew by {growth:.0f} MB")
    if problems:
        problems.append(f"(the worker's RSS: {watch.base:.0f} MB, at most {watch.base + growth:.0f} MB)")
        problems.append(f"(the flood: {attack.info('ready')}, {attack.info('flood')})")
    attacker.verdict(problems, attack)


# --- nothing signed with the key for a peer without it ------------------------------------


def _pyro_messages(data: bytes) -> list[Any]:
    """The Pyro4 messages in ``data``, each with its annotations and data (a torn tail is dropped)."""
    import struct

    from Pyro4.message import Message

    found = []
    while len(data) >= Message.header_size:
        try:
            message = Message.from_header(data[: Message.header_size])
        except Exception:
            break
        end = Message.header_size + message.annotations_size + message.data_size
        if len(data) < end:
            break
        chunks = data[Message.header_size : Message.header_size + message.annotations_size]
        message.annotations = {}
        while chunks:
            name, length = struct.unpack("!4sH", chunks[:6])
            message.annotations[name.decode("ascii")] = chunks[6 : 6 + length]
            chunks = chunks[6 + length :]
        message.data = data[Message.header_size + message.annotations_size : end]
        found.append(message)
        data = data[end:]
    return found


def _values(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _values(key)
            yield from _values(value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _values(item)


def _signed_with(key: bytes, exchange: str, received: bytes) -> list[str]:
    """Whatever in ``received`` carries a MAC made with ``key``, or could: a Pyro4 HMAC-SHA1
    annotation that verifies under the key, or any bytes value of a MAC's size (20 or 32
    bytes; the only bytes a peer without the key gets is a 16-byte nonce), or the answer
    to ``auth`` that proves the key for the probe's nonce."""
    import hashlib
    import hmac
    import marshal

    from ezpool.security import sign

    found = []
    nonce = b""
    for message in _pyro_messages(received):
        given = message.annotations.get("HMAC")
        if given is not None:
            mac = hmac.new(key, message.data, hashlib.sha1)
            for name, value in sorted(message.annotations.items()):
                if name != "HMAC":
                    mac.update(value)
            verdict = "made with the key" if hmac.compare_digest(mac.digest(), given) else "not the key's"
            found.append(f"{exchange}: message type {message.type} carries a Pyro4 HMAC ({verdict})")
        try:
            decoded = marshal.loads(message.data)
        except Exception:
            continue
        for value in _values(decoded):
            if isinstance(value, bytes) and len(value) == 16 and not nonce:
                nonce = value
            elif isinstance(value, bytes) and len(value) >= 20:
                proves = value == sign(key, nonce, 0, "auth-ok", b"attacker-nonce16")
                found.append(f"{exchange}: a {len(value)}-byte value (a MAC of the key's: {proves})")
    return found


@pytest.mark.parametrize("target", ["worker", "name server"])
def test_a_peer_without_the_key_receives_nothing_signed_with_it(
    target, serve, start_daemon, attacker, victim_env, victim_key
):
    """Every way a keyless peer can talk to a keyed worker and a keyed name server: what it
    gets back holds no MAC made with the key, so it has nothing to test guesses against."""
    from ezpool._pyro.server import REFUSED_WRONG_KEY

    if target == "worker":
        _, port = _serve(serve, "tests._workers:Square", victim_env)
        address, obj = f"127.0.0.1:{port}", "worker"
    else:
        _, address = start_name_server(start_daemon, victim_env)
        obj = "Pyro.NameServer"
    saved = attacker.shared / "probe.json"
    attack = attacker.run("probe", address, obj, "--save", saved)
    exchanges = {item["exchange"]: bytes.fromhex(item["received"]) for item in json.loads(saved.read_text())}
    problems = [found for name, got in exchanges.items() for found in _signed_with(victim_key, name, got)]
    refused = [m.data for m in _pyro_messages(exchanges["connect-then-wrong-mac"])]
    if len(refused) != 2 or REFUSED_WRONG_KEY.encode() not in refused[1]:
        problems.append(f"harness: the probe did not reach auth and its refusal: {refused}")
    attacker.verdict(problems, attack)


# --- 8: weak keys ----------------------------------------------------------------------------

#: Shorter than 16 bytes. The long one is distinctive, so that it cannot hide in an error's text.
WEAK_KEYS = ("x", "Qz7pW2kLmV")


def _shows(text: str, key: str) -> bool:
    """Whether ``text`` shows ``key``: quoted (any key), or anywhere (a key of 4 bytes or more)."""
    quoted = any(form in text for form in (f"'{key}'", f'"{key}"', f"={key}"))
    return quoted or (len(key) >= 4 and key in text)


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_serve_refuses_a_weak_key(weak, victim_env):
    env = dict(victim_env, EZPOOL_HMAC_KEY=weak)
    command = [sys.executable, "-m", "ezpool.serve", "tests._workers:Napper", "--port", str(free_port())]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"serve accepted the weak key {weak!r} and served: {out!r}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    lines = err.strip().splitlines()
    assert process.returncode == 1, (process.returncode, out, err)
    assert len(lines) == 1 and "EZPOOL_HMAC_KEY" in lines[0], err
    assert not _shows(out + err, weak), err


@pytest.mark.parametrize("given", ["hmac_key", "environment"])
@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_the_pool_refuses_a_weak_key(weak, given, monkeypatch, tmp_path):
    """Before any work: no worker is started, no task runs."""
    if given == "environment":
        monkeypatch.setenv("EZPOOL_HMAC_KEY", weak)
    options = {"hmac_key": weak} if given == "hmac_key" else {}
    port = free_port()
    records = tmp_path / "records"
    records.mkdir()

    def dmap() -> Any:
        with Pool(progress=False, **options) as pool:
            return pool.dmap(Recorder, [(str(records), 1, 0.0)], workers=[_worker_uri(port)], spawn=True)

    error, results = _raised(dmap)
    assert error is not None, f"dmap ran with the weak key {weak!r}: {results!r}; runs: {_runs(records)}"
    assert isinstance(error, (ValueError, EzPoolError)), repr(error)
    assert not isinstance(error, WorkerUnavailable), f"a worker was started before the key check: {error}"
    assert "key" in str(error).lower() and not _shows(str(error), weak), str(error)
    assert not _runs(records) and not listening(port)
