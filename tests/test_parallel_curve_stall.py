"""A push or pull whose Curve stream stops half-way ends in a clear error, not a wait.

On a Curve cluster a large buffer crosses the client<->engine data channel as a stream
of chunks (corral.transports.zmq.chunkstream). Here the sender of one stream stops after
its first chunk, as a sender that was killed or lost its connection would: the client's
in this process for a push, the engine's (told so by code it runs) for a pull. The
receiver gives the stream up once it has made no progress for STALL_TIMEOUT (shortened
to a second here), the request fails with an error saying the stream stalled, and both
ends then serve the next push and pull byte-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.plugins.parallel.client.errors import RemoteError
from corral.plugins.parallel.cluster import Cluster
from corral.transports.zmq import chunkstream as cs

pytestmark = pytest.mark.timeout(240)

STALL = 1.0

#: Run in a process (this one, or an engine's): from now on, each stream sent stops
#: after its first chunk. ``cs._send`` is swapped only while send_streamed runs, to
#: collect the zmq messages it would send; only the first two (the message and its
#: first chunk) then leave.
STALLING = """
import zmq
from corral.transports.zmq import chunkstream as _cs

_cs.STALL_TIMEOUT = {stall}
_real_send_streamed = getattr(_cs, "_real_send_streamed", _cs.send_streamed)
_cs._real_send_streamed = _real_send_streamed
_real_send = _cs._send


def _stalling(sock, frames, flags, copy):
    messages, current = [], []

    def collect(s, frame, fl, cp, track):
        current.append((frame, fl, cp))
        if not fl & zmq.SNDMORE:
            messages.append(list(current))
            current.clear()

    _cs._send = collect
    try:
        _real_send_streamed(sock, frames, flags, copy)
    finally:
        _cs._send = _real_send
    for message in messages[:2]:
        for frame, fl, cp in message:
            _real_send(sock, frame, fl, cp, False)


_cs.send_streamed = _stalling
"""

RESTORE = """
from corral.transports.zmq import chunkstream as _cs
_cs.send_streamed = _cs._real_send_streamed
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, Any]]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    cluster = Cluster(n=1, profile="curve-stall", encryption="curve")
    client = cluster.start_and_connect()
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.stop()


def _array(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 256, 6 * cs.CHUNK + 7, dtype=np.uint8)


def _round_trip(view: Any, seed: int) -> None:
    """A push and a pull over the data path that must work, byte for byte."""
    sent = _array(seed)
    view.push({"ok_array": sent}, block=True)
    back = view.pull("ok_array", block=True, direct=True)
    assert back.tobytes() == sent.tobytes()


def test_a_push_whose_stream_stalls_fails_and_both_ends_go_on(
    cluster: tuple[Cluster, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = cluster
    view = client[client.ids[0]]
    view.execute(f"import corral.transports.zmq.chunkstream as c; c.STALL_TIMEOUT = {STALL}")
    _round_trip(view, 1)
    with monkeypatch.context() as patch:  # what STALLING changes here, undone on leaving
        patch.setattr(cs, "send_streamed", cs.send_streamed)
        patch.setattr(cs, "STALL_TIMEOUT", cs.STALL_TIMEOUT)
        patch.setattr(cs, "_real_send_streamed", cs.send_streamed, raising=False)
        exec(STALLING.format(stall=STALL), {})
        with pytest.raises(RemoteError, match="incomplete: its stream stalled"):
            view.push({"lost": _array(2)}, block=False).get(timeout=60)
    _round_trip(view, 3)
    with pytest.raises(RemoteError, match="lost"):  # the cut push bound nothing
        view.pull("lost", block=True, direct=True)


def test_a_pull_whose_stream_stalls_fails_and_both_ends_go_on(
    cluster: tuple[Cluster, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = cluster
    view = client[client.ids[0]]
    monkeypatch.setattr(cs, "STALL_TIMEOUT", STALL)
    view.push({"big": _array(4)}, block=True)
    view.execute(STALLING.format(stall=STALL), block=True)
    with pytest.raises(RemoteError, match="incomplete: its stream stalled"):
        view.pull("big", block=False, direct=True).get(timeout=60)
    view.execute(RESTORE, block=True)
    _round_trip(view, 5)
    assert view.pull("big", block=True, direct=True).tobytes() == _array(4).tobytes()
