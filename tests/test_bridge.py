"""The notification bridge: naming rules, codec, transports, and two real processes."""

from __future__ import annotations

import enum
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from pathlib import Path
from typing import Any

import pytest
from observers import NoticeLog

from corral.notification import NotificationCenter
from corral.notification.bridge import (
    BridgeError,
    BridgeReceiver,
    BridgeSender,
    BridgeTransport,
    InProcessTransport,
    decode_notification,
    encode_notification,
)
from corral.notification.names import TypeRegistry, sender_name
from corral.transports.pipe import PipeListener, PipeTransport

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "bridge_child.py"
TIMEOUT = 30  # generous: only reached when something is broken


class Progress:
    """A class used as a notification type."""


class Phase(enum.Enum):
    START = 1


class Named:
    notification_name = "engine-3"


class Plain:
    pass


@pytest.fixture
def registry() -> TypeRegistry:
    reg = TypeRegistry()
    reg.declare(Progress, "test.progress")
    return reg


@pytest.fixture
def pair() -> Iterator[tuple[InProcessTransport, InProcessTransport]]:
    a, b = InProcessTransport.pair()
    yield a, b
    a.close()
    b.close()


# ------------------------------------------------------------------ naming rules


def test_sender_names() -> None:
    assert sender_name("kernel") == "kernel"
    assert sender_name(None) is None
    assert sender_name(Named()) == "engine-3"
    assert sender_name(Plain()) == f"{__name__}.Plain"
    assert sender_name(Plain()) == sender_name(Plain())  # same class, same name
    assert sender_name(Plain) == f"{__name__}.Plain"
    assert sender_name(test_sender_names) == f"{__name__}.test_sender_names"
    assert sender_name(sys) == "sys"


def test_type_names_and_declarations(registry: TypeRegistry) -> None:
    assert registry.name("stream") == "stream"
    assert registry.name(Progress) == "test.progress"
    assert registry.resolve("test.progress") is Progress
    assert registry.declare(Phase.START) == f"{__name__}.Phase.START"
    assert registry.declare(Phase.START) == f"{__name__}.Phase.START"  # idempotent
    with pytest.raises(ValueError, match="already declared"):
        registry.declare(Progress, "other.name")
    with pytest.raises(ValueError, match="already declared"):
        registry.declare(Plain, "test.progress")
    with pytest.raises(TypeError, match="explicit name"):
        registry.declare(42)
    with pytest.raises(TypeError, match="their own names"):
        registry.declare("stream")
    with pytest.raises(TypeError, match=r"Plain.*declare_type"):
        registry.name(Plain)
    with pytest.raises(LookupError):
        registry.resolve("stream")
    registry.forget(Progress)
    with pytest.raises(LookupError):
        registry.resolve("test.progress")


def test_undeclared_type_is_refused_when_the_sender_is_made(registry: TypeRegistry) -> None:
    a, _ = InProcessTransport.pair()
    with pytest.raises(BridgeError, match="Plain"):
        BridgeSender(a, NotificationCenter(), types=["stream", Plain], registry=registry)


# ------------------------------------------------------------------------ codec


def test_codec_round_trip_keeps_string_and_declared_types_apart(registry: TypeRegistry) -> None:
    registry.declare(Phase.START, "stream")  # the same name as a string type
    for type_ in ("stream", Phase.START, Progress):
        data = encode_notification(type_, Named(), {"a": [1, 2.5, None, True]}, registry)
        assert decode_notification(data, registry) == (
            type_,
            "engine-3",
            {"a": [1, 2.5, None, True]},
        )


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ({"data": object()}, "info['data'] is a object"),
        ({"rows": [1, {"x": {1, 2}}]}, "info['rows'][1]['x'] is a set"),
        ({"table": {1: "a"}}, "info['table'] has the key 1 of type int"),
        ({"raw": b"bytes"}, "info['raw'] is a bytes"),
    ],
)
def test_unserialisable_info_names_the_key(info: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BridgeError) as caught:
        encode_notification("stream", "kernel", info)
    assert "'stream'" in str(caught.value)
    assert fragment in str(caught.value)


