"""``publish_data``: ipyparallel's data publication, for code running on an engine.

A task calls ``publish_data({"progress": 0.5})`` as often as it likes; each call travels
to the client on the engine's output channel, and the task's result merges them into
``ar.data`` (one dict per task: later keys win), as ipyparallel's
``ipyparallel.datapub.publish_data`` does. Values are pickled like task results (large
buffers out of band), so arrays are fine. Useful to watch a long task's progress.

This module imports nothing heavy: it only holds the engine's hook.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["install", "publish_data"]

_publisher: list[Callable[[dict[str, Any]], None]] = []


def install(publisher: Callable[[dict[str, Any]], None]) -> None:
    """Called by the engine: where :func:`publish_data` sends (one engine per process)."""
    _publisher[:] = [publisher]


def publish_data(data: Mapping[str, Any]) -> None:
    """Publish ``data`` (a dict) to the client, merged into the running task's ``ar.data``.

    Raises ``RuntimeError`` outside a corral engine (there is no client to send it to).
    """
    if not _publisher:
        raise RuntimeError("publish_data() works in code running on a corral engine")
    if not isinstance(data, Mapping):
        raise TypeError(f"publish_data takes a dict, not {type(data).__name__}")
    _publisher[0](dict(data))
