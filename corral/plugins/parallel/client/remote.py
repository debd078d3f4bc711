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
    """``f(seq, ...)`` runs ``view.map(f, seq, ...)``: elementwise, in parallel.

    ``f.map(...)`` is the same call, spelled like the builtin.

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

    def __call__(self, *sequences: Sequence[Any]) -> Any:
        result = self.view.map_async(
            self.func, *sequences, ordered=self.ordered, chunksize=self.chunksize
        )
        block = self.view.block if self.block is None else self.block
        return result.get() if block else result

    def map(self, *sequences: Sequence[Any]) -> Any:
        return self(*sequences)


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
