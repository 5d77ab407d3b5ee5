"""Every exception EzPool raises or stores in a result slot, under one root."""

from __future__ import annotations

__all__ = [
    "EzPoolError",
    "RemoteError",
    "WorkerCrashed",
    "MainNotGuarded",
    "WorkerUnavailable",
    "TaskTimeout",
    "ResultNotSerializable",
    "TaskNotSerializable",
    "AuthenticationError",
    "RemoteTraceback",
    "ServeError",
    "SecurityError",
    "StoreError",
    "StoreMismatch",
    "ClusterError",
    "WorkerOutOfMemory",
    "IgnoredOptionWarning",
]


class EzPoolError(Exception):
    """Base class of every error defined by EzPool."""


class RemoteError(EzPoolError):
    """A task raised an exception that could not be rebuilt in the calling process.

    The original exception's type name, message and formatted traceback are kept,
    so nothing about the failure is lost even when its class is unknown here or
    it could not be pickled.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class WorkerCrashed(EzPoolError):
    """The process running a task died before the task finished."""


class MainNotGuarded(WorkerCrashed, SystemExit):
    """Worker processes could not start: the ``spawn`` or ``forkserver`` start method ran the
    main script again in them, and its work, not under ``if __name__ == "__main__":``, met a
    pool's call there. It is also a ``SystemExit``: left uncaught, it ends the program with
    its message alone, and no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message


class WorkerUnavailable(EzPoolError):
    """A worker could not be reached, or serves something other than what was asked."""


class TaskTimeout(EzPoolError, TimeoutError):
    """A task ran longer than its ``timeout``; it is also a builtin ``TimeoutError``."""


class ResultNotSerializable(EzPoolError, TypeError):
    """A task finished but its value could not be sent back to the calling process."""


class TaskNotSerializable(EzPoolError, TypeError):
    """A task could not be sent to a worker process (pickled here, or unpickled there):
    it is that task's outcome, and the other tasks of the call run."""


class AuthenticationError(EzPoolError):
    """A worker and a client do not share the same HMAC key (or one of them has none)."""


class RemoteTraceback(EzPoolError):
    """Carries the formatted traceback of an exception raised in another process.

    EzPool sets it as the ``__cause__`` of a rebuilt exception, the way
    ``concurrent.futures`` does, so printing the exception shows where it was raised.
    """

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text.rstrip()}\n"""'


class ServeError(EzPoolError):
    """``python -m ezpool.serve`` cannot start: a bad spec, port, key or address."""


class SecurityError(EzPoolError):
    """A key, key file, certificate or address is not safe to use; the message says how to fix it."""


class StoreError(EzPoolError):
    """A store file cannot be opened, read or written, or holds no sweep of that name."""


class StoreMismatch(StoreError):
    """A store holds outcomes of another version of the function (its code or captured values)."""


class ClusterError(EzPoolError):
    """Workers could not be started on a cluster (SLURM, SSH), or none of those started can join:
    the message names the host or job, and what it said."""


class WorkerOutOfMemory(EzPoolError, MemoryError):
    """A worker process grew past its ``max_memory`` (or the operating system killed it for
    memory): the message names the task, the limit and the size reached. The worker is
    replaced; the other tasks go on. It is also a builtin ``MemoryError``."""

    def __new__(cls, *args: object, **kwargs: object) -> WorkerOutOfMemory:
        # Made as EzPoolError's are: MemoryError.__new__, which picklers that rebuild
        # exceptions by calling cls.__new__ (tblib's, installed by dask.distributed) would
        # find first, refuses to make an instance of a class whose layout is Exception's.
        return Exception.__new__(cls, *args)


class IgnoredOptionWarning(EzPoolError, UserWarning):
    """A warning: a call was given an option its mode has no use for (``Pool().map(f, xs,
    ncpu=4)`` runs serially); the message names the option and the mode that uses it."""
