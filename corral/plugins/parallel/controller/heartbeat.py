"""The hub's heartbeat monitor: who answered the last beats, who has missed too many.

Every ``period`` seconds the hub publishes a beat (the beat number as ASCII; numbers start
at the hub's start time in microseconds, so each hub's beats differ) on
``hb_ping``; each engine's heartbeat device echoes it from a DEALER whose identity is the
engine's uuid to ``hb_pong``. An engine that let ``misses`` consecutive beats go
unanswered is dead. The engine side echoes in C with the GIL released, so a task spinning
in Python never looks like a death.

This class holds only the bookkeeping (pure, no sockets) so it is cheap to test; the hub
owns the sockets and calls :meth:`pong` and :meth:`tick`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["HeartMonitor"]

#: Beats are ASCII integers; anything longer is not a beat.
_MAX_BEAT_DIGITS = 20
#: Engines registering within one beat that earn every one of them a beat of grace.
CROWD_PER_BEAT = 250
#: At most this many beats of grace for a crowd.
MAX_CROWD_GRACE = 30


class HeartMonitor:
    """Tracks the last beat each engine echoed and declares the silent ones dead.

    A newly added engine is credited with the current beat plus one, a grace of one
    period for its heartbeat device to connect, plus one more beat per
    :data:`CROWD_PER_BEAT` engines added during the current beat: when thousands register
    at once, their heartbeat connections queue behind each other's handshakes (and the
    hub's loop behind their registrations), and an engine must not die of that.
    """

    __slots__ = ("period", "misses", "beat", "next_at", "_last", "_added", "_added_beat")

    def __init__(self, period: float, misses: int) -> None:
        if period <= 0 or misses < 1:
            raise ValueError("heartbeat period must be > 0 and misses >= 1")
        self.period = float(period)
        self.misses = int(misses)
        # Beats of one hub count up from the time it started (in microseconds), so an
        # engine that outlived a controller tells a restarted hub's beats from the old
        # ones by the jump, and registers again.
        self.beat = time.time_ns() // 1000
        self.next_at = time.monotonic()
        self._last: dict[bytes, int] = {}
        self._added = 0  # engines added during beat ``_added_beat``
        self._added_beat = self.beat

    def __len__(self) -> int:
        return len(self._last)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._last

    def add(self, uuid: bytes) -> None:
        """Start watching ``uuid``, with a grace that grows with the crowd registering."""
        if self._added_beat != self.beat:
            self._added_beat, self._added = self.beat, 0
        self._added += 1
        grace = min(self._added // CROWD_PER_BEAT, MAX_CROWD_GRACE)
        self._last[uuid] = self.beat + 1 + grace

    def remove(self, uuid: bytes) -> None:
        """Stop watching ``uuid`` (unregistered or declared dead)."""
        self._last.pop(uuid, None)

    def pong(self, frames: Sequence[Any]) -> bool:
        """Credit an echo ``[uuid, beat]`` from ``hb_pong``; False if it is not a valid one."""
        if len(frames) != 2:
            return False
        uuid = bytes(frames[0])
        last = self._last.get(uuid)
        if last is None:
            return False
        raw = bytes(frames[1])
        if not (0 < len(raw) <= _MAX_BEAT_DIGITS and raw.isdigit()):
            return False
        beat = int(raw)
        if beat > self.beat:
            return False  # a beat we never sent: forged
        if beat > last:
            self._last[uuid] = beat
        return True

    def timeout(self, now: float) -> float:
        """Seconds until the next beat is due (0 if overdue)."""
        return max(0.0, self.next_at - now)

    def tick(self, now: float) -> tuple[bytes, list[bytes]]:
        """Start the next beat: returns its frame and the engines that just died.

        An engine is dead when the ``misses`` beats before this one all went unanswered.
        """
        self.beat += 1
        limit = self.beat - 1 - self.misses
        dead = [uuid for uuid, last in self._last.items() if last <= limit]
        for uuid in dead:
            del self._last[uuid]
        self.next_at += self.period
        if self.next_at <= now:  # fell behind (a stalled host): no burst of beats
            self.next_at = now + self.period
        return str(self.beat).encode("ascii"), dead
