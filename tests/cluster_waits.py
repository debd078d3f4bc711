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


def wait_started(fifo: Any, timeout: float = 120.0) -> None:
    """Block until a task wrote a byte to the FIFO ``fifo`` (made with ``os.mkfifo``),
    i.e. until it runs; fail after ``timeout`` rather than hang on a task that never
    started. Both ends block until the other is there: no polling, no sleeping."""
    import os
    import select

    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"the task did not start within {timeout} s"
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


#: A task (sent by value) that announces on the FIFO at ``path`` that it runs, then
#: sleeps ``seconds``.
announce_then_sleep = lambda path, seconds: (  # noqa: E731
    open(path, "wb").write(b"x"),
    __import__("time").sleep(seconds),
)
