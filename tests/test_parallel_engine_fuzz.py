"""Fuzzing the engines' own sockets on a real cluster: no engine dies, no count drifts.

tests/test_parallel_fuzz.py fuzzes every controller socket; this file does the same to
what an engine listens on itself: its ``data`` socket (a ROUTER behind the gate, for
push/pull and direct calls) and its same-host Unix socket. Hypothesis sends malformed,
unsigned, wrong-key, replayed, wrong-type (signed, but not a request) and random
correctly-signed messages, from a peer that passed the gate; oversized messages are sent
once each; all with encryption off and on. After each example the same socket must serve
a real request, and at the end every engine process is alive with the same id, the hub's
counts (queued, running, unassigned) are zero, and ``completed`` grows by exactly the
tasks run afterwards.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import cloudpickle
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parallel_client_harness import LiveCluster

from corral.core import compat
from corral.plugins.parallel.client.messages import MessageBuilder, parse
from corral.transports import unix
from corral.transports.zmq import wire
from corral.transports.zmq.door import cluster_signer, dest_of
from corral.transports.zmq.gate import gate_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(600)
DEADLINE = 30.0


class Rig:
    """A 2-engine cluster (controller processes) and a past-the-gate peer of engine 0."""

    def __init__(self, live: LiveCluster) -> None:
        self.live = live
        self.client = live.client
        self.info = json.loads(open(live.cluster_file).read())
        self.signer = cluster_signer(self.info["key"])
        self.builder = MessageBuilder(self.signer, "fuzzer")
        self.engine = self.client.engines[0]
        #: what a genuine client signs for this engine's own sockets
        self.dest = dest_of("engine", self.engine.uuid)
        assert self.engine.data_url
        assert self.engine.local_path or not compat.HAS_UNIX_SOCKETS
        self.client[self.engine.id].push({"fuzz_marker": 41}, block=True)
        self.sock = gate_for(self.info).client(zmq.Context.instance().socket(zmq.DEALER))
        self.sock.linger = 0
        self.sock.connect(self.engine.data_url)
        self.pids = [p.pid for p in live.engines]
        self.ids = sorted(self.client.ids)

    def pull_frames(self) -> tuple[str, list[Any]]:
        return self.builder.build("pull_request", {"keys": ["fuzz_marker"]}, dest=self.dest)

    def served(self, sock: zmq.Socket[Any]) -> str:
        """A real pull on ``sock`` is answered (replies to what went before are skipped:
        a signed unknown ``*_request`` gets an error reply, by design); its msg_id."""
        msg_id, frames = self.pull_frames()
        sock.send_multipart(frames)
        end = time.monotonic() + DEADLINE
        while True:
            left = end - time.monotonic()
            assert left > 0 and sock.poll(int(left * 1000) + 1), "the engine stopped serving"
            reply = parse(sock.recv_multipart(), self.signer)
            if reply.parent_id == msg_id:
                assert reply.content["status"] == "ok"
                return msg_id

    def recorded(self, msg_id: str) -> None:
        """Wait until the hub has stored the reply to ``msg_id``. The engine's copies
        reach the hub's monitor in order, so every copy sent before it is counted too."""
        end = time.monotonic() + DEADLINE
        while not self.client.db_query({"msg_id": msg_id, "completed": {"$ne": None}}):
            assert time.monotonic() < end, f"the hub never recorded {msg_id}"
            time.sleep(0.02)  # the hub offers no event for "stored"

    def served_local(self, conn: Any, reader: unix.FrameReader) -> str:
        msg_id, frames = self.pull_frames()
        unix.send_message(conn, frames, timeout=DEADLINE)
        while True:
            for message in reader.read():
                if parse(message, self.signer).parent_id == msg_id:
                    return msg_id

    def local_call(self) -> str:
        """One real call over the Unix socket (the engine copies those to the hub's
        monitor, batched and in order); its msg_id."""
        conn = unix.connect(self.engine.local_path, timeout=DEADLINE)
        conn.settimeout(DEADLINE)
        try:
            return self.served_local(conn, unix.FrameReader(conn))
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=["none", "curve"])
def rig(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """Encryption off (PLAIN gate) and on (CurveZMQ, large frames in chunks)."""
    live = LiveCluster(
        tmp_path_factory.mktemp("efuzz"),
        threads=False,
        profile="efuzz",
        controller_args=("--encryption", request.param),
    )
    r = Rig(live)
    yield r
    r.close()
    live.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
#: Signed, but not what a data socket takes (replies, notices, notifications), or
#: requests with random content.
msg_types = st.sampled_from(
    [
        "pull_request",
        "push_request",
        "apply_request",
        "apply_reply",
        "pull_reply",
        "task_started",
        "registration_notification",
        "registration_request",
        "bogus",
    ]
)


@st.composite
def attacks(draw: Any, rig: Rig) -> list[list[bytes]]:
    """One attack: the frame lists to send (a replay is two)."""
    kind = draw(st.sampled_from(["raw", "unsigned", "wrong_key", "signed", "wrong_type", "replay"]))
    if kind == "raw":
        return [draw(st.lists(st.binary(max_size=40), min_size=1, max_size=8))]
    header = {"msg_id": draw(st.text(min_size=1, max_size=10)), "msg_type": draw(msg_types)}
    if kind == "wrong_type":
        header["msg_type"] = draw(
            st.sampled_from(["apply_reply", "pull_reply", "task_started", "status"])
        )
    if draw(st.booleans()):
        header.update(draw(json_dicts))
    parts = [json.dumps(p).encode() for p in (header, draw(json_dicts), {}, draw(json_dicts))]
    if draw(st.booleans()):
        parts[draw(st.integers(0, 3))] = draw(st.sampled_from([b"[]", b"1", b"\xff", b"{"]))
    buffers = draw(st.lists(st.binary(max_size=32), max_size=2))
    if kind == "replay":
        _, frames = rig.pull_frames()
        return [[bytes(f) for f in frames]] * 2
    signer = {
        "unsigned": None,
        "wrong_key": cluster_signer(b"not the cluster key"),
    }.get(kind, rig.signer)
    signature = b"" if signer is None else signer.seal(parts, buffers)
    return [[wire.DELIMITER, signature, *parts, *buffers]]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_data_socket(rig: Rig, data: st.DataObject) -> None:
    for frames in data.draw(attacks(rig)):
        rig.sock.send_multipart(frames)
    rig.served(rig.sock)


def test_a_replay_on_the_data_socket_is_answered_once(rig: Rig) -> None:
    msg_id, frames = rig.pull_frames()
    raw = [bytes(f) for f in frames]
    rig.sock.send_multipart(raw)
    rig.sock.send_multipart(raw)
    answers = 0
    next_id, nxt = rig.pull_frames()
    rig.sock.send_multipart(nxt)
    while True:
        assert rig.sock.poll(int(DEADLINE * 1000)), "no reply"
        reply = parse(rig.sock.recv_multipart(), rig.signer)
        if reply.parent_id == msg_id:
            answers += 1
        if reply.parent_id == next_id:
            break
    assert answers == 1


def test_oversized_messages_on_the_data_socket(rig: Rig) -> None:
    """64 MiB under no signature (refused at the HMAC, before any hashing) and 64 MiB
    swapped under a correct signature (hashed, refused): the engine serves on."""
    big = b"x" * (64 << 20)
    _, frames = rig.builder.build(
        "push_request", {"keys": ["a"]}, buffers=[b"small"], dest=rig.dest
    )
    at = frames.index(wire.DELIMITER)
    unsigned = [bytes(f) for f in frames]
    unsigned[at + 1] = b""
    rig.sock.send_multipart([*unsigned[:-1], big])
    swapped = [bytes(f) for f in frames]
    rig.sock.send_multipart([*swapped[:-1], big])
    many = [wire.DELIMITER, b"", *[b"{}"] * 4, *[b"f"] * 10_000]
    rig.sock.send_multipart(many)
    rig.served(rig.sock)


@pytest.mark.skipif(not compat.HAS_UNIX_SOCKETS, reason="no Unix sockets in Windows mode")
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_local_socket(rig: Rig, data: st.DataObject) -> None:
    conn = unix.connect(rig.engine.local_path, timeout=DEADLINE)
    conn.settimeout(DEADLINE)
    try:
        for frames in data.draw(attacks(rig)):
            unix.send_message(conn, frames, timeout=DEADLINE)
        rig.served_local(conn, unix.FrameReader(conn))
    finally:
        conn.close()


@pytest.mark.skipif(not compat.HAS_UNIX_SOCKETS, reason="no Unix sockets in Windows mode")
@pytest.mark.parametrize(
    "prefix",
    [
        unix._PREFIX.pack((1 << 40) + 1, 1),  # a body over the limit
        unix._PREFIX.pack(16, 1 << 20),  # more frames than allowed
        unix._PREFIX.pack(8, 4) + b"\x00" * 8,  # a length table that cannot fit
    ],
    ids=["body", "frames", "table"],
)
def test_bad_framing_on_the_local_socket(rig: Rig, prefix: bytes) -> None:
    """The engine drops the connection (not itself) and serves the next one."""
    conn = unix.connect(rig.engine.local_path, timeout=DEADLINE)
    conn.settimeout(DEADLINE)
    try:
        conn.sendall(prefix)
        assert conn.recv(1) == b""  # closed by the engine
    finally:
        conn.close()
    fresh = unix.connect(rig.engine.local_path, timeout=DEADLINE)
    fresh.settimeout(DEADLINE)
    try:
        rig.served_local(fresh, unix.FrameReader(fresh))
    finally:
        fresh.close()


@pytest.mark.skipif(
    not compat.HAS_UNIX_SOCKETS, reason="it counts same-host calls: no Unix sockets in Windows mode"
)
def test_zz_engines_alive_and_counts_true(rig: Rig) -> None:
    """Runs last in this file: after all of the above, no engine died or re-registered,
    the hub counts nothing queued, running or unassigned, and ``completed`` grows by
    exactly the tasks run now."""
    for proc in rig.live.engines:
        assert proc.poll() is None, "an engine process died"
    assert rig.live.controller.poll() is None, "the controller died"
    assert sorted(rig.client.ids) == rig.ids
    rig.recorded(rig.local_call())  # every earlier copy is counted by now
    before = rig.client.queue_status()
    assert before["unassigned"] == 0
    for eid in rig.ids:
        assert before[eid]["queue"] == 0, before
    view = rig.client[rig.engine.id]
    assert view.apply_sync(pow, 2, 10) == 1024
    lbv = rig.client.load_balanced_view()
    assert [lbv.apply_sync(abs, -n) for n in (1, 2, 3)] == [1, 2, 3]
    rig.recorded(rig.local_call())  # and one more same-host call
    after = rig.client.queue_status()
    done = sum(after[e]["completed"] - before[e]["completed"] for e in rig.ids)
    assert done == 5, (before, after)
    assert after[rig.engine.id]["completed"] - before[rig.engine.id]["completed"] >= 1
    assert all(after[e]["queue"] == 0 for e in rig.ids) and after["unassigned"] == 0
