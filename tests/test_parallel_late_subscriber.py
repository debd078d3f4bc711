"""A client that joins a running cluster must not take the hub's old notifications.

A peer on a client's notification link (TCP without Curve) kept a genuine
``registration_notification`` of an engine that has since stopped, and slips it into a
client that connected later. That client's replay guard never saw the original, so
before the client refused everything the hub dated before its first answer
(``wire.ReplayGuard.refuse_before``) it listed the dead engine as alive.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import Client
from corral.transports.zmq import wire
from corral.transports.zmq.gate import gate_for

pytestmark = pytest.mark.timeout(300)

DEADLINE = 60.0


class NotificationRelay:
    """The middle of one client's subscription to the hub's notification socket:
    subscriptions up, messages down, and anything the test injects."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        ctx = zmq.Context.instance()
        gate = gate_for(info)
        self.front = gate.server(ctx.socket(zmq.XPUB))
        self.front.linger = 0
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = gate.client(ctx.socket(zmq.XSUB))
        self.back.linger = 0
        self.back.connect(target)
        self._inject: queue.Queue[list[bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                while not self._inject.empty():
                    self.front.send_multipart(self._inject.get())
                for sock, _ in poller.poll(10):
                    frames = sock.recv_multipart()
                    (self.back if sock is self.front else self.front).send_multipart(frames)
        finally:
            self.front.close(linger=0)
            self.back.close(linger=0)

    def inject(self, frames: list[bytes]) -> None:
        self._inject.put(frames)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


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
        relay = NotificationRelay(info, target)
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
