"""Attacks on a real cluster (controller and engine processes): each must be refused.

The attacker either holds no key (it can only connect, read what it is sent, and resend
what it captured) or alters a correctly signed message in flight (modelled by signing
with the cluster's key and then swapping the buffers). Every attack here worked against
the cluster before buffers were signed and the door's role checks existed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from parallel_client_harness import LiveCluster

from corral.core import compat
from corral.core.serialize import pack_apply, serialize
from corral.plugins.parallel.client import Client
from corral.plugins.parallel.client.messages import MessageBuilder, parse
from corral.transports import unix
from corral.transports.zmq import wire
from corral.transports.zmq.batch import is_batch, unbatch
from corral.transports.zmq.door import cluster_signer, dest_of
from corral.transports.zmq.gate import gate_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)

DEADLINE = 30.0


def touch(path: str) -> str:
    """Engine side: leave a mark that this function ran."""
    with open(path, "w") as f:
        f.write("ran")
    return path


def shout(text: str) -> int:
    print(text, flush=True)
    return 7


class Bomb:
    """Unpickling this creates a file: proof that attacker data reached an unpickler."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (touch, (self.path,))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=False, profile="sec")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def info(cluster: LiveCluster) -> dict[str, Any]:
    return json.loads(Path(cluster.cluster_file).read_text())


def url(info: dict[str, Any], name: str) -> str:
    return f"{info['transport']}://{info['ip']}:{info[name]}"


def past_gate(info: dict[str, Any], kind: int) -> zmq.Socket[Any]:
    """A socket with the cluster's connection credentials: an attacker who got past the
    gate (or a peer altering traffic in flight), so the checks behind it are tested."""
    sock = gate_for(info).client(zmq.Context.instance().socket(kind))
    sock.linger = 0
    return sock


def dealer(info: dict[str, Any], address: str) -> zmq.Socket[Any]:
    sock = past_gate(info, zmq.DEALER)
    sock.connect(address)
    return sock


def recv_reply(sock: zmq.Socket[Any], signer: Any, msg_id: str) -> Any:
    """The reply to ``msg_id`` on ``sock`` (other messages are skipped)."""
    end = time.monotonic() + DEADLINE
    while True:
        left = end - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000) + 1), f"no reply to {msg_id}"
        frames = sock.recv_multipart()
        messages = unbatch(frames, 0) if is_batch(frames[0]) else [frames]
        for message in messages:
            reply = parse(message, signer)
            if reply.parent_id == msg_id:
                return reply


def apply_frames(
    builder: MessageBuilder,
    func: Any,
    args: tuple,
    routing: list[bytes],
    dest: str,
    **metadata: Any,
) -> tuple[str, list[Any]]:
    """A genuine client's request, signed for ``dest`` (door.dest_of)."""
    return builder.build(
        "apply_request",
        {},
        metadata=metadata or None,
        buffers=pack_apply(func, args),
        identities=routing,
        dest=dest,
    )


@pytest.mark.parametrize(
    "path",
    [
        "mux",
        "task",
        "data",
        pytest.param(
            "local",
            marks=pytest.mark.skipif(
                not compat.HAS_UNIX_SOCKETS, reason="no Unix sockets in Windows mode"
            ),
        ),
    ],
)
def test_buffers_swapped_after_signing_never_run(
    cluster: LiveCluster, info: dict[str, Any], tmp_path: Path, path: str
) -> None:
    rc = cluster.client
    engine = rc.engines[0]
    signer = cluster_signer(info["key"])
    builder = MessageBuilder(signer, "attacker-session", run=info["run"])
    evil = str(tmp_path / f"evil-{path}")
    fine = str(tmp_path / f"fine-{path}")
    routing = [engine.uuid.encode()] if path == "mux" else []
    metadata = {"targets": [engine.id]} if path == "task" else {}
    dest = path if path in ("mux", "task") else dest_of("engine", engine.uuid)
    _, frames = apply_frames(builder, touch, (fine,), routing, dest, **metadata)
    at = frames.index(wire.DELIMITER)
    tampered = frames[: at + 6] + list(pack_apply(touch, (evil,)))
    good_id, good = apply_frames(builder, touch, (fine,), routing, dest, **metadata)
    if path == "local":
        assert engine.local_path, "the engine has no Unix socket"
        conn = unix.connect(engine.local_path, timeout=DEADLINE)
        try:
            unix.send_message(conn, tampered, timeout=DEADLINE)
            unix.send_message(conn, good, timeout=DEADLINE)
            reader = unix.FrameReader(conn)
            conn.settimeout(DEADLINE)
            reply = None
            while reply is None:
                for message in reader.read():
                    parsed = parse(message, signer)
                    if parsed.parent_id == good_id:
                        reply = parsed
        finally:
            conn.close()
    else:
        address = engine.data_url if path == "data" else url(info, path)
        sock = dealer(info, address)
        try:
            sock.send_multipart(tampered)
            sock.send_multipart(good)
            reply = recv_reply(sock, signer, good_id)
        finally:
            sock.close()
    assert reply.content["status"] == "ok"
    assert os.path.exists(fine)
    assert not os.path.exists(evil), "a buffer swapped after signing was executed"


