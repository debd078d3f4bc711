"""The cluster door's pure functions: buffer digests inside the signature, the monitor
envelope, and that Jupyter's own signing is left as it is."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.transports.zmq import wire
from corral.transports.zmq.door import (
    BUFFERS_COUNTED,
    BUFFERS_HASHED,
    BUFFERS_IGNORED,
    buffer_digest,
    cluster_signer,
)

KEY = b"k" * 64
PARTS = [b'{"msg_id":"1","msg_type":"apply_request"}', b"{}", b"{}", b"{}"]


def test_without_buffers_the_signature_is_jupyters() -> None:
    assert cluster_signer(KEY).seal(PARTS) == wire.Signer(KEY).sign(PARTS)


def test_buffers_are_covered() -> None:
    signer = cluster_signer(KEY)
    buffers = [b"function", memoryview(np.arange(10.0))]
    sig = signer.seal(PARTS, buffers)
    signer.check(PARTS, sig, buffers)
    with pytest.raises(wire.BadSignature, match="altered"):
        signer.check(PARTS, sig, [b"FUNCTION", buffers[1]])
    with pytest.raises(wire.BadSignature, match="covers 2"):
        signer.check(PARTS, sig, buffers[:1], BUFFERS_COUNTED)
    with pytest.raises(wire.BadSignature):  # the JSON parts no longer match
        signer.check([*PARTS[:3], b'{"x":1}'], sig, buffers)
    with pytest.raises(wire.BadSignature):  # digests dropped from the signature frame
        signer.check(PARTS, sig.partition(b".")[0], buffers, BUFFERS_COUNTED)
    signer.check(PARTS, sig, [b"x", b"y"], BUFFERS_COUNTED)  # forwarders count only
    signer.check(PARTS, sig, [], BUFFERS_IGNORED)  # truncated monitor copies
    with pytest.raises(wire.BadSignature, match="unsigned"):
        signer.check(PARTS, b"", buffers)
    with pytest.raises(wire.BadSignature):
        cluster_signer(b"other" * 8).check(PARTS, sig, buffers)


def test_wire_serialize_round_trip_with_buffers() -> None:
    signer = cluster_signer(KEY)
    msg = wire.make_message("apply_request", {}, session="s", buffers=[b"a", b"bc"])
    frames = [bytes(f) for f in wire.serialize(msg, signer)]
    _, back = wire.deserialize(frames, signer, wire.ReplayGuard())
    assert back["buffers"] == [b"a", b"bc"]
    frames[-1] = b"bd"
    with pytest.raises(wire.BadSignature):
        wire.deserialize(frames, signer)


def test_monitor_envelope() -> None:
    signer = cluster_signer(KEY)
    tag = signer.monitor_tag(b"reply", b"engine", b"client", b"abc")
    assert signer.open_monitor_tag(tag, b"engine", b"client", b"abc") == b"reply"
    for args in (
        (b"other", b"client", b"abc"),
        (b"engine", b"x", b"abc"),
        (b"engine", b"client", b"abd"),
    ):
        with pytest.raises(wire.BadSignature):
            signer.open_monitor_tag(tag, *args)
    with pytest.raises(wire.BadSignature):
        signer.open_monitor_tag(b"reply", b"engine", b"client", b"abc")
    assert cluster_signer(b"").monitor_tag(b"reply", b"e", b"c", b"") == b"reply"


@given(st.binary(max_size=4096))
def test_digest_matches_across_buffer_types(data: bytes) -> None:
    assert buffer_digest(data) == buffer_digest(memoryview(data)) == buffer_digest(bytearray(data))


def test_check_hashes_non_contiguous_buffers() -> None:
    signer = cluster_signer(KEY)
    view = memoryview(np.arange(20.0)[::2])
    sig = signer.seal(PARTS, [view])
    signer.check(PARTS, sig, [view], BUFFERS_HASHED)


@pytest.fixture
def no_cyclic_gc() -> Any:
    """Only reference counting frees memory: what a cycle holds stays held."""
    was = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        if was:
            gc.enable()


@pytest.mark.parametrize("bad", ["content", "buffer"])
def test_a_refused_request_is_freed_at_once(no_cyclic_gc: None, bad: str) -> None:
    """An engine refusing a large request (content that is no JSON, a buffer altered
    after signing) kept it alive: the exception it keeps (to answer the sender) referred
    through its traceback to frames whose locals referred to the exception, a cycle only
    the cyclic collector frees, which in an engine that allocates little ran rarely. On a
    real cluster three 200 MB requests of unreadable content left an engine at 1.8 GB.
    Now nothing is left once the refusal is handled."""
    import zmq

    from corral.plugins.parallel.engine._wire import parse_message, recv_messages

    signer = cluster_signer(KEY)
    big = 20 * 1024 * 1024
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://refused")
    b.connect("inproc://refused")
    try:
        for round_ in range(3):
            head = json.dumps(wire.make_header("apply_request", "s")).encode()
            content = b"\0" * big if bad == "content" else b"{}"
            parts = [head, b"{}", b"{}", content]
            buffers = [b"genuine"] if bad == "buffer" else []
            frames = [wire.DELIMITER, signer.seal(parts, buffers), *parts]
            frames += [b"x" * big] if bad == "buffer" else []
            del content, parts, buffers
            if round_ % 2:
                a.send_multipart(frames)
                del frames
                messages, errors = recv_messages(b, signer, wire.ReplayGuard())
                assert not messages and len(errors) == 1
                del messages, errors
            else:
                with pytest.raises(wire.WireError) as caught:
                    parse_message(frames, signer, wire.ReplayGuard())
                del frames, caught
            held, _ = tracemalloc.get_traced_memory()
            assert held < big, f"{held} bytes still held after refusing a {big}-byte request"
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()
