"""HeapTrimmer: freed memory goes back to the system, at a bounded rate."""

from __future__ import annotations

import sys

import pytest

from corral.core.heap import HeapTrimmer, malloc_trim

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not malloc_trim(),
    reason="malloc_trim is glibc's (Linux); elsewhere the trimmer does nothing",
)


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@glibc
def test_trim_returns_freed_small_blocks() -> None:
    """Blocks freed in the middle of the heap stay resident until a trim.

    1 KB blocks, as libzmq's message buffers: too big for Python's own small-object
    arenas, so they come from glibc's heap. Every 50th is kept, so no stretch of the heap
    is ever free at its top, where glibc would give it back by itself.
    """
    keep = []
    blocks = []
    for index in range(60_000):  # ~60 MB
        block = bytes(1000) + index.to_bytes(8, "little")
        (keep if index % 50 == 0 else blocks).append(block)
    del blocks
    before = _rss_kib()
    assert malloc_trim()
    after = _rss_kib()
    assert before - after > 10_000, (before, after)  # more than 10 MB given back
    assert len(keep) == 1_200


def test_trimmer_is_rate_limited_and_finishes_after_the_last_burst() -> None:
    trimmer = HeapTrimmer(interval=5.0)
    if not trimmer.enabled:
        pytest.skip("no malloc_trim here")
    assert trimmer.timeout(0.0) is None  # nothing handled: no wake-up needed
    trimmer.busy(10.0)
    assert trimmer.timeout(11.0) == pytest.approx(4.0)
    for now in (10.5, 12.0, 14.9):  # busy all along: not yet
        trimmer.busy(now)
        trimmer.tick(now)
    assert trimmer.trims == 0
    trimmer.tick(15.0)
    assert trimmer.trims == 1 and trimmer.timeout(15.0) is None
    trimmer.tick(30.0)  # idle since: nothing more to give back
    assert trimmer.trims == 1
    trimmer.busy(31.0)
    trimmer.tick(36.0)
    assert trimmer.trims == 2


def test_trimmer_trims_when_a_burst_ends_but_not_more_than_once_a_gap() -> None:
    trimmer = HeapTrimmer(interval=5.0, min_gap=1.0)
    if not trimmer.enabled:
        pytest.skip("no malloc_trim here")
    trimmer.idle(10.0)  # idle without work: nothing to give back
    assert trimmer.trims == 0
    trimmer.busy(10.0)
    trimmer.idle(10.2)  # the burst is over
    assert trimmer.trims == 1
    trimmer.busy(10.3)
    trimmer.idle(10.5)  # another burst, too soon after the last trim: later
    assert trimmer.trims == 1
    trimmer.idle(11.3)
    assert trimmer.trims == 2


def test_a_big_burst_is_trimmed_at_once_even_inside_the_gap() -> None:
    trimmer = HeapTrimmer(interval=5.0, min_gap=1.0, big=100)
    if not trimmer.enabled:
        pytest.skip("no malloc_trim here")
    trimmer.busy(10.0, 1)
    trimmer.idle(10.1)
    assert trimmer.trims == 1
    trimmer.busy(10.2, 5)  # a small burst right after: waits for the gap
    trimmer.idle(10.3)
    assert trimmer.trims == 1
    trimmer.busy(10.4, 150)  # a big one: its memory goes back as soon as it is answered
    trimmer.busy(10.5, 0)
    trimmer.idle(10.5)
    assert trimmer.trims == 2
