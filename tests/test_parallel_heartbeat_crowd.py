"""The hub's heartbeat bookkeeping (controller/heartbeat.py) when a crowd registers:
engines added within one beat earn a grace that grows with their number, and a silent
engine still dies once that grace is spent."""

from __future__ import annotations

from corral.plugins.parallel.controller.heartbeat import (
    CROWD_PER_BEAT,
    MAX_CROWD_GRACE,
    HeartMonitor,
)


def silent_beats_survived(monitor: HeartMonitor, uuid: bytes) -> int:
    """Beats ``uuid`` stays alive without answering any."""
    now = 0.0
    survived = 0
    while True:
        _, dead = monitor.tick(now)
        if uuid in dead:
            return survived
        survived += 1
        now += monitor.period


def test_a_lone_engine_gets_one_beat_of_grace() -> None:
    monitor = HeartMonitor(1.0, 2)
    monitor.add(b"lone")
    assert silent_beats_survived(monitor, b"lone") == 3  # misses + the grace of one


def test_a_crowd_earns_a_longer_grace_and_then_dies_anyway() -> None:
    monitor = HeartMonitor(1.0, 2)
    crowd = [f"e{i}".encode() for i in range(4 * CROWD_PER_BEAT)]
    for uuid in crowd:
        monitor.add(uuid)
    assert silent_beats_survived(monitor, crowd[0]) == 3  # the first came alone
    fresh = HeartMonitor(1.0, 2)
    for uuid in crowd:
        fresh.add(uuid)
    # The last of 1,000 added in one beat: 4 more beats of grace.
    assert silent_beats_survived(fresh, crowd[-1]) == 3 + 4


def test_the_grace_is_bounded_and_counts_per_beat() -> None:
    monitor = HeartMonitor(1.0, 2)
    for i in range(CROWD_PER_BEAT * (MAX_CROWD_GRACE + 10)):
        monitor.add(f"e{i}".encode())
    last = f"e{CROWD_PER_BEAT * (MAX_CROWD_GRACE + 10) - 1}".encode()
    assert monitor._last[last] == monitor.beat + 1 + MAX_CROWD_GRACE
    monitor.tick(0.0)  # a new beat: the count starts again
    monitor.add(b"late")
    assert monitor._last[b"late"] == monitor.beat + 1


def test_an_echo_keeps_a_crowd_engine_alive() -> None:
    monitor = HeartMonitor(1.0, 2)
    monitor.add(b"a")
    now = 0.0
    for _ in range(10):
        beat, dead = monitor.tick(now)
        assert not dead
        assert monitor.pong([b"a", beat])
        now += 1.0
