"""A peer in the middle of the task scheduler's engine connections (TCP without Curve)
takes a load-balanced request the scheduler sealed for one engine and delivers it to
another engine, or to the same engine again: it must run once, where it was sent.

The route seal (``door.ClusterSigner.route_seal``: a MAC over the queue, the engine and
the request's signature, in one routing frame) was tested as a pure function; here it
stands between a real scheduler and two real engines whose cluster file points their
``task_engine`` connection at :class:`EngineRelay`.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from parallel_client_harness import LiveCluster

from corral.transports.zmq import wire
from corral.transports.zmq.gate import gate_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)

DEADLINE = 30.0


def mark(path: str) -> int:
    """Engine side: append this engine's pid to ``path`` (one line per run)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


class EngineRelay:
    """The middle of every engine's connection to the queue socket at ``target``: one
    DEALER per engine towards the queue (with the engine's identity, as the queue routes
    by it), a ROUTER towards the engines. Keeps a copy of what the queue sends each
    engine, and can deliver any frames to any engine."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        ctx = zmq.Context.instance()
        self.gate = gate_for(info)
        self.target = target
        self.front = self.gate.server(ctx.socket(zmq.ROUTER))
        self.front.linger = 0
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.backs: dict[bytes, zmq.Socket[Any]] = {}
        #: (engine identity, frames) of every message the queue sent an engine
        self.to_engines: queue.Queue[tuple[bytes, list[bytes]]] = queue.Queue()
        self._commands: queue.Queue[tuple[bytes, list[bytes]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        by_socket: dict[zmq.Socket[Any], bytes] = {}
        try:
            while True:
                while not self._commands.empty():
                    command = self._commands.get()
                    if command is None:
                        return
                    if command[1]:
                        self.front.send_multipart([command[0], *command[1]])
                    else:  # open: the engine's own connection to the queue
                        by_socket[self._back(command[0], poller)] = command[0]
                for sock, _ in poller.poll(10):
                    frames = sock.recv_multipart()
                    if sock is self.front:
                        engine, rest = frames[0], frames[1:]
                        back = self._back(engine, poller)
                        by_socket[back] = engine
                        back.send_multipart(rest)
                    else:
                        engine = by_socket[sock]
                        self.to_engines.put((engine, [bytes(f) for f in frames]))
                        self.front.send_multipart([engine, *frames])
        finally:
            self.front.close(linger=0)
            for back in self.backs.values():
                back.close(linger=0)

    def _back(self, engine: bytes, poller: zmq.Poller) -> zmq.Socket[Any]:
        """The relay's connection to the queue on behalf of ``engine``."""
        back = self.backs.get(engine)
        if back is None:
            back = self.gate.client(zmq.Context.instance().socket(zmq.DEALER))
            back.linger = 0
            back.identity = engine
            back.connect(self.target)
            self.backs[engine] = back
            poller.register(back, zmq.POLLIN)
        return back

    def open(self, engine: bytes) -> None:
        """Connect to the queue as ``engine`` now: an engine sends nothing on this
        socket before its first task, and the queue routes only to a connected one."""
        self._commands.put((engine, []))

    def captured(self, msg_id: str) -> tuple[bytes, list[bytes]]:
        """The request ``msg_id`` as the queue sent it, and the engine it went to."""
        while True:
            engine, frames = self.to_engines.get(timeout=DEADLINE)
            if wire.DELIMITER not in frames:
                continue  # a batch: not what this test sends
            at = frames.index(wire.DELIMITER)
            if json.loads(frames[at + 2]).get("msg_id") == msg_id:
                return engine, frames

    def deliver(self, engine: bytes, frames: list[bytes]) -> None:
        """Send ``frames`` to ``engine`` as if the queue had."""
        self._commands.put((engine, frames))

    def stop(self) -> None:
        self._commands.put(None)
        self._thread.join(5)


@pytest.fixture
def relayed_cluster(tmp_path: Path) -> Iterator[tuple[LiveCluster, EngineRelay]]:
    live = LiveCluster(tmp_path / "corral", n=0, threads=False, profile="seal")
    info = json.loads(Path(live.cluster_file).read_text())
    if info["transport"] != "tcp":
        live.stop()
        pytest.skip("the relay sits on a TCP link")
    target = f"tcp://{info['ip']}:{info['task_engine']}"
    relay = EngineRelay(info, target)
    path = tmp_path / "relayed-cluster.json"
    path.write_text(json.dumps({**info, "task_engine": relay.port}))
    path.chmod(0o600)
    try:
        for _ in range(2):
            live.engines.append(
                subprocess.Popen(
                    [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(path)],
                    env={**live.env, **live.engine_env},
                    start_new_session=True,
                )
            )
        live.client.wait_for_engines(2, timeout=60)
        for engine in live.client.engines.values():
            relay.open(engine.uuid.encode())
        yield live, relay
    finally:
        live.stop()
        relay.stop()


def test_a_sealed_request_runs_only_on_its_engine_and_only_once(
    relayed_cluster: tuple[LiveCluster, EngineRelay], tmp_path: Path
) -> None:
    live, relay = relayed_cluster
    rc = live.client
    runs = tmp_path / "runs"
    ar = rc.load_balanced_view().apply_async(mark, str(runs))
    ran_on = ar.get(timeout=DEADLINE)
    engine, frames = relay.captured(ar.msg_ids[0])
    (other,) = {e.uuid.encode() for e in rc.engines.values()} - {engine}
    # To the other engine (its seal names the first), then to its own engine again.
    relay.deliver(other, frames)
    relay.deliver(engine, frames)
    # Each engine serves its connection in order: a task sent after the replays is
    # answered only once they were dealt with.
    by_uuid = {e.uuid.encode(): e.id for e in rc.engines.values()}
    for uuid in (other, engine):
        assert rc[by_uuid[uuid]].apply_async(os.getpid).get(timeout=DEADLINE) > 0
    assert runs.read_text().split() == [str(ran_on)], "the captured request ran again"
    # And the scheduler still gives out work to both.
    pids = set(rc.load_balanced_view().map_sync(lambda _: os.getpid(), range(40)))
    assert pids, "the scheduler stopped"