def test_buffers_swapped_in_a_reply_are_refused_by_the_client(info: dict[str, Any]) -> None:
    signer = cluster_signer(info["key"])
    builder = MessageBuilder(signer, "engine-session")
    _, frames = builder.build("apply_reply", {"status": "ok"}, buffers=[b"genuine result"])
    frames[-1] = b"swapped result"
    with pytest.raises(wire.BadSignature):
        parse(frames, signer)
    frames = frames[:-1]  # dropping a buffer is refused too
    with pytest.raises(wire.BadSignature):
        parse(frames, signer)


def test_monitor_injection_cannot_replace_a_result(
    cluster: LiveCluster, info: dict[str, Any], tmp_path: Path
) -> None:
    """The issue's attack: capture an engine-signed iopub message whose parent is a real
    task, hand it to the hub's monitor as that task's reply with pickled buffers of one's
    own, and wait for a client to fetch the result."""
    rc = cluster.client
    sub = past_gate(info, zmq.SUB)
    sub.subscribe(b"")
    sub.connect(url(info, "iopub"))
    push = past_gate(info, zmq.PUSH)
    push.connect(url(info, "monitor"))
    bomb = str(tmp_path / "bomb")
    try:
        # Subscriptions propagate asynchronously: print until the subscriber hears.
        end = time.monotonic() + DEADLINE
        captured = None
        while captured is None:
            assert time.monotonic() < end, "never captured an iopub message"
            ar = rc[0].apply_async(shout, "capture me")
            assert ar.get(timeout=DEADLINE) == 7
            while captured is None and sub.poll(200):
                frames = sub.recv_multipart()
                at = frames.index(wire.DELIMITER)
                parent = json.loads(frames[at + 3])
                if parent.get("msg_id") == ar.msg_ids[0]:
                    captured = (frames[at : at + 6], ar.msg_ids[0])
        delimited, msg_id = captured
        engine_uuid = rc.engines[0].uuid.encode()
        evil = [bytes(b) for b in serialize(Bomb(bomb))]
        for tag in (b"reply", b"reply:" + b"0" * 64):
            push.send_multipart([tag, engine_uuid, b"client", *delimited, *evil])
        # Whatever the hub did with the injection, a fresh client must see the genuine
        # result, and no attacker pickle may run in it.
        fresh = cluster.connect()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert fresh.get_result(msg_id).get(timeout=DEADLINE) == 7
            assert not os.path.exists(bomb), "the attacker's pickle ran in a client"
    finally:
        sub.close()
        push.close()


def test_a_reply_replayed_on_another_socket_is_refused(
    cluster: LiveCluster, info: dict[str, Any]
) -> None:
    """A genuine reply captured on the mux and resent by an impostor to the task
    scheduler's engine side reaches no client: only the engine a request went to may
    answer it, and only once."""
    rc = cluster.client
    signer = cluster_signer(info["key"])
    builder = MessageBuilder(signer, "victim-session", run=info["run"])
    engine = rc.engines[0]
    victim = past_gate(info, zmq.DEALER)
    victim.identity = b"victim-" + os.urandom(4).hex().encode()
    victim.connect(url(info, "mux"))
    victim.connect(url(info, "task"))
    impostor = past_gate(info, zmq.DEALER)
    impostor.identity = b"impostor-" + os.urandom(4).hex().encode()
    impostor.connect(url(info, "task_engine"))
    try:
        msg_id, frames = apply_frames(builder, shout, ("x",), [engine.uuid.encode()], "mux")
        # Both connections of the victim must be up before the mux's reply is routed.
        end = time.monotonic() + DEADLINE
        victim.send_multipart(frames)
        captured = victim.recv_multipart() if victim.poll(int(DEADLINE * 1000)) else None
        assert captured is not None and time.monotonic() < end
        assert parse(captured, signer).parent_id == msg_id
        impostor.send_multipart([victim.identity, *captured])
        # The genuine client is still served; the victim never sees the reply again.
        assert rc[1].apply_async(shout, "after").get(timeout=DEADLINE) == 7
        assert not victim.poll(500), "a replayed reply was delivered again"
    finally:
        impostor.close()
        victim.close()


