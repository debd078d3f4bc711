"""The hub's relay of the engines' task start notifications, on only while followed.

Why: ``TASK_STARTED`` and ``TASK_FINISHED`` happen in an engine, and only the engine
knows when a task starts (the queues and the hub see requests pass and replies come
back, not the moment between). Other processes hear them through the hub, which already
owns the cluster's notification feed: engines bridge them to the hub, and the hub
re-posts them on its center, from which its bridge carries them on the feed's task topic
(:data:`~..events.TASK_FEED_TOPIC`).

Each of those steps costs something per task, so none of them runs unless a process
follows tasks. The feed is an XPUB socket: the hub sees the first subscription to the
task topic and the last unsubscription from it (:meth:`TaskRelay.want`; the topic itself,
not a prefix of it: a subscriber to everything did not ask for tasks), and tells the
engines with a ``task_feed_notification`` (again each heartbeat while it lasts, for an
engine whose subscription was not in yet; and in each registration reply). See
:mod:`..events` for what a follower hears.
"""

from __future__ import annotations

import logging
from typing import Any

from corral.notification.bridge import BridgeSender, decode_notification
from corral.transports.zmq.bridge import FEED_MSG_TYPE, FeedPublisher, feed_payload

from ..events import TASK_FEED_STATE, TASK_FEED_TOPIC, TASK_FEED_TYPES

__all__ = ["TaskRelay"]

log = logging.getLogger("corral.plugins.parallel.controller.taskfeed")

#: The ``info`` keys of a task start notification, exactly.
_INFO_KEYS = frozenset({"msg_id", "msg_type", "engine_id"})


class TaskRelay:
    """Relays engines' task start notifications while some process follows them.

    ``hub`` is the :class:`~.hub.Hub`: its center, its feed socket and session, its
    engines by uuid. Used from the hub's thread only (the feed socket's owner).
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        #: Whether some process subscribes the feed's task topic.
        self.wanted = False
        #: Task notifications received from engines and re-posted.
        self.relayed = 0
        #: Messages refused: from no registered engine, not a task notification, or
        #: naming another engine than the one that sent it.
        self.refused = 0
        self._bus: BridgeSender | None = None

    @property
    def sent(self) -> int:
        """Task notifications published on the feed by the current bridge (0: none)."""
        return 0 if self._bus is None else self._bus.sent

    def want(self, wanted: bool) -> None:
        """Follow the feed's subscriptions: bridge the task types and tell the engines
        on a change; nothing otherwise."""
        if wanted == self.wanted:
            return
        self.wanted = wanted
        hub = self.hub
        if wanted:
            self._bus = BridgeSender(
                FeedPublisher(hub.notification, hub.session, TASK_FEED_TOPIC),
                hub.center,
                TASK_FEED_TYPES,
                sender=hub,
            )
        elif self._bus is not None:
            self._bus.close()
            self._bus = None
        self.announce()

    def announce(self) -> None:
        """Tell every engine whether to send its task notifications."""
        self.hub.publish(TASK_FEED_STATE, {"wanted": self.wanted})

    def beat(self) -> None:
        """Once per heartbeat: say "wanted" again, for engines that registered before
        their subscription to the feed took effect and so missed the change."""
        if self.wanted:
            self.announce()

    def receive(self, ident: bytes, content: dict[str, Any]) -> None:
        """A ``bus_notification`` from the engine ``ident``: re-post it on the hub's center
        (and so on the feed) if it is that engine's task notification."""
        engine_id = self.hub.by_uuid.get(ident)
        payload = feed_payload(FEED_MSG_TYPE, content)
        if engine_id is None or payload is None:
            self._refuse("from no registered engine, or without a notification")
            return
        try:
            kind, _, info = decode_notification(payload)
        except (ValueError, LookupError) as exc:
            self._refuse(str(exc))
            return
        if (
            kind not in TASK_FEED_TYPES
            or info.keys() != _INFO_KEYS
            or info["engine_id"] != engine_id
        ):
            self._refuse(f"not engine {engine_id}'s task notification")
            return
        self.relayed += 1
        self.hub.center.post(kind, self.hub, **info)

    def _refuse(self, why: str) -> None:
        self.refused += 1
        log.debug("hub: refused an engine's bus notification: %s", why)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
