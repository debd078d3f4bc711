"""The gate: only peers holding the cluster key complete a handshake; refusals are
counted, logged rate-limited, and reported to the refused peer's side by a probe."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import zmq

from corral.transports.zmq.gate import Gate, RefusalLog, probe, stop_zap

KEY = b"k" * 64


@pytest.fixture
def ctx() -> Any:
    context = zmq.Context()
    yield context
    stop_zap(context)
    context.destroy(linger=0)


@pytest.mark.parametrize("encryption", ["none", "curve"])
def test_only_the_cluster_key_gets_in(ctx: zmq.Context[Any], encryption: str) -> None:
    gate = Gate(KEY, encryption)
    server = gate.server(ctx.socket(zmq.ROUTER))
    port = server.bind_to_random_port("tcp://127.0.0.1")
    url = f"tcp://127.0.0.1:{port}"
    assert probe(gate, ctx, url, 10) == "ok"
    for intruder in (Gate(b"x" * 64, encryption), None):
        sock = (
            ctx.socket(zmq.DEALER) if intruder is None else intruder.client(ctx.socket(zmq.DEALER))
        )
        sock.linger = 0
        sock.connect(url)
        sock.send(b"hello")
        assert not server.poll(300)
        sock.close()
    friend = gate.client(ctx.socket(zmq.DEALER))
    friend.connect(url)
    friend.send(b"hello")
    assert server.poll(10_000)
    assert server.recv_multipart()[-1] == b"hello"
    friend.close(linger=0)
    server.close(linger=0)


def test_a_wrong_plain_key_is_reported_as_refused(ctx: zmq.Context[Any]) -> None:
    server = Gate(KEY).server(ctx.socket(zmq.ROUTER))
    port = server.bind_to_random_port("tcp://127.0.0.1")
    assert probe(Gate(b"x" * 64), ctx, f"tcp://127.0.0.1:{port}", 10) == "refused"
    server.close(linger=0)


def test_refusals_are_rate_limited_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(logging.getLogger("test.gate"), "task", every=3600)
    with caplog.at_level(logging.WARNING, "test.gate"):
        for _ in range(100_000):
            refusals.refused("forged messages", "peer 0xabcd")
        refusals.refused("replayed messages", "peer 0x01")
    assert refusals.total == {"forged messages": 100_000, "replayed messages": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "task: refused forged messages from peer 0xabcd",
        "task: refused replayed messages from peer 0x01",
    ]
    refusals.flush()  # what came since the last line, with its count
    assert "refused 99999 forged messages" in caplog.records[-1].getMessage()


def test_a_bad_encryption_setting_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="encryption"):
        Gate(KEY, "rot13")


def test_a_finished_handler_leaves_no_keys_for_a_later_context() -> None:
    """The handler tables are keyed by id(context); a later context can get the same id
    once this one is gone, and must not inherit the keys this one accepted."""
    from corral.transports.zmq import gate as gate_module

    context = zmq.Context()
    server = Gate(KEY, "curve").server(context.socket(zmq.ROUTER))
    server.bind_to_random_port("tcp://127.0.0.1")
    handler = gate_module._handlers[id(context)]
    assert (b"CURVE", Gate(KEY, "curve")._client_public_raw) in gate_module._accepted[id(context)]
    server.close(linger=0)
    context.term()  # ends the handler (ContextTerminated)
    handler.join(10)
    assert not handler.is_alive()
    assert id(context) not in gate_module._accepted
    assert id(context) not in gate_module._handlers
