"""A joblib backend running on a corral cluster, so ``n_jobs`` code (scikit-learn) uses it.

::

    import corral, joblib

    corral.register_joblib_backend()            # a Client() of the default profile
    with joblib.parallel_backend("corral"):
        GridSearchCV(..., n_jobs=-1).fit(X, y)   # batches run on the engines

    view.register_joblib_backend("mine")         # or bound to one view

joblib is not a dependency of corral: this module imports it when a backend is
registered. Each joblib batch becomes one load-balanced task; joblib's own auto-batching
sizes the batches. Completion callbacks run on a thread of the backend, never on the
client's I/O thread (joblib submits the next batch from them).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

__all__ = ["register"]  # and CorralBackend, made on first use


def _backend_class() -> type:
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

    class CorralBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
        """joblib's interface over a corral view (a load-balanced view by default)."""

        supports_retrieve_callback = True
        supports_sharedmem = False
        uses_threads = False

        def __init__(
            self, view: Any = None, view_factory: Callable[[], Any] | None = None, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self._view = view  # a load-balanced view (the caller converts a direct one)
            self._view_factory = view_factory
            self._pending: set[Any] = set()
            self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None

        @property
        def view(self) -> Any:
            if self._view is None:
                if self._view_factory is None:
                    raise RuntimeError("this joblib backend was registered without a view")
                self._view = self._view_factory()
            return self._view

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            engines = max(1, len(self.view))
            if n_jobs is None or n_jobs < 0:
                return engines
            return min(n_jobs, engines)

        def configure(
            self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, **kw: Any
        ) -> int:
            self.parallel = parallel
            if self._callbacks is None:
                self._callbacks = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="corral-joblib"
                )
            return self.effective_n_jobs(n_jobs)

        def submit(self, func: Any, callback: Any = None) -> Any:
            result = self.view.apply_async(func)
            self._pending.add(result)
            pool = self._callbacks

            def done(ar: Any) -> None:
                self._pending.discard(ar)
                if callback is not None and pool is not None:
                    pool.submit(callback, ar)

            result.add_done_callback(done)
            return result

        def retrieve_result_callback(self, out: Any) -> Any:
            return out.get()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            for result in list(self._pending):
                if not result.done():
                    result.abort()
            self._pending.clear()

        def terminate(self) -> None:
            pool, self._callbacks = self._callbacks, None
            if pool is not None:
                pool.shutdown(wait=False)
            self.reset_batch_stats()

    return CorralBackend


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    if name == "CorralBackend":
        return _get_class()
    raise AttributeError(name)


def _get_class() -> type:
    global _CLASS
    if _CLASS is None:
        _CLASS = _backend_class()
    return _CLASS


def register(
    name: str,
    make_default: bool = False,
    *,
    view: Any = None,
    view_factory: Callable[[], Any] | None = None,
) -> None:
    """Register a joblib backend called ``name`` running on the load-balanced ``view``,
    or on the one ``view_factory()`` makes on first use. The public entry points are
    :func:`.defaults.register_joblib_backend` and ``View.register_joblib_backend``; this
    module knows neither the client nor the views (it used to import both: a cycle).
    """
    from joblib.parallel import register_parallel_backend

    cls = _get_class()

    def factory(**kwargs: Any) -> Any:
        return cls(view=view, view_factory=view_factory, **kwargs)

    register_parallel_backend(name, factory, make_default=make_default)
