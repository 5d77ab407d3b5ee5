"""Draw ``docs/_static/report.png``: the HTML report of a real 4-worker ``dmap``, as Chromium shows it.

Run it from the root of a checkout, on Linux, with Chromium installed (``apt-get
install chromium``)::

    python docs/make_report_screenshot.py

It starts four generic workers (``python -m ezpool.serve --procs 4`` on 127.0.0.1),
runs ``work`` below over 80 tasks on them (one straggler, and some tasks that fail),
writes the call's report with ``results.save_report``, opens it in headless
Chromium with the network off (``tests/browser.py``) and saves a screenshot 1280
pixels wide. Nothing in the picture is drawn by hand.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "_static" / "report.png"
sys.path.insert(0, str(ROOT))

from ezpool import Pool  # noqa: E402
from tests.browser import Browser  # noqa: E402


def work(n: int) -> float:
    """A task of 30 ms; task 11 is a straggler (1.2 s); some tasks fail."""
    time.sleep(1.2 if n == 11 else 0.03)
    if n % 13 == 5:
        raise ValueError(f"no convergence for n={n}")
    if n == 42:
        raise ZeroDivisionError("division by zero")
    return n ** 0.5


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports")


def main() -> None:
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    command = [sys.executable, "-m", "ezpool.serve", "--port", str(free_ports(4)), "--procs", "4"]
    served = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert served.stdout is not None
        uris: list[str] = []
        while len(uris) < 4:
            line = served.stdout.readline()
            if not line:
                raise RuntimeError("the workers did not start")
            if line.startswith("PYRO:"):
                uris.append(line.strip())
        with Pool() as pool:
            results = pool.dmap(work, range(80), workers=uris, spawn=False)
        print(results.summary())
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.html"
            results.save_report(report)
            with Browser(width=1280) as browser:
                browser.open(report.as_uri())
                if browser.exceptions or browser.console:
                    raise RuntimeError(f"the page said: {browser.exceptions + browser.console}")
                browser.screenshot(str(OUTPUT), width=1280)
        print(f"wrote {OUTPUT}")
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=30)


if __name__ == "__main__":
    main()
