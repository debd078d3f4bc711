"""``@view.remote`` and ``@view.parallel``: functions that run on a cluster when called.

A decorated function stays a normal-looking callable, so code written for one process
moves to the cluster by adding one line. :class:`RemoteFunction` applies the function on
its view; :class:`ParallelFunction` maps it over its (sequence) arguments, with the
chunking of the view's ``map``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ParallelFunction", "RemoteFunction", "interactive", "parallel", "remote"]


class RemoteFunction:
    """``f(*args)`` runs ``view.apply(f, *args)``.

    ``block=None`` follows the view's flag; ``True`` returns the value, ``False`` an
    :class:`AsyncResult`.

    .. versionadded:: 0.1
    """

    def __init__(self, view: Any, f: Callable[..., Any], block: bool | None = None) -> None:
        self.view = view
        self.func = f
        self.block = block
        functools.update_wrapper(self, f)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.view.apply_async(self.func, *args, **kwargs)
        block = self.view.block if self.block is None else self.block
        return result.get() if block else result

    def __repr__(self) -> str:
        return f"<RemoteFunction {getattr(self.func, '__name__', self.func)!r} on {self.view!r}>"


class ParallelFunction(RemoteFunction):
    """``f(seq, ...)`` calls ``f`` on partitions of its sequences, in parallel, and joins
    the partial results (ipyparallel's semantics).

    On a direct view each engine gets one contiguous partition (``f`` is called once per
    engine, with a slice of each sequence); on a load-balanced view the sequences are cut
    into ``chunksize`` pieces (default 1). Results that are lists, tuples or numpy arrays
    are concatenated, others collected in a list. ``f.map(seq, ...)`` instead maps ``f``
    over the elements, like the builtin ``map``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        view: Any,
        f: Callable[..., Any],
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> None:
        super().__init__(view, f, block)
        self.chunksize = chunksize
        self.ordered = ordered

    def __call__(self, *sequences: Sequence[Any], **kwargs: Any) -> Any:
        from .mapping import chunk_slices, partition_slices, resolve_length
        from .views import DirectView, _CombinedMap, _sized, _take

        view = self.view
        columns = _sized(sequences)
        length = resolve_length(columns)
        if isinstance(view, DirectView):
            targets, _ = view._targets()
            if not targets:
                raise RuntimeError("no engines to run on")
            if self.chunksize is None:
                slices = partition_slices(length, len(targets))
                chosen: list[Any] = list(targets)
            else:
                slices = chunk_slices(length, self.chunksize)
                chosen = [targets[i % len(targets)] for i in range(len(slices))]
        else:
            slices = chunk_slices(length, self.chunksize or 1)
            chosen = [None] * len(slices)
        parts = []
        for part, target in zip(slices, chosen, strict=True):
            if part.stop <= part.start:
                continue  # more engines than elements: the others get nothing to do
            args = [_take(seq, part) for seq in columns]
            where = view if target is None else DirectView(view.client, target)
            parts.append(where.apply_async(self.func, *args, **kwargs))
        name = getattr(self.func, "__name__", "") or ""
        result = _CombinedMap(view.client, parts, False, name, True)
        block = view.block if self.block is None else self.block
        return result.get() if block else result

    def map(self, *sequences: Sequence[Any]) -> Any:
        """``map(f, *sequences)`` on the view: one call per element."""
        result = self.view.map_async(
            self.func, *sequences, ordered=self.ordered, chunksize=self.chunksize
        )
        block = self.view.block if self.block is None else self.block
        return result.get() if block else result


def remote(view: Any, block: bool | None = None) -> Callable[[Callable[..., Any]], Any]:
    """``@remote(view)``: the function runs on ``view`` when called."""

    def decorate(f: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(view, f, block)

    return decorate


def parallel(
    view: Any, block: bool | None = None, chunksize: int | None = None, ordered: bool = True
) -> Callable[[Callable[..., Any]], Any]:
    """``@parallel(view)``: calling the function maps it over its arguments on ``view``."""

    def decorate(f: Callable[..., Any]) -> ParallelFunction:
        return ParallelFunction(view, f, block, chunksize, ordered)

    return decorate


def interactive(f: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``f`` to run in the engine's namespace, as if typed at the engine's prompt.

    Engines run functions from ``__main__`` with their user namespace as globals, so such
    a function sees (and ``global`` assigns) the names pushed or executed there. Functions
    defined in a notebook or script are already ``__main__`` functions; this decorator is
    for functions defined in an importable module.

    .. versionadded:: 0.1
    """
    f.__module__ = "__main__"
    return f
