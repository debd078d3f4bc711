"""Dask on a corral cluster: ``rc.become_dask()`` makes the engines dask workers.

::

    client = rc.become_dask()                  # a distributed.Client
    client.submit(sum, [1, 2]).result()
    rc.stop_dask()

Where things run, and why (ipyparallel runs the scheduler inside its controller):

* the **scheduler** runs in this process, on a thread with its own event loop, for as
  long as the client keeps it (until :meth:`stop_dask` or exit): corral's controller is
  a message router with no event loop to host it, and a scheduler next to its user
  needs no new service;
* each **worker** runs inside its engine process, on a thread with its own event loop
  (corral engines serve tasks from a poll loop, not asyncio), so it shares the engine's
  memory, modules and namespace as ipyparallel's do.

Secure by default: when ``cryptography`` is installed, the scheduler, workers and the
returned client talk TLS with a throwaway certificate made for this dask cluster
(``distributed.security.Security.temporary``), so nobody else on the network can send
the workers code. Without it, the scheduler listens on the cluster's own address only
and ``become_dask`` warns. dask stays an optional dependency (``corral[dask]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from typing import Any

__all__ = ["DaskScheduler", "become_dask_worker", "stop_dask_worker"]

# Engine side: the worker this engine runs, if any (one per engine process).
_WORKER: dict[str, Any] = {}


class _LoopThread:
    """A thread running one asyncio coroutine until told to stop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.thread: threading.Thread | None = None

    def start(self, main: Any, started: concurrent.futures.Future[Any]) -> None:
        async def runner() -> None:
            self.loop = asyncio.get_running_loop()
            self.stopping = asyncio.Event()
            try:
                await main(self.stopping, started)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise

        def target() -> None:
            try:
                asyncio.run(runner())
            except Exception:
                pass  # reported through ``started``

        self.thread = threading.Thread(target=target, name=self.name, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self.loop, self.stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self.thread is not None:
            self.thread.join(timeout)


class DaskScheduler:
    """A dask scheduler on a thread of this process (see the module docstring)."""

    def __init__(self, security: Any, **scheduler_args: Any) -> None:
        self.security = security
        self._runner = _LoopThread("corral-dask-scheduler")
        started: concurrent.futures.Future[str] = concurrent.futures.Future()

        async def main(stopping: asyncio.Event, started: concurrent.futures.Future[str]) -> None:
            from distributed import Scheduler

            kwargs = dict(scheduler_args)
            if security is not None:
                kwargs.setdefault("security", security)
                kwargs.setdefault("protocol", "tls")
            async with Scheduler(dashboard_address=None, **kwargs) as scheduler:
                started.set_result(scheduler.address)
                await stopping.wait()

        self._runner.start(main, started)
        self.address = started.result(60)

    def stop(self) -> None:
        self._runner.stop()


#: Run on each engine once its worker started: ``dask_worker`` and ``distributed_worker``.
_NAME_THE_WORKER = (
    "from corral.plugins.parallel.client.dask import _WORKER as _corral_workers\n"
    "dask_worker = distributed_worker = _corral_workers['worker']\n"
    "del _corral_workers\n"
)


def become_dask_worker(address: str, security: Any = None, **worker_args: Any) -> str:
    """Run on an engine: start a dask worker of ``address`` on a thread; its address.

    A second call while a worker runs returns the running worker's address.
    """
    running = _WORKER.get("worker")
    if running is not None:
        return str(running.address)
    runner = _LoopThread("corral-dask-worker")
    started: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def main(stopping: asyncio.Event, started: concurrent.futures.Future[str]) -> None:
        from distributed import Worker

        kwargs = dict(worker_args)
        if security is not None:
            kwargs.setdefault("security", security)
        async with Worker(address, **kwargs) as worker:
            _WORKER["worker"] = worker
            started.set_result(worker.address)
            await stopping.wait()
        _WORKER.pop("worker", None)

    runner.start(main, started)
    _WORKER["runner"] = runner
    return started.result(60)


def stop_dask_worker() -> bool:
    """Run on an engine: stop its dask worker; whether one was running."""
    runner = _WORKER.pop("runner", None)
    if runner is None:
        return False
    runner.stop()
    _WORKER.pop("worker", None)
    return True


def become_dask(
    client: Any,
    targets: Any = "all",
    port: int = 0,
    nanny: bool = False,
    scheduler_args: dict[str, Any] | None = None,
    **worker_args: Any,
) -> Any:
    """See :meth:`Client.become_dask`.

    Called again while its dask cluster runs (a notebook cell run twice), it returns a
    new ``distributed.Client`` of the same scheduler, as ipyparallel's does, after
    making workers of ``targets`` that are not yet: ``port`` and ``scheduler_args`` are
    those of the running scheduler, and running workers keep their ``worker_args``.
    """
    import distributed

    if nanny:
        raise ValueError("nanny=True is not supported: workers run inside the engines")
    running: DaskScheduler | None = getattr(client, "_dask_scheduler", None)
    started = running is None
    scheduler = running or _start_scheduler(client, port, scheduler_args)
    security = scheduler.security
    try:
        worker_args.setdefault("nthreads", 1)
        view = client.direct_view(targets)
        view.apply_sync(become_dask_worker, scheduler.address, security, **worker_args)
        # The worker under the names ipyparallel gives it in each engine's namespace
        # (its dask example reads `%px dask_worker.data`).
        view.execute(_NAME_THE_WORKER, block=True)
        dask_client = distributed.Client(scheduler.address, security=security)
    except BaseException:
        if started:
            scheduler.stop()
        raise
    if started:
        client._dask_scheduler = scheduler
        client._dask_targets = []
        client._dask_clients = []
    client._dask_targets.append(targets)
    client._dask_clients.append(dask_client)
    return dask_client


def _start_scheduler(
    client: Any, port: int, scheduler_args: dict[str, Any] | None
) -> DaskScheduler:
    """The scheduler of a new dask cluster, on the cluster's own address (see the
    module docstring for its security)."""
    security = None
    try:
        from distributed.security import Security

        security = Security.temporary()
    except ImportError:
        warnings.warn(
            "cryptography is not installed: the dask scheduler and workers talk "
            "unencrypted TCP, without authentication",
            stacklevel=4,
        )
    args = dict(scheduler_args or {})
    args.setdefault("host", client.cluster_info.get("ip") or "127.0.0.1")
    args.setdefault("port", port)
    return DaskScheduler(security, **args)


def stop_dask(client: Any, targets: Any = None) -> None:
    """See :meth:`Client.stop_dask`."""
    scheduler = getattr(client, "_dask_scheduler", None)
    every = [targets] if targets is not None else getattr(client, "_dask_targets", None)
    for spec in every or ["all"]:
        client.direct_view(spec).apply_sync(stop_dask_worker)
    if scheduler is not None:
        # The distributed.Clients become_dask returned go first: left open, they would
        # try to reconnect to the stopped scheduler for as long as this process runs.
        dask_clients = getattr(client, "_dask_clients", None) or []
        client._dask_clients = []
        for dask_client in dask_clients:
            dask_client.close()
        scheduler.stop()
        client._dask_scheduler = None
        client._dask_targets = []
