"""Two threads using an engine's data path for the first time at once both get answers.

The first use of an engine's data path queues the creation of its socket on the client's
I/O thread. A second thread that found the channel already named, but whose request was
queued before that creation, had its request dropped by the I/O thread ("no socket"),
and its caller waited for ever. The race is made deterministic here: the second thread
pushes exactly while the first is between naming the channel and queueing its socket.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cluster_client

from corral.plugins.parallel.client.views import DATA_PATH_THRESHOLD

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with cluster_client(monkeypatch, tmp_path / "corral", n=1, profile="data-race") as client:
        yield client


def test_a_second_thread_pushing_while_the_first_opens_the_channel(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = client[client.ids[0]]
    first = np.arange(DATA_PATH_THRESHOLD, dtype=np.uint8)  # over the threshold once pickled
    second = first[::-1].copy()
    io = client._io
    real_add_socket = io.add_socket
    results: list[Any] = []
    queued = threading.Event()

    def push_second() -> None:
        results.append(view.push({"second": second}, block=False))
        queued.set()

    def add_socket(channel: str, *args: Any, **kwargs: Any) -> None:
        if channel.startswith("data:") and not queued.is_set():
            threading.Thread(target=push_second).start()
            # Unfixed, the second push is queued now, ahead of the socket. Fixed, it
            # waits for this thread to queue the socket first: nothing to wait for then.
            queued.wait(2)
        real_add_socket(channel, *args, **kwargs)

    monkeypatch.setattr(io, "add_socket", add_socket)
    view.push({"first": first}, block=False).get(timeout=60)
    assert queued.wait(60)
    results[0].get(timeout=60)
    assert view.pull("second", block=True).tobytes() == second.tobytes()
    assert view.pull("first", block=True).tobytes() == first.tobytes()
