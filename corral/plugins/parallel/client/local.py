"""Blocking calls to an engine on this host, over its Unix socket, from the caller's thread.

``rc[0].apply_sync(f)`` through the queues costs four socket hops and five thread
wake-ups (caller, client I/O thread, the mux, the engine, back); this path costs one
round trip between two threads. The calling thread signs the request, sends it on a
connection of its own and reads the reply itself; the client's I/O thread is not
involved. Connections are per thread (a thread blocks on its own reply only) and per
engine, opened on first use and kept.

The engine checks these messages as it checks queued ones and copies request and reply
to the hub, so the task database and ``get_result`` see them too. What the path gives
up: ordering against this client's queued requests. The client therefore uses it only
when it has no direct request pending at all (see ``Client._call_local``).

Failure: if the engine dies, the kernel closes its end and the blocked read returns at
once (``EngineGone``); if the hub declares an engine dead while its process lingers,
:meth:`LocalCalls.engine_lost` shuts the connections down, which ends the read the same
way. Anything that interrupts a call (``KeyboardInterrupt``, say) closes that
connection, since a reply may still be on its way; a late reply can never be taken for
the next call's.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from corral.errors import CorralError
from corral.transports import unix
from corral.transports.zmq import wire
from corral.transports.zmq.door import ROLES

from .messages import MessageBuilder, Parsed, parse

_REPLIES = ROLES["replies"]

__all__ = ["EngineGone", "LocalCalls", "MAX_LOCAL_REQUEST"]

#: Requests bigger than this go through the queues (the engine refuses more locally).
MAX_LOCAL_REQUEST = 256 * 1024 * 1024
#: Requests with more buffers than this go through the queues (the engine accepts 4,096
#: frames; seven are the delimiter, signature and JSON parts, with room to spare).
MAX_LOCAL_BUFFERS = 4000


class EngineGone(CorralError, ConnectionError):
    """The engine's end of a local connection closed while a call waited on it."""


class _Connection:
    __slots__ = ("engine_id", "sock", "reader", "replay", "__weakref__")

    def __init__(self, engine_id: int, sock: socket.socket) -> None:
        self.engine_id = engine_id
        self.sock = sock
        # Replies come from our own engine and are signed: no frame-count limit, so a
        # result of many out-of-band buffers arrives as it would through the queues.
        self.reader = unix.FrameReader(sock, max_frames=1 << 30)
        self.replay = wire.ReplayGuard()


def usable_path(path: str | None) -> bool:
    """Whether ``path`` is a Unix socket this user owns (an engine on this host)."""
    if not path:
        return False
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


class LocalCalls:
    """Per-thread connections to engines' Unix sockets, and the one-request call."""

    def __init__(self, builder: MessageBuilder, signer: wire.Signer) -> None:
        self.builder = builder
        self.signer = signer
        self._mine = threading.local()
        self._lock = threading.Lock()
        # Weakly: a thread that ends drops its connections, and they close with it.
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        # Engines the hub declared dead: no new connection to them.
        self._lost: set[int] = set()
        self._closed = False
        #: Calls made over this path (for tests and diagnostics).
        self.calls = 0

    def _connection(self, engine_id: int, path: str) -> _Connection | None:
        conns: dict[int, _Connection] | None = getattr(self._mine, "conns", None)
        if conns is None:
            conns = self._mine.conns = {}
        conn = conns.get(engine_id)
        if conn is not None:
            return conn
        try:
            sock = unix.connect(path, timeout=1.0)
        except OSError:
            return None
        conn = _Connection(engine_id, sock)
        with self._lock:
            if self._closed or engine_id in self._lost:
                sock.close()
                return None
            self._all.add(conn)
        conns[engine_id] = conn
        return conn

    def _discard(self, conn: _Connection) -> None:
        conns = getattr(self._mine, "conns", None)
        if conns is not None and conns.get(conn.engine_id) is conn:
            del conns[conn.engine_id]
        with self._lock:
            self._all.discard(conn)
        try:
            conn.sock.close()
        except OSError:
            pass

    def call(
        self,
        engine_id: int,
        path: str,
        msg_type: str,
        content: dict[str, Any] | bytes | None,
        metadata: bytes,
        buffers: Sequence[Any],
        dest: str | None = None,
    ) -> tuple[str, Parsed] | None:
        """Send one request and wait for its reply: ``(msg_id, reply)``. ``dest``: the
        engine's signed destination (corral.transports.zmq.door.dest_of).

        None when the engine's socket cannot be reached (nothing was sent: use the
        queues). Raises :class:`EngineGone` when the engine's end closed after the
        request went out, and :class:`wire.WireError` for a reply that fails its checks.
        """
        conn = self._connection(engine_id, path)
        if conn is None:
            return None
        msg_id, frames = self.builder.build(
            msg_type, content, metadata=metadata, buffers=buffers, dest=dest
        )
        try:
            try:
                unix.send_message(conn.sock, frames)
            except OSError:
                # The engine is gone (or restarted) since we connected: nothing was
                # delivered whole, so the caller may still use the queues.
                self._discard(conn)
                return None
            self.calls += 1
            while True:
                try:
                    messages = conn.reader.read()
                except unix.ConnectionClosed as exc:
                    raise EngineGone(str(exc)) from None
                except (OSError, unix.FramingError) as exc:
                    raise EngineGone(f"the engine's connection failed: {exc}") from None
                for reply_frames in messages:
                    reply = parse(reply_frames, self.signer, conn.replay, role=_REPLIES)
                    if reply.parent_header.get("msg_id") == msg_id:
                        return msg_id, reply
        except BaseException:
            self._discard(conn)
            raise

    def engine_lost(self, engine_id: int) -> None:
        """End every call waiting on ``engine_id`` (from any thread), and refuse new
        connections to it (a thread may be about to connect)."""
        with self._lock:
            self._lost.add(engine_id)
            doomed = [c for c in self._all if c.engine_id == engine_id]
        for conn in doomed:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Shut down every connection (a call still waiting fails with EngineGone).

        Only this thread's own connections are closed here: closing a descriptor another
        thread is blocked on could hand its number to a new file under that thread. The
        others close when their threads drop them.
        """
        with self._lock:
            self._closed = True
            doomed = list(self._all)
        mine = getattr(self._mine, "conns", None) or {}
        for conn in doomed:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in list(mine.values()):
            self._discard(conn)
