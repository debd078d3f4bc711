"""Waiting on a client's view of the engines without polling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def await_ids(
    client: Any, predicate: Callable[[list[int]], bool], timeout: float = 60.0
) -> list[int]:
    """Wait until the client's engine ids satisfy ``predicate``; the ids.

    Woken by every registration and unregistration the client hears of (the condition
    its I/O thread notifies), so a test awaits the event instead of sleeping. The
    client's private condition: the public ``wait_for_engines`` only counts upwards, and
    a restart test must see one engine leave and another join.
    """
    changed = client._engines_changed
    with changed:
        ok = changed.wait_for(lambda: predicate(client.ids), timeout)
        assert ok, f"engine ids stayed {client.ids}"
        return list(client.ids)
