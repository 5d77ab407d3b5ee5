"""A real headless Chromium, driven over the DevTools protocol, with the network off.

``Browser`` starts the distribution's ``chromium`` (``--headless``, its own profile in
a temporary folder, every host name unresolvable and every connection sent to a
proxy that is not there), speaks the DevTools protocol to it over a WebSocket (a
small client on the standard library: the handshake and the frames of RFC 6455),
and collects what the page says: console messages, uncaught exceptions, and every
request it makes. ``Browser.open(url)`` loads a page and waits for its load event;
``evaluate`` runs an expression there; ``screenshot`` saves a PNG of the whole page.

Used by tests/test_report.py and docs/make_report_screenshot.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from typing import Any, Optional

#: The names the distributions give Chromium's command.
COMMANDS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    """The Chromium command on the PATH, or ``None``."""
    for name in COMMANDS:
        found = shutil.which(name)
        if found:
            return found
    return None


class WebSocket:
    """A client WebSocket (RFC 6455) on a plain TCP connection: text frames, masked, no extensions."""

    def __init__(self, url: str, timeout: float) -> None:
        match = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not match:
            raise ValueError(f"not a ws:// URL: {url!r}")
        host, port, path = match.group(1), int(match.group(2)), match.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{url} closed during the WebSocket handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"{url} refused the WebSocket: {head[:200]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed its DevTools connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def receive(self) -> str:
        """The next text message (fragments joined; pings answered)."""
        parts = []
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._read(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._read(8))
            payload = self._read(size)
            if opcode == 0x8:
                raise ConnectionError("the browser closed its DevTools connection")
            if opcode == 0x9:  # ping: answer with a (masked) pong
                mask = os.urandom(4)
                body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask + body)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Browser:
    """A headless Chromium with no network, and one page driven over the DevTools protocol.

    Use it in a ``with`` block: leaving it ends the browser (its whole process group)
    and removes its profile folder.
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        command = find_chromium()
        if command is None:
            raise FileNotFoundError(f"no Chromium on the PATH (looked for {', '.join(COMMANDS)})")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="ezpool-chromium-")
        self.console: list[dict[str, Any]] = []  # console messages, each {"level", "text"}
        self.exceptions: list[str] = []  # uncaught exceptions' descriptions
        self.requests: list[str] = []  # every URL the page asked for
        self.failed: list[str] = []  # every request that failed
        self._next = 0
        self.log = os.path.join(self.profile, "chromium.log")  # what the browser prints
        self._log_file = open(self.log, "wb")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [command, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-extensions", "--disable-sync",
             "--disable-component-update", "--disable-default-apps", "--no-first-run",
             "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--proxy-server=127.0.0.1:9",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log_file,
            start_new_session=True,
        )
        try:
            self.ws = WebSocket(self._devtools_url(), timeout)
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _devtools_url(self) -> str:
        """The browser's DevTools address, from the file it writes in its profile when it listens."""
        deadline = time.monotonic() + self.timeout
        active = os.path.join(self.profile, "DevToolsActivePort")
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                with open(active) as file:
                    port, path = file.read().split()[:2]
                return f"ws://127.0.0.1:{int(port)}{path}"
            time.sleep(0.05)
        with open(self.log, errors="replace") as file:
            said = file.read()[-3000:]
        raise RuntimeError(f"Chromium did not open its DevTools port; it said:\n{said}")

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result, noting the events that come meanwhile."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.receive())
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._note(answer)

    def _note(self, event: dict[str, Any]) -> bool:
        """Keep what an event says about the page; whether it is the page's load event."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
            self.console.append({"level": params["type"], "text": text})
        elif method == "Log.entryAdded":
            self.console.append({"level": params["entry"]["level"], "text": params["entry"]["text"]})
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            self.failed.append(f"{params.get('errorText')} ({params.get('requestId')})")
        return method == "Page.loadEventFired"

    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event (the page's scripts have run by then)."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._note(json.loads(self.ws.receive())):
                return
        raise TimeoutError(f"{url} did not load within {self.timeout} s")

    def evaluate(self, expression: str, wait: bool = False) -> Any:
        """The value of a JavaScript expression in the page (JSON-like values only); with
        ``wait``, the value the promise it gives resolves to."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=wait)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: str, width: int = 1280) -> str:
        """Save a PNG of the whole page, ``width`` pixels wide; returns ``path``."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", wait=True)
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)
        with open(path, "wb") as file:
            file.write(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        """End the browser and remove its profile."""
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        self._log_file.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
