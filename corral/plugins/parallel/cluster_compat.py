"""ipyparallel's ``Cluster`` spellings, mixed into :class:`~.cluster.Cluster`.

ipyparallel's cluster methods are coroutines (``await cluster.start_cluster()``), each with
a blocking twin ending in ``_sync``. corral's own methods block (``start``, ``stop``,
``stop_engines``...), and scripts written for corral call them plainly. Both are served
by one rule: **every method does its work before it returns, and returns a value that
can also be awaited**, giving back the same value:

* lists of engine ids are :class:`AwaitableList` (a ``list``: equal to, and an instance
  of, what corral returned before);
* an engine set id is an :class:`EngineSetId` (a ``str``);
* clients are awaitable already (``await client`` gives the client);
* methods that return nothing in ipyparallel (``start_controller``, ``start_cluster``,
  ``stop_controller``, ``stop_cluster``) return the cluster, which is awaitable
  (ipyparallel's ``start_cluster`` returns the cluster too, for chaining).

So ``cluster.stop_engines(es)`` and ``await cluster.stop_engines(es)`` do the same
thing. The price: awaited, the work still runs in the caller's thread and holds its event
loop until done (as the ``_sync`` twins do). Code that must keep its loop running awaits
the ``_async`` twins instead, which run the work in a worker thread.

==========================  ==========================  ==============================
ipyparallel (await)         blocking                    what it does in corral
==========================  ==========================  ==============================
``start_controller()``      ``start_controller_sync``   the controller, no engines
``start_engines(n)``        ``start_engines_sync``      a new engine set; its id
``start_cluster(n)``        ``start_cluster_sync``      controller and engines
``start_and_connect(n)``    ``start_and_connect_sync``  ... and a connected client
``connect_client()``        ``connect_client_sync``     a new client
``stop_engines(es)``        ``stop_engines_sync``       engine set ``es``, engine ids,
                                                        or (None) all
``stop_engine(id)``         ``stop_engine_sync``        stop one engine
``restart_engine(s)``       ``restart_engine(s)_sync``  replace engines
``signal_engine(s)``        ``signal_engine(s)_sync``   send a signal
``stop_controller()``       ``stop_controller_sync``    the whole cluster (see below)
``stop_cluster()``          ``stop_cluster_sync``       the whole cluster
==========================  ==========================  ==============================

``stop_engines``, ``restart_engines`` and ``signal_engines`` take an engine set id (a
``str``, as ipyparallel), engine ids (an ``int`` or a list of them, corral's own), or
None for every engine. Deliberate difference: ``stop_controller`` stops the engines too
(corral's engines outlive their controller only for a grace period, waiting for a restart,
so a cluster without a controller is only ever a transient state).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from corral.plugins.parallel.client import Client

__all__ = ["AwaitableList", "ClusterCompat", "EngineSetId"]

T = TypeVar("T")


def _ready(value: T) -> Generator[Any, None, T]:
    """An ``__await__`` iterator that is finished at once, with ``value``: the work is
    done already, awaiting only hands the result over."""
    return value
    yield  # pragma: no cover - makes this a generator


class AwaitableList(list[int]):
    """Engine ids, a plain ``list`` that ``await`` also accepts (giving itself back).

    Hashed by identity, unlike a list: ``asyncio.gather`` keys its arguments in a dict,
    and ``gather(cluster.stop_engines(a), cluster.stop_engines(b))`` is ipyparallel code.
    """

    __hash__ = object.__hash__  # type: ignore[assignment]

    def __await__(self) -> Generator[Any, None, AwaitableList]:
        return _ready(self)


class EngineSetId(str):
    """An engine set's id, a plain ``str`` that ``await`` also accepts (giving itself
    back): ``es = await cluster.start_engines(2)`` as in ipyparallel."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, EngineSetId]:
        return _ready(self)


