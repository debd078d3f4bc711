"""The notification bridge's pipe transport: ``multiprocessing.connection`` between two
processes of one host, standard library only.

Both ends authenticate each other with a shared ``authkey`` (an HMAC challenge) before
any message flows; with no address the listener's Unix socket lives in a fresh private
directory (0700). See :mod:`corral.notification.bridge` for the interface it implements
and :mod:`corral.transports.zmq.bridge` for the network transport.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any

__all__ = ["PipeListener", "PipeTransport"]

log = logging.getLogger("corral.transports.pipe")


def _check_authkey(authkey: bytes) -> bytes:
    if not isinstance(authkey, bytes) or len(authkey) < 16:
        raise ValueError(
            "an authkey of at least 16 random bytes is required, so that no other local "
            "process can inject notifications; share PipeListener.authkey with the peer"
        )
    return authkey


class PipeTransport:
    """A transport over a ``multiprocessing.connection`` connection (socket or named pipe).

    Create the listening end with :meth:`listen` and the other with :meth:`connect`. Both
    ends authenticate each other with the shared ``authkey`` (HMAC challenge) before any
    message flows. A ``recv`` blocked in one thread is woken by ``close`` from another
    through a private socket pair, so closing never waits for a timeout and never closes a
    handle another thread is still using.

    .. versionadded:: 0.1
    """

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False

    @staticmethod
    def listen(address: Any = None, authkey: bytes | None = None) -> PipeListener:
        """Start listening; see :class:`PipeListener` for the address and key to hand out."""
        return PipeListener(address, authkey)

    @classmethod
    def connect(cls, address: Any, authkey: bytes) -> PipeTransport:
        """Connect to a :class:`PipeListener`; ``AuthenticationError`` if the key is wrong."""
        return cls(Client(address, authkey=_check_authkey(authkey)))

    def send(self, data: bytes) -> None:
        with self._send_lock:
            if self._closed:
                raise OSError("transport is closed")
            self._conn.send_bytes(data)

    def recv(self, timeout: float | None) -> bytes | None:
        with self._recv_lock:
            if self._closed:
                raise EOFError("transport is closed")
            ready = wait([self._conn, self._wake_r], timeout)
            if self._closed:
                raise EOFError("transport is closed")
            if not ready:
                return None
            return self._conn.recv_bytes()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        # Once both locks are ours no thread is inside the connection any more.
        with self._recv_lock, self._send_lock:
            self._conn.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> PipeTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PipeListener:
    """Accepts :class:`PipeTransport` connections from other processes.

    With no ``address``, it listens on a Unix domain socket inside a fresh private
    directory (mode 0700) on POSIX, and on a named pipe on Windows. ``authkey`` defaults to
    32 fresh random bytes; give :attr:`address` and :attr:`authkey` to the peer (in its
    environment or a 0600 file, not its command line, which other users can read).

    .. versionadded:: 0.1
    """

    def __init__(self, address: Any = None, authkey: bytes | None = None) -> None:
        self.authkey: bytes = _check_authkey(
            secrets.token_bytes(32) if authkey is None else authkey
        )
        #: Connection attempts turned away because they failed the authkey challenge.
        self.refused = 0
        self._tmpdir: str | None = None
        family = None
        if address is None:
            if sys.platform == "win32":
                family = "AF_PIPE"
            else:
                self._tmpdir = tempfile.mkdtemp(prefix="corral-bridge-")  # created 0700
                os.chmod(self._tmpdir, 0o700)
                address = os.path.join(self._tmpdir, "bridge.sock")
        try:
            self._listener = Listener(address, family=family, authkey=self.authkey)
        except BaseException:
            self._remove_tmpdir()
            raise
        self.address: Any = self._listener.address
        self._abandoned = self._listener_closed = False

    def accept(self, timeout: float | None = None) -> PipeTransport:
        """Wait for a peer that knows the authkey and return the transport to it.

        Peers that fail the challenge are logged, counted in :attr:`refused` and skipped.
        With a ``timeout``, raises ``TimeoutError`` when no good peer came in time; the
        listener is closed then, since the standard library cannot abandon an ``accept``.
        """
        if timeout is None:
            return PipeTransport(self._accept_authenticated())
        result: queue.SimpleQueue[tuple[Connection | None, BaseException | None]]
        result = queue.SimpleQueue()

        def run() -> None:
            try:
                result.put((self._accept_authenticated(), None))
            except BaseException as exc:  # handed to the waiting thread
                result.put((None, exc))

        thread = threading.Thread(target=run, name="corral-bridge-accept", daemon=True)
        thread.start()
        try:
            conn, error = result.get(timeout=timeout)
        except queue.Empty:
            self.close()
            thread.join(1.0)
            raise TimeoutError(f"no peer connected to {self.address!r} in {timeout}s") from None
        if error is not None:
            raise error
        assert conn is not None
        return PipeTransport(conn)

    def _accept_authenticated(self) -> Connection:
        while True:
            try:
                return self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError) as exc:
                if self._abandoned:
                    raise OSError("listener closed") from None
                self.refused += 1
                log.warning("bridge %r refused a peer: %s", self.address, exc)

    def _wake_accept(self) -> None:
        """Unblock a thread waiting in ``accept``: a bare connection that fails the challenge.

        A bare socket, not a client, so that a thread stuck in a handshake with a peer that
        never answers cannot make us wait too.
        """
        address = self.address
        family: int | None = None
        if isinstance(address, tuple):
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        elif isinstance(address, str) and not address.startswith("\\\\"):
            family = getattr(socket, "AF_UNIX", None)
        if family is None:
            return  # a Windows named pipe: leave the daemon thread to die with the process
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(address)
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening, wake a thread blocked in :meth:`accept` (it raises ``OSError``),
        and remove the private socket directory."""
        if self._listener_closed:
            return
        self._abandoned = self._listener_closed = True
        self._wake_accept()
        self._listener.close()
        self._remove_tmpdir()

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> PipeListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
