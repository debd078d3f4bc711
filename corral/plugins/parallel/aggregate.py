"""The client side of aggregated controllers: :class:`AggregateClient` and its
load-balanced :class:`AggregateView` (direct views: :mod:`.aggregate_direct`).

How work spreads: :class:`AggregateView` sends each load-balanced task to the controller
whose engines hold the fewest of this view's unfinished tasks each (ties: the first),
counting a task from submission to its result. A controller takes at most ``window``
unfinished tasks per engine; the rest wait in the view, in order, and go to whichever
controller finishes a task first. So no controller queues work that another's idle engines
could run: the shared backlog lives in the aggregate, and every controller's engines pull
from it as they free up (stealing by pulling, with no task ever moved between
controllers). Within a controller its own scheduler balances as always.

What this is not: a task already sent to one controller stays there. With the default
window (128 per engine, the prefetch a scheduler keeps anyway) a controller whose engines
are all busy with long tasks may hold tasks another controller's idle engines could run;
``window=1`` never gives a controller more unfinished tasks than it has engines, so no
task ever waits at a controller (at the price of a round trip per task: see
docs/performance.md). Each controller keeps its own database, so
:meth:`AggregateClient.db_query` merges the answers of all of them.

Engine ids: controller ``k`` of ``N`` calls its engines ``0, 1, ...``; the aggregate id of
its engine ``i`` is ``i * N + k``, stable whatever the other controllers do.

Kept free of :mod:`.cluster` (launchers, settings): ``Client(path)`` of an aggregate
cluster file lands here, and a client should not import what starts processes.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .client.client import Client

__all__ = ["DEFAULT_WINDOW", "AggregateClient", "AggregateView", "HeldResult"]

#: Unfinished tasks per engine a controller is given before the rest wait in the view:
#: the task scheduler's own prefetch bound (queues.DEFAULT_HWM), so an engine never idles
#: for want of work in its controller while the view holds some.
DEFAULT_WINDOW = 128


class AggregateClient:
    """One client over several controllers' clients (see the module docstring).

    Built by :class:`~.shards.Shards`, or by ``Client(...)`` when the cluster file found is
    an aggregate's (:meth:`from_file`). Engines are named by aggregate ids everywhere:
    :attr:`ids`, ``client[i]``, ``client[:]``, :meth:`direct_view`, :meth:`queue_status`.

    .. versionadded:: 0.2
    """

    def __init__(self, clients: Sequence[Client], cluster_id: str = "") -> None:
        if not clients:
            raise ValueError("an aggregate needs at least one client")
        self.clients = list(clients)
        self.cluster_id = cluster_id or self.clients[0].cluster_id.rsplit("-", 1)[0]
        self.connection_file: Path | None = None

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

    # ------------------------------------------------------------------ engines

    def global_id(self, k: int, local: int) -> int:
        """The aggregate id of engine ``local`` of controller ``k``."""
        return local * len(self.clients) + k

    def locate(self, engine_id: int) -> tuple[Client, int]:
        """The client of the controller that owns aggregate ``engine_id``, and its own id."""
        n = len(self.clients)
        return self.clients[engine_id % n], engine_id // n

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
            return client[local]
        if isinstance(key, slice):
            return self.direct_view(self.ids[key])
        return self.direct_view([int(t) for t in key])

    def direct_view(self, targets: Any = "all") -> Any:
        """An :class:`~.aggregate_direct.AggregateDirectView` over ``targets`` (aggregate
        ids); ``"all"`` follows the engines of every controller as they come and go."""
        from .aggregate_direct import AggregateDirectView

        return AggregateDirectView(self, targets)

    def load_balanced_view(self, window: int = DEFAULT_WINDOW) -> AggregateView:
        return AggregateView(self, window)

    # ------------------------------------------------------------------ hubs

    def db_query(self, query: dict[str, Any], keys: Sequence[str] | None = None) -> list[Any]:
        """Records matching ``query`` from every controller's database, one list."""
        records: list[Any] = []
        for client in self.clients:
            records.extend(client.db_query(query, keys))
        return records

    def purge_results(self, jobs: Any = "all") -> int:
        return sum(client.purge_results(jobs) for client in self.clients)

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
