"""Framing of multipart messages over a Unix stream socket (corral.transports.unix)."""

from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

from corral.transports import unix


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def read_one(reader: unix.FrameReader) -> list[bytes]:
    while True:
        messages = reader.read()
        if messages:
            assert len(messages) == 1
            return [bytes(f) for f in messages[0]]


def test_round_trip_keeps_frames_and_empty_ones(pair) -> None:
    a, b = pair
    frames = [b"<IDS|MSG>", b"", b"x" * 1000, memoryview(b"view"), bytearray(b"ba")]
    unix.send_message(a, frames)
    assert read_one(unix.FrameReader(b)) == [b"<IDS|MSG>", b"", b"x" * 1000, b"view", b"ba"]


def test_several_messages_in_one_read_come_out_in_order(pair) -> None:
    a, b = pair
    for i in range(5):
        unix.send_message(a, [b"m", str(i).encode()])
    b.setblocking(False)
    reader = unix.FrameReader(b)
    got: list[list[bytes]] = []
    while len(got) < 5:
        got += [[bytes(f) for f in m] for m in reader.read()]
    assert got == [[b"m", str(i).encode()] for i in range(5)]


def test_large_message_arrives_whole_through_a_nonblocking_reader(pair) -> None:
    a, b = pair
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB: received into its own buffer
    sender = threading.Thread(target=unix.send_message, args=(a, [b"head", big, b"tail"]))
    sender.start()
    b.setblocking(False)
    reader = unix.FrameReader(b)
    messages: list[list[object]] = []
    while not messages:
        assert select.select([b], [], [], 5)[0], "no data within 5 s"
        messages = reader.read()
    sender.join(5)
    head, body, tail = messages[0]
    assert bytes(head) == b"head" and bytes(tail) == b"tail"
    assert isinstance(body, memoryview)  # a view into the message's buffer, not a copy
    assert body == big


def test_multidimensional_buffers_are_sent_as_bytes(pair) -> None:
    a, b = pair
    view = memoryview(bytearray(range(24))).cast("B", (2, 3, 4))
    unix.send_message(a, [view])
    assert read_one(unix.FrameReader(b)) == [bytes(range(24))]


@pytest.mark.parametrize(
    "prefix, error",
    [
        (struct.pack("<QI", 16, 10_000), "frames announced"),
        (struct.pack("<QI", 1 << 50, 1), "byte message announced"),
        (struct.pack("<QI", 4, 1), "length table"),
        (struct.pack("<QI", 9, 1) + struct.pack("<Q", 5) + b"x", "do not add up"),
    ],
)
def test_garbage_raises_framing_error(pair, prefix: bytes, error: str) -> None:
    a, b = pair
    a.sendall(prefix)
    with pytest.raises(unix.FramingError, match=error):
        read_one(unix.FrameReader(b, max_frames=64, max_body=1 << 40))


def test_end_of_stream_mid_message_and_between_messages(pair) -> None:
    a, b = pair
    a.sendall(struct.pack("<QI", 100, 1))
    a.close()
    with pytest.raises(unix.ConnectionClosed, match="mid-message"):
        read_one(unix.FrameReader(b))
    c, d = socket.socketpair()
    c.close()
    with pytest.raises(unix.ConnectionClosed):
        read_one(unix.FrameReader(d))
    d.close()


def test_send_to_a_peer_that_never_reads_times_out(pair) -> None:
    a, b = pair
    a.setblocking(False)
    with pytest.raises(TimeoutError):
        for _ in range(1000):  # fills the socket buffer, then waits 0.2 s for room
            unix.send_message(a, [b"x" * 65536], timeout=0.2)
