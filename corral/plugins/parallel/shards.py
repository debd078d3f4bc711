"""Several controllers aggregated behind one client: :class:`Shards` and its client.

Why: one controller's task scheduler is one process, and it saturates first (about 50 us
of CPU per task); its hub writes every request and reply. Several independent
controllers, each with its own share of the engines, its own hub and its own task
database, multiply both, and the aggregation lives where it costs the controllers
nothing: in the client.

How work spreads: :class:`AggregateView` sends each load-balanced task to the controller
whose engines hold the fewest of this client's unfinished tasks each (ties: the first),
counting a task from submission to its result. So a controller whose engines are busy
with long tasks receives nothing new while another has idle engines; the work that would
have queued behind the busy ones goes to the idle ones instead. Within a controller its
own scheduler balances as always.

What this is not (yet): tasks already queued *inside* one controller's scheduler are not
taken back and given to another controller's idle engines (stealing of queued work); and
each controller keeps its own database, so :meth:`AggregateClient.db_query` merges the
answers of all of them.

Engine ids: controller ``k`` of ``N`` calls its engines ``0, 1, ...``; the aggregate id of
its engine ``i`` is ``i * N + k``, stable whatever the other controllers do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .client.client import Client
from .cluster import Cluster, new_cluster_id

__all__ = ["AggregateClient", "AggregateView", "Shards"]


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
            Cluster(n=share, cluster_id=f"{base}-{k}", **kwargs) for k, share in enumerate(shares)
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

    def load_balanced_view(self) -> AggregateView:
        return AggregateView(self)

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


class AggregateView:
    """Load balancing over several controllers: each task goes to the controller whose
    engines hold the fewest of this view's unfinished tasks each."""

    def __init__(self, aggregate: AggregateClient) -> None:
        self.aggregate = aggregate
        self.views = [client.load_balanced_view() for client in aggregate.clients]
        self.outstanding = [0] * len(self.views)
        self._lock = threading.Lock()

    def _pick(self) -> int:
        clients = self.aggregate.clients
        best, best_share = 0, float("inf")
        for k, waiting in enumerate(self.outstanding):
            share = (waiting + 1) / max(1, len(clients[k].ids))
            if share < best_share:
                best, best_share = k, share
        return best

    def _done(self, k: int) -> Callable[[Any], None]:
        def done(_result: Any) -> None:
            with self._lock:
                self.outstanding[k] -= 1

        return done

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            k = self._pick()
            self.outstanding[k] += 1
        try:
            result = self.views[k].apply_async(f, *args, **kwargs)
        except BaseException:
            with self._lock:
                self.outstanding[k] -= 1
            raise
        result.add_done_callback(self._done(k))
        return result

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(f, *args, **kwargs).get()

    def map_async(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        """One task per item, each placed as :meth:`apply_async` places it."""
        return [self.apply_async(f, *items) for items in zip(*sequences, strict=False)]

    def map_sync(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        return [result.get() for result in self.map_async(f, *sequences)]
