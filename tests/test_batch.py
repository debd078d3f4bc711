"""Batches of small zmq messages (corral.transports.zmq.batch): layout, limits, bad input,
and a real round trip over a ROUTER/DEALER pair."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import zmq

from corral.transports.zmq.batch import (
    BATCH,
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_PACKED_MESSAGE,
    BatchError,
    is_batch,
    pack_batches,
    pack_batches_counted,
    unbatch,
)


def _messages(n: int) -> list[list[bytes]]:
    return [
        [b"<IDS|MSG>", b"sig%d" % i, b'{"msg_id":"%d"}' % i, b"{}", b"{}", b""] for i in range(n)
    ]


def test_round_trip_keeps_every_frame_and_the_order() -> None:
    messages = _messages(5)
    (packed,) = pack_batches([b"peer"], messages)
    assert packed[0] == b"peer" and packed[1] == BATCH and len(packed) == 4
    assert unbatch(packed, 1) == [[b"peer", *m] for m in messages]


def test_unpacked_frames_are_plain_bytes() -> None:
    (packed,) = pack_batches((), _messages(2))
    first = unbatch(packed, 0)[0]
    assert all(type(f) is bytes for f in first)
    assert first[2] == b'{"msg_id":"0"}'
    as_frames = unbatch([zmq.Frame(f) for f in packed], 0)[0]  # received without copy
    assert as_frames == first and all(type(f) is bytes for f in as_frames)


def test_one_message_goes_unbatched() -> None:
    (message,) = _messages(1)
    assert pack_batches([b"peer"], [message]) == [[b"peer", *message]]
    # Whatever its size and the bounds: a lone message is sent as it is, counted once.
    big = [b"h", b"x" * (MAX_PACKED_MESSAGE + 1)]
    for limit, max_bytes in ((1, 1), (64, MAX_BATCH_BYTES)):
        for lone in (message, big):
            packed = pack_batches_counted((b"peer",), [lone], limit, max_bytes)
            assert packed == [([b"peer", *lone], 1)]


def test_limit_splits_into_several_batches_in_order() -> None:
    messages = _messages(10)
    packed = pack_batches((), messages, limit=4)
    assert [len(unbatch(p, 0)) for p in packed] == [4, 4, 2]
    assert [m for p in packed for m in unbatch(p, 0)] == messages


def test_large_message_goes_alone_in_its_place_zero_copy() -> None:
    small = _messages(4)
    big_buffer = memoryview(bytearray(MAX_PACKED_MESSAGE + 1))
    big = [b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"{}", big_buffer]
    packed = pack_batches((), [small[0], small[1], big, small[2], small[3]])
    assert len(packed) == 3
    assert unbatch(packed[0], 0) == small[:2]
    assert packed[1] == big and packed[1][-1] is big_buffer  # not joined: not copied
    assert unbatch(packed[2], 0) == small[2:]


def test_batch_bodies_stay_under_the_copy_threshold() -> None:
    messages = [
        [b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"{}", b"%05d" % i * 2000] for i in range(20)
    ]
    packed = pack_batches((), messages)
    assert all(len(p[2]) <= MAX_BATCH_BYTES for p in packed) and len(packed) > 1
    assert [m for p in packed for m in unbatch(p, 0)] == messages


def test_zmq_frames_pack_like_bytes() -> None:
    messages = _messages(3)
    as_frames = [[zmq.Frame(f) for f in m] for m in messages]
    assert pack_batches((), as_frames) == pack_batches((), messages)


def test_is_batch() -> None:
    assert is_batch(BATCH) and is_batch(zmq.Frame(BATCH))
    assert not is_batch(b"<IDS|MSG>") and not is_batch(b"x" * len(BATCH))


def _index(*counts: int) -> bytes:
    return struct.pack(f"<{len(counts)}I", *counts)


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([BATCH, _index(1, 2)], "marker, index and body"),
        ([BATCH, _index(1, 2), b"ab", b"extra"], "marker, index and body"),
        ([BATCH, b"", b""], "uint32"),
        ([BATCH, b"\x01\x00\x00", b"a"], "uint32"),
        ([BATCH, _index(0), b""], "empty or truncated"),
        ([BATCH, _index(2, 1), b"a"], "empty or truncated"),
        ([BATCH, _index(1, 5), b"abc"], "more bytes than its body"),
        ([BATCH, _index(1, 1), b"abc"], "does not describe"),
        ([BATCH, _index(*[1, 0] * (MAX_BATCH_MESSAGES + 1)), b""], "more than"),
    ],
)
def test_bad_batches_raise_batch_error(frames: list[Any], why: str) -> None:
    with pytest.raises(BatchError, match=why):
        unbatch(frames, 0)


def test_bad_batch_errors_are_value_errors() -> None:
    assert issubclass(BatchError, ValueError)


def test_over_a_real_router_dealer_pair() -> None:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        for sock in (router, dealer):
            sock.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.identity = b"client-7"
        dealer.connect(f"tcp://127.0.0.1:{port}")
        messages = _messages(64)
        for packed in pack_batches((), messages):
            dealer.send_multipart(packed)
        assert router.poll(10_000)
        received = router.recv_multipart(copy=False)
        assert received[0].bytes == b"client-7" and is_batch(received[1])
        unpacked = unbatch([received[0].bytes, *received[1:]], 1)
        assert unpacked == [[b"client-7", *m] for m in messages]
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
