"""A naive distributed pool: a plain Pyro4 daemon and one remote call per task.

This is a *peer*, not EzPool's code: what someone would write in ten minutes with
Pyro4 alone. The server exposes ``compute(x)``; the client gives each worker URI a
thread that takes tasks from a shared queue and makes one call per task.

Server: ``python -m bench.naive_pyro --host 127.0.0.1 --port P`` prints its URI.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from .workloads import square

__all__ = ["NaiveServer", "naive_client", "main"]

OBJECT_ID = "naive"


class NaiveServer:
    """What the daemon exposes: one method, one task per call."""

    def compute(self, x: int) -> int:
        return square(x)


@contextlib.contextmanager
def naive_client(uris: Sequence[str]) -> Iterator[Any]:
    """Yield ``run(tasks) -> dict``, one proxy (and one thread) per worker."""
    import Pyro4

    proxies = [Pyro4.Proxy(uri) for uri in uris]
    try:
        for proxy in proxies:
            proxy._pyroBind()

        def run(tasks: Sequence[int]) -> dict[int, int]:
            todo: queue.SimpleQueue[int] = queue.SimpleQueue()
            for task in tasks:
                todo.put(task)
            results: dict[int, int] = {}
            errors: list[BaseException] = []

            def drain(proxy: Any) -> None:
                try:
                    while True:
                        try:
                            task = todo.get_nowait()
                        except queue.Empty:
                            return
                        results[task] = proxy.compute(task)
                except BaseException as exc:  # reported to the caller below
                    errors.append(exc)

            threads = [threading.Thread(target=drain, args=(proxy,)) for proxy in proxies]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            return results

        yield run
    finally:
        for proxy in proxies:
            proxy._pyroRelease()


def main(argv: Optional[Sequence[str]] = None) -> int:
    import Pyro4

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    daemon = Pyro4.Daemon(host=args.host, port=args.port)
    uri = daemon.register(Pyro4.expose(NaiveServer)(), OBJECT_ID)
    print(uri, flush=True)
    sys.stdout.flush()
    daemon.requestLoop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
