"""Unix-socket (ipc) endpoints that no two processes ever share.

libzmq binds an ipc endpoint by unlinking whatever file sits at the path first, so a
second ``bind("ipc://P")`` silently steals ``P`` from the first socket, whose peers are
then served by a stranger. Checking ``os.path.exists(P)`` before binding leaves a window
in which two binders (a controller's components bind at once, in sibling processes; two
clusters may share a prefix) both see ``P`` free and both bind it.

So a path is *claimed* before it is bound: ``P.claim`` is created with
``O_CREAT | O_EXCL`` (atomic on every local filesystem), owner-only, holding the
claimer's pid. Only the process whose create succeeded binds ``P``; every other one moves
on to the next number. A claim is released (the file removed) when its owner closes
cleanly; a claim left by a process that died is skipped by new binders and taken over
only when asked for by number (a controller restarted on its cluster's old endpoints, so
that engines that outlived the old one reconnect), and only if its pid is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import Any

import zmq

__all__ = ["MAX_ENDPOINTS", "Claims", "claim_path", "release_dead", "release_path"]

#: Numbers tried under one prefix before giving up.
MAX_ENDPOINTS = 10_000
_SUFFIX = ".claim"


def _owner(claim: str) -> int | None:
    """The pid written in ``claim``, or None if unreadable."""
    try:
        with open(claim, "rb") as f:
            return int(f.read(32) or b"0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_path(path: str, *, take_stale: bool = False) -> bool:
    """Claim ``path`` for this process; whether it is now ours.

    ``take_stale``: a claim whose owner no longer runs is removed and claimed again (the
    restart case in the module docstring). A path with a socket file but no claim (left by
    a process that died before claims existed, or by another program) is never taken.
    """
    claim = path + _SUFFIX
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            owner = _owner(claim)
            if not take_stale or owner is None or owner == os.getpid() or _alive(owner):
                return False
            take_stale = False  # one takeover attempt
            if not _remove_if_owned_by(claim, owner):
                return False
            continue
        try:
            os.write(fd, str(os.getpid()).encode("ascii"))
        finally:
            os.close(fd)
        if _is_live_socket(path):  # a process from before claims, or another program
            os.unlink(claim)
            return False
        return True
    return False


def _is_live_socket(path: str) -> bool:
    """Whether something at ``path`` must not be bound over: a file that is not a socket,
    or a Unix socket somebody still listens on. A dead socket file is fair game."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return True
    except FileNotFoundError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def _remove_if_owned_by(claim: str, owner: int) -> bool:
    """Remove ``claim`` if it still names ``owner``. Renamed aside first (atomic), so
    two processes taking over the same dead claim cannot both remove it and then each
    create its own: the second one renames the first one's fresh claim, sees a different
    pid and puts it back."""
    aside = f"{claim}.{os.getpid()}"
    try:
        os.rename(claim, aside)
    except FileNotFoundError:
        return True  # already removed by someone else: try the exclusive create again
    if _owner(aside) == owner:
        os.unlink(aside)
        return True
    try:
        os.link(aside, claim)  # not ours to remove: restore it
    finally:
        os.unlink(aside)
    return False


def release_path(path: str) -> None:
    """Drop this process's claim on ``path`` and its socket file, once the socket bound
    there is closed (nothing if the claim is another's)."""
    claim = path + _SUFFIX
    if _owner(claim) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the dead socket file libzmq leaves behind, then the claim
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim)


def release_dead(prefix: str, pids: set[int]) -> int:
    """Remove the endpoints under ``prefix`` claimed by ``pids``, all of which have exited
    (a supervisor cleaning up after its children, which SIGTERM ends without a chance to
    release). The socket file goes first and the claim after, so a path is never free to
    claim while a dead socket file would still be removed from under its new owner.
    Returns how many were removed."""
    directory, _, name = prefix.rpartition("/")
    removed = 0
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return 0
    for entry in entries:
        if not (entry.startswith(name + "-") and entry.endswith(_SUFFIX)):
            continue
        claim = os.path.join(directory, entry)
        owner = _owner(claim)
        if owner not in pids or _alive(owner):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim[: -len(_SUFFIX)])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim)
        removed += 1
    return removed


class Claims:
    """The ipc paths one component or kernel bound, released together when it closes."""

    __slots__ = ("paths",)

    def __init__(self) -> None:
        self.paths: list[str] = []

    def bind(self, sock: zmq.Socket[Any], prefix: str, preferred: int = 0) -> int:
        """Bind ``sock`` to ``ipc://<prefix>-<n>`` for the first ``n`` this process could
        claim (``preferred`` first, taking over a dead owner's claim); returns ``n``."""
        order = [preferred] if preferred else []
        order += [n for n in range(1, MAX_ENDPOINTS) if n != preferred]
        for n in order:
            path = f"{prefix}-{n}"
            if not claim_path(path, take_stale=n == preferred):
                continue
            try:
                sock.bind(f"ipc://{path}")
            except zmq.ZMQError as exc:
                release_path(path)
                if exc.errno in (zmq.EADDRINUSE, errno.EADDRINUSE):
                    continue
                raise
            self.paths.append(path)
            return n
        raise OSError(f"no free ipc endpoint under {prefix}")

    def release(self) -> None:
        """Remove every claim this object made (after its sockets are closed)."""
        for path in self.paths:
            release_path(path)
        self.paths.clear()
