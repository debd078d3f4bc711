"""ipyparallel's ``ClusterManager``: the clusters of every profile, by ``"profile:id"`` key.

ipyparallel's JupyterLab extension and some scripts use it to find running clusters and
start new ones. corral keeps no manager process: the clusters are the cluster files under
each profile (what ``corral cluster list`` shows), so :meth:`ClusterManager.load_clusters`
reads them, and clusters made with :meth:`ClusterManager.new_cluster` are remembered
here until removed.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any

from corral.core.profiles import list_profiles, locate_profile

from .aggregatefile import member_cluster_ids
from .cluster import Cluster, ClusterError

__all__ = ["ClusterManager"]


def _key(profile: str, cluster_id: str) -> str:
    return f"{profile}:{cluster_id}"


class ClusterManager:
    """Running clusters by ``"profile:cluster_id"``, as ipyparallel's manager lists them.

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}

    def load_clusters(self) -> dict[str, Cluster]:
        """Find the running clusters of every profile (each a re-attached
        :class:`Cluster`), keeping those already known; returns :attr:`clusters`."""
        for profile in list_profiles():
            try:
                security = locate_profile(profile) / "security"
                files = sorted(security.glob("cluster-*.json"))
            except (OSError, ValueError):
                continue
            members = member_cluster_ids(security)  # found through their aggregate
            for path in files:
                cluster_id = path.stem.removeprefix("cluster-")
                key = _key(profile, cluster_id)
                if key in self.clusters or cluster_id in members:
                    continue
                try:
                    self.clusters[key] = Cluster.from_file(path)
                except (ClusterError, OSError, ValueError):
                    continue  # a stale or unreadable file is not a cluster
        return self.clusters

    def list_clusters(self) -> list[str]:
        """The keys of the known clusters (call :meth:`load_clusters` to look again)."""
        return list(self.clusters)

    def new_cluster(self, **kwargs: Any) -> tuple[str, Cluster]:
        """A new :class:`Cluster` (not started), with its key."""
        cluster = Cluster(**kwargs)
        key = _key(cluster.profile, cluster.cluster_id)
        self.clusters[key] = cluster
        return key, cluster

    def get_cluster(self, key: str) -> Cluster:
        """The cluster of ``key`` (``KeyError`` if unknown)."""
        return self.clusters[key]

    def remove_cluster(self, key: str) -> Cluster:
        """Forget the cluster of ``key`` (it is not stopped) and return it."""
        return self.clusters.pop(key)
