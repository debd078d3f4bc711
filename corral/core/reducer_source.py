"""Where :mod:`corral.core.serialize` finds the plugins' reducers when it first needs them.

A module of its own, importing nothing, so that processes which must start fast (engines
import the serializer only while they wait for registration) can name the source at
import time without importing the serializer. ``core`` knows no plugins: the plugins
layer hands the source down (:mod:`corral.plugins.serializers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["set_reducer_source", "take_reducer_source"]

_source: Callable[[], Mapping[type, Any]] | None = None


def set_reducer_source(source: Callable[[], Mapping[type, Any]] | None) -> None:
    """Where to find more reducers when an object will not pickle without them.

    Processes that load plugins at start (kernels, the ``corral`` command) register the
    plugins' reducers at once. Clients and engines do not load plugins at start (that costs
    them ~100 ms); they name a source here instead, which is asked once, the first time the
    standard pickler refuses an object, and the object is pickled again with what it
    returned.

    .. versionadded:: 0.1
    """
    global _source
    _source = source


def take_reducer_source() -> Callable[[], Mapping[type, Any]] | None:
    """The source, forgotten as it is taken: it is asked at most once."""
    global _source
    source, _source = _source, None
    return source
