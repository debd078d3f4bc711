"""An engine's task start notifications to the hub, only while some process follows them.

Why: ``TASK_STARTED`` and ``TASK_FINISHED`` happen here, and the engine already posts
them only when its center has observers (asked once per wake-up of the main loop, see
``Engine._refresh_observed``). While the hub says some process follows tasks
(``task_feed`` in the registration reply, ``task_feed_notification`` on the feed, heard by
the hub watch's thread), :class:`TaskFeed` is such an observer: a
:class:`~corral.notification.bridge.BridgeSender` that sends each post to the hub as a
signed ``bus_notification`` on the registration socket, which the main thread owns, as
it owns the posts. Otherwise no bridge exists, nothing observes the posts, and a task
costs what it cost before. See :mod:`..events` and :mod:`..controller.taskfeed`.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from corral.notification.bridge import BridgeSender
from corral.transports.zmq import wire
from corral.transports.zmq.bridge import FEED_MSG_TYPE
from corral.transports.zmq.door import HUB
from corral.transports.zmq.gate import RefusalLog

from ..events import TASK_FEED_TYPES
from ._wire import send_frames

__all__ = ["TaskFeed"]

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)


class _ToHub:
    """The bridge transport: one signed ``bus_notification`` to the hub per post.

    A notification is not worth waiting for: one the socket cannot take at once (the
    controller gone, or far behind) is dropped, counted in :attr:`dropped` and reported
    in the engine's log, rate-limited (whoever follows task starts misses it, and
    should be able to learn why)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.dropped = 0
        self._drops = RefusalLog(log, "task feed", verb="dropped", peer_word="for")

    def send(self, data: bytes) -> None:
        engine = self._engine
        content = wire.json_dumps({"notification": data.decode("utf-8")})
        # Named for this controller run (door.RUN), as every message to the hub: one
        # made for a controller since restarted is refused by the new one.
        frames = engine.replier.frames(
            (), FEED_MSG_TYPE, b"{}", b"{}", content, dest=HUB, run=engine.controller_run
        )
        try:
            send_frames(engine.registration, frames, _NOBLOCK)
        except zmq.ZMQError as error:
            self.dropped += 1
            self._drops.refused(
                f"task notifications (the hub's socket took none: {error})", "the hub"
            )

    def recv(self, timeout: float | None) -> bytes | None:
        raise EOFError("an engine's task feed only sends")

    def close(self) -> None:
        pass  # the registration socket is the engine's


class TaskFeed:
    """Whether the hub wants this engine's task notifications, and the bridge that sends
    them while it does.

    :attr:`wanted` is written by whoever hears the hub (a plain bool: the registration
    reply in the main thread, the hub watch's thread); :meth:`sync` follows it, in the
    main thread only, once per wake-up of its loop.
    """

    __slots__ = ("_bus", "_done", "_engine", "on", "wanted")

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        #: What the hub said last: some process follows tasks.
        self.wanted = False
        #: Whether the bridge is open (what ``wanted`` was at the last :meth:`sync`).
        self.on = False
        self._bus: BridgeSender | None = None
        self._done = 0

    @property
    def sent(self) -> int:
        """Notifications sent to the hub in this engine's life."""
        return self._done + (0 if self._bus is None else self._bus.sent)

    def sync(self) -> None:
        """Open the bridge, or close it, as :attr:`wanted` says (main thread)."""
        wanted = self.wanted
        if wanted and self._bus is None:
            engine = self._engine
            self._bus = BridgeSender(_ToHub(engine), engine.center, TASK_FEED_TYPES, sender=engine)
        elif not wanted and self._bus is not None:
            self._done += self._bus.sent
            self._bus.close()
            self._bus = None
        self.on = wanted

    def close(self) -> None:
        self.wanted = False
        self.sync()
