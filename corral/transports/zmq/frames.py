"""Multipart send and receive without pyzmq's per-call Python overhead.

``send_multipart`` and ``recv_multipart`` spend most of their time in Python: flag and
type handling for every frame, and a ``getsockopt(RCVMORE)`` that builds an enum each
time. For a 7-9 frame message that is about 10 µs, more than HMAC and JSON together, and
every message of a parallel task crosses a socket six times. These call pyzmq's Cython
methods directly with plain int flags, and read ``Frame.more`` instead of the option.

Used by the engine, the controller's queues and hub, and the parallel client: one place
for the one trick.

**Large frames on CurveZMQ sockets go in chunks.** libzmq encrypts each frame whole:
for a frame of many megabytes that means allocating and sealing one huge buffer, far out
of cache, and pyzmq alone moved 100 MB through Curve at 68 MB/s in one frame against 189
MB/s in 256 KiB frames (same run, docs/performance.md). So on a socket marked by
:func:`chunk_large_frames` (the gate marks every Curve socket), a frame of at least
:data:`SPLIT_FROM` bytes is sent as a marker frame (:data:`_MAGIC` and the chunk count)
followed by :data:`CHUNK`-byte frames, and :func:`recv_frames` on such a socket joins
them back into one buffer (a :class:`Joined`) before anyone sees the message.
Signatures and digests are computed over the whole buffers, above this layer, and are
unchanged; a
marker that lies (more chunks announced than frames follow) just yields a buffer whose
digest fails. Sockets without Curve are untouched (one set lookup per call).

On a Curve socket also marked by :func:`chunkstream.stream_large_frames` (the data
channel between a client and an engine), large frames go instead as a stream of
one-chunk messages, copied into place as they arrive (:mod:`.chunkstream`).
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.backend

from corral.transports.zmq import chunkstream
from corral.transports.zmq.chunkstream import CHUNK, SPLIT_FROM, Joined

__all__ = [
    "CHUNK",
    "NOBLOCK",
    "Joined",
    "SPLIT_FROM",
    "backend_recv",
    "backend_send",
    "chunk_large_frames",
    "recv_frames",
    "send_frames",
]

#: The Cython-level ``Socket.send(data, flags, copy, track)`` and ``recv(flags, copy, track)``.
backend_send = zmq.backend.Socket.send
backend_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_Frame = zmq.Frame
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
NOBLOCK = int(zmq.NOBLOCK)

#: A chunk marker: these 12 bytes, then the chunk count (4 bytes, little-endian).
_MAGIC = b"\x00corral-chk\x00"
_COUNT = struct.Struct("<I")
_MARKER_LEN = len(_MAGIC) + _COUNT.size
#: Sockets whose large frames travel in chunks (both ends must be marked: the gate marks
#: every Curve socket, and Curve needs both ends).
_CHUNKED: weakref.WeakSet[Any] = weakref.WeakSet()
_streams = chunkstream.streams
_must_stream = chunkstream.must_stream
_nbytes = chunkstream.frame_nbytes


def chunk_large_frames(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """Mark ``sock``: its large frames go in chunks (see the module docstring)."""
    _CHUNKED.add(sock)
    return sock


def _send_chunked(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int, copy: bool) -> None:
    """Send ``frames`` with each large one as a marker and its chunks. A chunk of a
    ``zmq.Frame`` (which :func:`send_frames` always sends by reference: an engine's
    tracked result buffer) or of a :class:`Joined` (received, owned by nobody else) goes
    by reference too, so the Frame's tracker completes only once libzmq is done with
    every chunk; other buffers follow ``copy``."""
    out: list[tuple[Any, bool]] = []
    for frame in frames:
        size = _nbytes(frame)
        if size < SPLIT_FROM:
            out.append((frame, copy))
            continue
        is_frame = isinstance(frame, zmq.Frame)
        by_ref = is_frame or frame.__class__ is Joined or not copy
        view = memoryview(frame.buffer if is_frame else frame)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        count = -(-size // CHUNK)
        out.append((_MAGIC + _COUNT.pack(count), True))
        out.extend((view[i : i + CHUNK], not by_ref) for i in range(0, size, CHUNK))
    more = flags | _SNDMORE
    last = len(out) - 1
    for index, (frame, copy_it) in enumerate(out):
        backend_send(sock, frame, more if index < last else flags, copy_it, False)


def _recv_chunked(sock: zmq.Socket[Any], flags: int, copy: bool) -> list[Any]:
    frame = backend_recv(sock, flags, False, False)
    frames: list[Any] = []
    while True:
        more = frame.more
        if len(frame) == _MARKER_LEN and frame.bytes[: len(_MAGIC)] == _MAGIC and more:
            (count,) = _COUNT.unpack_from(frame.bytes, len(_MAGIC))
            chunks = []
            while count and more:
                frame = backend_recv(sock, 0, False, False)
                chunks.append(frame.buffer)
                more = frame.more
                count -= 1
            frames.append(_joined(chunks))
        else:
            frames.append(frame.bytes if copy else frame)
        if not more:
            return frames
        frame = backend_recv(sock, 0, False, False)


def _joined(chunks: list[memoryview]) -> Any:
    """The chunks of one frame in one buffer, allocated once at its full size (a
    :class:`Joined`; growing a ``bytearray`` chunk by chunk copies it again and again)."""
    size = sum(chunk.nbytes for chunk in chunks)
    if not size:
        return b""
    joined = Joined(size)
    view = memoryview(joined)
    at = 0
    for chunk in chunks:
        view[at : at + chunk.nbytes] = chunk
        at += chunk.nbytes
    view.release()
    return joined


def send_frames(
    sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0, copy: bool = True
) -> None:
    """``sock.send_multipart(frames, flags, copy=copy)``, about 3x cheaper.

    ``zmq.Frame`` objects always go by reference (a received frame is forwarded without
    copying its payload); other buffers are copied, or with ``copy=False`` sent zero-copy
    when at least ``sock.copy_threshold`` bytes long.
    """
    if _CHUNKED and sock in _CHUNKED:
        if _streams and sock in _streams:
            for frame in frames:
                if _must_stream(frame, _nbytes(frame)):
                    chunkstream.send_streamed(sock, frames, flags, copy)
                    return
        else:
            for frame in frames:  # most are bytes (ids, JSON parts): len() is enough
                if (len(frame) if frame.__class__ is bytes else _nbytes(frame)) >= SPLIT_FROM:
                    _send_chunked(sock, frames, flags, copy)
                    return
    more = flags | _SNDMORE
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        backend_send(sock, frame, more if index < last else flags, copy, False)


def recv_frames(sock: zmq.Socket[Any], flags: int = 0, copy: bool = False) -> list[Any]:
    """``sock.recv_multipart(flags, copy=copy)``, faster; ``zmq.Again`` when empty.

    ``copy=False`` gives ``zmq.Frame`` objects (no copy of the payload), ``copy=True``
    bytes. Either way the whole multipart message is consumed. On a socket marked by
    :func:`chunk_large_frames`, a chunked frame comes back joined, as a :class:`Joined`.
    """
    if _CHUNKED and sock in _CHUNKED:
        if _streams and sock in _streams:
            return chunkstream.recv_streamed(sock, flags, copy)
        return _recv_chunked(sock, flags, copy)
    if not copy:
        frame = backend_recv(sock, flags, False, False)
        frames = [frame]
        while frame.more:
            frame = backend_recv(sock, 0, False, False)
            frames.append(frame)
        return frames
    parts = [backend_recv(sock, flags, True, False)]
    while _get(sock, _RCVMORE):
        parts.append(backend_recv(sock, 0, True, False))
    return parts