def test_circular_info_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(BridgeError, match="refers back to itself"):
        encode_notification("stream", "kernel", {"loop": loop})


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"v": 1, "type": "x", "declared": false, "sender": null}',
        b'{"v": 1, "type": "x", "declared": false, "sender": null, "info": {}, "extra": 1}',
        b'{"v": 2, "type": "x", "declared": false, "sender": null, "info": {}}',
        b'{"v": 1, "type": 5, "declared": false, "sender": null, "info": {}}',
        b'{"v": 1, "type": "x", "declared": false, "sender": 5, "info": {}}',
        b'{"v": 1, "type": "x", "declared": false, "sender": null, "info": []}',
        b"[" * 100_000,
    ],
)
def test_malformed_messages_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_notification(data, TypeRegistry())


# ------------------------------------------------------------- in one process


def test_in_process_round_trip(pair: tuple[InProcessTransport, InProcessTransport]) -> None:
    a, b = pair
    assert isinstance(a, BridgeTransport)
    here, there = NotificationCenter(strict=True), NotificationCenter(strict=True)
    recorder = NoticeLog()
    there.add_observer(recorder)
    sender = BridgeSender(a, here, types=["stream", "status"])
    receiver = BridgeReceiver(b, there)
    here.post("stream", Named(), name="stdout", text="hi")
    here.post("status", "kernel", state="idle", type="keyword named type")
    assert recorder.wait(lambda: len(recorder.seen) >= 2)
    assert recorder.seen == [
        ("stream", "engine-3", {"name": "stdout", "text": "hi"}),
        ("status", "kernel", {"state": "idle", "type": "keyword named type"}),
    ]
    assert sender.sent == 2
    sender.close()
    receiver.close()
    assert receiver.stopped.is_set()
    assert receiver.received == 2


def test_only_chosen_types_are_forwarded(
    pair: tuple[InProcessTransport, InProcessTransport], registry: TypeRegistry
) -> None:
    a, b = pair
    here, there = NotificationCenter(strict=True), NotificationCenter(strict=True)
    recorder = NoticeLog()
    there.add_observer(recorder)
    BridgeSender(a, here, types=[Progress], registry=registry)
    receiver = BridgeReceiver(b, there, registry=registry, start=False)
    here.post("stream", "kernel", text="not chosen")
    here.post(Progress, "loop", done=1)
    here.post(Plain, "loop", done=2)
    assert receiver.pump(TIMEOUT) == 1
    assert receiver.pump(0) == 0
    assert recorder.seen == [(Progress, "loop", {"done": 1})]


def test_unserialisable_info_raises_at_the_sender_and_nothing_arrives(
    pair: tuple[InProcessTransport, InProcessTransport],
) -> None:
    a, b = pair
    here = NotificationCenter(strict=True)
    sender = BridgeSender(a, here, types=["stream"])
    receiver = BridgeReceiver(b, NotificationCenter(), start=False)
    with pytest.raises(BridgeError, match=r"info\['data'\] is a set"):
        here.post("stream", "kernel", data={1, 2})
    with pytest.raises(BridgeError, match=r"info\['data'\] is a object"):
        sender.forward("stream", "kernel", data=object())
    assert sender.sent == 0
    assert receiver.pump(0) == 0
    assert receiver.received == receiver.dropped == 0


def test_lenient_center_logs_the_error_and_sends_nothing(
    pair: tuple[InProcessTransport, InProcessTransport], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    here = NotificationCenter()
    sender = BridgeSender(a, here, types=["stream"])
    receiver = BridgeReceiver(b, NotificationCenter(), start=False)
    here.post("stream", "kernel", data=object())  # does not raise
    assert "info['data'] is a object" in caplog.text
    assert sender.sent == 0
    assert receiver.pump(0) == 0


def test_malformed_bytes_are_dropped_and_the_next_message_arrives(
    pair: tuple[InProcessTransport, InProcessTransport],
    registry: TypeRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    there = NotificationCenter(strict=True)
    recorder = NoticeLog()
    there.add_observer(recorder)
    receiver = BridgeReceiver(b, there, registry=registry)
    a.send(b"\x00garbage")
    a.send(b'{"v": 1, "type": "unknown.type", "declared": true, "sender": null, "info": {}}')
    a.send(encode_notification("stream", "kernel", {"text": "ok"}, registry))
    assert recorder.wait(lambda: len(recorder.seen) >= 1)
    assert recorder.seen == [("stream", "kernel", {"text": "ok"})]
    receiver.close()
    assert (receiver.dropped, receiver.received) == (2, 1)
    assert "dropped" in caplog.text


def test_all_types_skip_undeclared_types_and_do_not_echo(registry: TypeRegistry) -> None:
    """Two all-types bridges in opposite directions: each side sees the other's own
    notifications once, and reactions posted by observers still cross."""
    a, b = InProcessTransport.pair()
    left, right = NotificationCenter(strict=True), NotificationCenter(strict=True)
    seen_left, seen_right = NoticeLog(), NoticeLog()
    left.add_observer(seen_left)
    right.add_observer(seen_right)

    def react(type: Any, sender: Any, /, **info: Any) -> None:  # noqa: A002
        right.post("reply", "right", to=info["n"])

    right.add_observer(react, "request")
    BridgeSender(a, left, registry=registry)
    BridgeSender(b, right, registry=registry)
    left_in = BridgeReceiver(a, left, registry=registry, start=False)
    right_in = BridgeReceiver(b, right, registry=registry, start=False)

    left.post("request", "left", n=1)
    left.post(Plain, "left")  # undeclared: skipped, not an error
    assert right_in.pump(TIMEOUT) == 1  # the request; the reply went back to the left
    assert left_in.pump(TIMEOUT) == 1  # the reply; the request was not echoed
    assert right_in.pump(0) == 0
    assert [t for t, _, _ in seen_left.seen] == ["request", Plain, "reply"]
    assert [t for t, _, _ in seen_right.seen] == ["request", "reply"]


def test_relay_forwards_received_notifications(registry: TypeRegistry) -> None:
    a1, b1 = InProcessTransport.pair()
    a2, b2 = InProcessTransport.pair()
    hub, far = NotificationCenter(strict=True), NotificationCenter(strict=True)
    recorder = NoticeLog()
    far.add_observer(recorder)
    BridgeSender(a2, hub, types=["stream"], relay=True)
    into_hub = BridgeReceiver(b1, hub, start=False)
    into_far = BridgeReceiver(b2, far, start=False)
    a1.send(encode_notification("stream", "origin", {"text": "x"}))
    assert into_hub.pump(TIMEOUT) == 1
    assert into_far.pump(TIMEOUT) == 1
    assert recorder.seen == [("stream", "origin", {"text": "x"})]


def test_receiver_stops_when_the_peer_closes_and_on_close() -> None:
    a, b = InProcessTransport.pair()
    receiver = BridgeReceiver(b, NotificationCenter())
    a.close()
    assert receiver.stopped.wait(TIMEOUT)
    c, d = InProcessTransport.pair()
    idle = BridgeReceiver(d, NotificationCenter())
    idle.close()
    assert idle.stopped.is_set()
    with pytest.raises(RuntimeError):
        idle.pump(0)
    c.close()


def test_sender_close_stops_forwarding(pair: tuple[InProcessTransport, InProcessTransport]) -> None:
    a, b = pair
    here = NotificationCenter(strict=True)
    with BridgeSender(a, here, types=["stream"]):
        here.post("stream", "kernel", n=1)
    here.post("stream", "kernel", n=2)
    assert here.observer_count() == 0
    receiver = BridgeReceiver(b, NotificationCenter(), start=False)
    assert receiver.pump(0) == 1


# ------------------------------------------------------------- pipe transport


def test_pipe_listener_is_private_and_refuses_a_wrong_authkey() -> None:
    with PipeListener() as listener:
        if sys.platform != "win32":
            mode = stat.S_IMODE(os.stat(os.path.dirname(listener.address)).st_mode)
            assert mode == 0o700
        accepted: list[PipeTransport] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept(TIMEOUT)))
        thread.start()
        with pytest.raises(AuthenticationError):
            PipeTransport.connect(listener.address, b"x" * 32)
        with PipeTransport.connect(listener.address, listener.authkey) as client:
            thread.join(TIMEOUT)
            assert listener.refused == 1
            (server,) = accepted
            client.send(b"ping")
            assert server.recv(TIMEOUT) == b"ping"
            server.close()
        with pytest.raises(ValueError, match="authkey"):
            PipeTransport.connect(listener.address, b"")
    assert not os.path.exists(listener.address)


def test_pipe_accept_times_out_and_recv_is_woken_by_close() -> None:
    listener = PipeTransport.listen()
    with pytest.raises(TimeoutError):
        listener.accept(0.05)
    assert not os.path.exists(listener.address)  # closed, private directory removed
    blocked = PipeListener()
    errors: list[BaseException] = []

    def accept_forever() -> None:
        try:
            blocked.accept()
        except OSError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=accept_forever)
    waiter.start()
    blocked.close()  # wakes the thread blocked in accept()
    waiter.join(TIMEOUT)
    assert not waiter.is_alive() and len(errors) == 1
    with PipeListener() as listener:
        accepted: list[PipeTransport] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept(TIMEOUT)))
        thread.start()
        client = PipeTransport.connect(listener.address, listener.authkey)
        thread.join(TIMEOUT)
        receiver = BridgeReceiver(client, NotificationCenter())
        client.close()  # wakes the receiver's blocked recv at once
        assert receiver.stopped.wait(TIMEOUT)
        accepted[0].close()


# ------------------------------------------------------------ two processes


def _start_child(mode: str, listener: PipeListener) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CORRAL_TEST_AUTHKEY"] = listener.authkey.hex()
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, listener.address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_child_process_forwards_to_the_parent(registry: TypeRegistry) -> None:
    center = NotificationCenter(strict=True)
    recorder = NoticeLog()
    center.add_observer(recorder)
    with PipeListener() as listener:
        child = _start_child("send", listener)
        try:
            with listener.accept(TIMEOUT) as transport:
                receiver = BridgeReceiver(transport, center, registry=registry)
                assert recorder.wait(lambda: "done" in recorder.types())
                out, err = child.communicate(timeout=TIMEOUT)
                assert receiver.stopped.wait(TIMEOUT)  # the child hung up
        finally:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert recorder.seen == [
        ("stream", "engine-7", {"name": "stdout", "text": "hello\n"}),
        (Progress, "loop", {"done": 1, "total": 3, "shape": [2, 3]}),
        ("stream", "engine-7", {"name": "stderr", "text": "ünïcode ✓\n"}),
        ("done", None, {}),
    ]
    assert receiver.received == 4 and receiver.dropped == 0
    refused, sent = out.splitlines()
    assert refused.startswith("refused: cannot forward notification 'stream' from 'engine-7'")
    assert "info['text'] is a object" in refused
    assert sent == "sent: 4"


def test_parent_forwards_to_a_child_process(registry: TypeRegistry) -> None:
    center = NotificationCenter(strict=True)
    with PipeListener() as listener:
        child = _start_child("receive", listener)
        try:
            with listener.accept(TIMEOUT) as transport:
                with BridgeSender(
                    transport, center, ["stream", Progress, "done"], registry=registry
                ):
                    center.post("stream", Named(), name="stdout", text="to the child")
                    center.post("status", "kernel", state="busy")  # not chosen
                    center.post(Progress, Plain(), done=2, nested={"k": [None, 1.5]})
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
            "info": {"name": "stdout", "text": "to the child"},
        },
        {
            "type": "Progress",
            "sender": f"{__name__}.Plain",
            "info": {"done": 2, "nested": {"k": [None, 1.5]}},
        },
        {"type": "done", "sender": "parent", "info": {}},
    ]
