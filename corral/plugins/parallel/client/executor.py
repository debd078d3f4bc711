"""The cluster as a :class:`concurrent.futures.Executor`.

Code written against the standard executor interface (``submit``, ``map``,
``shutdown``) runs on a cluster unchanged. Every call goes through a load-balanced view;
the futures it returns are :class:`AsyncResult` objects, so they also offer ``abort``,
``metadata`` and ``await``.
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .asyncresult import AsyncResult

__all__ = ["ClusterExecutor", "ViewExecutor"]


class ClusterExecutor(concurrent.futures.Executor):
    """An Executor backed by a :class:`LoadBalancedView`.

    ``map`` is lazy and bounded (it uses ``view.imap``), so it accepts long or infinite
    iterables like the builtin ``map`` does.

    .. versionadded:: 0.1
    """

    def __init__(self, view: Any) -> None:
        self.view = view
        self._shutdown = False
        self._lock = threading.Lock()
        self._futures: weakref.WeakSet[AsyncResult] = weakref.WeakSet()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
        future = self.view.apply_async(fn, *args, **kwargs)
        self._futures.add(future)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`: results in order, lazily.

        ``timeout`` bounds the wait for each result (``TimeoutError``).
        """
        if self._shutdown:
            raise RuntimeError("cannot map after shutdown")
        if len(iterables) == 1:
            items: Iterable[Any] = iterables[0]
            func = fn
        else:
            items = zip(*iterables, strict=False)
            func = _Star(fn)
        return self.view.imap(
            func, items, ordered=True, chunksize=max(1, chunksize), timeout=timeout
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; with ``wait`` block until submitted work finished.

        The cluster keeps running: it belongs to the client, not to the executor.
        """
        with self._lock:
            self._shutdown = True
        futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)


class _Star:
    """``f(*args)`` from one tuple argument (picklable, unlike a lambda around ``f``)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.func(*args)


#: ipyparallel's name for an executor on a view.
ViewExecutor = ClusterExecutor
