"""The client side of aggregated controllers: :class:`AggregateClient` and its
load-balanced :class:`AggregateView` (direct views: :mod:`.aggregate_direct`).

How work spreads (:mod:`.aggregate_view`): the load-balanced view places each task at
the controller whose engines hold the fewest of its unfinished tasks, keeps a shared
backlog that every controller's engines pull from, and moves a task queued at a busy
controller to an idle one, exactly once. Direct views (:mod:`.aggregate_direct`) split a
request by controller. Each controller keeps its own database, so
:meth:`AggregateClient.db_query` merges the answers of all of them.

Engine ids: controller ``k`` of ``N`` calls its engines ``0, 1, ...``; the aggregate id of
its engine ``i`` is ``i * N + k``, stable whatever the other controllers do.

Kept free of :mod:`.cluster` (launchers, settings): ``Client(path)`` of an aggregate
cluster file lands here, and a client should not import what starts processes.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from .aggregate_view import DEFAULT_WINDOW, AggregateView, HeldResult
from .client.client import Client

__all__ = [
    "DEFAULT_WINDOW",
    "AggregateClient",
    "AggregateView",
    "HeldResult",
    "aggregate_id",
    "member_id",
]


def aggregate_id(k: int, local: int, members: int) -> int:
    """The aggregate id of engine ``local`` of controller ``k`` of ``members``."""
    return local * members + k


def member_id(engine_id: int, members: int) -> tuple[int, int]:
    """Which controller (``k``) owns aggregate ``engine_id``, and its own id there."""
    return engine_id % members, engine_id // members


class AggregateClient:
    """One client over several controllers' clients (see the module docstring).

    Built by :class:`~.shards.Shards`, or by ``Client(...)`` when the cluster file found is
    an aggregate's (:meth:`from_file`). Engines are named by aggregate ids everywhere:
    :attr:`ids`, ``client[i]``, ``client[:]``, :meth:`direct_view`, :meth:`queue_status`.

    .. versionadded:: 0.2
    """

    #: The ``block`` flag of direct views made from now on (as :attr:`Client.block`).
    block: bool = False

    def __init__(self, clients: Sequence[Client], cluster_id: str = "") -> None:
        if not clients:
            raise ValueError("an aggregate needs at least one client")
        self.clients = list(clients)
        self.cluster_id = cluster_id or self.clients[0].cluster_id.rsplit("-", 1)[0]
        self.connection_file: Path | None = None
        self._views: weakref.WeakSet[AggregateView] = weakref.WeakSet()

    @classmethod
    def from_file(
        cls, path: str | Path, timeout: float = 10.0, local: bool = True
    ) -> AggregateClient:
        """Connect to every member listed in the aggregate cluster file ``path``."""
        from .aggregatefile import member_files
        from .clusterfile import read_cluster_file

        clients: list[Client] = []
        try:
            for member in member_files(path):
                clients.append(Client(connection_file=member, timeout=timeout, local=local))
        except BaseException:
            for client in clients:
                client.close()
            raise
        aggregate = cls(clients, cluster_id=read_cluster_file(path).cluster_id)
        aggregate.connection_file = Path(path)
        return aggregate

    def __await__(self) -> Generator[Any, None, AggregateClient]:
        """Connected once it exists: ``rc = await cluster.start_and_connect()`` (as
        ipyparallel scripts write it) gives the aggregate back."""
        return self
        yield  # pragma: no cover - makes this a generator

    # ------------------------------------------------------------------ engines

    def global_id(self, k: int, local: int) -> int:
        """The aggregate id of engine ``local`` of controller ``k``."""
        return aggregate_id(k, local, len(self.clients))

    def locate(self, engine_id: int) -> tuple[Client, int]:
        """The client of the controller that owns aggregate ``engine_id``, and its own id."""
        k, local = member_id(engine_id, len(self.clients))
        return self.clients[k], local

    @property
    def ids(self) -> list[int]:
        """Aggregate ids of every live engine of every controller, sorted."""
        return sorted(
            self.global_id(k, i) for k, client in enumerate(self.clients) for i in client.ids
        )

    @property
    def engines(self) -> dict[int, Any]:
        """``{aggregate id: EngineInfo}`` (each info keeps its controller's own ``id``)."""
        return {
            self.global_id(k, i): info
            for k, client in enumerate(self.clients)
            for i, info in client.engines.items()
        }

    def __len__(self) -> int:
        return sum(len(client.ids) for client in self.clients)

    def wait_for_engines(self, n: int, timeout: float | None = None) -> None:
        """Wait until ``n`` engines are registered over all controllers."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self) < n:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(self)} of {n} engines registered within {timeout} s")
            # Each member's wait returns at once when its own count is reached.
            for client in self.clients:
                try:
                    client.wait_for_engines(len(client.ids) + 1, timeout=0.05)
                except TimeoutError:
                    pass

    # ------------------------------------------------------------------ views

    def __getitem__(self, key: int | slice | Sequence[int]) -> Any:
        """``client[i]``: engine ``i`` (an aggregate id; a member's own direct view, so
        results are single values); ``client[:]``, ``client[::2]``, ``client[[0, 3]]``:
        an :class:`~.aggregate_direct.AggregateDirectView` over those engines."""
        if key is None or isinstance(key, (str, bool)):
            raise TypeError(f"engines are picked by int, slice or list of ints, not {key!r}")
        if isinstance(key, int):
            ids = self.ids
            if key < 0:
                if -key > len(ids):
                    raise IndexError(f"engine index {key} out of range for {len(ids)} engines")
                key = ids[key]
            client, local = self.locate(key)
            view = client[local]
            view.block = self.block
            return view
        if isinstance(key, slice):
            return self.direct_view(self.ids[key])
        return self.direct_view([int(t) for t in key])

    def direct_view(self, targets: Any = "all") -> Any:
        """An :class:`~.aggregate_direct.AggregateDirectView` over ``targets`` (aggregate
        ids); ``"all"`` follows the engines of every controller as they come and go."""
        from .aggregate_direct import AggregateDirectView

        return AggregateDirectView(self, targets, block=self.block)

    def broadcast_view(self, targets: Any = None) -> Any:
        """As :meth:`direct_view`, each controller's part sent through its broadcast
        scheduler (one message per controller however many of its engines)."""
        from .aggregate_direct import AggregateDirectView

        targets = "all" if targets is None else targets
        return AggregateDirectView(self, targets, block=self.block, broadcast=True)

    def executor(self, window: int = DEFAULT_WINDOW) -> Any:
        """A :class:`concurrent.futures.Executor` over an :class:`AggregateView`."""
        from .client.executor import ClusterExecutor

        return ClusterExecutor(self.load_balanced_view(window))

    def load_balanced_view(self, window: int = DEFAULT_WINDOW) -> AggregateView:
        """An :class:`AggregateView` (see :mod:`.aggregate_view`): ``window`` unfinished
        tasks per engine at most at each controller, the rest held in the view."""
        view = AggregateView(self, window)
        self._views.add(view)
        return view

    # ------------------------------------------------------------------ hubs

    def db_query(self, query: dict[str, Any], keys: Sequence[str] | None = None) -> list[Any]:
        """Records matching ``query`` from every controller's database, one list."""
        records: list[Any] = []
        for client in self.clients:
            records.extend(client.db_query(query, keys))
        return records

    def purge_results(self, jobs: Any = None, targets: Any = None) -> int:
        """Forget finished tasks in every controller's database, as
        :meth:`Client.purge_results`: ``jobs`` (``"all"`` or msg_ids/results) and every
        task that ran on ``targets`` (aggregate engine ids); with neither, everything.
        How many records were purged."""
        if targets is None:
            return sum(
                client.purge_results("all" if jobs is None else jobs) for client in self.clients
            )
        wanted = [targets] if isinstance(targets, int) else list(targets)
        local: dict[int, list[int]] = {}
        for engine_id in wanted:
            k, own = member_id(int(engine_id), len(self.clients))
            local.setdefault(k, []).append(own)
        purged = 0
        for k, client in enumerate(self.clients):
            if k in local:
                purged += client.purge_results([] if jobs is None else jobs, targets=local[k])
            elif jobs is not None:
                purged += client.purge_results(jobs)
        return purged

    def queue_status(self) -> dict[Any, Any]:
        """Every controller's :meth:`Client.queue_status`, engines by aggregate id and
        ``unassigned`` summed."""
        out: dict[Any, Any] = {"unassigned": 0}
        for k, client in enumerate(self.clients):
            for key, value in client.queue_status().items():
                if key == "unassigned":
                    out["unassigned"] += int(value)
                else:
                    out[self.global_id(k, int(key))] = value
        return out

    def shutdown(self, hub: bool = True) -> None:
        for client in self.clients:
            client.shutdown(hub=hub)

    def close(self) -> None:
        """Close every view (held tasks are cancelled) and every member client."""
        for view in list(self._views):
            view.close()
        for client in self.clients:
            client.close()

    def __enter__(self) -> AggregateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<AggregateClient {self.cluster_id!r}: {len(self.clients)} controllers, "
            f"{len(self)} engines>"
        )
