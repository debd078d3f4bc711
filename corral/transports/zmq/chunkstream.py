"""Large frames on a Curve *data channel* as a stream of one-chunk messages.

libzmq delivers a multipart message only once its last frame has arrived, so when a
100 MB buffer crosses a Curve socket as one message of 256 KiB frames
(:mod:`corral.transports.zmq.frames`), the receiver sits idle while libzmq decrypts all
of it, and only then copies the chunks into one buffer: ~70 ms of page faults and
``memcpy`` after the transfer instead of during it. Sent as separate messages, each chunk
can be copied into its place as soon as it is decrypted, while the I/O thread decrypts
the next (pyzmq alone, 100 MB over Curve, same run: 395 MB/s as one multipart message,
580 MB/s streamed; docs/performance.md).

A message with large frames therefore leaves as:

1. the message itself, each large frame replaced by a **marker**: :data:`_MARK_MAGIC`,
   then the stream id and the frame's size (``<IQ``);
2. then for each large frame in order, its chunks, each a message of its own:
   ``[routing id (ROUTER only), head, chunk]`` where head is :data:`_HEAD_MAGIC`, the
   stream id and the chunk's sequence number in the stream (``<II``).

The receiver keeps one stream in progress per peer (the ROUTER's routing id; a DEALER
has one peer): the marked message is held with a preallocated :class:`Joined` buffer
per marker, each chunk is copied in at the offset it must go to, and the message is
returned when every buffer is full. Signatures and BLAKE3 digests are computed over the
whole buffers above this layer and are unchanged, so a lost, reordered, extra or altered
chunk can never yield a wrong value: a chunk out of sequence ends its stream, and the
message is returned with only what arrived (its digest then fails, and the engine
answers with an error). A stream whose chunks never come is dropped (with a log line)
when the next message from that peer arrives, or given up once it has made no progress
for :data:`STALL_TIMEOUT` seconds (below).

**A stream that stalls ends in an error, never in a wait.** Its message is the request
or reply someone waits for, so a stream whose sender stopped half-way (killed, its
connection lost, a chunk gone) must not leave it waiting for ever. A receive that finds
the socket empty while a stream has taken no chunk in for :data:`STALL_TIMEOUT` seconds
returns that stream's message cut short, like a broken stream: its digest fails, and the
engine answers the request with the error, or the client fails the pull. The limit is on
progress, not on size or total time: a stream that keeps moving is never cut, and one
whose receiver was busy elsewhere is not either (the chunks that waited meanwhile are
taken in first). Receivers poll with :func:`stall_deadline` as a timeout, and receive
(``NOBLOCK``) once it has passed.

Only for sockets with a single peer per routing id, which both ends mark: the client's
data channel (a DEALER connected to one engine) and the engine's data socket (a ROUTER).
A DEALER with several peers would deal the chunks out among them. The sender's
high-water mark is lifted (:func:`stream_large_frames`): a ROUTER at its mark drops
messages instead of waiting, and a dropped chunk would fail the transfer.
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.backend

__all__ = [
    "CHUNK",
    "Cut",
    "Joined",
    "cut_short",
    "SPLIT_FROM",
    "frame_nbytes",
    "STALL_TIMEOUT",
    "recv_streamed",
    "send_streamed",
    "stall_clock",
    "stall_deadline",
    "streams",
]

log = logging.getLogger("corral.transports.zmq.chunkstream")

#: Chunk size for large frames on Curve sockets (what libzmq's Curve encrypts fastest).
CHUNK = 256 * 1024
#: Frames at least this large are chunked on Curve sockets.
SPLIT_FROM = 1024 * 1024
#: Seconds a stream may go without a chunk (while nothing else waits) before its message
#: is passed on cut short: far beyond any pause of a live sender (libzmq sends the queued
#: chunks from its own thread), short enough that a stalled transfer ends in an error.
STALL_TIMEOUT = 30.0

_send: Any = zmq.backend.Socket.send
_recv: Any = zmq.backend.Socket.recv
_Frame = zmq.Frame
_SNDMORE = int(zmq.SNDMORE)

_MARK_MAGIC = b"\x00corral-str\x00"
_MARK = struct.Struct("<IQ")
MARK_LEN = len(_MARK_MAGIC) + _MARK.size
_HEAD_MAGIC = b"\x00corral-chu\x00"
_HEAD = struct.Struct("<II")
HEAD_LEN = len(_HEAD_MAGIC) + _HEAD.size


class _LikeAFrame:
    """What ``zmq.Frame`` offers that corral's receivers use, for a buffer of our own: a
    mixin for classes with the buffer protocol (which the type checker cannot see here)."""

    __slots__ = ()

    @property
    def bytes(self) -> bytes:
        return bytes(self)  # type: ignore[call-overload]

    @property
    def buffer(self) -> memoryview:
        return memoryview(self)  # type: ignore[arg-type]


class Joined(_LikeAFrame, mmap.mmap):
    """A frame that arrived in chunks, joined: what ``zmq.Frame`` offers that corral's
    receivers use (``bytes``, ``buffer``, the buffer protocol, ``len``), writable, so a
    pushed array deserialized onto it is writable like one received whole.

    Memory of its own (an anonymous private mapping) rather than a ``bytearray``: a
    ``bytearray`` of 100 MB is zero-filled first, which touches every 4 KiB page (~25,000
    page faults, ~70 ms on the reference machine) before the first chunk can be copied
    in. A fresh mapping is zero by construction and, asked for huge pages where the
    kernel offers them (``MADV_HUGEPAGE``), faults in 2 MiB at a time: allocating and
    filling 100 MB took 18-26 ms against 83-104 ms (docs/performance.md).

    ``cut`` (set only on a buffer whose stream ended early: :func:`cut_short`) says why
    it is short, so the digest check that refuses it can say so instead of "altered".

    ``digest``: the BLAKE3 digest (hex) of the chunks as they were copied in, computed
    while the next ones were still being decrypted, so the receiver's check does not
    hash 100 MB again after the transfer. Taken once (:meth:`take_digest`): the buffer is
    writable, and a second check (after someone may have written to it) hashes anew."""

    __slots__ = ("cut", "digest")
    cut: str
    digest: bytes | None

    def __new__(cls, size: int) -> Joined:
        if size <= 0:  # never asked for: streams and chunked frames are never empty
            raise ValueError(f"a joined buffer needs at least one byte, not {size}")
        if _POSIX_MAP is None:  # Windows: anonymous, backed by the paging file
            joined = super().__new__(cls, -1, size)
        else:
            joined = super().__new__(cls, -1, size, flags=_POSIX_MAP)
            if _HUGE is not None:
                try:
                    joined.madvise(_HUGE)
                except OSError:  # a kernel without transparent huge pages: 4 KiB pages
                    pass
        joined.digest = None
        return joined

    def take_digest(self) -> bytes | None:
        """The digest computed on arrival, once; None after that or if there is none."""
        digest, self.digest = self.digest, None
        return digest


_POSIX_MAP: int | None = (
    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS if hasattr(mmap, "MAP_ANONYMOUS") else None
)
_HUGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


class Cut(_LikeAFrame, bytearray):
    """What arrived of a buffer whose stream ended early (a copy: rare, and a mapping
    cannot be shortened in place), with ``cut`` saying why; its digest cannot match."""

    __slots__ = ("cut",)
    cut: str


def cut_short(buffer: Any, filled: int, why: str) -> Cut:
    """The first ``filled`` bytes of ``buffer``, marked as cut short because of ``why``."""
    short = Cut(memoryview(buffer)[:filled])
    short.cut = why
    return short


def _new_hasher() -> Any:
    """A BLAKE3 hasher; the module is imported on first use, as in :mod:`.door` (most
    processes that import this one never receive a stream)."""
    from blake3 import blake3

    return blake3()


class _Pending:
    """One peer's message waiting for its chunks."""

    __slots__ = ("buffers", "deadline", "filled", "frames", "hasher", "sid", "seq", "slot")

    def __init__(self, frames: list[Any], buffers: list[Joined], sid: int) -> None:
        self.frames = frames
        self.buffers = buffers
        self.sid = sid
        self.seq = 0  # the next chunk's sequence number
        self.slot = 0  # the buffer being filled
        self.filled = 0  # bytes of it filled
        self.deadline = time.monotonic() + STALL_TIMEOUT  # pushed back by every chunk
        self.hasher = _new_hasher()  # the digest of the buffer being filled, so far

    def missing(self) -> int:
        """Bytes announced that have not arrived."""
        return sum(len(b) for b in self.buffers[self.slot :]) - self.filled

    def truncated(self, why: str) -> list[Any]:
        """The message with what arrived: filled buffers whole, the rest cut short (so a
        digest over them cannot match what was signed), each marked with ``why``."""
        short = {
            id(buffer): cut_short(buffer, self.filled if index == self.slot else 0, why)
            for index, buffer in enumerate(self.buffers)
            if index >= self.slot
        }
        return [short.get(id(frame), frame) for frame in self.frames]


