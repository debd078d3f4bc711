"""A request replayed after the receiver's replay memory has moved on is still refused.

Each receiver remembers the last 100,000 signatures (``wire.ReplayGuard``). Before the
guards kept per-session horizons, a genuine request captured on its way to the hub could
be resent once 100,000 newer messages had reached it, and it was served again: here a
client's old "purge all", which then wipes a result stored since. The filler is genuine
traffic signed with the cluster's key (as a busy cluster's clients would send): empty
result queries, which change nothing.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from helpers import until
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client.messages import MessageBuilder, parse
from corral.transports.zmq.batch import is_batch, unbatch
from corral.transports.zmq.door import HUB, cluster_signer
from corral.transports.zmq.gate import gate_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

DEADLINE = 60.0
#: What the hub remembers (ReplayGuard's default), and a margin past it.
MEMORY = 100_000
FILLER = MEMORY + 2_000


def square(x: int) -> int:
    return x * x


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), n=1, threads=False, profile="mem")
    yield live
    live.stop()


def _dealer(info: dict[str, Any], name: str) -> zmq.Socket[Any]:
    sock = gate_for(info).client(zmq.Context.instance().socket(zmq.DEALER))
    sock.linger = 0
    sock.rcvhwm = sock.sndhwm = 0
    sock.connect(f"{info['transport']}://{info['ip']}:{info[name]}")
    return sock


def _reply_to(sock: zmq.Socket[Any], signer: Any, msg_id: str) -> Any:
    """The reply to ``msg_id`` on ``sock``, skipping any other."""
    while True:
        assert sock.poll(int(DEADLINE * 1000)), f"no reply to {msg_id}"
        frames = sock.recv_multipart()
        for message in unbatch(frames, 0) if is_batch(frames[0]) else [frames]:
            reply = parse(message, signer)
            if reply.parent_id == msg_id:
                return reply


def test_a_request_replayed_after_100k_newer_ones_is_not_served_again(
    cluster: LiveCluster,
) -> None:
    info = json.loads(Path(cluster.cluster_file).read_text())
    signer = cluster_signer(info["key"])
    builder = MessageBuilder(signer, "victim-session", run=info["run"])
    victim = _dealer(info, "registration")
    try:
        purge_id, captured = builder.build("purge_request", {"msg_ids": "all"}, dest=HUB)
        victim.send_multipart(captured)
        assert _reply_to(victim, signer, purge_id).content["status"] == "ok"
        # A result stored after the purge.
        ar = cluster.client[0].apply_async(square, 7)
        assert ar.get(timeout=DEADLINE) == 49

        # Genuine traffic from the same session, more than the hub remembers.
        answered = threading.Event()
        last_id = builder.new_msg_id()

        def drain() -> None:
            while victim.poll(int(DEADLINE * 1000)):
                frames = victim.recv_multipart()
                for message in unbatch(frames, 0) if is_batch(frames[0]) else [frames]:
                    if parse(message, signer).parent_id == last_id:
                        answered.set()
                        return

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        for n in range(FILLER):
            _, frames = builder.build(
                "result_request",
                b'{"msg_ids":[]}',
                dest=HUB,
                msg_id=last_id if n == FILLER - 1 else None,
            )
            victim.send_multipart(frames)
        assert answered.wait(DEADLINE * 4), "the filler was not all answered"
        reader.join(DEADLINE)

        # The old purge again: refused. The hub serves a connection in order, so the
        # query sent after it sees what the purge would have done.
        victim.send_multipart(captured)
        query_id, query = builder.build("result_request", {"msg_ids": [ar.msg_id]}, dest=HUB)
        victim.send_multipart(query)
        results = _reply_to(victim, signer, query_id).content["results"]
        assert results[ar.msg_id]["status"] == "completed", "the replayed purge was served"
    finally:
        victim.close()


def shout(word: str) -> str:
    print(word, flush=True)
    return word


def test_output_replayed_to_a_client_after_its_memory_moved_on_is_refused(
    cluster: LiveCluster,
) -> None:
    """A task's output, captured on a client's iopub link and slipped in again once the
    client's guard has forgotten it, must not show twice. A 64-message guard stands in
    for the 100,000 of a real client (the filler would be 100,000 outputs)."""
    from corral.transports.zmq import wire

    rc = cluster.connect()
    rc.wait_for_engines(1, timeout=DEADLINE)
    rc._replay = wire.ReplayGuard(64)  # what an unordered guard of that size forgets
    rc._iopub_replay = wire.ReplayGuard(64, ordered=True)
    io = rc._io
    real_handler = io.handler
    captured: list[list[Any]] = []

    def record(channel: str, frames: list[Any]) -> None:
        if channel == "iopub" and b"once-only" in b"".join(bytes(f) for f in frames):
            captured.append(list(frames))
        real_handler(channel, frames)

    io.handler = record
    view = rc[rc.ids[0]]
    ar = view.apply_async(shout, "once-only")
    assert ar.get(timeout=DEADLINE) == "once-only"
    until(lambda: "once-only" in ar.stdout)
    assert captured, "the output was not seen on iopub"
    for result in [view.apply_async(shout, f"filler {i}") for i in range(100)]:
        result.get(timeout=DEADLINE)
    dropped = rc.dropped
    replayed = threading.Event()

    def replay() -> None:
        for frames in captured:
            rc._dispatch("iopub", frames)
        replayed.set()

    io.call_soon(replay)
    assert replayed.wait(DEADLINE)
    assert ar.stdout.count("once-only") == 1, ar.stdout
    assert rc.dropped > dropped
    rc.close()
