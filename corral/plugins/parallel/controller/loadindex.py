"""The task scheduler's engine loads, indexed so the least loaded engine is found in O(1).

Why: ``leastload`` scanned every live engine per task, stopping early only at an idle
one. With a thousand engines all busy (every engine holds its prefetch window), that scan
is a thousand dict lookups per task, and the scheduler's cost per task grows with the
cluster. Here engines sit in *buckets by load* (bucket ``k`` holds the engines with ``k``
outstanding tasks), each bucket an ordered set, plus a cursor on the lowest bucket that
may be non-empty. Giving an engine a task or taking one back moves it between two
neighbouring buckets (O(1)); the least loaded engine is the first of the lowest non-empty
bucket, and the cursor only walks up as far as loads went up, so it is amortized O(1).

Ties: an engine that changes load goes to the *end* of its new bucket, so among equally
loaded engines the one that changed load longest ago comes first: every engine of a tie
is served in turn (round-robin), as the scan's cursor did, without a cursor.

:class:`LoadIndex` is a mapping ``engine -> load`` (what the scheduler's ``load`` dict
was), so ``index[engine] += 1`` keeps the buckets right; :meth:`least` is the query.

Engines *set aside* (:meth:`set_aside`: the scheduler's engines busy with direct work,
see :class:`~.queues.TaskScheduler`) keep their load but leave the buckets for a second
index of their own: :meth:`least` answers from the others while there are any, and from
the set-aside ones only when every engine is set aside.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import overload

__all__ = ["LoadIndex"]


class LoadIndex(MutableMapping[bytes, int]):
    """``engine -> outstanding tasks``, bucketed by load for :meth:`least`.

    Buckets are :class:`~collections.OrderedDict` (not plain dicts): removing the first
    key of a plain dict leaves a hole that the next ``next(iter(d))`` walks over, so a
    bucket emptied from the front would cost O(n) per lookup; an ordered dict's linked
    list gives the first key in O(1) whatever was removed before it.
    """

    __slots__ = ("_load", "_buckets", "_low", "_aside")

    def __init__(self) -> None:
        self._load: dict[bytes, int] = {}
        #: load -> the engines with that load; only non-empty buckets are kept (a list
        #: indexed by load would hold a bucket per level up to the highest load, a million
        #: of them for one engine given a million tasks with no prefetch bound)
        self._buckets: dict[int, OrderedDict[bytes, None]] = {}
        #: no bucket below this one holds an engine (it may itself be empty)
        self._low = 0
        #: the engines set aside, with their loads (None until one is)
        self._aside: LoadIndex | None = None

    # -- the mapping ---------------------------------------------------------------------

    def __getitem__(self, engine: bytes) -> int:
        try:
            return self._load[engine]
        except KeyError:
            if self._aside is None:
                raise
            return self._aside._load[engine]

    def __setitem__(self, engine: bytes, load: int) -> None:
        if load < 0:
            raise ValueError(f"a load is never negative (engine {engine!r}: {load})")
        old = self._load.get(engine)
        if old == load:
            return
        if old is None and self._aside is not None and engine in self._aside._load:
            self._aside[engine] = load
            return
        buckets = self._buckets
        if old is not None:
            self._leave(old, engine)
        bucket = buckets.get(load)
        if bucket is None:
            bucket = buckets[load] = OrderedDict()
        bucket[engine] = None
        self._load[engine] = load
        if load < self._low:
            self._low = load

    def __delitem__(self, engine: bytes) -> None:
        if engine not in self._load and self._aside is not None and engine in self._aside:
            del self._aside[engine]
            return
        self._leave(self._load.pop(engine), engine)

    def _leave(self, load: int, engine: bytes) -> None:
        bucket = self._buckets[load]
        del bucket[engine]
        if not bucket:
            del self._buckets[load]

    def __contains__(self, engine: object) -> bool:
        return engine in self._load or (self._aside is not None and engine in self._aside._load)

    def __iter__(self) -> Iterator[bytes]:
        if self._aside is None:
            return iter(self._load)
        return itertools.chain(self._load, self._aside._load)

    def __len__(self) -> int:
        return len(self._load) + (0 if self._aside is None else len(self._aside._load))

    @overload  # type: ignore[override]
    def get(self, engine: bytes, default: int) -> int: ...
    @overload
    def get(self, engine: bytes, default: None = None) -> int | None: ...

    def get(self, engine: bytes, default: int | None = None) -> int | None:
        """The load of ``engine`` (``default`` if unknown): the dict's, without a try."""
        load = self._load.get(engine)
        if load is None:
            if self._aside is not None:
                return self._aside._load.get(engine, default)
            return default
        return load

    # -- engines set aside -----------------------------------------------------------------

    def set_aside(self, engine: bytes, aside: bool) -> None:
        """Set ``engine`` aside (``aside`` true) or bring it back, with its load:
        :meth:`least` picks an engine set aside only when no other is left. An engine
        not in the index is ignored."""
        if aside:
            load = self._load.get(engine)
            if load is None:
                return
            del self[engine]
            if self._aside is None:
                self._aside = LoadIndex()
            self._aside[engine] = load
        elif self._aside is not None:
            load = self._aside._load.get(engine)
            if load is None:
                return
            del self._aside[engine]
            self[engine] = load

    def is_aside(self, engine: bytes) -> bool:
        """Whether ``engine`` is set aside."""
        return self._aside is not None and engine in self._aside._load

    @property
    def aside(self) -> int:
        """How many engines are set aside."""
        return 0 if self._aside is None else len(self._aside._load)

    @property
    def others(self) -> int:
        """How many engines are not set aside."""
        return len(self._load)

    # -- the query -----------------------------------------------------------------------

    def least(self, hwm: int = 0) -> bytes | None:
        """The least loaded engine (the longest unchanged among equals), or None if there is
        none with fewer than ``hwm`` tasks (``hwm`` 0: no bound). Engines set aside count
        only when every engine is set aside: while another is there, full or not, they
        are not chosen."""
        buckets = self._buckets
        if not buckets:
            aside = self._aside
            return None if aside is None else aside.least(hwm)
        low = self._low
        bucket = buckets.get(low)
        while bucket is None:  # ends: some bucket at or above ``low`` holds an engine
            low += 1
            if hwm and low >= hwm:
                break
            bucket = buckets.get(low)
        self._low = low
        if bucket is None or (hwm and low >= hwm):
            return None
        return next(iter(bucket))

    def check(self) -> None:
        """Assert the buckets agree with the loads (for tests)."""
        seen = 0
        for load, bucket in self._buckets.items():
            assert bucket, load
            for engine in bucket:
                assert self._load[engine] == load, (engine, load)
            seen += len(bucket)
            assert load >= self._low, (load, self._low)
        assert seen == len(self._load)
        if self._aside is not None:
            self._aside.check()
            assert not self._aside._load.keys() & self._load.keys()
