"""How a map is cut into tasks, and how lazy maps keep their work bounded.

Sending one task per element costs a message round trip per element; sending one task
per engine loses load balancing. So a map is cut into chunks of consecutive elements and
each chunk travels as one task that runs :func:`map_chunk` on an engine. These functions
are pure (no sockets, no client), so they are tested on their own; :func:`map_chunk` is
imported by name on engines, so this module imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

__all__ = [
    "ChunkOutcome",
    "IMapIterator",
    "auto_chunksize",
    "chunk_slices",
    "iter_chunks",
    "map_chunk",
    "map_chunk_outcomes",
    "partition_slices",
    "resolve_length",
]

T = TypeVar("T")


def map_chunk(func: Callable[..., Any], *columns: Sequence[Any]) -> list[Any]:
    """Run on an engine: ``func`` over one chunk of the map's argument columns."""
    return list(map(func, *columns))


class ChunkOutcome:
    """A chunk run to its end although elements failed (``return_exceptions=True``):
    ``values`` by position (None where one failed) and ``failures``, each failed
    position's error content (``ename``, ``evalue``, ``traceback``), made on the engine.

    A chunk is one task, so one failure used to stand for every element of it: with
    ``return_exceptions=True`` the elements that succeeded came back as that error too,
    and the rest of the chunk never ran (with ipyparallel's one task per element, only
    the failed element is an error). Pickled by reference: engines import this module.
    """

    __slots__ = ("values", "failures")

    def __init__(self, values: list[Any], failures: dict[int, dict[str, Any]]) -> None:
        self.values = values
        self.failures = failures

    def __getstate__(self) -> tuple[list[Any], dict[int, dict[str, Any]]]:
        return self.values, self.failures

    def __setstate__(self, state: tuple[list[Any], dict[int, dict[str, Any]]]) -> None:
        self.values, self.failures = state


def map_chunk_outcomes(func: Callable[..., Any], *columns: Sequence[Any]) -> Any:
    """Run on an engine: :func:`map_chunk`, but every element runs whatever the others
    did; a :class:`ChunkOutcome` if any failed. An interrupt (``KeyboardInterrupt``,
    an abort) still ends the whole chunk."""
    values: list[Any] = []
    failures: dict[int, dict[str, Any]] = {}
    for position, args in enumerate(zip(*columns, strict=False)):
        try:
            values.append(func(*args))
        except Exception as exc:
            values.append(None)
            failures[position] = _element_error(exc, func)
    return ChunkOutcome(values, failures) if failures else values


def _element_error(exc: Exception, func: Callable[..., Any]) -> dict[str, Any]:
    """The error content of one element, as the engine makes a task's: the traceback
    names the user's file and quotes its lines (engine.sources)."""
    from corral.plugins.parallel.engine.sources import annotate
    from corral.transports.zmq.requests import error_content

    content = error_content(exc)
    try:
        content["traceback"] = annotate(content["traceback"], [func])
    except Exception:  # never lose the error over its decoration
        pass
    return content


def resolve_length(sequences: Sequence[Sequence[Any]]) -> int:
    """The length of a map over ``sequences``: the shortest one, as ``map`` does."""
    if not sequences:
        raise TypeError("map needs at least one sequence")
    lengths = []
    for seq in sequences:
        try:
            lengths.append(len(seq))
        except TypeError:
            raise TypeError(
                f"map needs sequences with a length, got {type(seq).__name__}; "
                "use imap() for iterators and generators"
            ) from None
    return min(lengths)


def auto_chunksize(length: int, workers: int, per_worker: int = 4) -> int:
    """A chunk size giving each worker about ``per_worker`` chunks.

    Several chunks per worker keep load balancing working when elements differ in cost,
    while cutting messages by orders of magnitude for long maps of cheap calls.
    """
    if length <= 0:
        return 1
    return max(1, math.ceil(length / (max(1, workers) * per_worker)))


def chunk_slices(length: int, chunksize: int) -> list[slice]:
    """Consecutive slices of at most ``chunksize`` elements covering ``range(length)``."""
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, not {chunksize}")
    return [slice(start, min(start + chunksize, length)) for start in range(0, length, chunksize)]


def partition_slices(length: int, parts: int) -> list[slice]:
    """``parts`` consecutive slices of near-equal size (the first ones one longer).

    Used to scatter a sequence across engines: every engine gets a contiguous block, and
    block sizes differ by at most one. Empty slices are kept, so slice ``i`` always
    belongs to engine ``i``.
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, not {parts}")
    base, extra = divmod(length, parts)
    slices = []
    start = 0
    for index in range(parts):
        stop = start + base + (1 if index < extra else 0)
        slices.append(slice(start, stop))
        start = stop
    return slices


def iter_chunks(iterable: Iterable[T], chunksize: int) -> Iterator[list[T]]:
    """Lists of up to ``chunksize`` items, pulled lazily (works on infinite iterators)."""
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, not {chunksize}")
    iterator = iter(iterable)
    while True:
        chunk = list(islice(iterator, chunksize))
        if not chunk:
            return
        yield chunk


class IMapIterator(Iterator[Any]):
    """What ``view.imap`` returns: an iterator over the results, with ipyparallel's
    :meth:`cancel`.

    ``make(cancelled)`` builds the underlying generator; it calls ``cancelled()`` before
    taking each item from the input.

    .. versionadded:: 0.2
    """

    def __init__(self, make: Callable[[Callable[[], bool]], Iterator[Any]]) -> None:
        self._cancelled = False
        self._gen = make(self._is_cancelled)

    def _is_cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """End the iteration now, as a generator's ``close()`` does."""
        self._cancelled = True
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()

    def cancel(self) -> None:
        """Take no more items from the input (an infinite one, say, once the result you
        needed came); the results of tasks already submitted are still yielded."""
        self._cancelled = True
