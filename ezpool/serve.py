"""``ezpool-serve [MODULE:NAME]`` (or ``python -m ezpool.serve``): host a worker for the distributed mode.

Without ``MODULE:NAME`` the worker is *generic*: it runs whatever function or
``BaseWorker`` class an authenticated client sends (``ezpool._core.shipping``). With it, the
worker serves that one ``BaseWorker`` subclass or function from ``MODULE`` (a
dotted module name, or the path of a ``.py`` file) and refuses others. Each
process prints the URI it serves on stdout, for programs to read, and stops
cleanly on SIGINT or SIGTERM. ``--procs N`` serves from N processes, on ports
``port`` to ``port + N - 1``; one that dies is started again at its port, at most 5
times a minute, and the others serve on (``ezpool._worker.supervisor``). Started by a
person (not by a pool or by ``--procs``, which pass ``--parent-pid``), it also says on
stderr, in one line, what it serves, where, and that Ctrl-C stops it. ``-v`` logs what
the worker does, to stderr. ``--max-tasks-per-worker`` and ``--max-memory`` limit each
process for the calls that set no limit of their own (``ezpool._worker.limits``).

Security: workers unpickle what clients send, and unpickling can run code, so
every connection needs the key (``ezpool.security``: ``--hmac-key-file``,
``EZPOOL_HMAC_KEY`` or the per-user key file); ``--insecure`` drops it. ``python -m``
puts the current directory first on the import path, before EzPool itself: from a
directory others can write, run ``ezpool-serve`` (or ``python -P -m ezpool.serve``,
Python 3.11+). The processes EzPool starts itself never have it there
(``ezpool._worker.launch``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from ._core.cli import command_line, stdout_line
from ._core.tls_contexts import add_server_tls_flags, server_tls_from_flags
from ._worker.dial_flags import add_dialing_flags, check_dialing_flags
from ._worker.parent import stop_with_parent
from .errors import SecurityError, ServeError
from .worker import BaseWorker

#: Named in full: under ``python -m ezpool.serve``, ``__name__`` is ``"__main__"``, outside "ezpool".
logger = logging.getLogger("ezpool.serve")

__all__ = ["main", "load_target"]


#: Seconds the main thread of an idle worker sleeps between two looks at its events
#: (a safety net: a signal or a restart wakes it at once).
_IDLE_WAKE = 5.0

#: Seconds a worker that restarts (to stop a task past its timeout) leaves for its
#: last answers to go out before it replaces itself.
_RESTART_GRACE = 0.3


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(_prog(sys.argv[0] if sys.argv else ""))
    args = parser.parse_args(argv)
    args.argv = argv
    args.prog = parser.prog
    _leave_shared_directory(args.prog)
    if args.verbose:
        _log_to_stderr(args.verbose)
    try:
        check_dialing_flags(args)
        key, tls = _security(args)
        ns_tls = _name_server_tls(args)
        if args.procs > 1:
            if args.connect:
                from ._worker.dialing import prepare_dialing_children

                prepare_dialing_children(args, key)
            return _serve_many(args)
        return _serve_one(args, key, tls, ns_tls)
    except ServeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def _leave_shared_directory(prog: str) -> None:
    """``python -m`` put the current directory first on the import path: take it off if
    others can write it, and say so (``ezpool._worker.launch``)."""
    from ._worker.launch import leave_shared_directory

    shared = leave_shared_directory(sys.path)
    if shared is not None:
        print(
            f"{prog}: warning: the current directory {shared} was first on the import path "
            "(python -m puts it there) and others can write it: it is taken off for what this "
            "worker imports from now on, but EzPool itself was imported before. From such a "
            "directory, run ezpool-serve, or python -P -m ezpool.serve (Python 3.11+)",
            file=sys.stderr, flush=True,
        )


def _prog(argv0: str) -> str:
    """How the user started this: ``python -m ezpool.serve`` or the ``ezpool-serve`` script."""
    return "python -m ezpool.serve" if Path(argv0).name in ("serve.py", "__main__.py") else "ezpool-serve"


_EPILOG = """\
examples:
  a generic worker on 127.0.0.1:21000, which runs any function or BaseWorker class
  sent by a client that holds the key:

    {prog}

  FibWorker only, from 4 processes on ports 21000-21003, reachable from other
  machines whose clients use the key in ~/.ezpool-key:

    {prog} examples/fib.py:FibWorker --host 192.0.2.7 --procs 4 \\
        --hmac-key-file ~/.ezpool-key

