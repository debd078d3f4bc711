"""A third-party distribution of the kind tests install: a scheduling policy and a
serializer, registered through ``corral_schedulers`` and ``corral_serializers``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


def last_candidate(loads: Sequence[int], last_used: Sequence[float], rng: Any, cursor: int) -> int:
    """Every task to the last engine with room: easy to tell apart from least-load."""
    return len(loads) - 1


def steal_leastload(loads: Sequence[int], last_used: Sequence[float], rng: Any, cursor: int) -> int:
    raise AssertionError("a plugin must not take over a built-in policy's name")


class Thermometer:
    """Holds a lock, so the standard pickler (and cloudpickle) refuse it."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees
        self.lock = threading.Lock()


def _rebuild(degrees: float) -> Thermometer:
    return Thermometer(degrees)


def _reduce(thermometer: Thermometer) -> tuple[Any, ...]:
    return _rebuild, (thermometer.degrees,)


def corral_schedulers() -> dict[str, Any]:
    return {"toy-last": last_candidate, "leastload": steal_leastload}


def corral_serializers() -> dict[type, Any]:
    return {Thermometer: _reduce}
