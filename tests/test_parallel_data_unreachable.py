"""An engine whose data port this client cannot reach is still served, by the queues.

Between hosts, a firewall or NAT may let the controller's ports through but not the
port each engine binds for its direct data path. Large pushes and pulls went to that
port and waited for ever, while the engine served the queues. Here the client is told a
data address where nothing listens (what it sees of a port it cannot reach).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cluster_client

from corral.plugins.parallel.client import client as client_module
from corral.plugins.parallel.client.views import DATA_PATH_THRESHOLD

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with cluster_client(
        monkeypatch, tmp_path / "corral", n=2, profile="data-unreachable"
    ) as client:
        yield client


def _dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_large_push_and_pull_take_the_queues_when_the_data_port_is_out_of_reach(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "DATA_CONNECT_WAIT", 0.5)
    cut, reachable = client.ids[:2]
    info = client._engines[cut]
    client._engines[cut] = dataclasses.replace(info, data_url=f"tcp://127.0.0.1:{_dead_port()}")
    big = np.arange(2 * DATA_PATH_THRESHOLD, dtype=np.uint8)

    both = client[[cut, reachable]]
    both.push({"big": big}, block=False).get(timeout=30)  # unfixed: never answered
    both.execute("total = int(big.sum())", block=True)
    assert both.pull("total", block=True) == [int(big.sum())] * 2

    for direct in (None, True):
        pulled = client[cut].pull("big", block=False, direct=direct).get(timeout=30)
        assert np.array_equal(pulled, big)
    # the engine that can be reached still gets its data directly
    assert np.array_equal(client[reachable].pull("big", direct=True, block=True), big)
    states = {
        channel.split(":")[1]: up.is_set() for channel, (up, _) in client._data_channels.items()
    }
    assert states == {str(cut): False, str(reachable): True}