environment:
  {key_env}    the shared key, when --hmac-key-file is not given; without
                     either, the per-user key file ({key_file_env}, else
                     ezpool/key in your config directory), made on first use

Each process prints its URI (PYRO:NAME@HOST:PORT) on stdout; give the URIs to
dmap(..., workers=[...]). Ctrl-C or SIGTERM stops every process.
"""


def _parser(prog: str = "ezpool-serve") -> argparse.ArgumentParser:
    from ._version import __version__
    from .security import KEY_ENV, KEY_FILE_ENV

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an EzPool worker over the network, for Pool.dmap.",
        epilog=_EPILOG.format(prog=prog, key_env=KEY_ENV, key_file_env=f"${KEY_FILE_ENV}"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", help="show EzPool's version and exit",
        version=f"ezpool {__version__} (Python {sys.version_info.major}.{sys.version_info.minor})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log what the worker does to stderr (-vv: Pyro4's log too)",
    )
    parser.add_argument(
        "spec", metavar="MODULE:NAME", nargs="?",
        help="serve only this BaseWorker subclass or function (default: whatever clients send)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=21000, help="port of the first process (default 21000)")
    parser.add_argument("--name", default="worker", help="object name in the URI (default 'worker')")
    parser.add_argument(
        "--procs", type=_positive, default=1, metavar="N", help="worker processes to start (default 1)"
    )
    parser.add_argument("--ns", metavar="HOST[:PORT]", help="register with this EzPool name server")
    parser.add_argument("--ns-prefix", default="ezpool.", help="prefix of registered names")
    parser.add_argument(
        "--ns-refresh",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="check and renew the registration this often (default 5)",
    )
    parser.add_argument(
        "--hmac-key-file", type=Path, metavar="PATH",
        help="file holding the shared key (default: $EZPOOL_HMAC_KEY, else your per-user key file)",
    )
    parser.add_argument(
        "--insecure", action="store_true",
        help="use no key at all: anyone who can reach the port runs code here (clients need insecure=True)",
    )
    add_server_tls_flags(parser, "worker")
    parser.add_argument(
        "--ns-tls-ca", type=Path, metavar="PEM",
        help="reach the name server over TLS, checking its certificate against this CA",
    )
    parser.add_argument(
        "--ns-tls-cert", type=Path, metavar="PEM", help="certificate to show a TLS name server"
    )
    parser.add_argument("--ns-tls-key", type=Path, metavar="PEM", help="the private key of --ns-tls-cert")
    parser.add_argument(
        "--max-tasks-per-worker", type=_positive, metavar="N",
        help="restart a process after it ran N tasks, for calls that set no max_tasks_per_worker",
    )
    parser.add_argument(
        "--max-memory", type=_memory, metavar="SIZE",
        help="a task that takes a process past SIZE of resident memory (e.g. 2GiB, 500MB) fails "
        "with WorkerOutOfMemory and the process restarts, for calls that set no max_memory",
    )
    add_dialing_flags(parser, _seconds)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return parser


def _log_to_stderr(verbosity: int) -> None:
    """``-v``: EzPool's debug log on stderr; ``-vv``: every library's too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [pid %(process)d] %(name)s %(levelname)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    logging.getLogger("ezpool").setLevel(logging.DEBUG)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _memory(text: str) -> int:
    from ._core.checks import parse_memory

    try:
        size = parse_memory("--max-memory", text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert size is not None
    return size


def limits(args: argparse.Namespace) -> tuple[Optional[int], Optional[int]]:
    """``(max_tasks_per_worker, max_memory)`` from the command line, for the servant."""
    return args.max_tasks_per_worker, args.max_memory


def limit_flags(args: argparse.Namespace) -> list[str]:
    """The limit flags again, for the processes of ``--procs``."""
    command = []
    if args.max_tasks_per_worker:
        command += ["--max-tasks-per-worker", str(args.max_tasks_per_worker)]
    if args.max_memory:
        command += ["--max-memory", str(args.max_memory)]
    return command


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _security(args: argparse.Namespace) -> tuple[Optional[bytes], Optional[ssl.SSLContext]]:
    """The key and TLS context to serve with, or a ``ServeError`` that says what to fix."""
    from .security import is_loopback_host, only_here, resolve_key

    try:
        given = _key_from_stdin(args) if args.key_stdin else None
        key = resolve_key(given, key_file=args.hmac_key_file, insecure=args.insecure)
        if key is None and not is_loopback_host(args.host) and not args.connect:
            logger.warning(
                "listening on %s without a key: anyone who can reach it can run code here", args.host
            )
        here = "" if args.connect else only_here(args.host)
        if here:
            print(f"{args.prog}: warning: --host {args.host} resolves to {here}, an address of this "
                  "machine only: clients elsewhere cannot reach this worker. Give --host the address "
                  "they reach, or dial the pool instead (--connect)", file=sys.stderr, flush=True)
        tls = server_tls_from_flags(args)
    except SecurityError as exc:
        raise ServeError(str(exc)) from None
    return key, tls


def _key_from_stdin(args: argparse.Namespace) -> str:
    """``--key-stdin``: the key on the first line of standard input (and, for ``--connect -``,
    the pool's address on the next)."""
    if args.insecure or args.hmac_key_file is not None:
        raise ServeError("--key-stdin reads the key: give it without --insecure or --hmac-key-file")
    key = sys.stdin.readline().strip()
    if not key:
        raise ServeError("--key-stdin: standard input holds no key (its first line is empty)")
    if args.connect == "-":
        args.connect_line = sys.stdin.readline().strip()
    return key


def _name_server_tls(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """The TLS context to reach the name server with (``--ns-tls-*``), if any."""
    from .security import client_tls_context

    given = [args.ns_tls_ca, args.ns_tls_cert, args.ns_tls_key]
    if not any(given):
        return None
    if not args.ns:
        raise ServeError("--ns-tls-ca, --ns-tls-cert and --ns-tls-key need --ns, the name server to reach")
    if args.ns_tls_ca is None:
        raise ServeError(
            "--ns-tls-cert and --ns-tls-key need --ns-tls-ca, the CA of the name server's certificate"
        )
    try:
        return client_tls_context(*given)
    except SecurityError as exc:
        raise ServeError(str(exc)) from None


def load_target(spec: str) -> Any:
    """Import ``MODULE:NAME`` and return the object; ``ServeError`` says what is wrong."""
    module_part, _, name = spec.rpartition(":")
    if not module_part or not name:
        raise ServeError(f"{spec!r} is not MODULE:NAME (e.g. mymodule:MyWorker or script.py:MyWorker)")
    module = _import(module_part)
    target: Any = module
    for part in name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ServeError(f"{module_part!r} has no {name!r}")
    is_worker = isinstance(target, type) and issubclass(target, BaseWorker)
    if not is_worker and (isinstance(target, type) or not callable(target)):
        raise ServeError(f"{spec!r} is neither a BaseWorker subclass nor a function")
    return target


def _import(module_part: str) -> ModuleType:
    try:
        if module_part.endswith(".py") or os.sep in module_part:
            path = Path(module_part).resolve()
            if not path.is_file():
                raise ServeError(f"no such file: {module_part!r}")
            sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise ServeError(f"cannot import {module_part!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            return module
        sys.path.insert(0, os.getcwd())
        return importlib.import_module(module_part)
    except ServeError:
        raise
    except Exception as exc:
        raise ServeError(f"cannot import {module_part!r}: {type(exc).__name__}: {exc}") from None


def _serve_one(
    args: argparse.Namespace,
    key: Optional[bytes],
    tls: Optional[ssl.SSLContext],
    ns_tls: Optional[ssl.SSLContext] = None,
) -> int:
    from . import _pyro
    from ._worker.faults import FAULTS_ENV, Faults
    from ._worker.registration import Registration
    from ._worker.servant import Servant
    from .errors import EzPoolError

    target = load_target(args.spec) if args.spec else None
    try:
        faults = Faults.from_environment(os.environ)
    except ValueError as exc:
        raise ServeError(f"{FAULTS_ENV}: {exc}") from None
    instance = target() if isinstance(target, type) else target
    if isinstance(instance, BaseWorker):
        instance.setup()
    _pyro.configure_worker_process()
    if args.connect:  # a worker that dials its pool: its own signals, and its own parent watch
        from ._worker.dialing import serve_dialing

        return serve_dialing(args, instance, key, tls, faults)
    # One event wakes the main thread, for whichever reason: an idle worker sleeps.
    stop, restart, wake = threading.Event(), threading.Event(), threading.Event()

    def ask_stop(*_: Any) -> None:
        stop.set()
        wake.set()

    def ask_restart() -> None:
        restart.set()
        wake.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ask_stop)
    if args.parent_pid:
        threading.Thread(target=stop_with_parent, args=(args.parent_pid, ask_stop), daemon=True).start()
    servant = Servant(instance, on_restart=ask_restart, faults=faults, limits=limits(args))
    try:
        server = _pyro.Server(_pyro.worker_methods(servant), args.host, args.port, args.name, key, tls)
    except OSError as exc:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    registration = None
    try:
        server.start()
        if args.ns:
            registered = f"{args.ns_prefix}{args.name}.{args.host}.{args.port}"
            try:
                keeper = Registration(
                    args.ns, registered, server.uri, args.ns_prefix, key, args.ns_refresh, ns_tls
                )
                keeper.start()  # a name server that is down is waited for; a refused key is not
            except (EzPoolError, ValueError) as exc:
                raise ServeError(f"cannot register with the name server at {args.ns}: {exc}") from None
            registration = keeper
        stdout_line(str(server.uri))  # if no one reads it, the worker serves all the same
        if not args.parent_pid:
            _say_started(args, str(server.uri), tls is not None)
        logger.debug("serving %s at %s as %s", args.spec or "any function", server.uri, servant.identity)
        while not wake.wait(_IDLE_WAKE):
            pass
        if restart.is_set() and not stop.is_set():
            time.sleep(_RESTART_GRACE)
    finally:
        if registration is not None:
            registration.stop(unregister=not restart.is_set())
        server.shutdown()
        if not restart.is_set():
            servant.close()
            if isinstance(instance, BaseWorker):
                instance.teardown()
    if restart.is_set() and not stop.is_set():
        _replace_process(args.argv)
    return 0


def _say_started(args: argparse.Namespace, where: str, tls: bool) -> None:
    """The one line a person sees when the worker is up: what it serves, where, how to stop it."""
    what = args.spec or "any function or BaseWorker class a client sends"
    over = " over TLS" if tls else ""
    registered = f", registered with the name server at {args.ns}" if args.ns else ""
    line = f"{args.prog}: serving {what} at {where}{over}{registered}; Ctrl-C to stop"
    print(line, file=sys.stderr, flush=True)


def _replace_process(argv: list[str]) -> None:
    """Become a fresh worker with the same command line: the one way to stop a stuck task.

    Not with ``-m``, which would put the current directory first on its import path
    (``ezpool._worker.launch``)."""
    from ._worker.launch import serve_command, worker_env

    logger.info("restarting: a fresh process replaces this one (see above why)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, serve_command(argv), worker_env(os.environ, sys.path))


def _serve_many(args: argparse.Namespace) -> int:
    """Serve from one process per port, each started again if it dies (``ezpool._worker.supervisor``)."""
    from ._worker.supervisor import serve_many

    if args.spec:
        load_target(args.spec)  # fail here, once, rather than in every process
    ports = [args.port + index for index in range(args.procs)]

    def say(line: str) -> None:
        print(f"{args.prog}: {line}", file=sys.stderr, flush=True)

    def announce(where: str) -> None:
        if args.connect:
            say(f"{args.procs} processes dial the pool at {args.connect}; Ctrl-C to stop")
        else:
            _say_started(args, where, args.tls_cert is not None)

    grace = args.grace + 2.0 if args.connect else None
    return serve_many(lambda port: _child_args(args, port), ports, say, announce, grace)


def _child_args(args: argparse.Namespace, port: int) -> list[str]:
    if args.connect:
        from ._worker.dial_flags import dialing_child_args

        return dialing_child_args(args)
    command = [*([args.spec] if args.spec else []), "--host", args.host, "--port", str(port)]
    command += ["--name", args.name]
    command += ["--ns-prefix", args.ns_prefix, "--parent-pid", str(os.getpid())]
    if args.ns:
        command += ["--ns", args.ns, "--ns-refresh", str(args.ns_refresh)]
    if args.hmac_key_file is not None:
        command += ["--hmac-key-file", str(args.hmac_key_file)]
    if args.insecure:
        command.append("--insecure")
    for flag in ("tls_cert", "tls_key", "tls_ca", "ns_tls_ca", "ns_tls_cert", "ns_tls_key"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.tls_require_client_cert:
        command.append("--tls-require-client-cert")
    command += limit_flags(args)
    if args.verbose:
        command.append("-" + "v" * args.verbose)
    return command


if __name__ == "__main__":
    sys.exit(main())