async def _in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    """``asyncio.to_thread``, importing asyncio only when the async API is used: it costs
    35 ms, a fifth of a cluster's start, for scripts that never touch it."""
    import asyncio

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

    def start_engines_sync(
        self, n: int | None = None, engine_set_id: str | None = None
    ) -> EngineSetId:
        """Start ``n`` engines (default: the cluster's ``n``) on the running controller,
        as a new engine set; its id, for ``stop_engines(id)`` and the like."""
        if n is None:
            n = getattr(self, "_engines_to_start", None) or self.n
        self._engines_to_start = 0
        return EngineSetId(self._add_engine_set(n, engine_set_id))  # type: ignore[attr-defined]

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
        return self.start_and_connect(n, activate)  # type: ignore[attr-defined,no-any-return]

    def connect_client_sync(self, **kwargs: Any) -> Client:
        """A new client of this cluster."""
        return self.connect_client(**kwargs)  # type: ignore[attr-defined,no-any-return]

    def stop_engines_sync(self, ids: Any = None) -> AwaitableList:
        """Stop engine set ``ids`` (a str), engines ``ids`` (ints), or (None) all."""
        return self.stop_engines(ids)  # type: ignore[attr-defined,no-any-return]

    def stop_engine_sync(self, engine_id: int) -> AwaitableList:
        """Stop one engine."""
        return self.stop_engines([engine_id])  # type: ignore[attr-defined,no-any-return]

    def restart_engines_sync(self, ids: Any = None) -> AwaitableList:
        """Replace engines ``ids`` (None: all) with new ones; the new ids."""
        return self.restart_engines(ids)  # type: ignore[attr-defined,no-any-return]

    def restart_engine_sync(self, engine_id: int) -> AwaitableList:
        """Replace one engine; the new engine's id in a list."""
        return self.restart_engines([engine_id])  # type: ignore[attr-defined,no-any-return]

    def signal_engines_sync(self, signum: int, ids: Any = None) -> AwaitableList:
        """Send ``signum`` to engines ``ids`` (None: all)."""
        return self.signal_engines(signum, ids)  # type: ignore[attr-defined,no-any-return]

    def signal_engine_sync(self, signum: int, engine_id: int) -> AwaitableList:
        """Send ``signum`` to one engine."""
        return self.signal_engines(signum, [engine_id])  # type: ignore[attr-defined,no-any-return]

    def stop_controller_sync(self) -> None:
        """Stop the controller, and with it the engines (see the module docstring)."""
        self.stop()  # type: ignore[attr-defined]

    def stop_cluster_sync(self) -> None:
        """Stop the engines and the controller."""
        self.stop()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ either way

    def __await__(self) -> Generator[Any, None, Any]:
        """``await cluster.start_cluster()`` gives the cluster (ipyparallel's value, for
        chaining): the methods below return it already started or stopped."""
        return _ready(self)

    def start_controller(self) -> Any:
        """Start the controller alone (see :meth:`start_controller_sync`); returns the
        cluster, which ``await`` hands back."""
        self.start_controller_sync()
        return self

    def start_engines(self, n: int | None = None, engine_set_id: str | None = None) -> EngineSetId:
        """Start ``n`` engines as a new engine set; its id (a ``str``, also awaitable)."""
        return self.start_engines_sync(n, engine_set_id)

    def start_cluster(self, n: int | None = None) -> Any:
        """Start the controller and ``n`` engines; returns the cluster (also awaitable)."""
        self.start_cluster_sync(n)
        return self

    def stop_engine(self, engine_id: int) -> AwaitableList:
        """Stop one engine; ``[engine_id]`` (also awaitable)."""
        return self.stop_engine_sync(engine_id)

    def restart_engine(self, engine_id: int) -> AwaitableList:
        """Replace one engine; the new engine's id in a list (also awaitable)."""
        return self.restart_engine_sync(engine_id)

    def signal_engine(self, signum: int, engine_id: int) -> AwaitableList:
        """Send ``signum`` to one engine; ``[engine_id]`` (also awaitable)."""
        return self.signal_engine_sync(signum, engine_id)

    def stop_controller(self) -> Any:
        """Stop the controller and the engines; returns the cluster (also awaitable)."""
        self.stop_controller_sync()
        return self

    def stop_cluster(self) -> Any:
        """Stop the engines and the controller; returns the cluster (also awaitable)."""
        self.stop_cluster_sync()
        return self

    # ------------------------------------------------------------------ in a thread

    async def start_controller_async(self) -> None:
        """:meth:`start_controller_sync` in a worker thread (the event loop keeps running)."""
        await _in_thread(self.start_controller_sync)

    async def start_engines_async(self, n: int | None = None) -> EngineSetId:
        """:meth:`start_engines_sync` in a worker thread."""
        return await _in_thread(self.start_engines_sync, n)  # type: ignore[no-any-return]

    async def start_cluster_async(self, n: int | None = None) -> None:
        """:meth:`start_cluster_sync` in a worker thread."""
        await _in_thread(self.start_cluster_sync, n)

    async def connect_client_async(self, **kwargs: Any) -> Client:
        """:meth:`connect_client` in a worker thread."""
        return await _in_thread(self.connect_client_sync, **kwargs)  # type: ignore[no-any-return]

    async def stop_engines_async(self, ids: Any = None) -> list[int]:
        """:meth:`stop_engines` in a worker thread."""
        return await _in_thread(self.stop_engines_sync, ids)  # type: ignore[no-any-return]

    async def restart_engines_async(self, ids: Any = None) -> list[int]:
        """:meth:`restart_engines` in a worker thread."""
        return await _in_thread(self.restart_engines_sync, ids)  # type: ignore[no-any-return]

    async def signal_engines_async(self, signum: int, ids: Any = None) -> list[int]:
        """:meth:`signal_engines` in a worker thread."""
        return await _in_thread(self.signal_engines_sync, signum, ids)  # type: ignore[no-any-return]

    async def stop_cluster_async(self) -> None:
        """:meth:`stop_cluster_sync` in a worker thread."""
        await _in_thread(self.stop_cluster_sync)

    # ------------------------------------------------------------------ lifecycle

    async def start_async(self) -> None:
        """:meth:`start` in a worker thread, so the event loop keeps running."""
        await _in_thread(self.start)  # type: ignore[attr-defined]

    async def start_and_connect_async(self, n: int | None = None, activate: bool = False) -> Any:
        """:meth:`start_and_connect` in a worker thread; the connected client."""
        return await _in_thread(self.start_and_connect, n, activate)  # type: ignore[attr-defined]

    async def stop_async(self, grace: float | None = None) -> None:
        """:meth:`stop` in a worker thread."""
        await _in_thread(self.stop, grace)  # type: ignore[attr-defined]

    async def __aenter__(self) -> Any:
        return await self.start_and_connect_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()
