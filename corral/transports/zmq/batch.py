"""Several small multipart messages carried as one: batches for the parallel hot path.

Every zmq message costs a trip through libzmq's I/O thread on both sides, a wake-up of
the receiving process and a Python receive call, and every frame of it a Python send or
receive call (about 1 µs each). A no-op parallel task crosses six sockets and is copied
twice to the hub, 50-60 frames in all, so on a 2-core machine that per-message cost, not
the work, bounded throughput (~6,000 tasks/s, docs/performance.md). When messages queue
up anyway (a client submitting in a loop, a scheduler draining a burst of replies), the
sender packs the small ones for the same peer into one zmq message of four frames, and
the receiver unpacks them and handles each exactly as if it had come alone.

Layout::

    [*prefix, BATCH, index, body]

``prefix`` is the routing shared by all of them (a ROUTER's peer id, which the ROUTER
consumes on send and prepends on receive). ``index`` is little-endian uint32s: for each
message its frame count, then each frame's length. ``body`` is every frame's bytes, in
order. Message ``i`` unpacks as ``prefix + frames_i``, its frames as plain ``bytes``.

Only messages of at most :data:`MAX_PACKED_MESSAGE` bytes are packed (joining copies
them); a larger one, a big array's buffer, goes on its own, zero-copy, in its place in
the order. The batch adds no signature of its own: every inner message keeps its own HMAC
and goes through the receiver's usual signature, replay and size checks, so a tampered
index can only produce messages that fail them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import chain
from typing import Any

from corral.errors import CorralError

__all__ = [
    "BATCH",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_PACKED_MESSAGE",
    "BatchError",
    "is_batch",
    "pack_batches",
    "pack_batches_counted",
    "unbatch",
]

#: The marker frame, in the place a delimiter or routing id would be.
BATCH = b"<IDS|BATCH>"
#: A batch never holds more messages than this (senders cap theirs far below it).
MAX_BATCH_MESSAGES = 4096
#: Messages larger than this (all frames together) are sent on their own.
MAX_PACKED_MESSAGE = 16 * 1024
#: A batch's body stays under this many bytes: pyzmq sends a bytes frame of 64 KiB or
#: more zero-copy even when asked to copy, and releasing it then wakes pyzmq's garbage
#: collector thread for every batch (that cost the task scheduler a third of its time).
MAX_BATCH_BYTES = 60 * 1024

_BATCH_LEN = len(BATCH)


class BatchError(CorralError, ValueError):
    """A frame list marked as a batch whose index does not describe it."""


def is_batch(frame: Any) -> bool:
    """Whether ``frame`` (bytes or a ``zmq.Frame``) is the batch marker."""
    if len(frame) != _BATCH_LEN:
        return False
    return (frame if isinstance(frame, bytes) else frame.bytes) == BATCH


def pack_batches(
    prefix: Sequence[Any], messages: Sequence[Sequence[Any]], limit: int = 64
) -> list[list[Any]]:
    """The zmq messages that carry ``messages`` (each a frame list) behind ``prefix``, in
    order: batches of up to ``limit`` small messages, and large ones on their own.

    Frames are bytes, ``zmq.Frame`` or 1-D byte memoryviews (pickle's out-of-band
    buffers): anything whose ``len()`` is its size in bytes. A message alone is sent as
    ``prefix + message``: byte for byte what it would have been without batching.
    """
    return [message for message, _ in pack_batches_counted(prefix, messages, limit)]


def pack_batches_counted(
    prefix: Sequence[Any],
    messages: Sequence[Sequence[Any]],
    limit: int = 64,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[tuple[list[Any], int]]:
    """:func:`pack_batches`, each zmq message with how many of ``messages`` it carries
    (a sender that fails part way knows which messages are still unsent). ``max_bytes``
    bounds a batch's body (a sender that wants one message for many replies raises it)."""
    if len(messages) == 1:  # the usual case with many engines: one request each
        return [([*prefix, *messages[0]], 1)]
    out: list[tuple[list[Any], int]] = []
    run: list[Sequence[Any]] = []
    counts: list[int] = []
    run_bytes = 0

    def close_run() -> None:
        if len(run) == 1:
            out.append(([*prefix, *run[0]], 1))
        elif run:
            index = struct.pack(f"<{len(counts)}I", *counts)
            out.append(([*prefix, BATCH, index, b"".join(chain.from_iterable(run))], len(run)))
        run.clear()
        counts.clear()

    for message in messages:
        sizes = list(map(len, message))
        size = sum(sizes)
        if size > MAX_PACKED_MESSAGE:
            close_run()
            run_bytes = 0
            out.append(([*prefix, *message], 1))
            continue
        if run_bytes + size > max_bytes:
            close_run()
            run_bytes = 0
        run.append(message)
        run_bytes += size
        counts.append(len(sizes))
        counts += sizes
        if len(run) >= limit:
            close_run()
            run_bytes = 0
    close_run()
    return out


def unbatch(frames: Sequence[Any], at: int) -> list[list[Any]]:
    """The messages of a batch whose marker is ``frames[at]``, each behind ``frames[:at]``,
    their frames as ``bytes``.

    Raises :class:`BatchError` if the index is not whole uint32s, names an empty message
    or too many, or does not describe the body exactly.
    """
    if len(frames) != at + 3:
        raise BatchError(f"a batch is marker, index and body; got {len(frames) - at} frames")
    index = memoryview(frames[at + 1]).cast("B")
    if not index.nbytes or index.nbytes % 4:
        raise BatchError("a batch index must be a non-empty list of uint32")
    counts = struct.unpack(f"<{index.nbytes // 4}I", index)
    body = frames[at + 2]
    if body.__class__ is not bytes:  # a zmq.Frame: one copy, then slices of it
        body = bytes(body)
    end = len(body)
    prefix = list(frames[:at])
    out: list[list[Any]] = []
    offset = 0
    i = 0
    n = len(counts)
    while i < n:
        count = counts[i]
        i += 1
        if count == 0 or i + count > n:
            raise BatchError("a batch index names an empty or truncated message")
        if len(out) >= MAX_BATCH_MESSAGES:
            raise BatchError(f"a batch of more than {MAX_BATCH_MESSAGES} messages")
        message = prefix.copy()
        for size in counts[i : i + count]:
            stop = offset + size
            if stop > end:
                raise BatchError("a batch index describes more bytes than its body holds")
            message.append(body[offset:stop])
            offset = stop
        i += count
        out.append(message)
    if offset != end:
        raise BatchError(f"a batch body has {end - offset} bytes its index does not describe")
    return out
