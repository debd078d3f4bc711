"""Large frames on a Curve data channel travel as streams of one-chunk messages
(corral.transports.zmq.chunkstream): they come back whole, and a lost, reordered, extra
or altered chunk never yields a wrong value (the BLAKE3 digest of the signed message
refuses what arrived)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from blake3 import blake3

from corral.transports.zmq import chunkstream as cs
from corral.transports.zmq import frames as fr
from corral.transports.zmq.door import BuffersAltered, cluster_signer
from corral.transports.zmq.gate import Gate

pytestmark = pytest.mark.timeout(120)

KEY = os.urandom(32)
PARTS = [b'{"msg_id": "m", "msg_type": "push_request"}', b"{}", b"{}", b"{}"]


class Pair:
    """A Curve ROUTER (the engine's data socket) and DEALER(s) (clients' data channels),
    both marked for streams unless told otherwise."""

    def __init__(self, encryption: str = "curve", mark_server: bool = True) -> None:
        self.gate = Gate(KEY, encryption)
        self.ctx = zmq.Context.instance()
        self.server = self.ctx.socket(zmq.ROUTER)
        if mark_server:
            cs.stream_large_frames(self.server)
        self.gate.server(self.server)
        self.server.linger = 0
        self.port = self.server.bind_to_random_port("tcp://127.0.0.1")
        self.clients: list[zmq.Socket[Any]] = []
        self.client = self.add_client(b"client-0")

    def add_client(self, identity: bytes) -> zmq.Socket[Any]:
        sock = cs.stream_large_frames(self.ctx.socket(zmq.DEALER))
        self.gate.client(sock)
        sock.identity = identity
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        self.clients.append(sock)
        return sock

    def close(self) -> None:
        for sock in (self.server, *self.clients):
            sock.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def receive(sock: zmq.Socket[Any], timeout_ms: int = 30_000) -> list[Any]:
    """The next whole message, polling as the engine and the client's I/O thread do
    (``NOBLOCK``: ``zmq.Again`` until every chunk is in)."""
    while True:
        assert sock.poll(timeout_ms), "nothing arrived"
        try:
            return fr.recv_frames(sock, fr.NOBLOCK)
        except zmq.Again:
            continue


def mark(sid: int, size: int) -> bytes:
    return cs._MARK_MAGIC + cs._MARK.pack(sid, size)


def head(sid: int, seq: int) -> bytes:
    return cs._HEAD_MAGIC + cs._HEAD.pack(sid, seq)


def signed(buffers: list[bytes]) -> list[Any]:
    """A cluster message's frames after the delimiter: signature, parts, buffers."""
    return [cluster_signer(KEY).seal(PARTS, buffers), *PARTS, *buffers]


def verify(frames: list[Any]) -> None:
    """What every receiver does before anything reads the buffers (door.admit)."""
    cluster_signer(KEY).check(frames[1:5], bytes(frames[0]), frames[5:])


def test_large_frames_come_back_whole_both_ways(pair: Pair) -> None:
    big = os.urandom(3 * cs.CHUNK * 2 + 17)
    other = os.urandom(cs.SPLIT_FROM)
    lookalikes = [mark(0, 5), head(0, 0)]  # small data that reads like stream frames
    sent = [b"head", memoryview(big), b"mid", other, *lookalikes, b"tail"]
    fr.send_frames(pair.client, sent, copy=False)
    got = receive(pair.server)
    assert bytes(got[0]) == b"client-0"
    assert [bytes(f) for f in got[1:]] == [bytes(f) for f in sent]
    assert isinstance(got[2], cs.Joined) and isinstance(got[4], cs.Joined)
    # the engine's answer: a zmq.Frame (a tracked result buffer) goes by reference
    frame = zmq.Frame(big, track=True)
    tracker = frame.tracker
    fr.send_frames(pair.server, [bytes(got[0]), b"reply", frame])
    del frame
    back = receive(pair.client)
    assert bytes(back[0]) == b"reply" and bytes(back[1]) == big
    tracker.wait(30)  # libzmq let go of every chunk (the engine's settle() waits so)


def test_a_joined_buffer_is_writable_and_holds_what_it_was_given(pair: Pair) -> None:
    """A pushed array is deserialized in place onto the joined buffer: it must be
    writable like a frame received whole, and stay valid once the message is gone (the
    buffer is memory of its own, not zero-filled first; see Joined)."""
    np = pytest.importorskip("numpy")
    array = np.arange(cs.SPLIT_FROM // 4, dtype=np.int64)  # 2 MiB: streamed
    buffers: list[Any] = []
    head_bytes = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    fr.send_frames(pair.client, [head_bytes, buffers[0].raw()], copy=False)
    got = receive(pair.server)
    joined = got[2]
    assert isinstance(joined, cs.Joined) and len(joined) == array.nbytes
    back = pickle.loads(got[1].bytes, buffers=[joined])
    del got, joined
    assert back.flags.writeable
    back[0] = -1
    assert back[0] == -1 and (back[1:] == array[1:]).all()


def test_a_cut_buffer_keeps_what_arrived_and_says_why() -> None:
    joined = cs.Joined(10)
    memoryview(joined)[:4] = b"abcd"
    short = cs.cut_short(joined, 4, "its stream stalled")
    assert bytes(short) == b"abcd" and short.cut == "its stream stalled"
    assert short.bytes == b"abcd" and bytes(short.buffer) == b"abcd"
    with pytest.raises(ValueError, match="at least one byte"):
        cs.Joined(0)


def test_on_the_wire_the_message_then_one_message_per_chunk() -> None:
    p = Pair(mark_server=False)
    try:
        big = os.urandom(cs.SPLIT_FROM + 1)
        fr.send_frames(p.client, [b"a", big, b"z"])
        count = -(-len(big) // cs.CHUNK)
        raw = []
        for _ in range(1 + count):  # the message, then its chunks
            assert p.server.poll(30_000)
            raw.append(p.server.recv_multipart())
        message, chunks = raw[0], raw[1:]
        assert message[1:] == [b"a", mark(0, len(big)), b"z"]
        assert [c[1] for c in chunks] == [head(0, i) for i in range(count)]
        assert b"".join(c[2] for c in chunks) == big
        assert max(len(c[2]) for c in chunks) == cs.CHUNK
    finally:
        p.close()


def test_a_message_waits_for_its_chunks_without_blocking(pair: Pair) -> None:
    data = os.urandom(cs.CHUNK + 10)
    frames = signed([data])
    frames[5] = mark(7, len(data))
    pair.client.send_multipart(frames)
    pair.client.send_multipart([head(7, 0), data[: cs.CHUNK]])
    assert pair.server.poll(30_000)
    with pytest.raises(zmq.Again):  # every message that came was taken in: none whole
        for _ in range(50):
            fr.recv_frames(pair.server, fr.NOBLOCK)
    pair.client.send_multipart([head(7, 1), data[cs.CHUNK :]])
    got = receive(pair.server)
    assert bytes(got[6]) == data
    verify(got[1:])


def _send_stream(sock: zmq.Socket[Any], data: bytes, chunks: list[tuple[int, int, bytes]]) -> None:
    """A signed message for ``data`` (stream 3), then ``chunks`` as given: (stream,
    sequence number, bytes) each."""
    frames = signed([data])
    frames[5] = mark(3, len(data))
    sock.send_multipart(frames)
    for sid, seq, chunk in chunks:
        sock.send_multipart([head(sid, seq), chunk])


def _pieces(data: bytes, sid: int = 3) -> list[tuple[int, int, bytes]]:
    count = -(-len(data) // cs.CHUNK)
    return [(sid, i, data[i * cs.CHUNK : (i + 1) * cs.CHUNK]) for i in range(count)]


@pytest.mark.parametrize(
    "how",
    ["lost", "reordered", "altered", "foreign stream", "too long"],
)
def test_a_broken_stream_is_refused_by_the_digest(pair: Pair, how: str) -> None:
    data = os.urandom(4 * cs.CHUNK)
    chunks = _pieces(data)
    if how == "lost":
        del chunks[1]
    elif how == "reordered":
        chunks[1], chunks[2] = chunks[2], chunks[1]
    elif how == "altered":
        chunks[2] = (3, 2, b"\xff" + chunks[2][2][1:])
    elif how == "too long":
        chunks[3] = (3, 3, chunks[3][2] + b"!")
    elif how == "foreign stream":  # a chunk of another stream cuts in
        chunks.insert(2, (9, 2, chunks[2][2]))
    _send_stream(pair.client, data, chunks)
    got = receive(pair.server)
    assert bytes(got[6]) != data
    with pytest.raises(BuffersAltered):
        verify(got[1:])
    fr.send_frames(pair.client, [b"next"])  # and the socket stays in step
    assert [bytes(f) for f in receive(pair.server)[1:]] == [b"next"]


def test_the_digest_taken_on_arrival_is_the_contents_and_serves_once(pair: Pair) -> None:
    """The receiver hashes each chunk as it is copied in (the check after the transfer
    then costs nothing): that digest must be the BLAKE3 of what the buffer holds, and it
    serves one check only, since the buffer is writable: a buffer written to after its
    check is hashed anew by the next one, and refused."""
    data = os.urandom(cs.SPLIT_FROM + 3 * cs.CHUNK + 11)
    fr.send_frames(pair.client, signed([data]), copy=False)
    got = receive(pair.server)
    joined = got[6]
    assert isinstance(joined, cs.Joined)
    assert joined.digest == blake3(data).hexdigest().encode()
    verify(got[1:])
    assert joined.digest is None  # taken by the check
    memoryview(joined)[0] ^= 0xFF
    with pytest.raises(BuffersAltered, match="altered"):
        verify(got[1:])


def test_a_chunk_without_a_stream_is_dropped(pair: Pair) -> None:
    pair.client.send_multipart([head(1, 0), b"stray"])
    fr.send_frames(pair.client, [b"after"])
    assert [bytes(f) for f in receive(pair.server)[1:]] == [b"after"]


def test_a_stream_cut_short_by_the_next_message(pair: Pair) -> None:
    """Its end never came: a plain message from the same peer gets through (the cut one
    is dropped, logged); a message with streams of its own brings the cut one out short."""
    data = os.urandom(2 * cs.CHUNK)
    _send_stream(pair.client, data, _pieces(data)[:1])
    fr.send_frames(pair.client, [b"plain"])
    assert [bytes(f) for f in receive(pair.server)[1:]] == [b"plain"]

    _send_stream(pair.client, data, _pieces(data)[:1])
    fresh = os.urandom(cs.SPLIT_FROM + 5)
    fr.send_frames(pair.client, signed([fresh]))
    cut = receive(pair.server)
    assert len(cut[6]) == cs.CHUNK
    with pytest.raises(BuffersAltered):
        verify(cut[1:])
    whole = receive(pair.server)
    assert bytes(whole[6]) == fresh
    verify(whole[1:])


def test_streams_of_several_peers_interleave(pair: Pair) -> None:
    second = pair.add_client(b"client-1")
    first_data, second_data = os.urandom(3 * cs.CHUNK), os.urandom(3 * cs.CHUNK - 1)
    first_frames, second_frames = signed([first_data]), signed([second_data])
    first_frames[5], second_frames[5] = mark(0, len(first_data)), mark(0, len(second_data))
    pair.client.send_multipart(first_frames)
    second.send_multipart(second_frames)
    for (_, seq, a), (_, _, b) in zip(_pieces(first_data), _pieces(second_data), strict=True):
        pair.client.send_multipart([head(0, seq), a])
        second.send_multipart([head(0, seq), b])
    got = {bytes(m[0]): m for m in (receive(pair.server), receive(pair.server))}
    assert bytes(got[b"client-0"][6]) == first_data
    assert bytes(got[b"client-1"][6]) == second_data
    for message in got.values():
        verify(message[1:])


def test_without_curve_a_marked_socket_sends_frames_whole() -> None:
    p = Pair(encryption="none")
    try:
        big = os.urandom(cs.SPLIT_FROM * 2)
        fr.send_frames(p.client, [big])
        assert p.server.poll(30_000)
        raw = p.server.recv_multipart()
        assert raw == [b"client-0", big]
    finally:
        p.close()


def test_a_huge_announcement_is_refused_not_allocated(pair: Pair) -> None:
    pair.client.send_multipart([mark(0, 1 << 62), b"x"])
    fr.send_frames(pair.client, [b"after"])
    assert [bytes(f) for f in receive(pair.server)[1:]] == [b"after"]


def _deadline_wait(sock: zmq.Socket[Any]) -> list[Any]:
    """Receive as the engine's loop and the client's I/O thread do with a stream in
    progress: poll until its stall deadline, and receive (``NOBLOCK``) once it passed,
    whether or not the poll saw anything."""
    while True:
        deadline = cs.stall_deadline(sock)
        timeout = (
            None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000) + 1)
        )
        sock.poll(timeout)
        try:
            return fr.recv_frames(sock, fr.NOBLOCK)
        except zmq.Again:
            continue


def test_a_stalled_stream_ends_cut_short_and_says_why(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sender stopped after one chunk of four: once no chunk has come for
    STALL_TIMEOUT, the message comes out with what arrived, and its digest check says
    why it is short; the socket then serves the next message."""
    monkeypatch.setattr(cs, "STALL_TIMEOUT", 0.5)
    data = os.urandom(4 * cs.CHUNK)
    _send_stream(pair.client, data, _pieces(data)[:1])
    assert pair.server.poll(30_000)
    with pytest.raises(zmq.Again):  # in progress, not stalled yet
        for _ in range(50):
            fr.recv_frames(pair.server, fr.NOBLOCK)
    started = time.monotonic()
    assert cs.stall_deadline(pair.server) is not None
    cut = _deadline_wait(pair.server)
    assert time.monotonic() - started >= 0.3  # waited for the deadline, not less
    assert len(cut[6]) == cs.CHUNK
    with pytest.raises(BuffersAltered, match="incomplete: its stream stalled"):
        verify(cut[1:])
    assert cs.stall_deadline(pair.server) is None
    fr.send_frames(pair.client, signed([data]))  # whole this time
    whole = receive(pair.server)
    assert bytes(whole[6]) == data
    verify(whole[1:])


def test_a_slow_stream_that_keeps_moving_is_never_cut(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is on progress, not on the whole transfer: a stream far longer than
    STALL_TIMEOUT, one chunk at a time, arrives whole."""
    monkeypatch.setattr(cs, "STALL_TIMEOUT", 2.0)
    data = os.urandom(12 * cs.CHUNK - 3)
    frames = signed([data])
    frames[5] = mark(3, len(data))
    pair.client.send_multipart(frames)
    done: list[list[Any]] = []
    receiver = threading.Thread(target=lambda: done.append(_deadline_wait(pair.server)))
    receiver.start()
    started = time.monotonic()
    for sid, seq, chunk in _pieces(data):
        time.sleep(0.25)  # the slow sender's pace (the point of the test)
        pair.client.send_multipart([head(sid, seq), chunk])
    receiver.join(60)
    assert time.monotonic() - started > cs.STALL_TIMEOUT
    assert bytes(done[0][6]) == data
    verify(done[0][1:])


def test_a_busy_receiver_does_not_cut_a_stream_whose_chunks_wait(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine may run a task for longer than STALL_TIMEOUT while chunks queue up:
    that is not a stall, and the chunks waiting are taken in first."""
    monkeypatch.setattr(cs, "STALL_TIMEOUT", 0.3)
    data = os.urandom(3 * cs.CHUNK + 1)
    frames = signed([data])
    frames[5] = mark(3, len(data))
    pair.client.send_multipart(frames)
    assert pair.server.poll(30_000)
    with pytest.raises(zmq.Again):
        fr.recv_frames(pair.server, fr.NOBLOCK)  # the message: held for its stream
    for sid, seq, chunk in _pieces(data):
        pair.client.send_multipart([head(sid, seq), chunk])
    assert pair.server.poll(30_000)  # the first chunk is in
    time.sleep(0.6)  # the receiver busy elsewhere, past the deadline
    whole = receive(pair.server)
    assert bytes(whole[6]) == data
    verify(whole[1:])
