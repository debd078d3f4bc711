"""Multipart messages over a Unix stream socket: the same-host fast path.

Why not zmq here: every zmq message is handed from the sending thread to libzmq's I/O
thread and from the receiver's I/O thread to the receiving thread. On a shared 2-core
machine a Python DEALER/ROUTER ping-pong therefore costs about 150 µs, where the same
ping-pong over a Unix stream socket costs about 40 µs (one ``sendmsg`` and one ``recv``
per side, no other thread woken). A client blocked on one engine on its own host is
exactly that ping-pong, so the parallel plugin uses this for it. The messages are the
same signed Jupyter wire frames as on zmq; only the framing is ours.

Framing (little-endian): a 12-byte prefix ``<QI`` (body length, frame count), then one
``<Q`` length per frame, then the frames back to back. ``body length`` counts the length
table and the frames. A peer that announces more than ``max_frames`` frames or
``max_body`` bytes, or lengths that do not add up, gets :class:`FramingError` and its
connection should be closed: a stream cannot be resynchronised.

:class:`FrameReader` is incremental (non-blocking sockets: it returns what is complete
and keeps the rest) and also works on a blocking socket (it then waits for data).
Frames of a large message are read-only memoryviews into one buffer per message, so a
100 MB argument is not copied again after the kernel has copied it in.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from corral.errors import CorralError

__all__ = [
    "ConnectionClosed",
    "FrameReader",
    "FramingError",
    "connect",
    "encode_prefix",
    "send_message",
]

_PREFIX = struct.Struct("<QI")
_LENGTH = struct.Struct("<Q")
#: Bytes asked of the kernel per ``recv`` while a message's size is not known yet.
_CHUNK = 256 * 1024
#: A body at least this big is received straight into its own buffer.
_DIRECT = 1024 * 1024
#: Buffers per ``sendmsg`` (Linux's IOV_MAX is 1024).
_IOV_MAX = 1000
DEFAULT_MAX_FRAMES = 4096
DEFAULT_MAX_BODY = 1 << 40


class FramingError(CorralError, ValueError):
    """The byte stream does not hold a well-formed message."""


class ConnectionClosed(CorralError, ConnectionError):
    """The peer closed the connection (or it was shut down)."""


def _byte_view(frame: Any) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    return view


def encode_prefix(frames: Sequence[Any]) -> tuple[bytes, list[memoryview]]:
    """The prefix and length table for ``frames``, and the frames as byte views."""
    views = [_byte_view(f) for f in frames]
    lengths = [v.nbytes for v in views]
    table = struct.pack(f"<{len(lengths)}Q", *lengths)
    prefix = _PREFIX.pack(len(table) + sum(lengths), len(lengths))
    return prefix + table, views


def send_message(sock: socket.socket, frames: Sequence[Any], timeout: float | None = None) -> None:
    """Send one message; returns when the kernel has all of it.

    Works on blocking and non-blocking sockets; on a non-blocking one it waits up to
    ``timeout`` seconds for room (None: for ever) and raises ``TimeoutError`` after that.
    The frames are handed to the kernel with ``sendmsg`` (gathered, not joined first).
    """
    head, views = encode_prefix(frames)
    pending: list[memoryview] = [memoryview(head), *views]
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        try:
            sent = sock.sendmsg(pending[:_IOV_MAX])
        except BlockingIOError:
            _wait_writable(sock, deadline)
            continue
        while sent:
            first = pending[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                pending.pop(0)
            else:
                pending[0] = first[sent:]
                sent = 0
        while pending and not pending[0].nbytes:
            pending.pop(0)


def _wait_writable(sock: socket.socket, deadline: float | None) -> None:
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        raise TimeoutError("the peer is not reading")
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    if not poller.poll(None if left is None else max(1, int(left * 1000))):
        raise TimeoutError("the peer is not reading")


class FrameReader:
    """Turns the bytes of one connection into messages (lists of frames).

    Small frames come out as ``bytes``; frames of a message whose body is at least 1 MiB
    are read-only memoryviews into that message's own ``bytearray``.
    """

    __slots__ = (
        "sock",
        "max_frames",
        "max_body",
        "_buf",
        "_scratch",
        "_scratch_view",
        "_body",
        "_filled",
        "_count",
    )

    def __init__(
        self,
        sock: socket.socket,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.sock = sock
        self.max_frames = max_frames
        self.max_body = max_body
        self._buf = bytearray()
        # One receive buffer for the connection's life: ``recv(n)`` would allocate n
        # bytes per call, and at 256 KiB that is an mmap and fresh zeroed pages every
        # time (it cost more than everything else a small round trip does).
        self._scratch = bytearray(_CHUNK)
        self._scratch_view = memoryview(self._scratch)
        self._body: bytearray | None = None
        self._filled = 0
        self._count = 0

    def read(self) -> list[list[Any]]:
        """Every message completed by the data available now (on a blocking socket: by
        at least one ``recv``). Raises :class:`ConnectionClosed` at end of stream and
        :class:`FramingError` for garbage; both mean the connection is done."""
        out: list[list[Any]] = []
        sock = self.sock
        while True:
            body = self._body
            if body is not None:
                try:
                    got = sock.recv_into(memoryview(body)[self._filled :])
                except BlockingIOError:
                    return out
                if not got:
                    raise ConnectionClosed("the peer closed the connection mid-message")
                self._filled += got
                if self._filled < len(body):
                    if out:
                        return out
                    continue
                self._body = None
                out.append(self._split(memoryview(body), self._count, copy=False))
                return out
            try:
                got = sock.recv_into(self._scratch)
            except BlockingIOError:
                return out
            if not got:
                if self._buf:
                    raise ConnectionClosed("the peer closed the connection mid-message")
                raise ConnectionClosed("the peer closed the connection")
            self._buf += self._scratch_view[:got]
            self._parse(out)
            if out:
                return out

    def _parse(self, out: list[list[Any]]) -> None:
        """Take every complete message out of ``_buf``; start a direct body if one is big."""
        buf = self._buf
        while len(buf) >= _PREFIX.size:
            size, count = _PREFIX.unpack_from(buf)
            if count > self.max_frames:
                raise FramingError(f"{count} frames announced (at most {self.max_frames})")
            if size > self.max_body:
                raise FramingError(f"a {size}-byte message announced (at most {self.max_body})")
            if size < count * _LENGTH.size:
                raise FramingError("the length table does not fit the announced body")
            total = _PREFIX.size + size
            if size >= _DIRECT and len(buf) < total:
                body = bytearray(size)
                have = len(buf) - _PREFIX.size
                body[:have] = buf[_PREFIX.size :]
                del buf[:]
                self._body, self._filled, self._count = body, have, count
                return
            if len(buf) < total:
                return
            view = memoryview(buf)[_PREFIX.size : total]
            try:
                out.append(self._split(view, count, copy=True))
            finally:
                view.release()
            del buf[:total]

    @staticmethod
    def _split(body: memoryview, count: int, copy: bool) -> list[Any]:
        table = count * _LENGTH.size
        lengths = struct.unpack_from(f"<{count}Q", body)
        if table + sum(lengths) != len(body):
            raise FramingError("frame lengths do not add up to the announced body")
        frames: list[Any] = []
        at = table
        for length in lengths:
            part = body[at : at + length]
            # Read-only, as a zmq frame is: whether a received array may be written
            # must not depend on its size or on the path it came by.
            frames.append(part.tobytes() if copy or length < 4096 else part.toreadonly())
            at += length
        return frames


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """A blocking stream connection to the Unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock
