"""ipyparallel's ``Cluster`` spellings, mixed into :class:`~.cluster.Cluster`.

ipyparallel's cluster methods are coroutines (``await cluster.start_cluster()``), each with
a blocking twin ending in ``_sync`` (``cluster.start_cluster_sync()``). corral's own
methods block (``start``, ``stop``, ``stop_engines``...) and have ``_async`` twins. Both
families are here, so scripts written either way run:

==========================  ==========================  ==============================
ipyparallel (await)         blocking                    what it does in corral
==========================  ==========================  ==============================
``start_controller()``      ``start_controller_sync``   the controller, no engines
``start_engines(n)``        ``start_engines_sync``      ``n`` more engines (default: n)
``start_cluster(n)``        ``start_cluster_sync``      controller and engines
``start_and_connect(n)``    ``start_and_connect_sync``  ... and a connected client
``connect_client()``        ``connect_client_sync``     a new client
``stop_engines()``          ``stop_engines_sync``       stop engines (by engine id)
``stop_engine(id)``         ``stop_engine_sync``        stop one engine
``restart_engine(s)``       ``restart_engine(s)_sync``  replace engines
``signal_engine(s)``        ``signal_engine(s)_sync``   send a signal
``stop_controller()``       ``stop_controller_sync``    the whole cluster (see below)
``stop_cluster()``          ``stop_cluster_sync``       the whole cluster
==========================  ==========================  ==============================

The names corral already had (``connect_client``, ``start_and_connect``,
``stop_engines``, ``restart_engines``, ``signal_engines``) keep blocking, as they always
did in corral; ``await`` their ``_async`` twins. Deliberate differences: engines are
named by engine id, not by engine-set id; ``stop_controller`` stops the engines too
(corral's engines outlive their controller only for a grace period, waiting for a restart,
so a cluster without a controller is only ever a transient state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.plugins.parallel.client import Client

__all__ = ["ClusterCompat"]


async def _in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    import asyncio  # only for callers of the async API (see cluster._to_thread)

    return await asyncio.to_thread(func, *args, **kwargs)


class ClusterCompat:
    """ipyparallel's start/stop/connect spellings over corral's blocking methods."""

    # Provided by Cluster.
    n: int
    controller: Any

    #: Engines still to start after start_controller_sync() (for start_engines_sync()).
    _engines_to_start: int = 0

    # ------------------------------------------------------------------ blocking

    def start_controller_sync(self) -> None:
        """Start the controller alone; :meth:`start_engines_sync` adds engines later
        (``n`` of them unless told otherwise)."""
        if self.controller is not None:
            return  # ipyparallel: starting a started controller does nothing
        self._engines_to_start = self.n
        self.n = 0
        try:
            self.start()  # type: ignore[attr-defined]
        except BaseException:
            self.n = self._engines_to_start
            raise

    def start_engines_sync(self, n: int | None = None) -> None:
        """Start ``n`` engines (default: the cluster's ``n``) on the running controller."""
        if n is None:
            n = getattr(self, "_engines_to_start", None) or self.n
        self._engines_to_start = 0
        self.add_engines(n)  # type: ignore[attr-defined]

    def start_cluster_sync(self, n: int | None = None) -> None:
        """Start the controller and ``n`` engines (default: the cluster's ``n``)."""
        if self.controller is not None:
            self.start_engines_sync(n)
            return
        if n is not None:
            self.n = n
        self.start()  # type: ignore[attr-defined]

    def start_and_connect_sync(self, n: int | None = None, activate: bool = False) -> Client:
        """Start, connect a client, wait for every engine; with ``activate``, make
        ``%px`` run on all engines."""
        client = self.start_and_connect(n)  # type: ignore[attr-defined]
        if activate:
            client.activate()
        return client

    def connect_client_sync(self, **kwargs: Any) -> Client:
        """A new client of this cluster."""
        return self.connect_client(**kwargs)  # type: ignore[attr-defined,no-any-return]

    def stop_engines_sync(self, ids: Any = None) -> list[int]:
        """Stop engines ``ids`` (None: all)."""
        return self.stop_engines(ids)  # type: ignore[attr-defined,no-any-return]

    def stop_engine_sync(self, engine_id: int) -> list[int]:
        """Stop one engine."""
        return self.stop_engines([engine_id])  # type: ignore[attr-defined,no-any-return]

    def restart_engines_sync(self, ids: Any = None) -> list[int]:
        """Replace engines ``ids`` (None: all) with new ones; the new ids."""
        return self.restart_engines(ids)  # type: ignore[attr-defined,no-any-return]

    def restart_engine_sync(self, engine_id: int) -> list[int]:
        """Replace one engine; the new engine's id in a list."""
        return self.restart_engines([engine_id])  # type: ignore[attr-defined,no-any-return]

    def signal_engines_sync(self, signum: int, ids: Any = None) -> list[int]:
        """Send ``signum`` to engines ``ids`` (None: all)."""
        return self.signal_engines(signum, ids)  # type: ignore[attr-defined,no-any-return]

    def signal_engine_sync(self, signum: int, engine_id: int) -> list[int]:
        """Send ``signum`` to one engine."""
        return self.signal_engines(signum, [engine_id])  # type: ignore[attr-defined,no-any-return]

    def stop_controller_sync(self) -> None:
        """Stop the controller, and with it the engines (see the module docstring)."""
        self.stop()  # type: ignore[attr-defined]

    def stop_cluster_sync(self) -> None:
        """Stop the engines and the controller."""
        self.stop()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ awaitable

    async def start_controller(self) -> None:
        """``await``: :meth:`start_controller_sync` in a worker thread."""
        await _in_thread(self.start_controller_sync)

    async def start_engines(self, n: int | None = None) -> None:
        """``await``: :meth:`start_engines_sync` in a worker thread."""
        await _in_thread(self.start_engines_sync, n)

    async def start_cluster(self, n: int | None = None) -> None:
        """``await``: :meth:`start_cluster_sync` in a worker thread."""
        await _in_thread(self.start_cluster_sync, n)

    async def connect_client_async(self, **kwargs: Any) -> Client:
        """``await``: :meth:`connect_client` in a worker thread."""
        return await _in_thread(self.connect_client_sync, **kwargs)  # type: ignore[no-any-return]

    async def stop_engines_async(self, ids: Any = None) -> list[int]:
        """``await``: :meth:`stop_engines` in a worker thread."""
        return await _in_thread(self.stop_engines_sync, ids)  # type: ignore[no-any-return]

    async def stop_engine(self, engine_id: int) -> list[int]:
        """``await``: :meth:`stop_engine_sync` in a worker thread."""
        return await _in_thread(self.stop_engine_sync, engine_id)  # type: ignore[no-any-return]

    async def restart_engines_async(self, ids: Any = None) -> list[int]:
        """``await``: :meth:`restart_engines` in a worker thread."""
        return await _in_thread(self.restart_engines_sync, ids)  # type: ignore[no-any-return]

    async def restart_engine(self, engine_id: int) -> list[int]:
        """``await``: :meth:`restart_engine_sync` in a worker thread."""
        return await _in_thread(self.restart_engine_sync, engine_id)  # type: ignore[no-any-return]

    async def signal_engines_async(self, signum: int, ids: Any = None) -> list[int]:
        """``await``: :meth:`signal_engines` in a worker thread."""
        return await _in_thread(self.signal_engines_sync, signum, ids)  # type: ignore[no-any-return]

    async def signal_engine(self, signum: int, engine_id: int) -> list[int]:
        """``await``: :meth:`signal_engine_sync` in a worker thread."""
        return await _in_thread(self.signal_engine_sync, signum, engine_id)  # type: ignore[no-any-return]

    async def stop_controller(self) -> None:
        """``await``: :meth:`stop_controller_sync` in a worker thread."""
        await _in_thread(self.stop_controller_sync)

    async def stop_cluster(self) -> None:
        """``await``: :meth:`stop_cluster_sync` in a worker thread."""
        await _in_thread(self.stop_cluster_sync)
