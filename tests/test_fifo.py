"""corral.core.fifo.trim_oldest: a dict bounded by dropping its oldest entries in chunks."""

from __future__ import annotations

import time

from corral.core.fifo import trim_oldest


def test_the_oldest_go_first_and_the_bound_holds() -> None:
    d: dict[int, int] = {}
    for i in range(10_000):
        d[i] = i
        trim_oldest(d, 1000, slack=100)
        assert len(d) <= 1100
    assert len(d) >= 1000
    assert list(d) == list(range(10_000 - len(d), 10_000))  # the newest, in order


def test_default_slack_and_small_limits() -> None:
    d = {i: i for i in range(5)}
    trim_oldest(d, 3)  # slack 1: 5 > 3 + 1, down to 3
    assert list(d) == [2, 3, 4]
    trim_oldest(d, 3)
    assert list(d) == [2, 3, 4]


def test_eviction_cost_does_not_grow_with_the_evicted() -> None:
    """The cost this module exists for: one-at-a-time eviction walks every hole left
    since the dict's last resize. Compare 20,000 insertions into a full dict of 65,536
    with the same insertions and no eviction at all (generous 20x margin)."""
    limit, n = 65_536, 20_000

    def run(evict: bool) -> float:
        d = {i: None for i in range(limit)}
        start = time.perf_counter()
        for i in range(limit, limit + n):
            d[i] = None
            if evict:
                trim_oldest(d, limit)
        return time.perf_counter() - start

    base = min(run(False) for _ in range(3))
    trimmed = min(run(True) for _ in range(3))
    assert trimmed < 20 * base + 0.05, (trimmed, base)
