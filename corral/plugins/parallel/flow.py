"""Flow control for large results: the controller's memory stays bounded.

A queue forwards replies as fast as engines produce them. When a client stops reading
(stuck in user code, suspended, on a slow link), libzmq keeps everything sent to it in
the queue's memory; when the hub's task database writes more slowly than engines answer,
the copies pile up in the queue's pipe to the hub and in the hub. Measured before this
module: 100 results of 10 MB for a stopped client took a queue to 1 GB and the hub to
900 MB.

Three rules bound it, all on messages whose buffers reach :data:`TRACK_FROM` bytes (a
small message is never held back or changed):

* a queue sends a large message with tracked frames and counts the bytes libzmq has
  not sent yet, per client and to the hub (:class:`InFlight`);
* a reply for a client that already has :data:`CLIENT_BOUND` bytes unsent goes out
  **stored**: without its buffers, behind the :data:`STORED` marker frame. The hub
  keeps every reply's buffers in the task database, so the client fetches them from
  there when it reads the stub (and checks them against the digests the engine
  signed, which the stub still carries). Only with a database that keeps buffers on
  disk; otherwise nothing is left out;
* a queue stops reading engine replies while more than :data:`MONITOR_BOUND` bytes of
  copies for the hub are unsent, and the hub stops reading copies while more than
  ``MONITOR_BOUND`` bytes wait for the database writer: the backlog stays with the
  engines that produced it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import zmq

__all__ = [
    "CLIENT_BOUND",
    "MONITOR_BOUND",
    "STORED",
    "TRACK_FROM",
    "InFlight",
    "large_bytes",
    "tracked",
]

#: Buffers at least this large are tracked (smaller ones cost too little to matter, and
#: tracking has a cost: a zero-copy frame released through pyzmq's collector thread).
TRACK_FROM = 1 << 20
#: The default bound (``[controller] memory_bound_mb``; the controller's ``--memory-bound-mb``;
#: ``CORRAL_FLOW_BOUND_MB`` in its environment when neither is given), in bytes: unsent
#: bytes for one client beyond which its large replies go out stored, and unsent (queue)
#: or unwritten (hub) bytes of copies beyond which reading pauses.
CLIENT_BOUND = int(float(os.environ.get("CORRAL_FLOW_BOUND_MB", "32")) * (1 << 20))
MONITOR_BOUND = CLIENT_BOUND
#: Routing frame in front of a stored reply (before the delimiter: a client that does
#: not know it sees an extra identity, never a different message).
STORED = b"<IDS|STORED>"


def large_bytes(frames: Sequence[Any], start: int) -> int:
    """Total size of the frames from ``start`` on that reach :data:`TRACK_FROM`."""
    total = 0
    for frame in frames[start:]:
        size = len(frame)
        if size >= TRACK_FROM:
            total += size
    return total


def tracked(frames: list[Any], start: int) -> tuple[list[Any], list[Any]]:
    """``frames`` with each large frame from ``start`` on wrapped in a tracked zero-copy
    frame (no payload copied), and the trackers of those frames."""
    out = list(frames)
    trackers = []
    for index in range(start, len(out)):
        frame = out[index]
        if len(frame) >= TRACK_FROM:
            data = frame.buffer if isinstance(frame, zmq.Frame) else frame
            wrapped = zmq.Frame(data, track=True, copy=False)
            out[index] = wrapped
            trackers.append(wrapped.tracker)
    return out, trackers


class InFlight:
    """Bytes of tracked frames handed to libzmq for one peer and not sent yet."""

    __slots__ = ("_items", "_bytes")

    def __init__(self) -> None:
        self._items: list[tuple[Any, int]] = []
        self._bytes = 0

    def add(self, trackers: Sequence[Any], nbytes: int) -> None:
        """``nbytes`` went out in frames followed by ``trackers``."""
        if trackers:
            self._items.append((trackers, nbytes))
            self._bytes += nbytes

    @property
    def bytes(self) -> int:
        """The bytes still unsent (settling what libzmq has finished with)."""
        if self._items:
            left = []
            for item in self._items:
                if all(t.done for t in item[0]):
                    self._bytes -= item[1]
                else:
                    left.append(item)
            self._items = left
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._items)
