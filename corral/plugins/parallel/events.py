"""Notification types of the parallel layer: engines coming and going, tasks, output.

The cluster speaks on the bus (:mod:`corral.notification`): each notification is posted
on the process-wide center (``shared_center``) of the process where it happens, with the
keywords below as ``info``. Every type is a plain string, so it crosses processes
unchanged through the notification bridge, and every ``info`` value is JSON.

The engine types (:data:`ENGINE_TYPES`) happen in the hub: the hub posts them on its
center, and its bridge carries them on the cluster's signed notification feed to every
client, which re-posts them in its process (sender: the name ``"hub"``), and to any
process that calls :func:`corral.plugins.parallel.bus.watch_cluster`.

The task start types (:data:`TASK_FEED_TYPES`: ``TASK_STARTED``, ``TASK_FINISHED``)
happen in an engine, which posts them on its own center. They cross to other processes
only while some process *follows* them: a client in whose process a post from ``"hub"``
would reach an observer, or a ``watch_cluster(..., tasks=True)``. Such a process
subscribes the feed's task topic (:data:`TASK_FEED_TOPIC`, by its name: a subscription
to everything does not count, it would make a raw monitor cost two messages per task);
the hub sees the subscription (its feed is an XPUB socket) and tells the engines
(``task_feed_notification`` ``{"wanted": true}`` on the feed, repeated each heartbeat
while it lasts, and ``task_feed`` in each registration reply). Each engine then bridges
its two task types to the hub (``bus_notification`` on its registration socket), and the
hub re-posts them on its center, sender the hub, and carries them on the feed's task
topic. When the last follower unsubscribes the hub says ``{"wanted": false}`` once and
the engines close their bridges.
Nobody following costs nothing per task anywhere: no engine observes its task posts, no
message leaves it for them. A follower hears the tasks that start once the engines heard
it (a few milliseconds, at most a heartbeat period), not those running before.

===========================  ===========  =================================================
type                         posted in    info keywords
===========================  ===========  =================================================
``ENGINE_REGISTERED``        hub, engine  engine_id, uuid
``ENGINE_RESTARTED``         hub          engine_id, uuid, previous_engine_id,
                                          previous_uuid (its monitor restarted a
                                          dead engine; after its ENGINE_REGISTERED)
``ENGINE_UNREGISTERED``      hub          engine_id, uuid, reason (``"shutdown"``)
``ENGINE_DIED``              hub          engine_id, uuid, reason (``"heartbeat"``,
                                          ``"exited"`` or ``"died"``)
``TASK_SUBMITTED``           client       msg_ids (list), msg_type, channel
``TASK_STARTED``             engine, hub  msg_id, msg_type, engine_id (hub: relayed
                                          while followed, see above)
``TASK_FINISHED``            engine, hub  msg_id, msg_type, engine_id (likewise)
``TASK_COMPLETED``           client       msg_id, msg_type, engine_id, status (``"ok"``,
                                          ``"error"``, ``"aborted"``)
``OUTPUT``                   client       msg_id, engine_id, msg_type (iopub type:
                                          ``stream``, ``display_data``, ``error`` ...),
                                          content
===========================  ===========  =================================================

In the hub's process the sender is the :class:`~.controller.hub.Hub` (also of the task
start types it relays); in the client process it is the :class:`~.client.client.Client`
(the hub's, re-posted, and the relayed task start types: ``"hub"``); in the engine
process it is the :class:`~.engine.engine.Engine`. Over the bridge all arrive as names.
A task's ``TASK_STARTED`` and ``TASK_FINISHED`` reach a follower in that order (one
engine, one path); its ``TASK_COMPLETED`` comes by another path (the reply) and may
arrive before its ``TASK_FINISHED``.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ENGINE_DIED",
    "ENGINE_REGISTERED",
    "ENGINE_RESTARTED",
    "ENGINE_TYPES",
    "ENGINE_UNREGISTERED",
    "LOCAL_FEEDS",
    "OUTPUT",
    "PARALLEL_TYPES",
    "TASK_COMPLETED",
    "TASK_FEED_STATE",
    "TASK_FEED_TOPIC",
    "TASK_FEED_TYPES",
    "TASK_FINISHED",
    "TASK_STARTED",
    "TASK_SUBMITTED",
    "post_unregistration",
]

ENGINE_REGISTERED = "parallel.engine.registered"
ENGINE_UNREGISTERED = "parallel.engine.unregistered"
ENGINE_DIED = "parallel.engine.died"
ENGINE_RESTARTED = "parallel.engine.restarted"
TASK_SUBMITTED = "parallel.task.submitted"
TASK_STARTED = "parallel.task.started"
TASK_FINISHED = "parallel.task.finished"
TASK_COMPLETED = "parallel.task.completed"
OUTPUT = "parallel.output"

#: Every type the parallel layer posts, for plugins that observe or bridge them all.
PARALLEL_TYPES = (
    ENGINE_REGISTERED,
    ENGINE_UNREGISTERED,
    ENGINE_DIED,
    ENGINE_RESTARTED,
    TASK_SUBMITTED,
    TASK_STARTED,
    TASK_FINISHED,
    TASK_COMPLETED,
    OUTPUT,
)

#: What the hub posts, and its bridge carries to other processes.
ENGINE_TYPES = (ENGINE_REGISTERED, ENGINE_UNREGISTERED, ENGINE_DIED, ENGINE_RESTARTED)

#: What an engine bridges to the hub while some process follows tasks (see above).
TASK_FEED_TYPES = (TASK_STARTED, TASK_FINISHED)

#: The feed topic of the relayed task notifications. Not a prefix of any other topic, nor
#: any other of it: a subscription to the engine notifications does not follow tasks.
TASK_FEED_TOPIC = b"bus_task"

#: What the hub tells engines on the feed (also its topic): ``{"wanted": bool}``.
TASK_FEED_STATE = "task_feed_notification"

#: What the hub tells an engine it dropped whose beats still come (also its topic, which
#: no client subscribes to): ``{"id", "uuid", "reason"}``. Its connection broke for a
#: while, and the ``unregistration_notification`` went with it: the engine registers
#: again (an engine that read that notice, its host stalled, exits instead).
ENGINE_DROPPED = "engine_dropped_notification"

#: Session ids of the hubs serving in this process (a controller in threads mode): a client
#: here does not re-post what they send, since they posted it here already.
LOCAL_FEEDS: set[str] = set()

#: Why the hub unregisters an engine that did not ask to leave (its monitor says "died").
_DEATHS = frozenset({"heartbeat", "exited", "died"})


def post_unregistration(center: Any, sender: Any, engine_id: int, content: dict[str, Any]) -> None:
    """Post a hub's ``unregistration_notification`` as ``ENGINE_DIED`` or
    ``ENGINE_UNREGISTERED``, by the reason it gives."""
    reason = str(content.get("reason") or "shutdown")
    kind = ENGINE_DIED if reason in _DEATHS else ENGINE_UNREGISTERED
    center.post(kind, sender, engine_id=engine_id, uuid=content.get("uuid"), reason=reason)
