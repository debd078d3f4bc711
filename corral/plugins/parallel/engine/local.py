"""The engine's Unix socket: blocking calls from clients on the same host.

A client waiting on one engine (``rc[0].apply_sync(f)``) needs one round trip, and over
the mux it makes two, each through libzmq's I/O threads. So every engine also listens on
a Unix stream socket (:mod:`corral.transports.unix`) and advertises its path as
``local_path`` in its registration; a client on the same host sends such calls there.
The messages are the cluster's signed wire messages, checked like any other (signature,
replay, size), and the engine copies each request and reply to the hub's ``monitor`` so
the task database sees them as it sees queued ones.

Where the socket lives: ``<tmp>/corral-<uid>/<engine uuid>.sock``. The directory is made
0700 and must be owned by this user, so only this user (and root) can connect at all;
the HMAC key is still required for anything to happen. A socket left behind by an engine
killed with ``kill -9`` is removed by the next engine that finds nobody listening on it.
A path too long for ``sun_path`` (a very long ``TMPDIR``) means no local socket: clients
then use the queues as before.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corral.transports import unix

__all__ = ["LocalConnection", "LocalEndpoint", "open_endpoint", "socket_directory"]

log = logging.getLogger("corral.plugins.parallel.engine.local")

#: sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_PATH = 107
#: The largest request accepted from a client (the client sends bigger ones elsewhere).
MAX_REQUEST = 1 << 30
#: How long a reply may wait for a client that does not read before the engine gives up
#: on that connection.
SEND_TIMEOUT = 60.0


def _temp_root() -> str:
    """``$TMPDIR`` (or ``$TEMP``, ``$TMP``) if it is a directory, else ``/tmp``: what
    ``tempfile.gettempdir`` finds here, without its 2-3 ms of imports at engine start."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value and os.path.isdir(value):
            return value
    return "/tmp"


def socket_directory(base: str | None = None) -> Path:
    """``<tmp>/corral-<uid>``, created 0700; refuses one owned by someone else or open to
    others (another user could otherwise swap sockets under us)."""
    root = Path(base or _temp_root()) / f"corral-{os.getuid()}"
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{root} is not a directory owned by this user")
    if info.st_mode & 0o077:
        raise PermissionError(f"{root} is open to other users (mode {info.st_mode & 0o777:o})")
    return root


def _sweep(directory: Path) -> None:
    """Remove sockets in ``directory`` that nobody listens on any more.

    Only ``*.sock`` names are looked at, and an engine gives its socket that name only
    once it listens (:class:`LocalEndpoint`), so a sibling starting at the same moment
    is never taken for dead. The probe does not block: a listener with a full backlog
    answers EAGAIN, which counts as alive.
    """
    for path in directory.glob("*.sock"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            try:
                path.unlink()
            except OSError:
                pass
        except OSError:
            pass
        finally:
            probe.close()


class LocalConnection:
    """One client connection: reads requests as they complete, sends replies whole."""

    __slots__ = ("sock", "reader", "fd", "request_frames")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = unix.FrameReader(sock, max_body=MAX_REQUEST)
        #: Frames of the request being served (for the hub's monitor copy).
        self.request_frames: list[Any] = []

    def read(self) -> list[list[Any]]:
        return self.reader.read()

    def send(self, frames: Sequence[Any]) -> None:
        unix.send_message(self.sock, frames, SEND_TIMEOUT)

    def close(self) -> None:
        self.sock.close()


class LocalEndpoint:
    """The listening socket; :meth:`accept` gives new :class:`LocalConnection` objects."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        directory = directory or socket_directory()
        path = directory / f"{name}.sock"
        if len(os.fsencode(path)) > _MAX_PATH:
            raise OSError(errno.ENAMETOOLONG, f"socket path too long: {path}")
        _sweep(directory)
        # Bound under a name the sweep ignores, renamed once listening: between bind and
        # listen a connection is refused, and a sibling's sweep would delete the file.
        part = directory / f"{name}.{os.getpid()}.part"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(part))
            sock.listen(128)
            sock.setblocking(False)
            os.rename(part, path)
        except BaseException:
            sock.close()
            try:
                os.unlink(part)
            except OSError:
                pass
            raise
        self.sock = sock
        self.path = str(path)
        self.fd = sock.fileno()

    def accept(self) -> list[LocalConnection]:
        """Every connection waiting to be accepted."""
        accepted: list[LocalConnection] = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:  # out of descriptors, say: keep serving the rest
                log.warning("could not accept a local connection: %s", exc)
                return accepted
            accepted.append(LocalConnection(sock))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def open_endpoint(name: str) -> LocalEndpoint | None:
    """The engine's endpoint, or None (logged) where a Unix socket cannot be had."""
    from corral.core import compat

    if not compat.HAS_UNIX_SOCKETS:  # Windows (or CORRAL_PLATFORM_COMPAT=windows)
        return None
    try:
        return LocalEndpoint(name)
    except OSError as exc:
        log.warning("no local socket for same-host clients: %s", exc)
        return None