def test_a_stored_result_is_never_overwritten(tmp_path: Path) -> None:
    from corral.plugins.parallel.controller.taskdb import SQLiteTaskDB

    db = SQLiteTaskDB(tmp_path / "tasks.db")
    try:
        db.add_request("m1", "client", "e1", 0, "apply_request", "{}", "{}", None)
        reply = ("m1", "client", "e1", 0, None, None, "ok", "{}", "{}", "{}")
        db.add_reply(*reply, [b"genuine"])
        db.flush()
        db.add_reply(*reply[:6], "error", "{}", "{}", "{}", [b"forged"])
        db.flush()
        record = db.get(["m1"])["m1"]
        assert record["result_status"] == "ok"
        assert [bytes(b) for b in record["result_buffers"]] == [b"genuine"]
    finally:
        db.close()


def test_keyless_peers_cannot_read_or_inject(cluster: LiveCluster, info: dict[str, Any]) -> None:
    """Without the key, no socket of the cluster completes a handshake: task output on
    iopub and engine uuids on notification stay unread, requests never arrive."""
    ctx = zmq.Context.instance()
    spies = []
    for name in ("iopub", "notification", "hb_ping"):
        spy = ctx.socket(zmq.SUB)
        spy.linger = 0
        spy.subscribe(b"")
        spy.connect(url(info, name))
        spies.append(spy)
    asker = ctx.socket(zmq.DEALER)
    asker.linger = 0
    asker.connect(url(info, "registration"))
    builder = MessageBuilder(cluster_signer(b"not the key"), "keyless")
    asker.send_multipart(builder.build("connection_request", {})[1])
    try:
        rc = cluster.client
        for _ in range(3):  # output, and an engine arriving, while the spies listen
            assert rc[0].apply_async(shout, "secret output").get(timeout=DEADLINE) == 7
        cluster.add_engine()
        rc.wait_for_engines(3, timeout=60)
        for spy in [*spies, asker]:
            assert not spy.poll(300), "a keyless peer read something"
    finally:
        for sock in [*spies, asker]:
            sock.close()


def test_keyless_heartbeats_cannot_keep_a_dead_engine_alive(tmp_path: Path) -> None:
    live = LiveCluster(tmp_path, n=2, threads=True, profile="hb", hb_period=0.1, hb_misses=3)
    try:
        rc = live.client
        doomed = live.engines[1]
        victim = next(e for e in rc.engines.values() if e.pid == doomed.pid)
        info = json.loads(Path(live.cluster_file).read_text())
        ctx = zmq.Context.instance()
        ping = ctx.socket(zmq.SUB)
        ping.linger = 0
        ping.subscribe(b"")
        ping.connect(url(info, "hb_ping"))
        pong = ctx.socket(zmq.DEALER)
        pong.linger = 0
        pong.identity = victim.uuid.encode()
        pong.connect(url(info, "hb_pong"))
        doomed.kill()
        doomed.wait(30)
        # The spoofer echoes every beat it can read under the dead engine's identity;
        # the hub must still declare the engine dead.
        end = time.monotonic() + DEADLINE
        while victim.id in rc.ids:
            assert time.monotonic() < end, "a spoofed heartbeat kept a dead engine alive"
            if ping.poll(50):
                pong.send(ping.recv())
        ping.close()
        pong.close()
        assert len(rc.ids) == 1
    finally:
        live.stop()


def test_a_client_with_the_wrong_key_is_told_why(cluster: LiveCluster, tmp_path: Path) -> None:
    info = json.loads(Path(cluster.cluster_file).read_text())
    info["key"] = "0" * 64
    wrong = tmp_path / "wrong-key.json"
    wrong.write_text(json.dumps(info))
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="cluster key"):
        Client(connection_file=wrong, timeout=30)
    assert time.monotonic() - started < 30  # told by the refusal, not by the timeout


