"""Giving memory freed after a burst of work back to the operating system.

A long-lived server process (a controller's hub or scheduler) allocates for every message
in flight, and a burst of 5,000 queued tasks leaves megabytes of freed blocks behind.
glibc keeps freed memory in its heaps (one per thread that allocated: libzmq's I/O
thread allocates the messages, the main thread frees them) and rarely returns it, so
the process's resident size creeps upward over the bursts even though the live data
stays flat. ``malloc_trim(0)`` hands free pages of every heap back to the system; it is
what measurably keeps a controller's RSS flat over 100,000 tasks.

:class:`HeapTrimmer` calls it at most every ``interval`` seconds while a process is
busy, and once more soon after it goes idle. Where there is no glibc (macOS, Windows,
musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["HeapTrimmer", "malloc_trim"]

log = logging.getLogger("corral.core.heap")


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
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

    Call :meth:`busy` after handling messages and :meth:`tick` on every pass of the loop;
    poll no longer than :meth:`timeout` so the trim after the last burst happens even if
    nothing else arrives. The first message after a trim starts an ``interval``-second
    countdown, so a trim (a few milliseconds) never runs more often than that.
    """

    __slots__ = ("interval", "_due", "enabled", "trims")

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.enabled = _TRIM is not None
        self._due: float | None = None  # None: nothing freed since the last trim
        self.trims = 0

    def busy(self, now: float) -> None:
        """Messages were handled at ``now`` (monotonic seconds)."""
        if self._due is None and self.enabled:
            self._due = now + self.interval

    def timeout(self, now: float) -> float | None:
        """Seconds until a trim is due, or None when none is pending."""
        return None if self._due is None else max(0.0, self._due - now)

    def tick(self, now: float) -> None:
        """Trim if one is due."""
        if self._due is not None and now >= self._due:
            self._due = None
            malloc_trim()
            self.trims += 1
