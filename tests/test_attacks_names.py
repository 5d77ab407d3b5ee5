"""The name server users run (``python -m ezpool.nameserver``), attacked by another user.

Same harness as ``test_attacks.py`` (the attacker is uid 65534 running
``tests/_attacker.py``; the victims are root, with their own key): recorded
exchanges replayed byte for byte, and floods of huge frames and slow connections.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ezpool import _pyro, list_workers
from tests.test_attacks import (  # noqa: F401  (fixtures)
    _raised,
    _RssWatch,
    _Tap,
    attacker,
    attacker_runtime,
    key_path,
    ns_entries,
    start_name_server,
    victim_config,
    victim_env,
    victim_key,
)

pytestmark = pytest.mark.timeout(150)

LIVE, DEAD = "PYRO:worker@127.0.0.1:1111", "PYRO:worker@127.0.0.1:2222"


def test_recorded_name_server_exchanges_replayed_change_and_show_nothing(
    start_daemon, attacker, victim_env, victim_key  # noqa: F811
):
    """A registration, a list and an unregistration, each recorded on the wire and then
    replayed byte for byte by the attacker: nothing is added, removed or listed."""
    _, address = start_name_server(start_daemon, victim_env)
    direct = _pyro.name_server_uri(address)
    with _pyro.NameServer(direct, victim_key, 5.0) as server:
        server.register("ezpool.live", LIVE, set())
    tap = _Tap(int(address.rsplit(":", 1)[1]))
    recorded: dict[str, list[bytes]] = {}
    try:
        tapped = _pyro.name_server_uri(f"127.0.0.1:{tap.port}")
        steps = {
            "registration": lambda server: server.register("ezpool.dead", DEAD, set()),
            "list": lambda server: server.entries("ezpool."),
            "unregistration": lambda server: server.remove("ezpool.live"),
        }
        for label, step in steps.items():
            before = len(tap.sent)
            with _pyro.NameServer(tapped, victim_key, 5.0) as server:
                step(server)
            recorded[label] = [bytes(record) for record in tap.sent[before:] if record]
    finally:
        tap.close()
    assert all(recorded.values()), f"harness: the tap recorded nothing for some step: {recorded}"
    with _pyro.NameServer(direct, victim_key, 5.0) as server:  # back to one live worker
        server.remove("ezpool.dead")
        server.register("ezpool.live", LIVE, set())
    assert ns_entries(address, victim_key) == {"ezpool.live": LIVE}

    replays = attacker.shared / "replays"
    replays.mkdir(mode=0o755)
    files: list[Path] = []
    for label, records in recorded.items():
        for number, data in enumerate(records):
            path = replays / f"{label}-{number}.bin"
            path.write_bytes(data)
            path.chmod(0o644)
            files.append(path)
    attack = attacker.run("replay", address, *files, "--look-for", "ezpool.live", "--look-for", LIVE)
    problems = []
    entries = ns_entries(address, victim_key)
    if entries != {"ezpool.live": LIVE}:
        problems.append(f"after the replays the name server lists {entries}, not only ezpool.live")
    shown = [line for line in attack.info("replay") if "': True" in line]  # "holds 'TEXT': True"
    if shown:
        problems.append(f"a replay got names back: {shown}")
    if len(attack.info("replay")) != len(files):
        problems.append(f"harness: not every recording was replayed: {attack.info('replay')}")
    attacker.verdict(problems, attack)


#: The name server may grow by less than this many MB under the flood.
FLOOD_RSS_MB = 100.0
#: Slow connections in the flood: more than the name server lets wait (256).
SLOW = 400


@pytest.mark.timeout(240)
def test_keyless_floods_neither_grow_a_name_server_nor_starve_its_keyed_clients(
    start_daemon, attacker, victim_env, victim_key  # noqa: F811
):
    """Two connections announcing 256 MB messages and 400 sending a byte every 4 s (more
    than may wait for authentication), while a keyed client lists the workers."""
    served, address = start_name_server(start_daemon, victim_env)
    with _pyro.NameServer(_pyro.name_server_uri(address), victim_key, 5.0) as server:
        server.register("ezpool.w", LIVE, set())
    watch = _RssWatch(served.process.pid)
    flood = attacker.start("flood", address, "--slow", SLOW, "--interval", 4, "--huge", 2,
                           "--frame-bytes", 256_000_000, "--duration", 200, ready="ready")
    time.sleep(4.0)  # every slow connection has sent its first byte
    outcomes = []
    began = time.monotonic()
    while len(outcomes) < 6 or time.monotonic() - began < 15:
        outcomes.append(_raised(lambda: list_workers(address)))
        time.sleep(1.0)
    growth = watch.stop()
    attack = flood.stop()
    problems = []
    failed = [f"{error!r}" for error, found in outcomes if error is not None or found != [LIVE]]
    if failed:
        problems.append(f"{len(failed)} of {len(outcomes)} keyed list_workers failed: {failed}")
    if growth >= FLOOD_RSS_MB:
        problems.append(f"the name server's RSS grew by {growth:.0f} MB (from {watch.base:.0f} MB)")
    if problems:
        problems.append(f"(the flood: {attack.info('ready')}, {attack.info('flood')})")
    attacker.verdict(problems, attack)
