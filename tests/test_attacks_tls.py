"""A TLS worker cannot be locked out by peers without the key or a certificate.

Same harness as ``test_attacks.py``: the attacker is uid 65534 running
``tests/_attacker.py``; the worker and the clients are root, with their own key.
The TLS handshake counts against the worker's pre-authentication cap (32) and
deadline (5 s): peers that never finish it are dropped like any other.
"""

from __future__ import annotations

import time

import pytest

from ezpool import Pool
from tests._workers import Square
from tests.test_attacks import (  # noqa: F401  (fixtures)
    _raised,
    _serve,
    _worker_uri,
    attacker,
    attacker_runtime,
    key_path,
    victim_config,
    victim_env,
    victim_key,
)

pytestmark = pytest.mark.timeout(240)

#: Connections that never send a byte, and connections sending a TLS ClientHello a byte
#: every 2 s: together far more than the worker's 256 threads.
SILENT, SLOW_HELLOS = 600, 300
#: Keyed TLS dmaps made during the flood, each from a pool of its own (a new connection).
DMAPS = 10




def test_silent_and_slow_tls_peers_do_not_lock_keyed_clients_out_of_a_tls_worker(
    serve, attacker, victim_env, victim_key, certificates  # noqa: F811
):
    d = certificates
    _, port = _serve(serve, "tests._workers:Square", victim_env,
                     "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"))
    flood = attacker.start("flood", f"127.0.0.1:{port}", "--slow", 0, "--huge", 0, "--silent", SILENT,
                           "--tls-slow", SLOW_HELLOS, "--interval", 2, "--duration", 200, ready="ready")
    time.sleep(6.0)  # past the 5 s deadline: the first ones have been dropped and come back

    def dmap() -> object:
        with Pool(progress=False, tls_ca=d / "ca.pem") as pool:
            return pool.dmap(Square, range(4), workers=[_worker_uri(port)], spawn=False)

    outcomes = []
    for _ in range(DMAPS):
        outcomes.append(_raised(dmap))
        time.sleep(0.5)
    attack = flood.stop()
    failed = [repr(error) if error else repr(results) for error, results in outcomes
              if error is not None or results != {n: n * n for n in range(4)}]
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {DMAPS} keyed TLS dmaps failed under the flood: {failed}")
        problems.append(f"(the flood: {attack.info('ready')}, {attack.info('flood')})")
    attacker.verdict(problems, attack)
