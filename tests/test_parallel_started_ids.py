"""engine/started.py: the recent started ids an engine answers abort requests with."""

from __future__ import annotations

from corral.plugins.parallel.engine.started import StartedIds


def test_started_ids_remember_the_most_recent_and_forget_the_oldest() -> None:
    ids = StartedIds(keep=3)
    for msg_id in ("a", "b", "c"):
        ids.add(msg_id)
    assert "a" in ids and len(ids) == 3
    ids.add("d")
    assert "a" not in ids and all(m in ids for m in "bcd") and len(ids) == 3
    ids.add("b")  # seen again: kept once
    assert len(ids) == 3


def test_started_ids_stay_bounded_and_keep_the_newest() -> None:
    """Trimmed in chunks (one at a time walks the dict's holes): never more than keep,
    and the newest keep - keep // 64 always there."""
    ids = StartedIds(keep=640)
    for n in range(10_000):
        ids.add(str(n))
        assert len(ids) <= 640
    assert all(str(n) in ids for n in range(10_000 - 630, 10_000))
    assert "0" not in ids
