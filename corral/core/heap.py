"""Giving memory freed after a burst of work back to the operating system.

A long-lived server process (a controller's hub or scheduler) allocates for every message
in flight, and a burst of 5,000 queued tasks leaves megabytes of freed blocks behind.
glibc keeps freed memory in its heaps (one per thread that allocated: libzmq's I/O
thread allocates the messages, the main thread frees them) and rarely returns it, so
the process's resident size creeps upward over the bursts even though the live data
stays flat. ``malloc_trim(0)`` hands free pages of every heap back to the system; it is
what measurably keeps a controller's RSS flat over 100,000 tasks.

:class:`HeapTrimmer` calls it when a burst of work is over (the caller says when: no
request outstanding, say): at once after a big burst (``big`` requests in flight at its
peak: that is what leaves megabytes behind), otherwise at most once per ``min_gap``
seconds; and every ``interval`` seconds during work that never pauses. Where there is no
glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

__all__ = ["HeapTrimmer", "malloc_trim"]

log = logging.getLogger("corral.core.heap")


def _find_malloc_trim() -> Callable[[int], int] | None:
    # The C library this process already runs on, not ctypes.util.find_library("c"):
    # that runs `ldconfig -p` in a subprocess, 4-25 ms on every controller start.
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # Windows has no "this process" library handle
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _find_malloc_trim()


def malloc_trim() -> bool:
    """Return free heap memory to the system; whether this C library can (glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer:
    """Rate-limited :func:`malloc_trim` for a poll loop.

    Call :meth:`busy` after handling messages, :meth:`idle` when the work in hand is done,
    and :meth:`tick` on every pass of the loop; poll no longer than :meth:`timeout`. The
    first message after a trim starts an ``interval``-second countdown (the trim during
    endless work); going idle trims at once after a burst of ``big`` or more requests in
    flight, or if the last trim is ``min_gap`` seconds old. A trim costs a few
    milliseconds, so none of this can make it a measurable load.
    """

    __slots__ = ("interval", "min_gap", "big", "_due", "_last", "_peak", "enabled", "trims")

    def __init__(self, interval: float = 5.0, min_gap: float = 1.0, big: int = 256) -> None:
        self.interval = interval
        self.min_gap = min_gap
        self.big = big
        self.enabled = _TRIM is not None
        self._due: float | None = None  # None: nothing freed since the last trim
        self._last = float("-inf")
        self._peak = 0  # most requests in flight since the last trim
        self.trims = 0

    def busy(self, now: float, in_flight: int = 0) -> None:
        """Messages were handled at ``now`` (monotonic seconds), ``in_flight`` requests
        are outstanding."""
        if self._due is None and self.enabled:
            self._due = now + self.interval
        if in_flight > self._peak:
            self._peak = in_flight

    def timeout(self, now: float) -> float | None:
        """Seconds until a trim is due, or None when none is pending."""
        return None if self._due is None else max(0.0, self._due - now)

    def idle(self, now: float) -> None:
        """The work in hand is done: trim now after a big burst, else unless a trim ran
        less than min_gap ago."""
        if self._due is not None and (self._peak >= self.big or now - self._last >= self.min_gap):
            self._trim(now)

    def tick(self, now: float) -> None:
        """Trim if one is due."""
        if self._due is not None and now >= self._due:
            self._trim(now)

    def _trim(self, now: float) -> None:
        self._due = None
        self._last = now
        self._peak = 0
        malloc_trim()
        self.trims += 1
