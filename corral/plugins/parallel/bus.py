"""Hear a cluster's engine notifications in any process: :func:`watch_cluster`.

The hub posts engine arrivals and departures (:data:`.events.ENGINE_TYPES`) on its own
notification center, and its bridge publishes them on the cluster's notification feed.
A client re-posts them by itself; a process that is not a client (a monitor, a dashboard,
a frontend) calls :func:`watch_cluster` with the cluster file, and the same notifications
are posted on its center by a receiver thread, sender ``"hub"``.

With ``tasks=True`` the watch also follows tasks: it subscribes the feed's task topic,
so the engines send their ``TASK_STARTED`` and ``TASK_FINISHED`` through the hub (sender
``"hub"`` here too) until the watch closes. Nothing is sent for them while no process
follows tasks (:mod:`.events`).

The feed is a cluster socket like every other: behind the cluster's gate, and every
message admitted by the door (signature, replay, the ``notifications`` role), so only a
process holding the cluster key can hear it or speak on it.

ZeroMQ subscriptions take effect a moment after connecting: what the hub posted before
then is not heard (ask a client for the current engines; notifications tell what
changes).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
from typing import Any

from corral.notification import NotificationCenter, shared_center
from corral.notification.bridge import BridgeReceiver
from corral.transports.zmq.bridge import FEED_TOPIC, FeedSubscriber
from corral.transports.zmq.door import cluster_signer
from corral.transports.zmq.gate import gate_for
from corral.transports.zmq.session import Session

from .clusterfile import ClusterInfo, read_cluster_file
from .events import TASK_FEED_TOPIC

__all__ = ["ClusterWatch", "watch_cluster"]


class ClusterWatch:
    """A running watch: the feed subscriber and the thread re-posting from it.

    :meth:`close` (or leaving a ``with`` block) stops the thread and closes the socket.
    """

    def __init__(self, transport: FeedSubscriber, receiver: BridgeReceiver) -> None:
        self.transport = transport
        self.receiver = receiver

    @property
    def received(self) -> int:
        """Notifications posted so far."""
        return self.receiver.received

    def close(self) -> None:
        self.transport.close()  # wakes the receiver, which then ends
        self.receiver.close()

    def __enter__(self) -> ClusterWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_cluster(
    cluster: ClusterInfo | dict[str, Any] | str | os.PathLike[str],
    center: NotificationCenter = shared_center,
    *,
    tasks: bool = False,
) -> ClusterWatch:
    """Post the engine notifications of ``cluster`` (a cluster file, its path or its
    dict) on ``center`` until the returned watch is closed; with ``tasks``, the task
    start notifications of its engines too (:data:`.events.TASK_FEED_TYPES`)."""
    if isinstance(cluster, dict):
        info = ClusterInfo.from_dict(cluster)
    elif isinstance(cluster, ClusterInfo):
        info = cluster
    else:
        info = read_cluster_file(cluster)
    scheme = info.signature_scheme
    session = Session(
        info.key, scheme=scheme, username="corral-watch", signer=cluster_signer(info.key, scheme)
    )
    topics = (FEED_TOPIC, TASK_FEED_TOPIC) if tasks else (FEED_TOPIC,)
    transport = FeedSubscriber(
        info.url("notification"), session, secure=gate_for(info).client, topics=topics
    )
    return ClusterWatch(transport, BridgeReceiver(transport, center))
