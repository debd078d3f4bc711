"""Several controllers aggregated behind one client: :class:`Shards` starts them.

Why: one controller's task scheduler is one process, and it saturates first (about 50 us
of CPU per task); its hub writes every request and reply. Several independent
controllers, each with its own share of the engines, its own hub and its own task
database, multiply both, and the aggregation lives where it costs the controllers
nothing: in the client (:mod:`.aggregate`: how work spreads, and engine ids).

Files: member ``k`` of cluster ``ID`` is the complete cluster ``ID-k`` (its own cluster
file, record, logs and database); once all are up, ``security/cluster-ID.json`` lists
them (:mod:`.aggregatefile`), so ``Client(profile=..., cluster_id=ID)`` or
``corral.Client(path)`` connects to all of them, and ``corral cluster`` lists and stops
them as one.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.core.private import write_private

from .aggregate import (
    DEFAULT_WINDOW,
    AggregateClient,
    AggregateView,
    HeldResult,
    aggregate_id,
    member_id,
)
from .aggregatefile import write_aggregate_file
from .cluster import Cluster, ClusterError, new_cluster_id, record_path
from .cluster_compat import AwaitableList, ClusterCompat
from .clusterfile import cluster_file_path

__all__ = [
    "DEFAULT_WINDOW",
    "AggregateClient",
    "AggregateView",
    "HeldResult",
    "Shards",
    "aggregate_if_asked",
]

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


def _even_shares(n: int, members: int) -> list[int]:
    """``n`` engines over ``members`` controllers, as evenly as possible, first ones first."""
    if n < members:
        raise ValueError(f"{n} engines cannot give each of {members} controllers one")
    return [n // members + (1 if k < n % members else 0) for k in range(members)]


def _top_up(counts: list[int], n: int) -> list[int]:
    """How many of ``n`` new engines each controller gets, so that the ones with the
    fewest engines (``counts``) get them first: the shares stay as even as they can."""
    counts, added = list(counts), [0] * len(counts)
    for _ in range(n):
        k = counts.index(min(counts))
        counts[k] += 1
        added[k] += 1
    return added


class Shards(ClusterCompat):
    """``controllers`` clusters of ``n`` engines in all (shared as evenly as possible),
    started and stopped together. Keyword arguments go to every :class:`Cluster`.

    The aggregate answers :class:`Cluster`'s API (ipyparallel's spellings included:
    ``start_cluster``, ``start_engines``, ``stop_engines``, ``signal_engines``, their
    ``_sync`` and ``_async`` twins, ``async with``), so a script written for one
    controller runs unchanged when a profile asks for several. Engines are named by
    aggregate ids (:mod:`.aggregate`: controller ``k`` of ``N`` calls its engine ``i``
    ``i * N + k``), and an engine set started here spans the controllers.
    """

    def __init__(
        self, n: int, controllers: int = 2, *, cluster_id: str | None = None, **kwargs: Any
    ) -> None:
        if controllers < 1:
            raise ValueError(f"controllers must be >= 1, not {controllers!r}")
        base = cluster_id or new_cluster_id()
        shares = _even_shares(n, controllers)
        self.clusters = [
            Cluster(n=share, cluster_id=f"{base}-{k}", controllers=1, **kwargs)
            for k, share in enumerate(shares)
        ]
        self.shares = shares
        self.n = n
        self.cluster_id = base
        self.profile: str = self.clusters[0].profile
        self.engine_timeout: float = self.clusters[0].engine_timeout
        #: Engine sets started through the aggregate: their id, and each part's
        #: controller and set id there.
        self._sets: dict[str, dict[int, str]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Shards:
        """A handle on an aggregate started elsewhere (``corral cluster start
        --controllers N``), from its cluster file or record: every member re-attached as
        :meth:`Cluster.from_file` does, so it hands out clients and can :meth:`stop`."""
        from .aggregatefile import member_files
        from .cluster import ClusterError, read_record

        path = Path(path)
        info = read_record(path) or {}
        if "members" in info:  # the record: its cluster file lists the members' files
            path = Path(str(info.get("cluster_file") or ""))
        try:
            files = member_files(path)
        except (OSError, ValueError) as error:
            raise ClusterError(f"{path}: {error}") from error
        self = cls.__new__(cls)
        # A member's record (run/) knows its engine count; its cluster file does not.
        records = [file.parent.parent / "run" / file.name for file in files]
        self.clusters = [
            Cluster.from_file(record if record.exists() else file)
            for record, file in zip(records, files, strict=True)
        ]
        self.shares = [cluster.n for cluster in self.clusters]
        self.n = sum(self.shares)
        self.cluster_id = str(
            (read_record(path) or {}).get("cluster_id") or path.stem.removeprefix("cluster-")
        )
        self.profile = self.clusters[0].profile
        self.engine_timeout = self.clusters[0].engine_timeout
        self._sets = {}
        return self

    @property
    def cluster_file(self) -> Path:
        """The aggregate's file, listing every member (written once all are up)."""
        return cluster_file_path(self.profile, self.cluster_id)

    @property
    def is_running(self) -> bool:
        """True while every member controller runs."""
        return all(cluster.is_running for cluster in self.clusters)

    @property
    def controller(self) -> Any:
        """The first member's controller launcher; None until the aggregate started."""
        return self.clusters[0].controller

    def _on_members(self, work: Callable[[Cluster], Any]) -> list[Any]:
        """``work(member)`` for every member at once (each is mostly waiting for its own
        processes); the results in member order, or the first error."""
        with concurrent.futures.ThreadPoolExecutor(len(self.clusters)) as pool:
            done = [pool.submit(work, cluster) for cluster in self.clusters]
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
        return [future.result() for future in done]

    def start(self) -> None:
        """Start every member controller and its engines, all at once (each start is
        mostly waiting for its controller's file), then write the aggregate file (after
        every member's own file: a reader of it can connect to all at once)."""
        if self.n != sum(self.shares):  # start_cluster(n) / start_and_connect(n)
            self._share(self.n)
        try:
            self._on_members(lambda cluster: cluster.start())
            self._write_aggregate_file()
        except BaseException:
            self._stop_started()
            raise
        first_sets = {k: list(c.engine_sets) for k, c in enumerate(self.clusters)}
        if any(first_sets.values()):
            self._sets[self._new_set_id()] = {k: ids[0] for k, ids in first_sets.items() if ids}

    def _stop_started(self) -> None:
        """After a failed start: stop the members whose controller did start."""
        for cluster in self.clusters:
            if cluster.controller is not None:
                cluster.stop()

    def _share(self, n: int) -> None:
        """Give the members new shares of ``n`` engines (before they start)."""
        self.shares = _even_shares(n, len(self.clusters))
        for cluster, share in zip(self.clusters, self.shares, strict=True):
            cluster.n = share

    def _write_aggregate_file(self) -> None:
        members = [dict(cluster.cluster_info or {}) for cluster in self.clusters]
        write_aggregate_file(self.cluster_file, self.cluster_id, members)

    # ------------------------------------------------------------ engines (Cluster's API)

    def start_controller_sync(self) -> None:
        """Start every member controller with no engines; :meth:`start_engines` adds
        them (``n`` unless told otherwise), shared over the controllers."""
        if self.controller is not None:
            return
        self._engines_to_start, self.n = self.n, 0
        try:
            self._on_members(lambda cluster: cluster.start_controller_sync())
            self._write_aggregate_file()
        except BaseException:
            self.n = self._engines_to_start
            self._stop_started()
            raise

    def start_and_connect_sync(self, n: int | None = None, activate: bool = False) -> Any:
        return self.start_and_connect(n, activate)

    def _add_engine_set(self, n: int, engine_set_id: str | None = None) -> str:
        """Start ``n`` engines as one set over the controllers (the ones with the fewest
        engines first); its id (``start_engines`` returns it)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"start_engines(n): n must be an integer >= 1, not {n!r}")
        if engine_set_id is not None and engine_set_id in self._sets:
            raise ValueError(f"engine set {engine_set_id!r} is running already")
        set_id = engine_set_id or self._new_set_id()
        added = _top_up([cluster.n for cluster in self.clusters], n)
        parts: dict[int, str] = {}
        try:
            for k, count in enumerate(added):
                if count:
                    parts[k] = self.clusters[k]._add_engine_set(count)
        finally:
            if parts:
                self._sets[set_id] = parts
            self._counted()
        return set_id

    def add_engines(self, n: int) -> None:
        """Start ``n`` more engines, shared over the controllers."""
        self._add_engine_set(n)

    def _new_set_id(self) -> str:
        """ipyparallel's form (the start time in seconds), unique among this aggregate's."""
        base = new_id = str(int(time.time()))
        suffix = 0
        while new_id in self._sets:
            suffix += 1
            new_id = f"{base}-{suffix}"
        return new_id

    def _counted(self) -> None:
        """Engine counts after members started or stopped engines."""
        self.shares = [cluster.n for cluster in self.clusters]
        self.n = sum(self.shares)

    @property
    def engine_sets(self) -> dict[str, list[Any]]:
        """The engine sets started and not stopped, by id: each a list of its members'
        launchers (one per controller it spans)."""
        sets: dict[str, list[Any]] = {}
        for set_id, parts in self._sets.items():
            launchers = [
                self.clusters[k].engine_sets[part]
                for k, part in parts.items()
                if part in self.clusters[k].engine_sets
            ]
            if launchers:
                sets[set_id] = launchers
        return sets

    @property
    def engine_count(self) -> int:
        """Engine processes alive over all controllers (see :attr:`Cluster.engine_count`)."""
        return sum(cluster.engine_count for cluster in self.clusters)

    def _live_ids(self) -> list[int]:
        return sorted(
            aggregate_id(k, local, len(self.clusters))
            for k, cluster in enumerate(self.clusters)
            for local in cluster._admin_client().ids
        )

    def _by_member(self, ids: Any) -> dict[int, Any]:
        """What each member is asked about: ``None`` (all), a set id of its own, or its
        own engine ids; aggregate ids that no controller has are refused here, by their
        aggregate names."""
        members = len(self.clusters)
        if ids is None:
            return dict.fromkeys(range(members))
        if isinstance(ids, str):
            if ids not in self._sets:
                raise ValueError(f"no engine set {ids!r}; engine sets: {list(self._sets)}")
            return dict(self._sets[ids])
        wanted = [ids] if isinstance(ids, int) else list(ids)
        live = self._live_ids()
        unknown = [i for i in wanted if i not in live]
        if unknown:
            raise ValueError(f"no engine with id {unknown}; live engines: {live}")
        locals_by_member: dict[int, Any] = {}
        for engine_id in wanted:
            k, local = member_id(engine_id, members)
            locals_by_member.setdefault(k, []).append(local)
        return locals_by_member

    def _each(self, ids: Any, work: Callable[[Cluster, Any], list[int]]) -> AwaitableList:
        """``work(member, its ids)`` for every member ``ids`` concerns; the engine ids it
        returns, as aggregate ids."""
        members = len(self.clusters)
        out: list[int] = []
        try:
            for k, member_ids in self._by_member(ids).items():
                out += [aggregate_id(k, i, members) for i in work(self.clusters[k], member_ids)]
        finally:
            self._counted()
        return AwaitableList(sorted(out))

    def stop_engines(self, ids: Any = None, *, timeout: float | None = None) -> AwaitableList:
        """Stop engines ``ids`` (aggregate ids, an engine set's id, or None: all), as
        :meth:`Cluster.stop_engines` does on each controller; the ids stopped."""
        stopped = self._each(ids, lambda cluster, own: cluster.stop_engines(own, timeout=timeout))
        if isinstance(ids, str):
            del self._sets[ids]
        return stopped

    def restart_engines(self, ids: Any = None) -> AwaitableList:
        """Replace engines ``ids`` (as :meth:`stop_engines`) with new ones on the same
        controllers; the new engines' aggregate ids."""
        return self._each(ids, lambda cluster, own: cluster.restart_engines(own))

    def signal_engines(self, signum: int, ids: Any = None) -> AwaitableList:
        """Send ``signum`` to engines ``ids`` (as :meth:`stop_engines`); the ids signalled."""
        return self._each(ids, lambda cluster, own: cluster.signal_engines(signum, own))

    def wait_for_engines(self, client: AggregateClient, n: int | None = None) -> None:
        """Wait until every member's engines (or ``n`` in all) are registered."""
        if n is None:
            for cluster, member in zip(self.clusters, client.clients, strict=True):
                cluster.wait_for_engines(member)
            return
        try:
            client.wait_for_engines(n, timeout=self.engine_timeout)
        except TimeoutError as error:
            raise ClusterError(f"{error} (cluster {self.cluster_id!r})") from None

    def logs(self) -> dict[str, Path]:
        """Every member's log files, named ``<member cluster id>/<process>``."""
        return {
            f"{cluster.cluster_id}/{name}": path
            for cluster in self.clusters
            for name, path in cluster.logs().items()
        }

    def connect_client(self, **kwargs: Any) -> AggregateClient:
        """A new :class:`AggregateClient` over every member (closed again by :meth:`stop`)."""
        return AggregateClient([cluster.connect_client(**kwargs) for cluster in self.clusters])

    def start_and_connect(self, n: int | None = None, activate: bool = False) -> AggregateClient:
        """Start every controller (``n`` engines in all if given), then connect and
        wait for every engine. ``activate=True`` is refused (see the message)."""
        if activate:
            raise ClusterError(
                "activate=True: %px magics need one controller's engines; with several "
                "controllers use the aggregate client's views (client[:], "
                "load_balanced_view())"
            )
        if n is not None:
            self.n = n
        self.start()
        try:
            aggregate = self.connect_client()
            self.wait_for_engines(aggregate)
            return aggregate
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float | None = None) -> None:
        """Stop every member; the aggregate file goes first (no new client finds a half
        stopped aggregate), its record (``corral cluster``'s) last."""
        self.cluster_file.unlink(missing_ok=True)
        for cluster in self.clusters:
            cluster.stop(grace)
        self._sets.clear()
        self.record_file.unlink(missing_ok=True)

    def pids(self) -> list[dict[str, Any]]:
        return [cluster.pids() for cluster in self.clusters]

    # ------------------------------------------------------------ for `corral cluster`

    @property
    def record_file(self) -> Path:
        """``<profile>/run/cluster-ID.json``: who runs the aggregate, and its members."""
        return record_path(self.clusters[0].profile_dir, self.cluster_id)

    def _write_record(self) -> None:
        pids = self.pids()
        record = {
            "cluster_id": self.cluster_id,
            "profile": self.profile,
            "n": self.n,
            "manager_pid": os.getpid(),
            "cluster_file": str(self.cluster_file),
            "started": time.time(),
            "members": [cluster.cluster_id for cluster in self.clusters],
            "controller": pids[0]["controller"],
            "controllers": [p["controller"] for p in pids],
            "engines": [e for p in pids for e in p["engines"]],
        }
        path = self.record_file
        tmp = path.with_suffix(".tmp")
        write_private(tmp, json.dumps(record, indent=1))
        os.replace(tmp, path)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when any member controller exits (the aggregate is then
        incomplete: its tasks would all go to the others)."""
        for cluster in self.clusters:
            assert cluster.controller is not None
            cluster.controller.on_stop(lambda launcher: callback())

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return (
            f"<Shards {self.cluster_id!r} profile={self.profile!r} n={self.n} "
            f"controllers={len(self.clusters)} {state}>"
        )

    def __enter__(self) -> AggregateClient:
        return self.start_and_connect()

    def __exit__(self, *exc: object) -> None:
        self.stop()
