"""The notification bridge's ZeroMQ transport: signing, replay, goodbye, two processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import until

from corral.notification import NotificationCenter
from corral.notification.bridge import BridgeReceiver, BridgeSender, BridgeTransport
from corral.notification.names import TypeRegistry
from corral.transports.zmq.bridge import ZmqBridgeTransport
from corral.transports.zmq.gate import REFUSALS, Gate

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "bridge_child.py"
TIMEOUT = 30  # generous: only reached when something is broken
KEY = b"k" * 32


@pytest.fixture(params=["tcp", "ipc"])
def ends(request: pytest.FixtureRequest) -> Iterator[tuple[ZmqBridgeTransport, ZmqBridgeTransport]]:
    bound = ZmqBridgeTransport.bind(KEY, transport=request.param)
    peer = ZmqBridgeTransport.connect(bound.address, KEY)
    yield bound, peer
    peer.close()
    bound.close()


def test_it_is_a_bridge_transport() -> None:
    with ZmqBridgeTransport.bind() as bound:
        assert isinstance(bound, BridgeTransport)
        assert len(bound.key) == 32


def test_round_trip_both_ways_in_order(ends: tuple[ZmqBridgeTransport, ...]) -> None:
    bound, peer = ends
    for i in range(100):
        peer.send(b"to bound %d" % i)
    bound.send(b"to peer")
    assert [bound.recv(TIMEOUT) for _ in range(100)] == [b"to bound %d" % i for i in range(100)]
    assert peer.recv(TIMEOUT) == b"to peer"
    assert bound.recv(0) is None  # nothing more, and no waiting


def test_the_peer_closing_is_an_eof_after_everything_it_sent() -> None:
    bound = ZmqBridgeTransport.bind(KEY)
    peer = ZmqBridgeTransport.connect(bound.address, KEY)
    peer.send(b"last words")
    peer.close()
    assert bound.recv(TIMEOUT) == b"last words"
    with pytest.raises(EOFError):
        bound.recv(TIMEOUT)
    with pytest.raises(OSError):
        peer.send(b"after close")
    bound.close()


def test_close_wakes_a_blocked_recv() -> None:
    bound = ZmqBridgeTransport.bind(KEY)
    raised: list[BaseException] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            bound.recv(None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert started.wait(TIMEOUT)
    bound.close()  # nobody ever connected: no goodbye to deliver, still prompt
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], EOFError)


def test_a_wrong_key_is_refused_and_a_replay_too() -> None:
    wrong_key = "PLAIN handshakes with a wrong cluster key"
    before = REFUSALS.total.get(wrong_key, 0)
    with ZmqBridgeTransport.bind(KEY) as bound:
        with ZmqBridgeTransport.connect(bound.address, b"x" * 32) as intruder:
            intruder.send(b"forged")
            # Refused at the handshake (the gate): the forged message never arrives.
            until(lambda: REFUSALS.total.get(wrong_key, 0) > before, what="intruder not refused")
        # A raw socket of a key holder (past the gate) replaying one genuine message twice.
        ctx = zmq.Context.instance()
        raw = Gate(KEY).client(ctx.socket(zmq.PUSH))
        raw.linger = 1000
        raw.connect(bound.address[0])
        capture = ctx.socket(zmq.PULL)
        capture.bind("inproc://capture-bridge")
        with ZmqBridgeTransport.connect(
            ("inproc://capture-bridge", "inproc://none"), KEY, context=ctx
        ) as honest:
            honest.send(b"genuine")
            frames = capture.recv_multipart()
        raw.send_multipart(frames)
        raw.send_multipart(frames)  # the same signature again
        raw.send_multipart([b"garbage"])
        assert bound.recv(TIMEOUT) == b"genuine"
        assert bound.recv(0.5) is None
        # Refused: the replay, the garbage (the intruder's forged message and goodbye
        # never got in; its goodbye did not end the bridge: the recv above returned None).
        assert bound.refused == 2
        raw.close()
        capture.close()


def test_ipc_sockets_live_in_a_private_directory() -> None:
    with ZmqBridgeTransport.bind(KEY, transport="ipc") as bound:
        directory = Path(bound.address[0].removeprefix("ipc://")).parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not directory.exists()


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        ZmqBridgeTransport.bind(b"short")


# ------------------------------------------------------------ two processes


class Progress:
    """A class used as a notification type (declared as in bridge_child.py)."""


@pytest.fixture
def registry() -> TypeRegistry:
    types = TypeRegistry()
    types.declare(Progress, "test.progress")
    return types


def _start_child(mode: str, bound: ZmqBridgeTransport) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CORRAL_TEST_AUTHKEY"] = bound.key.hex()  # the environment, not the command line
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, json.dumps(list(bound.address)), "zmq"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_child_process_forwards_notifications_over_zeromq(registry: TypeRegistry) -> None:
    center = NotificationCenter(strict=True)
    seen: list[tuple[Any, Any, dict[str, Any]]] = []
    done = threading.Event()

    def record(type: Any, sender: Any, /, **info: Any) -> None:  # noqa: A002
        seen.append((type, sender, info))
        if type == "done":
            done.set()

    center.add_observer(record)
    with ZmqBridgeTransport.bind() as bound:
        child = _start_child("send", bound)
        try:
            receiver = BridgeReceiver(bound, center, registry=registry)
            assert done.wait(TIMEOUT)
            out, err = child.communicate(timeout=TIMEOUT)
            assert receiver.stopped.wait(TIMEOUT)  # the child said goodbye
        finally:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert seen == [
        ("stream", "engine-7", {"name": "stdout", "text": "hello\n"}),
        (Progress, "loop", {"done": 1, "total": 3, "shape": [2, 3]}),
        ("stream", "engine-7", {"name": "stderr", "text": "ünïcode ✓\n"}),
        ("done", None, {}),
    ]
    assert receiver.received == 4 and receiver.dropped == 0 and bound.refused == 0
    assert out.splitlines()[-1] == "sent: 4"


def test_the_parent_forwards_notifications_to_a_child_over_zeromq(
    registry: TypeRegistry,
) -> None:
    center = NotificationCenter(strict=True)
    with ZmqBridgeTransport.bind() as bound:
        child = _start_child("receive", bound)
        try:
            with BridgeSender(bound, center, ["stream", Progress, "done"], registry=registry):
                center.post("stream", "engine-3", name="stdout", text="to child")
                center.post("status", "kernel", state="busy")  # not chosen
                center.post(Progress, "loop", done=2, nested={"k": [None, 1.5]})
                center.post("done", "parent")
            out, err = child.communicate(timeout=TIMEOUT)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "type": "stream",
            "sender": "engine-3",
            "info": {"name": "stdout", "text": "to child"},
        },
        {"type": "Progress", "sender": "loop", "info": {"done": 2, "nested": {"k": [None, 1.5]}}},
        {"type": "done", "sender": "parent", "info": {}},
    ]


def test_closing_never_waits_for_a_context_that_does_not_terminate(caplog: Any) -> None:
    from corral.transports.zmq.bridge import _term

    ctx: zmq.Context[Any] = zmq.Context()
    held = ctx.socket(zmq.PULL)  # an open socket: ctx.term() blocks until it is closed
    ended = threading.Event()
    thread = threading.Thread(target=lambda: (_term(ctx, 0.2), ended.set()))
    thread.start()
    try:
        assert ended.wait(TIMEOUT), "_term waited for a context that cannot terminate"
        assert "did not terminate" in caplog.text
    finally:
        held.close()  # the term left behind can finish now
        thread.join(TIMEOUT)
