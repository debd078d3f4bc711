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
