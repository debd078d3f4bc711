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

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.core.private import write_private

from .aggregate import DEFAULT_WINDOW, AggregateClient, AggregateView, HeldResult
from .aggregatefile import write_aggregate_file
from .cluster import Cluster, new_cluster_id, record_path
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
        self.n = n
        self.cluster_id = base
        self.profile: str = self.clusters[0].profile
        self.engine_timeout: float = self.clusters[0].engine_timeout

    @property
    def cluster_file(self) -> Path:
        """The aggregate's file, listing every member (written once all are up)."""
        return cluster_file_path(self.profile, self.cluster_id)

    @property
    def is_running(self) -> bool:
        """True while every member controller runs."""
        return all(cluster.is_running for cluster in self.clusters)

    def start(self) -> None:
        """Start every member controller and its engines, then write the aggregate file
        (after every member's own file: a reader of it can connect to all at once)."""
        started: list[Cluster] = []
        try:
            for cluster in self.clusters:
                cluster.start()
                started.append(cluster)
            members = [dict(cluster.cluster_info or {}) for cluster in self.clusters]
            write_aggregate_file(self.cluster_file, self.cluster_id, members)
        except BaseException:
            for cluster in started:
                cluster.stop()
            raise

    def connect_client(self, **kwargs: Any) -> AggregateClient:
        """A new :class:`AggregateClient` over every member (closed again by :meth:`stop`)."""
        return AggregateClient([cluster.connect_client(**kwargs) for cluster in self.clusters])

    def start_and_connect(self) -> AggregateClient:
        """Start every controller, then connect and wait for every engine."""
        self.start()
        try:
            aggregate = self.connect_client()
            for cluster, client in zip(self.clusters, aggregate.clients, strict=True):
                cluster.wait_for_engines(client)
            return aggregate
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every member; the aggregate file goes first (no new client finds a half
        stopped aggregate)."""
        self.cluster_file.unlink(missing_ok=True)
        for cluster in self.clusters:
            cluster.stop()

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
