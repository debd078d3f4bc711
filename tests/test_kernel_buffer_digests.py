"""Buffers on kernel channels are covered by the signature through digests in metadata.

Jupyter's HMAC covers the four JSON parts only, so a buffer frame (comm and widget data)
can be swapped under an intact signature. corral puts a digest of each buffer in the
signed metadata (``corral_buffer_digests``), where the spec allows extra keys, and
refuses a message whose buffers do not match; a jupyter_client peer, which sends no such
key, still works, and it reads corral's messages unchanged.
"""

from __future__ import annotations

import pytest
from jupyter_client.session import Session as JupyterSession
from test_kernel_security import (  # noqa: F401 - fixtures
    TIMEOUT,
    assert_serves_next,
    client,
    dealer,
    kernel,
    next_reply,
)

from corral.transports.zmq import wire
from corral.transports.zmq.connection import ConnectionInfo
from corral.transports.zmq.door import BUFFER_DIGESTS, buffer_digest, deserialize
from corral.transports.zmq.session import Session

KEY = b"k" * 32
BUFS = [b"first buffer", memoryview(b"second" * 1000)]


def _frames(signer: wire.Signer, buffers: list) -> list[bytes]:
    msg = wire.make_message("comm_msg", {"comm_id": "c", "data": {}}, session="s", buffers=buffers)
    return [bytes(f) for f in wire.serialize(msg, signer)]


def test_digests_ride_in_the_signed_metadata() -> None:
    frames = _frames(wire.Signer(KEY), BUFS)
    _, msg = deserialize(frames, wire.Signer(KEY))
    assert msg["metadata"][BUFFER_DIGESTS] == [buffer_digest(b).decode() for b in BUFS]
    assert [bytes(b) for b in msg["buffers"]] == [bytes(b) for b in BUFS]
    # no buffers, no key: the message is exactly Jupyter's
    _, plain = deserialize(_frames(wire.Signer(KEY), []), wire.Signer(KEY))
    assert BUFFER_DIGESTS not in plain["metadata"]


@pytest.mark.parametrize(
    "alter",
    [
        lambda f: [*f[:6], b"swapped buffer", *f[7:]],
        lambda f: f[:-1],  # a buffer dropped
        lambda f: [*f, b"an extra buffer"],
    ],
    ids=["swapped", "dropped", "added"],
)
def test_altered_buffers_are_refused(alter) -> None:
    frames = _frames(wire.Signer(KEY), BUFS)
    with pytest.raises(wire.BadSignature):
        deserialize(alter(frames), wire.Signer(KEY))


def test_jupyter_client_peers_interoperate() -> None:
    """A jupyter_client message with buffers (no digests) is accepted; a corral one with
    digests is read by jupyter_client, which ignores the extra metadata key."""
    js = JupyterSession(key=KEY, username="jc")
    msg = js.msg("comm_msg", {"comm_id": "c", "data": {}})
    msg["buffers"] = [b"from jupyter"]
    frames = [bytes(f) for f in js.serialize(msg)] + [b"from jupyter"]  # as send() does
    _, got = deserialize(frames, wire.Signer(KEY))
    assert [bytes(b) for b in got["buffers"]] == [b"from jupyter"]
    ours = _frames(wire.Signer(KEY), BUFS)
    idents, rest = js.feed_identities(ours, copy=True)
    parsed = js.deserialize(rest, content=True, copy=True)
    assert parsed["metadata"][BUFFER_DIGESTS]
    assert [bytes(b) for b in parsed["buffers"]] == [bytes(b) for b in BUFS]


def _with_buffers(session: Session, tamper: bool) -> tuple[str, list[bytes]]:
    msg = session.msg("kernel_info_request", {}, buffers=[b"payload"])
    frames = [bytes(f) for f in wire.serialize(msg, session.signer)]
    if tamper:
        frames[-1] = b"PAYLOAD"
    return msg["msg_id"], frames


def test_a_kernel_refuses_a_request_whose_buffer_was_swapped(
    kernel: ConnectionInfo,  # noqa: F811
    client: Session,  # noqa: F811
) -> None:
    sock = dealer(kernel, "shell")
    try:
        _, bad = _with_buffers(client, tamper=True)
        sock.send_multipart(bad)
        assert_serves_next(sock, client)  # the next reply answers the next request
        msg_id, good = _with_buffers(client, tamper=False)
        sock.send_multipart(good)
        assert next_reply(sock, client)["parent_header"]["msg_id"] == msg_id
    finally:
        sock.close()


def test_a_kernel_serves_jupyter_client_requests_with_buffers(
    kernel: ConnectionInfo,  # noqa: F811
) -> None:
    js = JupyterSession(key=kernel.key, username="jc")
    sock = dealer(kernel, "shell")
    try:
        msg = js.msg("kernel_info_request", {})
        js.send(sock, msg, buffers=[b"no digests from jupyter_client"])
        assert sock.poll(TIMEOUT * 1000), "no reply"
        _, frames = js.feed_identities(sock.recv_multipart(), copy=True)
        reply = js.deserialize(frames)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    finally:
        sock.close()
