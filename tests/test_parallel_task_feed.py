"""Task starts cross processes only while followed: a real controller and engines.

A client whose process observes ``TASK_STARTED``/``TASK_FINISHED`` (or a
``watch_cluster(..., tasks=True)``) hears them from every engine, through the hub, for
direct, load-balanced and broadcast tasks; with nobody following, no engine sends any.
The hub's side on its own (a controller in this process, fake peers): it relays only
while its task topic has a subscriber, and only what an engine says of itself.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from helpers import JsonLines
from observers import NoticeLog
from parallel_client_harness import LiveCluster
from parallel_fakes import FakeClient, FakeEngine

from corral.notification import shared_center
from corral.notification.bridge import decode_notification, encode_notification
from corral.plugins.parallel import events
from corral.plugins.parallel.client import Client
from corral.plugins.parallel.clusterfile import read_cluster_file
from corral.plugins.parallel.controller import ControllerHandle, start_controller
from corral.plugins.parallel.engine._wire import Replier
from corral.plugins.parallel.engine.taskfeed import _ToHub
from corral.transports.zmq.bridge import FEED_MSG_TYPE, FeedSubscriber
from corral.transports.zmq.door import HUB, cluster_signer
from corral.transports.zmq.gate import gate_for
from corral.transports.zmq.session import Session

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0
#: How long one warm-up round waits for the engines' first notifications.
ROUND = 2.0


class Starts(NoticeLog):
    """The task start types, and whether a task has finished on enough engines."""

    def finished(self, msg_id: str, engines: int = 1) -> bool:
        """Whether ``engines`` engines have finished ``msg_id`` (waits for it)."""

        def done() -> bool:
            return sum(k == events.TASK_FINISHED for k, _, _ in self.about(msg_id)) >= engines

        return self.wait(done, WAIT)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveCluster]:
    cluster = LiveCluster(tmp_path / "corral", n=2, threads=True)
    yield cluster
    cluster.stop()


@pytest.fixture
def starts() -> Iterator[Starts]:
    rec = Starts()
    for kind in events.TASK_FEED_TYPES:
        shared_center.add_observer(rec, kind)
    yield rec
    for kind in events.TASK_FEED_TYPES:
        shared_center.remove_observer(rec, kind)


def square(x: int) -> int:
    return x * x


def feed_state() -> tuple[bool, int, bool]:
    """Engine side: (bridge open, notifications sent to the hub, task posts observed)."""
    from corral.plugins.parallel.engine.bound import current_engine

    engine = current_engine()
    return engine.task_feed.on, engine.task_feed.sent, engine._observed


def follow(rc: Client, rec: Starts) -> None:
    """Submit to every engine until each one's task starts are heard: the subscription
    made at the first submission reaches the hub, then the engines, in a few ms."""
    for _ in range(int(WAIT / ROUND)):
        result = rc[:].apply_async(square, 2)
        assert result.get(timeout=WAIT) == [4, 4]
        ids, engines = set(result.msg_ids), set(rc.ids)

        def heard(ids: set[str] = ids, engines: set[int] = engines) -> bool:
            return {i["engine_id"] for _, _, i in rec.seen if i["msg_id"] in ids} == engines

        if rec.wait(heard, ROUND):
            return
    pytest.fail("the engines' task starts were never heard")


def assert_in_order(rec: Starts, msg_id: str, msg_type: str, engine_ids: set[int]) -> None:
    """Each engine's STARTED then FINISHED for ``msg_id``, once each, relayed by the hub."""
    seen = rec.about(msg_id)
    assert {i["engine_id"] for _, _, i in seen} == engine_ids
    for engine_id in engine_ids:
        kinds = [k for k, _, i in seen if i["engine_id"] == engine_id]
        assert kinds == [events.TASK_STARTED, events.TASK_FINISHED]
    assert {s for _, s, _ in seen} == {"hub"}
    assert all(i["msg_type"] == msg_type for _, _, i in seen)


