"""A client that joins a running cluster must not take the hub's old notifications.

A peer on a client's notification link (TCP without Curve) kept a genuine
``registration_notification`` of an engine that has since stopped, and slips it into a
client that connected later. That client's replay guard never saw the original, so
before the client refused everything the hub dated before its first answer
(``wire.ReplayGuard.refuse_before``) it listed the dead engine as alive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from parallel_client_harness import LiveCluster
from relays import SubscriptionRelay

from corral.plugins.parallel.client import Client
from corral.transports.zmq import wire
from corral.transports.zmq.gate import gate_for

pytestmark = pytest.mark.timeout(300)

DEADLINE = 60.0


class Listener:
    """A subscriber past the gate that keeps every notification the hub publishes."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        self.sock = gate_for(info).client(zmq.Context.instance().socket(zmq.SUB))
        self.sock.linger = 0
        self.sock.subscribe(b"")
        self.sock.connect(target)

    def registration_of(self, engine_id: int) -> list[bytes]:
        """The ``registration_notification`` of ``engine_id``, as published."""
        while True:
            assert self.sock.poll(int(DEADLINE * 1000)), "no registration notification"
            frames = self.sock.recv_multipart()
            at = frames.index(wire.DELIMITER)
            header = json.loads(frames[at + 2])
            content = json.loads(frames[at + 5])
            if (
                header.get("msg_type") == "registration_notification"
                and content.get("id") == engine_id
            ):
                return frames


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path / "corral", n=1, threads=False, profile="late")
    yield live
    live.stop()


def _wait_for(client: Client, predicate: Any) -> None:
    with client._engines_changed:
        assert client._engines_changed.wait_for(predicate, DEADLINE), client.ids


def test_a_late_client_refuses_an_old_notification(cluster: LiveCluster, tmp_path: Path) -> None:
    info = json.loads(Path(cluster.cluster_file).read_text())
    target = f"{info['transport']}://{info['ip']}:{info['notification']}"
    listener = Listener(info, target)
    rc = cluster.client
    try:
        # Engine 1 comes and goes; the listener keeps its registration notice.
        (first,) = rc.ids
        doomed = cluster.add_engine()
        rc.wait_for_engines(2, timeout=DEADLINE)
        (doomed_id,) = set(rc.ids) - {first}
        captured = listener.registration_of(doomed_id)
        doomed.terminate()
        doomed.wait(DEADLINE)
        _wait_for(rc, lambda: doomed_id not in rc.ids)

        # A client that joins now, its notifications through the relay.
        relay = SubscriptionRelay(info, target)
        path = tmp_path / "relayed.json"
        path.write_text(json.dumps({**info, "notification": relay.port}))
        path.chmod(0o600)
        late = Client(connection_file=path, local=False)
        try:
            late.wait_for_engines(1, timeout=DEADLINE)
            assert doomed_id not in late.ids
            relay.inject([bytes(f) for f in captured])
            # A genuine notice after the injected one (the relay keeps their order):
            # once the late client lists the new engine, it has dealt with the old one.
            cluster.add_engine()
            _wait_for(late, lambda: len(late.ids) >= 2)
            assert doomed_id not in late.ids, "an old notification brought a dead engine back"
            assert late.dropped >= 1
        finally:
            late.close()
            relay.stop()
    finally:
        listener.sock.close()