def test_an_engine_with_the_wrong_key_is_told_why(cluster: LiveCluster, tmp_path: Path) -> None:
    info = json.loads(Path(cluster.cluster_file).read_text())
    info["key"] = "0" * 64
    wrong = tmp_path / "wrong-key.json"
    wrong.write_text(json.dumps(info))
    proc = subprocess.run(
        [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(wrong)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "cluster key" in proc.stderr


UNREADABLE_CONTENT = [
    b"{not json",
    b'{"text": "\xff\xfe"}',  # not UTF-8
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
    b'{"n": ' + b"9" * 100_000 + b"}",  # an int longer than Python converts
    b"[]",  # JSON, not an object
]


@pytest.mark.parametrize("path", ["mux", "control", "task", "broadcast", "data"])
def test_a_signed_request_with_unreadable_content_is_answered(
    cluster: LiveCluster, info: dict[str, Any], path: str
) -> None:
    """A key holder's request whose signed header is fine but whose content is not a
    JSON object passes the queue (which reads only header and metadata) and reached the
    engine, which dropped it without a word: the sender waited for ever, the hub counted
    it queued or running for good, and every such request through the task scheduler held
    one of an engine's load-balanced slots (300 of them starved the scheduler: a genuine
    task then timed out). Now the engine answers it with ``MalformedRequest``."""
    rc = cluster.client
    engine = rc.engines[0]
    signer = cluster_signer(info["key"])
    msg_type = "abort_request" if path == "control" else "apply_request"
    if path == "data":
        dest, routing, address = dest_of("engine", engine.uuid), [], engine.data_url
    else:
        address = url(info, path)
        dest, routing = path, [engine.uuid.encode()] if path in ("mux", "control") else []
    metadata = json.dumps({"targets": [engine.id]} if path == "broadcast" else {}).encode()
    sock = dealer(info, address)
    try:
        for content in UNREADABLE_CONTENT:
            header = {**wire.make_header(msg_type, "unreadable"), "dest": dest, "run": info["run"]}
            parts = [json.dumps(header).encode(), b"{}", metadata, content]
            sock.send_multipart([*routing, wire.DELIMITER, signer.seal(parts), *parts])
            reply = recv_reply(sock, signer, header["msg_id"])
            assert reply.content["status"] == "error"
            assert reply.content["ename"] == "MalformedRequest", reply.content
    finally:
        sock.close()
    # Nothing is left owed: the hub counts no task queued or running on any engine.
    end = time.monotonic() + DEADLINE
    while True:
        status = rc.queue_status()
        if status.pop("unassigned") == 0 and all(s["queue"] == 0 for s in status.values()):
            break
        assert time.monotonic() < end, status
        time.sleep(0.05)
    assert rc[0].apply_sync(abs, -3) == 3


def test_a_broadcast_naming_an_engine_twice_is_answered_once(
    cluster: LiveCluster, info: dict[str, Any]
) -> None:
    """``broadcast_view(targets=[0, 0])`` waited for ever: the scheduler sent engine 0
    two copies, the engine's replay guard refused the second, and the call waited for
    its reply. A raw request naming one engine 100,000 times grew the broadcast
    scheduler past 11 GB. Each engine is now sent one copy, and the view asks each once."""
    rc = cluster.client
    engine = rc.engines[0]
    assert rc.broadcast_view(targets=[0, 0]).apply_async(shout, "twice").get(DEADLINE) == [7]
    signer = cluster_signer(info["key"])
    builder = MessageBuilder(signer, "repeating", run=info["run"])
    msg_id, frames = apply_frames(builder, abs, (-3,), [], "broadcast", targets=[engine.id] * 3)
    sock = dealer(info, url(info, "broadcast"))
    try:
        sock.send_multipart(frames)
        reply = recv_reply(sock, signer, msg_id)
        assert reply.content["status"] == "ok"
        assert not sock.poll(300), "a second reply for one engine"
    finally:
        sock.close()
    end = time.monotonic() + DEADLINE
    while msg_id not in rc.result_status(msg_id)["completed"]:  # the hub's record too
        assert time.monotonic() < end, "the hub waits for parts that never come"
        time.sleep(0.05)
    while True:  # nothing is left owed to the broadcast queue
        status = rc.queue_status()
        if status.pop("unassigned") == 0 and all(s["queue"] == 0 for s in status.values()):
            break
        assert time.monotonic() < end, status
        time.sleep(0.05)


def test_an_engine_logs_refusals_rate_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller logs refusals per cause, rate-limited; an engine wrote one line per
    refused message (100,000 lines for one broadcast naming it 100,000 times). Now the
    first of a cause at once, then the count."""
    import corral

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    cluster = corral.Cluster(n=1, profile="noisy", hb_period=0.2, hb_misses=5)
    rc = cluster.start_and_connect()
    try:
        info = json.loads(Path(rc.connection_file).read_text())
        sock = dealer(info, rc.engines[0].data_url)
        parts = [json.dumps(wire.make_header("apply_request", "noisy")).encode(), b"{}", b"{}"]
        for _ in range(200):
            sock.send_multipart([wire.DELIMITER, b"0" * 64, *parts, b"{}"])
        assert rc[0].apply_sync(abs, -2) == 2  # the data socket's refusals came first
        sock.close()
    finally:
        cluster.stop()
    lines = [
        line
        for log in (tmp_path / "corral" / "profile_noisy" / "log").glob("engine-*.log")
        for line in log.read_text().splitlines()
        if "refused" in line
    ]
    assert 2 <= len(lines) <= 4, lines  # the first at once, then counts (a stop flushes)
    assert re.search(r"refused \d+ BadSignature", "\n".join(lines)), lines