def test_nothing_is_sent_for_task_starts_while_nobody_follows(live: LiveCluster) -> None:
    """A connected client that observes nothing: no engine opens its bridge, observes
    its own task posts, or sends the hub a task notification."""
    rc = live.client
    assert not shared_center.has_observers(events.TASK_STARTED, "hub")
    assert rc[:].apply_sync(square, 3) == [9, 9]
    assert rc.load_balanced_view().apply_async(square, 4).get(timeout=WAIT) == 16
    assert rc.broadcast_view().apply_async(square, 5).get(timeout=WAIT) == [25, 25]
    assert rc[:].apply_sync(feed_state) == [(False, 0, False), (False, 0, False)]


def test_a_client_hears_task_starts_of_direct_balanced_and_broadcast_tasks(
    live: LiveCluster, starts: Starts
) -> None:
    rc = live.client
    follow(rc, starts)
    assert all(on for on, _, _ in rc[:].apply_sync(feed_state))

    direct = rc[1].apply_async(square, 6)
    assert direct.get(timeout=WAIT) == 36
    assert starts.finished(direct.msg_ids[0])
    assert_in_order(starts, direct.msg_ids[0], "apply_request", {1})

    balanced = rc.load_balanced_view().apply_async(square, 7)
    assert balanced.get(timeout=WAIT) == 49
    assert starts.finished(balanced.msg_ids[0])
    assert_in_order(starts, balanced.msg_ids[0], "apply_request", {balanced.engine_id})

    broadcast = rc.broadcast_view().apply_async(square, 8)
    assert broadcast.get(timeout=WAIT) == [64, 64]
    assert starts.finished(broadcast.msg_ids[0], engines=2)
    assert_in_order(starts, broadcast.msg_ids[0], "apply_request", {0, 1})

    executed = rc[0].execute("y = 1", block=False)
    executed.get(timeout=WAIT)
    assert starts.finished(executed.msg_ids[0])
    assert_in_order(starts, executed.msg_ids[0], "execute_request", {0})


def test_engines_stop_sending_once_nobody_follows(live: LiveCluster, starts: Starts) -> None:
    rc = live.client
    follow(rc, starts)
    for kind in events.TASK_FEED_TYPES:
        shared_center.remove_observer(starts, kind)
    # The next submission unsubscribes; the hub tells the engines, which close their
    # bridges at their next task.
    for _ in range(1000):
        states = rc[:].apply_sync(feed_state)
        if not any(on for on, _, _ in states):
            break
    else:
        pytest.fail(f"the engines kept sending: {states}")
    sent = [count for _, count, _ in states]
    assert all(count > 0 for count in sent)
    rc[:].apply_sync(square, 2)
    assert [count for _, count, _ in rc[:].apply_sync(feed_state)] == sent


WATCHER = """
import json, sys
from corral.notification import shared_center
from corral.plugins.parallel import events
from corral.plugins.parallel.bus import watch_cluster

def show(type, sender, /, **info):
    print(json.dumps([type, sender, info]), flush=True)

for kind in events.TASK_FEED_TYPES:
    shared_center.add_observer(show, kind)
with watch_cluster(sys.argv[1], tasks=True):
    print(json.dumps(["ready", None, {}]), flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_a_watch_that_follows_tasks_hears_them_in_another_process(live: LiveCluster) -> None:
    """Not a client: ``watch_cluster(tasks=True)`` alone makes the engines send, while
    the test's client observes nothing."""
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(live.cluster_file)],
        env=dict(live.env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = JsonLines(watcher)
        assert lines.wait(lambda: any(line[0] == "ready" for line in lines.seen))
        rc = live.client
        for _ in range(int(WAIT / ROUND)):
            result = rc.load_balanced_view().apply_async(square, 3)
            assert result.get(timeout=WAIT) == 9
            msg_id = result.msg_ids[0]

            def finished(msg_id: str = msg_id) -> bool:
                return any(line[0] == events.TASK_FINISHED for line in lines.of(msg_id))

            if lines.wait(finished, ROUND):
                break
        else:
            pytest.fail("the watcher never heard a task start")
        seen = lines.of(msg_id)
        assert [line[0] for line in seen] == [events.TASK_STARTED, events.TASK_FINISHED]
        assert {line[1] for line in seen} == {"hub"}
        assert {line[2]["engine_id"] for line in seen} == {result.engine_id}
    finally:
        if watcher.stdin is not None:
            watcher.stdin.close()
        assert watcher.wait(WAIT) == 0


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerHandle]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    handle = start_controller("test", mode="threads", db="memory")
    yield handle
    handle.stop()


