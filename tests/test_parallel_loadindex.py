"""The task scheduler's load index (controller/loadindex.py): the same answers as a scan
over every engine, ties served in turn, and no work that grows with the engine count."""

from __future__ import annotations

import random

import pytest

from corral.plugins.parallel.controller.loadindex import LoadIndex


def scan_minimum(loads: dict[bytes, int], hwm: int) -> int | None:
    """The least load among engines with room, by looking at every engine."""
    room = [v for v in loads.values() if not hwm or v < hwm]
    return min(room) if room else None


@pytest.mark.parametrize("hwm", [0, 1, 3])
def test_the_index_agrees_with_a_scan_through_random_changes(hwm: int) -> None:
    rng = random.Random(hwm)
    index = LoadIndex()
    model: dict[bytes, int] = {}
    for step in range(5000):
        action = rng.random()
        if action < 0.05 or not model:
            engine = f"e{step}".encode()
            index[engine] = 0
            model[engine] = 0
        elif action < 0.08:
            engine = rng.choice(sorted(model))
            del index[engine]
            del model[engine]
        elif action < 0.55:
            engine = rng.choice(sorted(model))
            index[engine] += 1
            model[engine] += 1
        else:
            engine = rng.choice(sorted(model))
            if model[engine]:
                index[engine] -= 1
                model[engine] -= 1
        index.check()
        chosen = index.least(hwm)
        expected = scan_minimum(model, hwm)
        if expected is None:
            assert chosen is None
        else:
            assert chosen is not None and model[chosen] == expected
        assert dict(index) == model


def test_ties_are_served_in_turn() -> None:
    index = LoadIndex()
    engines = [b"a", b"b", b"c"]
    for engine in engines:
        index[engine] = 0
    served = []
    for _ in range(6):  # dispatch then answer: the loads stay tied at 0
        engine = index.least()
        assert engine is not None
        served.append(engine)
        index[engine] += 1
        index[engine] -= 1
    assert served == engines + engines


def test_a_burst_spreads_evenly_and_the_bound_holds() -> None:
    index = LoadIndex()
    for i in range(10):
        index[f"e{i}".encode()] = 0
    for _ in range(25):
        engine = index.least(hwm=3)
        assert engine is not None
        index[engine] += 1
    assert sorted(index.values()) == [2] * 5 + [3] * 5
    for _ in range(5):
        engine = index.least(hwm=3)
        assert engine is not None
        index[engine] += 1
    assert index.least(hwm=3) is None  # every engine holds hwm tasks
    assert index.least() is not None  # no bound: still an answer


def test_negative_loads_and_unknown_engines_are_refused() -> None:
    index = LoadIndex()
    with pytest.raises(ValueError):
        index[b"a"] = -1
    with pytest.raises(KeyError):
        del index[b"nobody"]
    assert index.get(b"nobody") is None and index.get(b"nobody", 7) == 7
    assert index.least() is None


def test_a_huge_load_on_one_engine_keeps_one_bucket() -> None:
    index = LoadIndex()
    index[b"a"] = 0
    for _ in range(100_000):
        index[b"a"] += 1
    assert len(index._buckets) == 1  # not a bucket per level passed through
    assert index.least() == b"a"


def test_the_work_per_pick_does_not_grow_with_the_engines() -> None:
    """Count bucket lookups (not time): at 10,000 busy engines a steady stream of
    dispatch and reply costs as few lookups per pick as at 2."""

    class Counting(dict):  # type: ignore[type-arg]
        gets = 0

        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            Counting.gets += 1
            return super().get(key, default)

    def lookups_per_pick(n: int) -> float:
        index = LoadIndex()
        index._buckets = Counting()  # type: ignore[assignment]
        engines = [f"e{i}".encode() for i in range(n)]
        for engine in engines:
            index[engine] = 0
        for _ in range(4 * n):  # everyone busy: loads 4
            engine = index.least(hwm=8)
            assert engine is not None
            index[engine] += 1
        Counting.gets = 0
        rng = random.Random(1)
        picks = 2000
        for _ in range(picks):
            index[rng.choice(engines)] -= 1  # a reply somewhere
            engine = index.least(hwm=8)
            assert engine is not None
            index[engine] += 1
        return Counting.gets / picks

    small, large = lookups_per_pick(2), lookups_per_pick(10_000)
    assert large <= small + 1, (small, large)
