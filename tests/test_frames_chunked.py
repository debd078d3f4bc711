"""Large frames cross CurveZMQ sockets in 256 KiB chunks and come back whole.

libzmq's Curve seals each frame whole, and a frame of many megabytes is far slower to
seal than the same bytes in cache-sized frames (docs/performance.md), so the gate marks
Curve sockets and corral.transports.zmq.frames splits and joins their large frames.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from parallel_client_harness import LiveCluster

from corral.transports.zmq import frames as fr
from corral.transports.zmq.gate import Gate

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(300)


def _pair(encryption: str, mark_receiver: bool = True) -> tuple[Any, Any]:
    gate = Gate(os.urandom(32), encryption)
    ctx = zmq.Context.instance()
    server = gate.server(ctx.socket(zmq.ROUTER))
    if not mark_receiver:
        fr._CHUNKED.discard(server)
    server.linger = 0
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = gate.client(ctx.socket(zmq.DEALER))
    client.linger = 0
    client.connect(f"tcp://127.0.0.1:{port}")
    return server, client


def test_large_frames_travel_in_chunks_on_curve_and_come_back_whole() -> None:
    big = os.urandom(5 * 1024 * 1024 + 123)
    server, client = _pair("curve")
    try:
        fr.send_frames(client, [b"head", memoryview(big), b"tail"], copy=False)
        assert server.poll(30_000)
        got = fr.recv_frames(server)
        assert [bytes(f) for f in got[1:]] == [b"head", big, b"tail"]
        assert isinstance(got[2], fr.Joined) and got[2].bytes == big
        assert bytes(got[2].buffer[:10]) == big[:10]
    finally:
        server.close()
        client.close()


def test_on_the_wire_a_large_frame_is_a_marker_and_its_chunks() -> None:
    big = os.urandom(fr.SPLIT_FROM * 2 + 1)
    server, client = _pair("curve", mark_receiver=False)
    try:
        fr.send_frames(client, [b"head", big, b"x" * (fr.SPLIT_FROM - 1)])
        assert server.poll(30_000)
        raw = server.recv_multipart()
        chunks = -(-len(big) // fr.CHUNK)
        assert len(raw) == 1 + 1 + 1 + chunks + 1  # identity, head, marker, chunks, small
        assert raw[2].startswith(fr._MAGIC)
        assert max(len(f) for f in raw[3 : 3 + chunks]) == fr.CHUNK
        assert b"".join(raw[3 : 3 + chunks]) == big
        assert len(raw[-1]) == fr.SPLIT_FROM - 1  # below the threshold: one frame
    finally:
        server.close()
        client.close()


def test_without_curve_frames_are_untouched() -> None:
    """The default gate (PLAIN handshake, no encryption) marks nothing."""
    big = os.urandom(fr.SPLIT_FROM * 2)
    server, client = _pair("none")
    try:
        assert server not in fr._CHUNKED and client not in fr._CHUNKED
        fr.send_frames(client, [big])
        assert server.poll(30_000)
        raw = server.recv_multipart()
        assert len(raw) == 2 and raw[1] == big
    finally:
        server.close()
        client.close()


def test_a_lying_marker_yields_what_arrived() -> None:
    """More chunks announced than frames follow: the receiver joins what came (the
    digest check above this layer then refuses it) and stays in step."""
    server, client = _pair("curve")
    try:
        client.send_multipart([fr._MAGIC + fr._COUNT.pack(1_000_000), b"only", b"two"])
        fr.send_frames(client, [b"next"])
        assert server.poll(30_000)
        got = fr.recv_frames(server)
        assert bytes(got[1]) == b"onlytwo"
        assert server.poll(30_000)
        assert [bytes(f) for f in fr.recv_frames(server)[1:]] == [b"next"]
    finally:
        server.close()
        client.close()


def echo(value: bytes) -> bytes:
    return value


@pytest.fixture(scope="module")
def curve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(
        tmp_path_factory.mktemp("chunks"),
        n=1,
        threads=False,
        profile="chunks",
        controller_args=("--encryption", "curve"),
    )
    yield live
    live.stop()


def test_a_curve_cluster_moves_large_buffers_whole(curve_cluster: LiveCluster) -> None:
    """Push/pull over the engine's data socket and apply through the queues (client ->
    queue -> engine -> queue -> client), each hop chunking and joining."""
    info = json.loads(Path(curve_cluster.cluster_file).read_text())
    assert info["encryption"] == "curve"
    rc = curve_cluster.client
    view = rc[rc.ids[0]]
    data = os.urandom(12 * 1024 * 1024 + 7)
    view.push({"blob": data}, block=True)
    assert view.pull("blob", block=True) == data
    assert view.apply_sync(echo, data) == data
