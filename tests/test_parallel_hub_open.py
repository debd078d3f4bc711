"""The hub's notification socket: the hub registers no engine before every queue follows
its notifications, and its bus feed runs only while somebody subscribes to it.

Why: a queue learns which engines exist only from the hub's ``registration_notification``
(a PUB/SUB feed). When a controller is restarted, the engines of the dead one reconnect
to the new hub as soon as it binds and register again within milliseconds, before the
queues have even started; a notification published then reaches no queue, which then
answers every direct task for that engine with "no such engine" (or parks its replies
for ever). The hub therefore waits for each queue's marker subscription
(:func:`~corral.plugins.parallel.controller.base.ready_topic`) before it beats or reads
a registration. These tests drive a real hub on 127.0.0.1 with real sockets.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from helpers import until

from corral.notification import NotificationCenter
from corral.plugins.parallel import events
from corral.plugins.parallel.controller.base import (
    STOP,
    ControlPipe,
    control_pipe,
    ready_topic,
)
from corral.plugins.parallel.controller.hub import READY_TIMEOUT, Hub
from corral.plugins.parallel.controller.taskdb import open_taskdb
from corral.plugins.parallel.engine._wire import Replier, recv_message
from corral.transports.zmq import wire
from corral.transports.zmq.bridge import FEED_TOPIC, FeedSubscriber
from corral.transports.zmq.door import HUB, cluster_signer
from corral.transports.zmq.frames import send_frames
from corral.transports.zmq.session import Session

pytestmark = pytest.mark.timeout(60)

KEY = os.urandom(32)
#: Long enough for a hub that ignores the rule to answer many times over on loopback.
QUIET_MS = 500
#: Shorter than the hub's READY_TIMEOUT: what opened the hub was the queue, not the clock.
ANSWER_MS = int(READY_TIMEOUT * 1000) // 2


class RunningHub:
    """A hub serving in a thread, with the queues it waits for named by the test."""

    def __init__(self, queues: tuple[str, ...]) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.center = NotificationCenter()
        self.hub = Hub(
            key=KEY, db=open_taskdb("memory"), hb_period=0.2, queues=queues, center=self.center
        )
        self.ports = self.hub.bind(self.ctx)
        self.control, child_end = control_pipe()
        self.thread = threading.Thread(target=self._serve, args=(child_end,), daemon=True)
        self.thread.start()

    def _serve(self, child_end: ControlPipe) -> None:
        self.hub.serve(child_end)

    def url(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        self.control.send(STOP)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the hub did not stop"
        self.ctx.term()


@pytest.fixture
def start_hub() -> Iterator[Any]:
    running: list[RunningHub] = []

    def start(queues: tuple[str, ...]) -> RunningHub:
        running.append(RunningHub(queues))
        return running[-1]

    yield start
    for hub in running:
        hub.stop()


def follower(hub: RunningHub, queue: str) -> zmq.Socket[Any]:
    """A SUB socket that follows engine notifications as a queue does (marker last)."""
    sock = hub.ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.subscribe(b"registration_notification")
    sock.subscribe(ready_topic(queue))
    sock.connect(hub.url("notification"))
    return sock


def register(hub: RunningHub) -> tuple[zmq.Socket[Any], str]:
    """Send an engine's registration; the DEALER it went out on and the engine's uuid."""
    engine_uuid = uuid.uuid4().hex
    sock = hub.ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.identity = engine_uuid.encode("ascii")
    sock.connect(hub.url("registration"))
    replier = Replier(cluster_signer(KEY), wire.new_id(), "engine")
    content = {"uuid": engine_uuid, "hostname": "here", "pid": os.getpid(), "data_url": ""}
    frames = replier.frames(
        (), "registration_request", b"{}", b"{}", wire.json_dumps(content), dest=HUB
    )
    send_frames(sock, frames)
    return sock, engine_uuid


def registration_reply(sock: zmq.Socket[Any], wait_ms: int) -> dict[str, Any] | None:
    if not sock.poll(wait_ms):
        return None
    msg = recv_message(sock, cluster_signer(KEY), None, zmq.NOBLOCK)
    assert msg.msg_type == "registration_reply"
    return msg.content


def test_no_registration_is_answered_before_every_queue_follows(start_hub: Any) -> None:
    hub = start_hub(("mux", "task"))
    sock, engine_uuid = register(hub)
    mux = follower(hub, "mux")
    assert registration_reply(sock, QUIET_MS) is None, "registered with the task queue away"
    task = follower(hub, "task")
    reply = registration_reply(sock, ANSWER_MS)
    assert reply is not None and reply["status"] == "ok"
    # Both queues hear of the engine: neither would refuse its tasks.
    for queue in (mux, task):
        assert queue.poll(ANSWER_MS), "the queue was not told of the engine"
        topic, *_ = queue.recv_multipart()
        assert topic == b"registration_notification"
    assert hub.hub.by_uuid == {engine_uuid.encode("ascii"): reply["id"]}


def test_the_hub_does_not_beat_before_the_queues_follow(start_hub: Any) -> None:
    hub = start_hub(("mux",))
    beats = hub.ctx.socket(zmq.SUB)
    beats.linger = 0
    beats.subscribe(b"")
    beats.connect(hub.url("hb_ping"))
    # Engines of a dead controller register again on a new hub's first beat.
    assert not beats.poll(QUIET_MS), "the hub beat before its queues could hear of engines"
    mux = follower(hub, "mux")
    assert beats.poll(ANSWER_MS), "the hub never beat once the queue followed"
    mux.close()


def test_a_hub_with_no_queues_to_wait_for_opens_at_once(start_hub: Any) -> None:
    hub = start_hub(())
    sock, _ = register(hub)
    reply = registration_reply(sock, ANSWER_MS)
    assert reply is not None and reply["status"] == "ok"


def test_the_bus_feed_runs_only_while_somebody_subscribes(start_hub: Any) -> None:
    hub = start_hub(())
    registration, _ = register(hub)
    assert registration_reply(registration, ANSWER_MS) is not None
    # Nobody follows the feed: the hub's posts have no observer, so they cost nothing.
    assert not hub.center.has_observers(events.ENGINE_REGISTERED)
    session = Session(KEY, username="test-feed", signer=cluster_signer(KEY))
    feed = FeedSubscriber(hub.url("notification"), session, context=hub.ctx)
    try:
        wait_until(lambda: hub.center.has_observers(events.ENGINE_REGISTERED))
        # A subscriber to everything (a client) counts too, and a registration reaches it.
        everything = hub.ctx.socket(zmq.SUB)
        everything.linger = 0
        everything.subscribe(b"")
        everything.connect(hub.url("notification"))
        registration, engine_uuid = register(hub)
        assert registration_reply(registration, ANSWER_MS) is not None
        data = feed.recv(ANSWER_MS / 1000)
        assert data is not None and engine_uuid.encode("ascii") in data
        topics = set()
        while everything.poll(ANSWER_MS) and FEED_TOPIC not in topics:
            topics.add(everything.recv_multipart()[0])
        assert FEED_TOPIC in topics
        everything.close()
    finally:
        feed.close()
    # The last feed subscriber gone: the bridge stops observing.
    wait_until(lambda: not hub.center.has_observers(events.ENGINE_REGISTERED))


def wait_until(condition: Any) -> None:
    """Poll ``condition`` (the hub's thread changes it on a subscription) up to
    ANSWER_MS; the hub reads subscriptions as they come, so this ends in milliseconds."""
    until(condition, ANSWER_MS / 1000, what="the hub did not follow its subscriptions")