def say(engine: FakeEngine, kind: str, engine_id: int | None, msg_id: str) -> None:
    """What an engine's task feed sends the hub (engine/taskfeed.py), from ``engine``."""
    info = {"msg_id": msg_id, "msg_type": "apply_request", "engine_id": engine_id}
    payload = encode_notification(kind, "engine", info).decode()
    engine.session.send(
        engine.socks["registration"],
        FEED_MSG_TYPE,
        {"notification": payload},
        dest=HUB,
        run=engine.run,  # what its registration reply named (door.RUN)
    )


def test_the_hub_relays_while_followed_and_only_what_an_engine_says_of_itself(
    controller: ControllerHandle,
) -> None:
    info = read_cluster_file(controller.cluster_file)
    relay = controller._threads.components["hub"].task_relay  # type: ignore[union-attr]
    client = FakeClient(info)  # subscribes to everything: that is not following tasks
    engine, other = FakeEngine(info), FakeEngine(info)
    peers: list[Any] = [client, engine, other]
    try:
        engine.register()
        other.register()

        def settle(done: Any) -> None:
            """Round trips to the hub (each one more turn of its loop) until ``done()``."""
            for _ in range(2000):
                if done():
                    return
                client.ask("connection_request")
            assert done()

        say(engine, events.TASK_STARTED, engine.id, "unfollowed")
        settle(lambda: relay.relayed == 1)  # posted in the hub's process only
        assert not relay.wanted and relay.sent == 0

        session = Session(info.key, username="follower", signer=cluster_signer(info.key))
        follower = FeedSubscriber(
            info.url("notification"),
            session,
            secure=gate_for(info).client,
            topics=(events.TASK_FEED_TOPIC,),
        )
        try:
            settle(lambda: relay.wanted)
            say(engine, events.TASK_STARTED, engine.id, "m1")
            say(other, events.TASK_STARTED, engine.id, "forged")  # names another engine
            say(engine, events.TASK_FINISHED, engine.id, "m1")
            heard = [decode_notification(follower.recv(WAIT) or b"") for _ in range(2)]
            expected = {"msg_id": "m1", "msg_type": "apply_request", "engine_id": engine.id}
            assert heard == [
                (events.TASK_STARTED, "hub", expected),
                (events.TASK_FINISHED, "hub", expected),
            ]
            # The counters move after the sends the follower already heard, and the
            # forgery comes on another connection (served in any order).
            settle(lambda: relay.sent == 2 and relay.refused == 1)
        finally:
            follower.close()
        settle(lambda: not relay.wanted)
    finally:
        for peer in peers:
            peer.close()


class _EngineSide:
    """What ``_ToHub`` uses of an engine: its signer and its registration socket, here
    a real DEALER whose controller is gone (no peer: a send that must not wait fails)."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.replier = Replier(cluster_signer(b"k" * 32), "session", "engine")
        self.controller_run = "run"
        self.registration = ctx.socket(zmq.DEALER)
        self.registration.linger = 0


def test_dropped_task_notifications_are_reported_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A controller gone (its socket takes nothing): the feed drops rather than
    blocks the engine, and says so in the engine's log, once per interval with a count."""
    ctx = zmq.Context()
    engine = _EngineSide(ctx)
    try:
        feed = _ToHub(engine)
        with caplog.at_level(logging.WARNING, logger="corral.plugins.parallel.engine.taskfeed"):
            for _ in range(50):
                feed.send(b'{"type": "task_started"}')
        assert feed.dropped == 50
        lines = [r.getMessage() for r in caplog.records if "task feed" in r.getMessage()]
        assert len(lines) == 1, lines  # the first drop at once, the rest counted
        assert "dropped task notifications" in lines[0] and "for the hub" in lines[0]
        feed._drops.flush()
        later = [r.getMessage() for r in caplog.records if "task feed" in r.getMessage()]
        assert "dropped 49 task notifications" in later[-1]
    finally:
        engine.registration.close()
        ctx.term()