class _Streams:
    """What one marked socket's streams need: whether it routes, the next stream id,
    each peer's stream in progress."""

    __slots__ = ("next_sid", "pending", "routed")

    def __init__(self, routed: bool) -> None:
        self.routed = routed
        self.next_sid = 0
        self.pending: dict[bytes, _Pending] = {}


#: Marked sockets (see :func:`stream_large_frames`).
streams: weakref.WeakKeyDictionary[Any, _Streams] = weakref.WeakKeyDictionary()


def stream_large_frames(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """Mark ``sock`` (before it binds or connects): on Curve, its large frames travel as
    streams (see the module docstring). Lifts its send high-water mark."""
    sock.sndhwm = 0
    streams[sock] = _Streams(sock.type == zmq.ROUTER)
    return sock


def frame_nbytes(frame: Any) -> int:
    """Bytes in ``frame``; cheapest first (this runs for every frame on a Curve socket;
    :mod:`.frames` uses it too)."""
    cls = frame.__class__
    if cls is bytes or cls is _Frame:
        return len(frame)
    if cls is memoryview:
        return frame.nbytes
    try:
        return memoryview(frame).nbytes
    except TypeError:
        return len(frame)


def must_stream(frame: Any, size: int) -> bool:
    """Whether a frame of ``size`` bytes goes as a stream: a large one, or a small one
    that would read as a marker or a chunk head on arrival (so sent data is never
    mistaken for them)."""
    if size >= SPLIT_FROM:
        return True
    if size != MARK_LEN and size != HEAD_LEN:
        return False
    head = bytes(memoryview(frame.buffer if frame.__class__ is _Frame else frame)[:12])
    return head == _MARK_MAGIC or head == _HEAD_MAGIC


def _flat(frame: Any) -> memoryview:
    view = memoryview(frame.buffer if frame.__class__ is _Frame else frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


def send_streamed(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int, copy: bool) -> None:
    """Send ``frames`` on a marked socket, large ones as streams (see the module).

    A chunk of a ``zmq.Frame`` (an engine's tracked result buffer) or of a
    :class:`Joined` goes by reference, so the Frame's tracker completes only once libzmq
    is done with every chunk; other buffers follow ``copy``."""
    state = streams[sock]
    sid = state.next_sid
    state.next_sid = (sid + 1) & 0xFFFFFFFF
    first = 1 if state.routed else 0
    out: list[Any] = list(frames[:first])
    large: list[tuple[memoryview, bool]] = []
    for frame in frames[first:]:
        size = frame_nbytes(frame)
        if must_stream(frame, size):
            out.append(_MARK_MAGIC + _MARK.pack(sid, size))
            by_ref = frame.__class__ is _Frame or frame.__class__ is Joined or not copy
            large.append((_flat(frame), by_ref))
        else:
            out.append(frame)
    more = flags | _SNDMORE
    last = len(out) - 1
    for index, frame in enumerate(out):
        # bytes always copied (small); buffers as asked (zmq.Frames go by reference)
        _send(sock, frame, more if index < last else flags, copy, False)
    prefix = out[:first]
    seq = 0
    for view, by_ref in large:
        for start in range(0, view.nbytes, CHUNK):
            for routing in prefix:
                _send(sock, routing, more, True, False)
            _send(sock, _HEAD_MAGIC + _HEAD.pack(sid, seq), more, True, False)
            _send(sock, view[start : start + CHUNK], flags, not by_ref, False)
            seq += 1


def stall_deadline(sock: zmq.Socket[Any]) -> float | None:
    """When (``time.monotonic()``) the earliest stream in progress on ``sock`` stalls,
    None if none is: a receiver's poll timeout, after which it receives (``NOBLOCK``)
    even if the poll saw nothing, so that a stalled stream ends (module docstring)."""
    state = streams.get(sock)
    if state is None or not state.pending:
        return None
    return min(pending.deadline for pending in state.pending.values())


def stall_clock(sock: zmq.Socket[Any]) -> Callable[[], float | None]:
    """:func:`stall_deadline` of the marked ``sock``, bound once: a receiver's loop calls
    it at every turn, and while no stream is in progress it costs one dict check
    (looking the socket up in :data:`streams` each time would cost ten times that)."""
    state = streams[sock]

    def deadline() -> float | None:
        pending = state.pending
        if not pending:
            return None
        return min(each.deadline for each in pending.values())

    return deadline


def recv_streamed(sock: zmq.Socket[Any], flags: int, copy: bool) -> list[Any]:
    """The next whole message on a marked socket (``zmq.Again`` with ``NOBLOCK`` when
    none is complete yet: chunks received so far are kept). With nothing waiting, a
    stream that has stalled comes out cut short instead (see the module docstring)."""
    state = streams[sock]
    first = 1 if state.routed else 0
    while True:
        try:
            frame = _recv(sock, flags, False, False)
        except zmq.Again:
            stalled = _stalled(state) if state.pending else None
            if stalled is None:
                raise
            return stalled
        frames = [frame]
        while frame.more:
            frame = _recv(sock, 0, False, False)
            frames.append(frame)
        peer = frames[0].bytes if first else b""
        if len(frames) == first + 2 and len(frames[first]) == HEAD_LEN:
            head = frames[first].bytes
            if head[:12] == _HEAD_MAGIC:
                done = _on_chunk(state, peer, head, frames[first + 1])
                if done is not None:
                    return done
                continue
        message = _on_message(state, peer, frames, first, copy)
        if message is not None:
            return message


def _on_message(
    state: _Streams, peer: bytes, frames: list[Any], first: int, copy: bool
) -> list[Any] | None:
    """A message (not a chunk): returned, or held for its streams (None). A stream of
    the same peer still in progress lost its end: it is passed on cut short if this
    message is held (so its sender hears of the failure), dropped otherwise."""
    out: list[Any] = []
    buffers: list[Joined] = []
    sid = -1
    refused = ""
    for index, frame in enumerate(frames):
        if index >= first and len(frame) == MARK_LEN:
            raw = frame.bytes
            if raw[:12] == _MARK_MAGIC:
                mark_sid, size = _MARK.unpack_from(raw, 12)
                if sid not in (-1, mark_sid) or size == 0:
                    refused = "inconsistent stream markers"
                    break
                sid = mark_sid
                try:
                    joined = Joined(size)
                except (MemoryError, OSError, OverflowError):
                    refused = f"{size} bytes announced"
                    break
                buffers.append(joined)
                out.append(joined)
                continue
        out.append(frame.bytes if copy else frame)
    stale = state.pending.pop(peer, None)
    if refused:
        log.error("refused a message from %r: %s", peer, refused)
    elif buffers:
        state.pending[peer] = _Pending(out, buffers, sid)
    if stale is None:
        return None if refused or buffers else out
    if refused or buffers:
        log.error("a stream from %r ended early: passing on what arrived", peer)
        return stale.truncated(
            f"its stream was cut by the next message, {stale.missing()} bytes short"
        )
    log.error(
        "dropped a message from %r: %d of its streamed bytes never arrived",
        peer,
        stale.missing(),
    )
    return out


def _stalled(state: _Streams) -> list[Any] | None:
    """The message of a stream past its deadline, cut short (the socket is empty: its
    next chunk is not even waiting); None if none is."""
    now = time.monotonic()
    for peer, pending in state.pending.items():
        if pending.deadline <= now:
            del state.pending[peer]
            why = (
                f"its stream stalled: no chunk for {STALL_TIMEOUT:g} s, "
                f"{pending.missing()} bytes never arrived"
            )
            log.error("a stream from %r stalled: passing on what arrived (%s)", peer, why)
            return pending.truncated(why)
    return None


def _on_chunk(state: _Streams, peer: bytes, head: bytes, data: Any) -> list[Any] | None:
    """Copy one chunk into its place; the message once it is complete (or broken)."""
    sid, seq = _HEAD.unpack_from(head, 12)
    pending = state.pending.get(peer)
    if pending is None:
        log.warning("dropped a chunk from %r: no stream in progress (stream %d)", peer, sid)
        return None
    size = len(data)
    buffer = pending.buffers[pending.slot]
    room = len(buffer) - pending.filled
    if sid != pending.sid or seq != pending.seq or size == 0 or size > room:
        del state.pending[peer]
        log.error(
            "a stream from %r broke (chunk %d of stream %d, expected chunk %d of stream "
            "%d, %d bytes where %d remain): passing on what arrived, which its digest "
            "will refuse",
            peer,
            seq,
            sid,
            pending.seq,
            pending.sid,
            size,
            room,
        )
        return pending.truncated(f"its stream broke at chunk {seq} of stream {sid}")
    chunk = data.buffer
    memoryview(buffer)[pending.filled : pending.filled + size] = chunk
    pending.hasher.update(chunk)
    pending.seq += 1
    pending.filled += size
    pending.deadline = time.monotonic() + STALL_TIMEOUT
    if size < room:
        return None
    buffer.digest = pending.hasher.hexdigest().encode("ascii")
    pending.hasher = _new_hasher()
    pending.slot += 1
    pending.filled = 0
    if pending.slot < len(pending.buffers):
        return None
    del state.pending[peer]
    return pending.frames
