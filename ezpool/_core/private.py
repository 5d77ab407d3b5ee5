"""Files and folders that must be the user's own: the one rule, for keys, TLS keys and stores.

A secret (an HMAC key, a TLS private key) or a file whose contents EzPool trusts
(a store) is only as safe as the folder it lies in and the way it is opened.
Another local user who can write the folder can plant a symbolic link
(``key -> /proc/self/environ``: a "file" that passes every check on its mode and
owner, and whose contents the attacker can predict), or swap the file itself. So:

- :func:`open_private` opens with ``O_NOFOLLOW`` (a symbolic link in the last
  part of the path is refused) and ``O_NONBLOCK`` (a FIFO cannot hang us), then
  checks what it opened, not the path: a regular file, owned by this user, not
  on a pseudo file system (``/proc``, ``/sys``), and, for a secret, with no
  permission bit for group or others.
- :func:`check_private_dir` refuses a folder owned by another user (root
  excepted) or that group or others may write, unless it is sticky (``/tmp``):
  there, no one else can rename or remove a file of ours.
- :func:`make_private_dir` makes a missing folder 0700 and checks an existing one.

Every refusal is a ``SecurityError`` that names the path and the command that
fixes it. Where the platform has no POSIX owners (Windows), the owner and mode
checks are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Union

from ..errors import SecurityError

__all__ = [
    "open_private",
    "read_private",
    "check_private",
    "problem_with",
    "check_private_dir",
    "make_private_dir",
    "SHARED_BITS",
]

StrPath = Union[str, "os.PathLike[str]"]

#: Mode bits of group and others; a secret has none of them (as OpenSSH asks of a private key).
SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO

#: Folders whose files are made up by the kernel as they are read.
_PSEUDO_ROOTS = ("/proc", "/sys")


def open_private(path: StrPath, what: str, secret: bool = True) -> int:
    """A read-only descriptor of ``path``, after checking it is a file of this user's own.

    ``what`` names the file in errors ("the key file"). ``secret`` also refuses
    any permission bit for group or others; a file that is not secret (a store)
    must only be unwritable by them. ``FileNotFoundError`` passes through: the
    caller says what a missing file means.
    """
    shown = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(
                f"{what} {shown} is a symbolic link; EzPool opens only the file itself, so that no one "
                f"can point it elsewhere: use the real path ({os.path.realpath(shown)}), or replace the link "
                "with a copy"
            ) from None
        raise SecurityError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    try:
        check_private(os.fstat(fd), shown, what, secret)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: StrPath, what: str, limit: int = 1 << 20) -> bytes:
    """The contents of ``path`` (at most ``limit`` bytes), opened by :func:`open_private`.

    A file whose size is not what was read is refused: files that the kernel
    makes up as they are read (``/proc``, ``/sys``) say they are empty.
    """
    fd = open_private(path, what)
    try:
        size = os.fstat(fd).st_size
        with open(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) != size or size > limit:
        raise SecurityError(
            f"{what} {os.fspath(path)} is not an ordinary file: it holds {len(data)} bytes but says "
            f"{size} (a /proc or /sys file, or one larger than {limit} bytes?)"
        )
    return data


def check_private(info: os.stat_result, shown: str, what: str, secret: bool = True) -> None:
    """Raise ``SecurityError`` with :func:`problem_with`'s reason, if it finds one."""
    reason = problem_with(info, shown, what, secret)
    if reason:
        raise SecurityError(reason)


def problem_with(info: os.stat_result, shown: str, what: str, secret: bool = True) -> str:
    """Why what ``info`` describes (``what`` at ``shown``) is not a file of this user's own, or ``""``.

    Refused: anything but a regular file; a file on a pseudo file system; a file
    another user owns; with ``secret``, any permission bit for group or others;
    without, a write bit for them. Each reason ends with the command that fixes it.
    """
    if not stat.S_ISREG(info.st_mode):
        return f"{what} {shown} is not a regular file"
    if _on_pseudo_file_system(info):
        return f"{what} {shown} is a file the kernel makes up (under /proc or /sys), not a file"
    if not hasattr(os, "geteuid"):  # no POSIX owners or modes to check
        return ""
    me = os.geteuid()
    if info.st_uid != me:
        return (
            f"{what} {shown} is owned by uid {info.st_uid}, not by you (uid {me}), who could change it; "
            f"use one of your own, or as root: chown {me} {shown}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if secret and mode & SHARED_BITS:
        return (
            f"{what} {shown} has permissions {mode:04o}: others can use it, so it is not a secret; "
            f"fix it with: chmod 600 {shown}"
        )
    if not secret and mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{what} {shown} has permissions {mode:04o}: others can write it; fix it with: chmod go-w {shown}"
        )
    return ""


def check_private_dir(directory: StrPath, what: str) -> None:
    """Refuse ``directory`` (which holds ``what``) if another user owns it (root excepted) or
    if group or others may write it, unless it is sticky."""
    shown = os.fspath(directory)
    if not hasattr(os, "geteuid"):
        return
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise SecurityError(f"cannot use the folder {shown} of {what}: {exc.strerror or exc}") from None
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise SecurityError(
            f"the folder {shown} of {what} is owned by uid {info.st_uid}, not by you (uid {me}), who could "
            "replace what it holds; use a folder of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise SecurityError(
            f"the folder {shown} of {what} has permissions {mode:04o}: others can replace what it "
            f"holds; fix it with: chmod go-w {shown}"
        )


def make_private_dir(directory: Path, what: str) -> None:
    """Create ``directory`` with mode 0700 if it is missing; check it if it is there."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if directory.is_symlink() or not directory.is_dir():
            raise SecurityError(f"{directory}, the folder of {what}, is not a folder of its own") from None
        check_private_dir(directory, what)
        return
    os.chmod(directory, 0o700)  # exactly 0700, whatever the umask


def _on_pseudo_file_system(info: os.stat_result) -> bool:
    for root in _PSEUDO_ROOTS:
        try:
            if os.stat(root).st_dev == info.st_dev:
                return True
        except OSError:
            continue
    return False
