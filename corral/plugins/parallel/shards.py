"""Several controllers aggregated behind one client: :class:`Shards` and its client.

Why: one controller's task scheduler is one process, and it saturates first (about 50 us
of CPU per task); its hub writes every request and reply. Several independent
controllers, each with its own share of the engines, its own hub and its own task
database, multiply both, and the aggregation lives where it costs the controllers
nothing: in the client.

How work spreads: :class:`AggregateView` sends each load-balanced task to the controller
whose engines hold the fewest of this view's unfinished tasks each (ties: the first),
counting a task from submission to its result. A controller takes at most ``window``
unfinished tasks per engine; the rest wait in the view, in order, and go to whichever
controller finishes a task first. So no controller queues work that another's idle engines
could run: the shared backlog lives in the aggregate, and every controller's engines pull
from it as they free up (stealing by pulling, with no task ever moved between
controllers). Within a controller its own scheduler balances as always.

What this is not: a task already sent to one controller stays there (it holds at most
``window`` per engine, the prefetch a scheduler keeps anyway); and each controller keeps
its own database, so :meth:`AggregateClient.db_query` merges the answers of all of them.

Engine ids: controller ``k`` of ``N`` calls its engines ``0, 1, ...``; the aggregate id of
its engine ``i`` is ``i * N + k``, stable whatever the other controllers do.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .client.client import Client
from .cluster import Cluster, new_cluster_id

__all__ = ["AggregateClient", "AggregateView", "HeldResult", "Shards", "aggregate_if_asked"]

#: Unfinished tasks per engine a controller is given before the rest wait in the view:
#: the task scheduler's own prefetch bound (queues.DEFAULT_HWM), so an engine never idles
#: for want of work in its controller while the view holds some.
DEFAULT_WINDOW = 128


#: Cluster's positional parameters, in order (for aggregate_if_asked).
_CLUSTER_POSITIONAL = (
    "n",
    "profile",
    "cluster_id",
    "controller_mode",
    "hb_period",
    "db",
    "launcher",
    "engine_timeout",
)


def aggregate_if_asked(cls: type, args: tuple, kwargs: dict[str, Any]) -> Shards | None:
    """For ``Cluster(...)``: a :class:`Shards` when ``controllers`` (the argument, else
    ``[cluster] controllers`` of the profile or ``CORRAL_CLUSTER_CONTROLLERS``) is above 1;
    None for one controller (and for subclasses, which keep their own behaviour)."""
    if cls is not Cluster:
        return None
    named = dict(zip(_CLUSTER_POSITIONAL, args, strict=False))
    named.update(kwargs)
    controllers = named.get("controllers")
    if controllers is None:
        from .settings import resolve

        profile = named.get("profile", "default")
        config = resolve(profile, {})
        controllers = config.get("cluster", "controllers")
        n = named.get("n")
        if controllers > 1 and n is None:
            named["n"] = config.get("cluster", "n")
    if int(controllers) <= 1:
        return None
    named.pop("controllers", None)
    n = named.pop("n", None)
    if n is None:
        n = os.cpu_count() or 1
    return Shards(int(n), int(controllers), **named)


class Shards:
    """``controllers`` clusters of ``n`` engines in all (shared as evenly as possible),
    started and stopped together. Keyword arguments go to every :class:`Cluster`."""

    def __init__(
        self, n: int, controllers: int = 2, *, cluster_id: str | None = None, **kwargs: Any
    ) -> None:
        if controllers < 1:
            raise ValueError(f"controllers must be >= 1, not {controllers!r}")
        if n < controllers:
            raise ValueError(f"{n} engines cannot give each of {controllers} controllers one")
        base = cluster_id or new_cluster_id()
        shares = [n // controllers + (1 if k < n % controllers else 0) for k in range(controllers)]
        self.clusters = [
            Cluster(n=share, cluster_id=f"{base}-{k}", controllers=1, **kwargs)
            for k, share in enumerate(shares)
        ]
        self.shares = shares

    def start_and_connect(self) -> AggregateClient:
        """Start every controller (together: each returns once its file is written), then
        connect and wait for every engine."""
        started: list[Cluster] = []
        try:
            for cluster in self.clusters:
                cluster.start()
                started.append(cluster)
            clients = [cluster.connect_client() for cluster in self.clusters]
            aggregate = AggregateClient(clients)
            for client, share in zip(clients, self.shares, strict=True):
                client.wait_for_engines(share, timeout=self.clusters[0].engine_timeout)
            return aggregate
        except BaseException:
            for cluster in started:
                cluster.stop()
            raise

    def stop(self) -> None:
        for cluster in self.clusters:
            cluster.stop()

    def pids(self) -> list[dict[str, Any]]:
        return [cluster.pids() for cluster in self.clusters]

    def __enter__(self) -> AggregateClient:
        return self.start_and_connect()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AggregateClient:
    """One client over several controllers' clients (see the module docstring)."""

    def __init__(self, clients: Sequence[Client]) -> None:
        if not clients:
            raise ValueError("an aggregate needs at least one client")
        self.clients = list(clients)

    @property
    def ids(self) -> list[int]:
        """Aggregate ids of every live engine of every controller."""
        n = len(self.clients)
        return sorted(i * n + k for k, client in enumerate(self.clients) for i in client.ids)

    def locate(self, engine_id: int) -> tuple[Client, int]:
        """The client of the controller that owns aggregate ``engine_id``, and its own id."""
        n = len(self.clients)
        return self.clients[engine_id % n], engine_id // n

    def __getitem__(self, engine_id: int) -> Any:
        client, local = self.locate(engine_id)
        return client[local]

    def load_balanced_view(self, window: int = DEFAULT_WINDOW) -> AggregateView:
        return AggregateView(self, window)

    def db_query(self, query: dict[str, Any], keys: Sequence[str] | None = None) -> list[Any]:
        """Records matching ``query`` from every controller's database, one list."""
        records: list[Any] = []
        for client in self.clients:
            records.extend(client.db_query(query, keys))
        return records

    def purge_results(self, jobs: Any = "all") -> int:
        return sum(client.purge_results(jobs) for client in self.clients)

    def shutdown(self, hub: bool = True) -> None:
        for client in self.clients:
            client.shutdown(hub=hub)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class HeldResult(concurrent.futures.Future):  # type: ignore[type-arg]
    """The result of a task waiting in the view for room in some controller: a future
    with ``get`` as the views' results have; ``sent`` is the real result once sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: Any = None

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)


class AggregateView:
    """Load balancing over several controllers (see the module docstring)."""

    def __init__(self, aggregate: AggregateClient, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window!r}")
        self.aggregate = aggregate
        self.window = window
        self.views = [client.load_balanced_view() for client in aggregate.clients]
        self.outstanding = [0] * len(self.views)
        self.held: deque[tuple[HeldResult, Callable[..., Any], tuple, dict]] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closed = False
        self._pump: threading.Thread | None = None

    def _pick(self, refill: bool = False) -> int | None:
        """The controller with the fewest unfinished tasks per engine, among those with
        room in their window (for ``refill``: room for a quarter of it, so held tasks go
        out in bursts that travel batched, not one per finished task); None when none."""
        clients = self.aggregate.clients
        best, best_share = None, float("inf")
        for k, waiting in enumerate(self.outstanding):
            engines = max(1, len(clients[k].ids))
            room = self.window * engines - waiting
            if room < (max(1, self.window // 4) * engines if refill else 1):
                continue
            share = (waiting + 1) / engines
            if share < best_share:
                best, best_share = k, share
        return best

    def _done(self, k: int) -> Callable[[Any], None]:
        def done(_result: Any) -> None:
            with self._room:
                self.outstanding[k] -= 1
                if self.held and self._pick(refill=True) is not None:
                    self._room.notify()

        return done

    def _send(self, k: int, f: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Send to controller ``k`` (counted already)."""
        try:
            result = self.views[k].apply_async(f, *args, **kwargs)
        except BaseException:
            with self._room:
                self.outstanding[k] -= 1
            raise
        result.add_done_callback(self._done(k))
        return result

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with self._room:
            k = None if self.held else self._pick()  # nobody jumps the queue
            if k is None:
                held = HeldResult()
                self.held.append((held, f, args, kwargs))
                self._start_pump()
                return held
            self.outstanding[k] += 1
        return self._send(k, f, args, kwargs)

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = threading.Thread(target=self._run_pump, name="corral-shards", daemon=True)
            self._pump.start()

    def _run_pump(self) -> None:
        """Send held tasks, oldest first, as controllers make room. A thread of its own:
        the room is made in the clients' I/O threads, which must not be made to send."""
        while True:
            with self._room:
                while not self._closed and (not self.held or self._pick(refill=True) is None):
                    self._room.wait()
                if self._closed:
                    return
                burst: list[tuple[int, HeldResult, Callable[..., Any], tuple, dict]] = []
                while self.held:
                    k = self._pick()
                    if k is None:
                        break
                    held, f, args, kwargs = self.held.popleft()
                    self.outstanding[k] += 1
                    burst.append((k, held, f, args, kwargs))
            for k, held, f, args, kwargs in burst:
                try:
                    result = self._send(k, f, args, kwargs)
                except BaseException as exc:  # noqa: BLE001 - the caller hears of it
                    held.set_exception(exc)
                    continue
                held.sent = result
                result.add_done_callback(lambda r, h=held: _settle(h, r))

    def close(self) -> None:
        """Stop sending held tasks (they are cancelled)."""
        with self._room:
            self._closed = True
            while self.held:
                self.held.popleft()[0].cancel()
            self._room.notify_all()

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(f, *args, **kwargs).get()

    def map_async(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        """One task per item, each placed as :meth:`apply_async` places it."""
        return [self.apply_async(f, *items) for items in zip(*sequences, strict=False)]

    def map_sync(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        return [result.get() for result in self.map_async(f, *sequences)]


def _settle(held: HeldResult, result: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
    """Pass a sent task's outcome on to the result its caller holds."""
    exc = result.exception()
    if exc is not None:
        held.set_exception(exc)
    else:
        held.set_result(result.result())
