"""Bounded insertion-ordered dicts: drop the oldest entries in chunks, not one at a time.

Why: ``del d[next(iter(d))]`` on a plain dict looks O(1) but is not. Deleting a key leaves
a hole in the dict's entry array, and iteration walks over every hole before the first
live entry; holes go away only when the dict is resized. A dict kept at its bound by
evicting the oldest key after each insertion therefore pays a walk over all the keys
evicted since the last resize, thousands of them: measured at 65,536 entries, 80 us per
insertion against 0.13 us without eviction. Evicting a chunk at a time walks the holes
once per chunk.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from itertools import islice
from typing import Any

__all__ = ["trim_oldest"]


def trim_oldest(mapping: MutableMapping[Any, Any], limit: int, slack: int | None = None) -> None:
    """Once ``mapping`` holds more than ``limit + slack`` entries, drop its oldest down to
    ``limit`` (``slack`` default: ``limit // 64``, at least 1). So the dict holds at most
    ``limit + slack`` entries and each insertion costs O(1) amortized. ``mapping`` is a
    dict or a mapping kept in one, such as a ``weakref.WeakValueDictionary``."""
    if slack is None:
        slack = max(1, limit // 64)
    excess = len(mapping) - limit
    if excess <= slack:
        return
    for key in list(islice(mapping, excess)):
        del mapping[key]
