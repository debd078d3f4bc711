"""The controller's drain pass (``controller.base.drain``): every waiting message is
handled, in order, whatever the pass's length; a long backlog is cut into passes so the
other sockets get their turns; a handler that raises loses only its own message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from corral.plugins.parallel.controller.base import DRAIN_BATCH, drain


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://drain")
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://drain")
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def _texts(frames_list: list[list[Any]]) -> list[bytes]:
    return [b"".join(bytes(f) for f in frames) for frames in frames_list]


@pytest.mark.parametrize("count", [1, 2, 3, 40, DRAIN_BATCH])
def test_one_pass_handles_every_waiting_message_in_order(pair, count: int) -> None:
    push, pull = pair
    sent = [f"m{i}".encode() for i in range(count)]
    for text in sent:
        push.send(text)
    assert pull.poll(5000)
    handled: list[list[Any]] = []
    drain(pull, handled.append, "test")  # one pass: all were queued before it began
    assert _texts(handled) == sent
    assert not pull.poll(0)


def test_a_long_backlog_takes_several_passes_and_loses_nothing(pair) -> None:
    push, pull = pair
    count = DRAIN_BATCH * 2 + 7
    for i in range(count):
        push.send(b"%d" % i)
    handled: list[list[Any]] = []
    passes = 0
    while len(handled) < count:
        assert pull.poll(5000)
        drain(pull, handled.append, "test")
        passes += 1
    assert _texts(handled) == [b"%d" % i for i in range(count)]
    assert passes >= 3  # DRAIN_BATCH per pass: the other sockets get their turns


def test_a_handler_that_raises_loses_only_its_message(pair) -> None:
    push, pull = pair
    for text in (b"a", b"boom", b"c"):
        push.send(text)
    assert pull.poll(5000)
    handled: list[bytes] = []

    def handler(frames: list[Any]) -> None:
        text = bytes(frames[0])
        if text == b"boom":
            raise ValueError("a bad message")
        handled.append(text)

    while len(handled) < 2:
        drain(pull, handler, "test")
        if len(handled) < 2:
            assert pull.poll(5000)
    assert handled == [b"a", b"c"]
