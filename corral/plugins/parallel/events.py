"""Notification types of the parallel layer: engines coming and going, tasks, output.

The cluster speaks on the bus (:mod:`corral.notification`): each notification is posted
on the process-wide center (``shared_center``) of the process where it happens, with the
keywords below as ``info``. Every type is a plain string, so it crosses processes
unchanged through the notification bridge, and every ``info`` value is JSON.

The engine types (:data:`ENGINE_TYPES`) happen in the hub: the hub posts them on its
center, and its bridge carries them on the cluster's signed notification feed to every
client, which re-posts them in its process (sender: the name ``"hub"``), and to any
process that calls :func:`corral.plugins.parallel.bus.watch_cluster`.

A post nobody observes costs one dict lookup (the center's promise). The engine asks
whether its task notifications are observed once per wake-up of its loop, not per task,
so an unobserved burst pays nothing; an observer registered by a task hears from the next
burst on. The client posts one per submission and one per reply or output message, from
its I/O thread: observers there must be quick and must not block.

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
``TASK_STARTED``             engine       msg_id, msg_type, engine_id
``TASK_FINISHED``            engine       msg_id, msg_type, engine_id
``TASK_COMPLETED``           client       msg_id, msg_type, engine_id, status (``"ok"``,
                                          ``"error"``, ``"aborted"``)
``OUTPUT``                   client       msg_id, engine_id, msg_type (iopub type:
                                          ``stream``, ``display_data``, ``error`` ...),
                                          content
===========================  ===========  =================================================

In the hub's process the sender is the :class:`~.controller.hub.Hub`; in the client
process it is the :class:`~.client.client.Client` (the hub's, re-posted: ``"hub"``); in
the engine process it is the :class:`~.engine.engine.Engine`. Over the bridge all arrive
as names.

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
