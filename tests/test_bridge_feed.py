"""The cluster feed end of the bridge: one publisher, any number of subscribers, every
message admitted through the door (signature, replay, role)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from corral.notification import NotificationCenter
from corral.notification.bridge import BridgeReceiver, BridgeSender, BridgeTransport
from corral.transports.zmq.bridge import FEED_MSG_TYPE, FeedPublisher, FeedSubscriber
from corral.transports.zmq.door import cluster_signer
from corral.transports.zmq.session import Session

TIMEOUT = 30.0  # only reached when something is broken
KEY = b"k" * 32


def session(key: bytes = KEY) -> Session:
    return Session(key, signer=cluster_signer(key))


@pytest.fixture
def pub() -> Iterator[tuple[zmq.Socket, str]]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def joined(publisher: FeedPublisher, *subscribers: FeedSubscriber) -> None:
    """Send probes until every subscription has taken effect (a SUB hears nothing
    before), then drain the probes."""
    deadline = time.monotonic() + TIMEOUT
    waiting = list(subscribers)
    while waiting:
        assert time.monotonic() < deadline, "a subscription never took effect"
        publisher.send(b"probe")
        waiting = [sub for sub in waiting if sub.recv(0.05) != b"probe"]
    publisher.send(b"last probe")
    for sub in subscribers:
        while sub.recv(TIMEOUT) != b"last probe":
            pass


def test_both_ends_are_bridge_transports(pub: tuple[zmq.Socket, str]) -> None:
    sock, url = pub
    sub = FeedSubscriber(url, session())
    try:
        assert isinstance(FeedPublisher(sock, session()), BridgeTransport)
        assert isinstance(sub, BridgeTransport)
    finally:
        sub.close()


def test_notifications_reach_every_subscriber_in_order(pub: tuple[zmq.Socket, str]) -> None:
    sock, url = pub
    publisher = FeedPublisher(sock, session())
    subs = [FeedSubscriber(url, session()) for _ in range(2)]
    try:
        joined(publisher, *subs)
        for i in range(20):
            publisher.send(b"n%d" % i)
        for sub in subs:
            assert [sub.recv(TIMEOUT) for _ in range(20)] == [b"n%d" % i for i in range(20)]
    finally:
        for sub in subs:
            sub.close()


def test_a_wrong_key_a_replay_and_another_message_type_are_refused(
    pub: tuple[zmq.Socket, str],
) -> None:
    sock, url = pub
    good = FeedPublisher(sock, session())
    sub = FeedSubscriber(url, session())
    spy = zmq.Context.instance().socket(zmq.SUB)
    spy.subscribe(b"")
    spy.connect(url)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not spy.poll(50):  # until the spy hears the feed too
            assert time.monotonic() < deadline
            good.send(b"spy probe")
        joined(good, sub)
        FeedPublisher(sock, session(b"x" * 32)).send(b"forged")
        session().send(sock, "registration_notification", {"id": 1}, identities=[b"bus"])
        good.send(b"genuine")
        assert sub.recv(TIMEOUT) == b"genuine"
        assert sub.refused == 1  # the forgery (the other type is not a feed message)
        # The genuine message captured and sent again: refused as a replay.
        captured = None
        while True:
            frames = spy.recv_multipart()
            if b"genuine" in frames[-1]:
                captured = frames
                break
        sock.send_multipart(captured)
        good.send(b"after")
        assert sub.recv(TIMEOUT) == b"after"
        assert sub.refused == 2
    finally:
        spy.close(0)
        sub.close()


def test_close_wakes_a_blocked_recv(pub: tuple[zmq.Socket, str]) -> None:
    _, url = pub
    sub = FeedSubscriber(url, session())
    ended = threading.Event()

    def wait() -> None:
        with pytest.raises(EOFError):
            sub.recv(None)
        ended.set()

    thread = threading.Thread(target=wait)
    thread.start()
    sub.close()
    thread.join(TIMEOUT)
    assert ended.is_set()


def test_a_sender_filter_forwards_only_its_senders_posts(pub: tuple[zmq.Socket, str]) -> None:
    """The hub's bridge: another object posting the same type in its process stays home."""
    sock, url = pub
    publisher = FeedPublisher(sock, session())
    sub = FeedSubscriber(url, session())
    here, there = NotificationCenter(), NotificationCenter()
    heard: list[tuple[str, object, dict]] = []
    there.add_observer(lambda t, s, /, **i: heard.append((t, s, i)), "engine.died")
    owner, other = object(), object()
    sender = BridgeSender(publisher, here, ["engine.died"], sender=owner)
    receiver = BridgeReceiver(sub, there, start=False)
    try:
        joined(publisher, sub)
        here.post("engine.died", other, engine_id=1)
        here.post("engine.died", owner, engine_id=2)
        assert receiver.pump(TIMEOUT) == 1
        assert heard == [("engine.died", "builtins.object", {"engine_id": 2})]
        assert sender.sent == 1
    finally:
        sender.close()
        sub.close()
    assert FEED_MSG_TYPE.endswith("_notification")  # the notifications role takes it
