"""Fuzzing every controller socket: random frames, signed and unsigned, then a real request.

Hypothesis throws frame lists at the hub's registration socket and at both sides of every
queue: raw bytes, frames around a real delimiter, *correctly signed* messages whose
JSON is arbitrary (a peer holding the key but speaking nonsense), and batches of such
messages, whole or with a mangled index or body. After each example a
valid request through the same component must still be served, so a crash, a hang or a
poisoned state shows up at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import TIMEOUT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parallel_fakes import FakeClient, FakeEngine

from corral.plugins.parallel.clusterfile import ClusterInfo, read_cluster_file
from corral.plugins.parallel.controller import start_controller
from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches
from corral.transports.zmq.door import DEST, RUN, cluster_signer

ROOT = Path(__file__).resolve().parents[1]


class Rig:
    def __init__(self, info: ClusterInfo) -> None:
        self.info = info
        self.client = FakeClient(info)
        self.engines = [FakeEngine(info), FakeEngine(info)]
        for eng in self.engines:
            eng.register()
            self.client.notification()
        self.signer = cluster_signer(info.key)
        ctx = zmq.Context.instance()
        self.raw: dict[str, zmq.Socket[Any]] = {}
        for name in (
            "registration",
            "mux",
            "control",
            "task",
            "broadcast",
            "mux_engine",
            "control_engine",
            "task_engine",
            "broadcast_engine",
            "hb_pong",
            "monitor",
        ):
            kind = zmq.PUSH if name == "monitor" else zmq.DEALER
            sock = self.client.gate.client(ctx.socket(kind))
            sock.linger = 0
            sock.sndhwm = 0
            sock.connect(info.url(name))
            self.raw[name] = sock
        # The publish/subscribe side: what an engine publishes on iopub_engine (forwarded
        # unparsed to the hub and every client), and subscription frames on the sockets
        # that only publish (the hub reads those of notification itself).
        for name, kind in (
            ("iopub_engine", zmq.PUB),
            ("iopub", zmq.XSUB),
            ("notification", zmq.XSUB),
            ("hb_ping", zmq.XSUB),
        ):
            sock = self.client.gate.client(ctx.socket(kind))
            sock.linger = 0
            sock.sndhwm = 0
            sock.connect(info.url(name))
            self.raw[name] = sock

    def close(self) -> None:
        for sock in self.raw.values():
            sock.close(linger=0)
        self.client.close()
        for eng in self.engines:
            eng.close()


@pytest.fixture(scope="module", params=["none", "curve"])
def rig(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A controller with encryption off (PLAIN gate) and on (CurveZMQ): the fuzz runs
    behind either gate, with the cluster's credentials."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORRAL_DIR", str(tmp / "corral"))
        handle = start_controller("fuzz", mode="threads", db="memory", encryption=request.param)
        info = read_cluster_file(handle.cluster_file)
        r = Rig(info)
        yield r
        r.close()
        handle.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
msg_types = st.sampled_from(
    [
        "apply_request",
        "execute_request",
        "connection_request",
        "queue_request",
        "result_request",
        "db_request",
        "purge_request",
        "apply_reply",
        "bogus",
    ]
)
metadata_dicts = st.fixed_dictionaries(
    {},
    optional={
        "targets": st.none() | st.lists(st.integers(-2, 3), max_size=3) | json_values,
        "after": st.lists(st.text(max_size=4), max_size=3) | json_values,
        "follow": st.lists(st.text(max_size=4), max_size=3) | json_values,
        "retries": st.integers(-1, 2) | json_values,
        "timeout": st.none() | st.floats(0, 0.05) | json_values,
        "status": st.sampled_from(["ok", "error"]) | json_values,
    },
)


@st.composite
def signed_messages(draw: Any, routing: list[bytes]) -> list[bytes]:
    header = draw(json_dicts)
    if draw(st.booleans()):
        header["msg_id"] = draw(st.text(min_size=1, max_size=12))
        header["msg_type"] = draw(msg_types)
    parent = draw(json_dicts)
    if draw(st.booleans()):
        parent["msg_id"] = draw(st.text(max_size=12))
    parts = [
        json.dumps(header).encode(),
        json.dumps(parent).encode(),
        json.dumps(draw(metadata_dicts)).encode(),
        json.dumps(draw(json_dicts)).encode(),
    ]
    if draw(st.booleans()):  # a part that is not a JSON object, correctly signed
        parts[draw(st.integers(0, 3))] = draw(st.sampled_from([b"[]", b"1", b"\xff", b"{"]))
    buffers = draw(st.lists(st.binary(max_size=32), max_size=2))
    return [*routing, wire.DELIMITER, b"SIGN", *parts, *buffers]


raw_frames = st.lists(st.binary(max_size=40), max_size=8)


@st.composite
def frame_lists(draw: Any, routing: list[bytes]) -> list[bytes]:
    kind = draw(st.sampled_from(["raw", "delim", "signed", "signed"]))
    if kind == "raw":
        return draw(raw_frames)
    if kind == "delim":
        frames = draw(raw_frames)
        frames.insert(draw(st.integers(0, len(frames))), wire.DELIMITER)
        return frames
    return draw(signed_messages(routing))


def _sign(rig: Rig, frames: list[bytes]) -> list[bytes]:
    """Replace the SIGN placeholder with a real signature over the four parts."""
    if b"SIGN" in frames:
        at = frames.index(b"SIGN")
        frames[at] = rig.signer.seal(frames[at + 1 : at + 5], frames[at + 5 :])
    return frames


def _batch(rig: Rig, data: Any, routing: list[bytes]) -> list[bytes]:
    """A batch of two or three messages as a client or engine would send it, maybe with
    its index or body mangled."""
    messages = [
        _sign(rig, data.draw(frame_lists(routing))) for _ in range(data.draw(st.integers(2, 3)))
    ]
    messages = [m for m in messages if m and sum(len(f) for f in m) < 60_000] or [[b"x"], [b"y"]]
    if len(messages) < 2:
        messages.append([b"z"])
    frames = pack_batches((), messages)[0]
    how = data.draw(st.sampled_from(["whole", "index", "body", "extra"]))
    if how == "index":
        frames[1] = data.draw(st.binary(max_size=24))
    elif how == "body":
        frames[2] = frames[2][: data.draw(st.integers(0, max(0, len(frames[2]) - 1)))]
    elif how == "extra":
        frames.append(data.draw(st.binary(max_size=8)))
    return frames


def _probe(rig: Rig, component: str) -> None:
    """A valid request through ``component`` is still served (strays are drained)."""
    client = rig.client
    if component in ("monitor", "hb_pong"):  # the hub: still registering, still recording
        _probe(rig, "registration")
        _probe(rig, "task")
        return
    if component == "registration":
        reply = client.ask("connection_request")
        assert len(reply["content"]["engines"]) == 2
        return
    queue = component.removesuffix("_engine")
    a, b = rig.engines
    target = a if queue in ("mux", "control") else None
    sent = client.apply(queue, engine=target) if target else client.apply(queue)
    expected = 2 if queue == "broadcast" else 1
    seen = 0
    while seen < expected:  # engines answer everything, the probe included
        poller = zmq.Poller()
        for eng in (a, b):
            poller.register(eng.socks[f"{queue}_engine"], zmq.POLLIN)
        ready = dict(poller.poll(20_000))
        assert ready, f"the probe never reached an engine through {queue}"
        for eng in (a, b):
            sock = eng.socks[f"{queue}_engine"]
            if sock not in ready:
                continue
            for frames in eng.messages_of_one_recv(f"{queue}_engine"):
                at = frames.index(wire.DELIMITER)
                assert rig.signer.verify(frames[at + 2 : at + 6], frames[at + 1]), (
                    "a queue forwarded a message whose signature does not verify"
                )
                parsed = eng.session.parse(frames)
                if parsed is None:
                    # signed, but with a content/parent part that is not a JSON object:
                    # queues never parse those parts (by design); the engine drops it
                    continue
                idents, msg = parsed
                eng.reply(queue, idents, msg)
                if msg["msg_id"] == sent["msg_id"]:
                    seen += 1
    got = 0
    while got < expected:
        if client.reply(queue)["parent_header"].get("msg_id") == sent["msg_id"]:
            got += 1


FUZZ = settings(
    max_examples=int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.mark.parametrize(
    "component",
    [
        "registration",
        "mux",
        "control",
        "task",
        "broadcast",
        "mux_engine",
        "control_engine",
        "task_engine",
        "broadcast_engine",
        "hb_pong",
        "monitor",
    ],
)
def test_fuzz_socket_keeps_serving(rig: Rig, component: str) -> None:
    engine_uuid = rig.engines[0].ident
    if component in ("mux", "control"):
        routing = st.sampled_from([[engine_uuid], [b"not-an-engine"], []])
    elif component.endswith("_engine"):
        routing = st.sampled_from([[b"client"], [rig.engines[0].ident], []])
    elif component == "monitor":  # [kind, engine, client] before the delimiter
        routing = st.sampled_from(
            [[b"reply", engine_uuid, b"client"], [b"request", b"", b"client"], [b"reply:00"]]
        )
    else:
        routing = st.just([])

    @FUZZ
    @given(data=st.data())
    def run(data: Any) -> None:
        if data.draw(st.integers(0, 4)) == 0:
            frames = _batch(rig, data, data.draw(routing))
        else:
            frames = _sign(rig, data.draw(frame_lists(data.draw(routing))))
        if frames:
            rig.raw[component].send_multipart(frames)
        _probe(rig, component)

    run()


def _probe_output(rig: Rig) -> None:
    """A genuine engine's output for a real task still reaches a client through the
    iopub proxy (fuzzed messages that come first are skipped), and the hub serves."""
    client, engine = rig.client, rig.engines[0]
    sent = client.apply("mux", engine=engine)
    idents, request = engine.next_request("mux")
    marker = os.urandom(8).hex()
    engine.publish_stream(request, "stdout", marker)
    sub = client.socks["iopub"]
    end = time.monotonic() + TIMEOUT
    while True:  # raw: iopub carries no batches, a fuzzed one is just refused here
        left = end - time.monotonic()
        assert left > 0 and sub.poll(int(left * 1000) + 1), "genuine output never came"
        parsed = client.session.parse(sub.recv_multipart())
        if parsed is None:
            continue
        msg = parsed[1]
        if msg["msg_type"] == "stream" and msg["content"].get("text") == marker:
            break
    engine.reply("mux", idents, request)
    while client.reply("mux")["parent_header"].get("msg_id") != sent["msg_id"]:
        pass
    _probe(rig, "registration")


@pytest.mark.parametrize("component", ["iopub_engine", "iopub", "notification", "hb_ping"])
def test_fuzz_publish_and_subscribe_sockets_keep_serving(rig: Rig, component: str) -> None:
    """The sockets the fuzz above leaves out: ``iopub_engine`` takes any engine's
    messages and forwards them unparsed to the hub (which stores task output) and to
    every client; ``iopub``, ``notification`` and ``hb_ping`` only publish, but read
    subscription frames, and the hub acts on those of ``notification`` (it opens, and
    runs its feeds, by them). After each example genuine output still reaches a client,
    and the hub and the task scheduler still serve."""
    if component == "iopub_engine":  # a topic frame (or none) before the delimiter
        routing = st.sampled_from([[], [b"engine.0.stream"], [b"\x00", b"x"]])
    else:  # subscription frames: subscribe, unsubscribe, anything else
        routing = st.sampled_from([[b"\x01"], [b"\x00"], [b"\x01corral"], []])

    @FUZZ
    @given(data=st.data())
    def run(data: Any) -> None:
        if component == "iopub_engine" and data.draw(st.integers(0, 4)) == 0:
            frames = _batch(rig, data, data.draw(routing))
        else:
            frames = _sign(rig, data.draw(frame_lists(data.draw(routing))))
        if component != "iopub_engine" and frames and data.draw(st.booleans()):
            # one subscription message with a fuzzed topic (XPUB reads frame by frame)
            frames = [data.draw(st.sampled_from([b"\x01", b"\x00", b"\x02", b""])) + frames[0]]
        if frames:
            rig.raw[component].send_multipart(frames)
        if component == "iopub_engine":
            _probe_output(rig)
        else:
            _probe(rig, "registration")
            _probe(rig, "task")

    run()


def test_refused_input_leaves_the_counters_true(tmp_path: Path) -> None:
    """Unsigned, wrong-key, replayed, tampered and garbage messages at every controller
    socket of a real cluster move no counter: afterwards the hub counts exactly the real
    tasks (the issue's measurement: phantom queued and running tasks after malformed
    input). A request whose buffers were altered passes the queue (which counts buffers,
    it does not hash them) and is refused by the engine, which answers it with an error:
    it counts as completed, never as running forever."""
    import corral

    os.environ["CORRAL_DIR"] = str(tmp_path / "corral")
    with corral.Cluster(n=2, profile="counts") as rc:
        rc.wait_for_engines(2, timeout=TIMEOUT)
        info = read_cluster_file(rc.connection_file)
        raw = FakeClient(info)
        ctx = zmq.Context.instance()
        socks: dict[str, zmq.Socket[Any]] = {}
        for name in ("registration", "mux", "control", "task", "broadcast", "hb_pong"):
            sock = raw.gate.client(ctx.socket(zmq.DEALER))
            sock.linger = 0
            sock.connect(info.url(name))
            socks[name] = sock
        monitor = raw.gate.client(ctx.socket(zmq.PUSH))
        monitor.linger = 0
        monitor.connect(info.url("monitor"))
        socks["monitor"] = monitor
        engines = raw.ask("connection_request")["content"]["engines"]
        ident = engines["0"]["uuid"].encode()
        signer = cluster_signer(info.key)
        wrong = cluster_signer(b"not the cluster key" * 2)
        refused: list[list[bytes]] = []
        for msg_type in ("apply_request", "apply_reply", "execute_request"):
            head = json.dumps(wire.make_header(msg_type, "s")).encode()
            body = [head, b"{}", b'{"targets": null}', b"{}"]
            refused += [
                [wire.DELIMITER, b"", *body],  # unsigned
                [wire.DELIMITER, wrong.seal(body, [b"b"]), *body, b"b"],  # wrong key
                [wire.DELIMITER, signer.seal(body), *body[:3], b"{not json"],
                [b"garbage", os.urandom(40)],
            ]
        # A real direct request, replayed below: it counts once.
        # (signed for the mux and this controller run, as a genuine client signs it:
        # door.DEST, door.RUN)
        header = json.dumps(
            {**wire.make_header("execute_request", "s"), DEST: "mux", RUN: info.run}
        ).encode()
        parts = [header, b"{}", b"{}", b'{"code": "x = 1", "silent": true}']
        real = [ident, wire.DELIMITER, signer.seal(parts), *parts]
        socks["mux"].send_multipart(real)
        # Genuine parts, an altered buffer: the engine answers it with an error.
        tampered_header = json.dumps(
            {**wire.make_header("apply_request", "s"), DEST: "mux", RUN: info.run}
        ).encode()
        tampered = [tampered_header, b"{}", b"{}", b"{}"]
        socks["mux"].send_multipart(
            [ident, wire.DELIMITER, signer.seal(tampered, [b"b"]), *tampered, b"X"]
        )
        for _ in range(20):
            for name, sock in socks.items():
                routing = [ident] if name in ("mux", "control") else []
                if name == "monitor":
                    routing = [b"reply:00", ident, b"client"]
                for frames in refused:
                    sock.send_multipart(routing + frames)
            socks["mux"].send_multipart(real)  # replayed on the socket it came in on
        view = rc.load_balanced_view()
        assert view.map_sync(abs, range(-5, 0)) == [5, 4, 3, 2, 1]
        assert rc[1].apply_sync(abs, -7) == 7
        expected = 2 + 5 + 1  # the real request, the tampered one, the map, the apply
        deadline = time.monotonic() + TIMEOUT
        status = rc.queue_status()
        while sum(s["completed"] for k, s in status.items() if k != "unassigned") < expected:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
            status = rc.queue_status()
        assert status.pop("unassigned") == 0
        assert sum(s["completed"] for s in status.values()) == expected, status
        assert all(s["queue"] == 0 for s in status.values()), status
        for sock in socks.values():
            sock.close(linger=0)
        raw.close()
