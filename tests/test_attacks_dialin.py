"""A pool that listens for workers, attacked by another local user (uid 65534) with no key:
it unpickles nothing the attacker sends, signs nothing for it, and stays open to real workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import ezpool
from tests.test_attacks import attacker_runtime  # noqa: F401 - the fixture
from tests.test_dialin import workers  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(180)

SCRIPT = Path(__file__).with_name("_dialin_attacker.py")


def square(x):
    return x * x


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def _attack(runtime, *args, timeout=120):
    script = runtime.stage / SCRIPT.name
    if not script.exists():
        shutil.copy(SCRIPT, script)
        script.chmod(0o644)
    command = [*runtime.command()[:-1], str(script), *map(str, args)]  # its interpreter, this script
    done = subprocess.run(command, env=runtime.env, cwd=runtime.stage, capture_output=True, text=True,
                          timeout=timeout)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr
    return lines


def test_a_fake_worker_gets_nothing_unpickled_and_nothing_signed(attacker_runtime, tmp_path):  # noqa: F811
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0") as pool:
        address = pool._backends["distributed"]._dial.listener.address
        outcomes = _attack(attacker_runtime, "fake-worker", address, "--markers", markers)
    attacks = {line["name"]: line for line in outcomes if line["kind"] == "attack"}
    assert set(attacks) == {"pickled", "forged"}, outcomes
    assert not any(line["ok"] for line in attacks.values()), outcomes
    assert list(markers.iterdir()) == []
    forged = next(line for line in outcomes if line["name"] == "after-forged")
    assert "ezpool-refused" in forged["detail"]  # told it was refused, unsigned


def test_a_flood_of_silent_and_mute_connections_does_not_keep_workers_out(attacker_runtime, workers,  # noqa: F811
                                                                          tmp_path):
    listen_file = tmp_path / "pool.json"
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        address = pool._backends["distributed"]._dial.listener.address
        flood = threading.Thread(
            target=_attack, args=(attacker_runtime, "flood", address, "--silent", 150, "--mute", 150,
                                  "--duration", 15), daemon=True)
        flood.start()
        time.sleep(2)  # the flood holds every slot before the workers come
        workers(listen_file, n=2)
        results = pool.map(nap, [0.02 + i * 1e-6 for i in range(100)])
        assert not results.errors
        assert len(set(results.values())) >= 1
        flood.join(60)
