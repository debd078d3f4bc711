"""A cluster whose network connections break and come back.

On real clusters a connection can vanish on one side only: a NAT or firewall forgets its
state, a switch reboots, a laptop's Wi-Fi drops. The side that notices reconnects (ZeroMQ
does so by itself, under the same routing identity), while the other still holds the old
connection, half-open, until something tells it otherwise. These tests put a TCP
forwarder (:class:`Forwarder`) between an engine and the controller; a *cut* resets the
engine-side connections and keeps the controller-side ones open, which is exactly that
half-open state, and an *outage* also turns new connections away for a while.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT, until
from parallel_client_harness import LiveCluster

#: Every cluster file port an engine connects to.
ENGINE_PORTS = (
    "registration",
    "hb_ping",
    "hb_pong",
    "notification",
    "monitor",
    "mux_engine",
    "control_engine",
    "task_engine",
    "broadcast_engine",
    "iopub_engine",
)


def _reset_on_close(sock: socket.socket) -> None:
    """Make ``sock``'s close a reset (RST), as from a peer that lost the connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Forwarder:
    """Forwards each connection made to :attr:`port` to ``target_port`` on 127.0.0.1.

    One thread per direction per connection: a test's handful of connections, no more.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        #: while set, new connections are reset at once (the network is down)
        self.down = False
        self._lock = threading.Lock()
        #: (near, far): the engine's side, the controller's side
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        #: near sides cut: what the controller still sends into them is lost
        self._cut: set[socket.socket] = set()
        self._all: list[socket.socket] = []
        #: bytes the controller sent into half-open connections
        self.lost = 0
        #: bytes the controller sent on each live connection (its handshake included)
        self._answered: dict[socket.socket, int] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            _reset_on_close(near)
            if self.down:
                near.close()
                continue
            try:
                far = socket.create_connection(self.target)
            except OSError:
                near.close()
                continue
            with self._lock:
                self._pairs.append((near, far))
                self._all += [near, far]
                self._answered[near] = 0
            threading.Thread(target=self._pump, args=(near, far), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                if src in self._cut:
                    src.close()  # the reset the engine sees
                elif dst not in self._cut:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            if dst in self._cut:
                self.lost += len(data)
                continue  # into the half-open connection: lost, as on the wire
            if dst in self._answered:
                self._answered[dst] += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> int:
        """Reset every engine-side connection and keep its controller side open; returns
        how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for near, _far in pairs:
            self._cut.add(near)
            self._answered.pop(near, None)
            try:
                # Wakes the pump reading it, which then closes it (a close from here
                # would wait for that read to end, and send nothing meanwhile).
                near.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # its peer closed it already
        return len(pairs)

    def freeze(self) -> int:
        """Turn every connection into a black hole, both ways, closing nothing: a NAT or
        firewall that forgot them and drops their packets. New connections pass."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for near, far in pairs:
            self._cut.update((near, far))
        return len(pairs)

    def reconnected(self) -> bool:
        """Whether the engine has a connection again whose handshake the controller
        answered (greeting and READY: more than the 64-byte greeting)."""
        with self._lock:
            return any(self._answered.get(near, 0) > 64 for near, _ in self._pairs)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._all:
                sock.close()


class BlipCluster:
    """A :class:`LiveCluster` without engines, and one engine that reaches the controller
    only through forwarders (a copy of the cluster file names their ports)."""

    def __init__(self, corral_dir: Path, ports: tuple[str, ...] = ENGINE_PORTS, **kw: Any):
        self.cluster = LiveCluster(corral_dir, n=0, **kw)
        self.client = self.cluster.client
        info = json.loads(self.cluster.cluster_file.read_text())
        self.forwarders = {name: Forwarder(int(info[name])) for name in ports}
        for name, forwarder in self.forwarders.items():
            info[name] = forwarder.port
        engine_file = corral_dir / "engine-through-forwarders.json"
        engine_file.write_text(json.dumps(info))
        os.chmod(engine_file, 0o600)
        #: the engine's log lines (stderr)
        self.log: list[str] = []
        self.engine = subprocess.Popen(
            [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(engine_file)],
            env=self.cluster.env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.cluster.engines.append(self.engine)
        threading.Thread(target=self._read_log, daemon=True).start()
        self.client.wait_for_engines(1, timeout=TIMEOUT)

    def _read_log(self) -> None:
        assert self.engine.stderr is not None
        for line in self.engine.stderr:
            sys.stderr.write(line)
            self.log.append(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    def cut(self) -> None:
        """The engine's connections break on its side only."""
        assert sum(f.cut() for f in self.forwarders.values()) > 0

    def network(self, up: bool) -> None:
        for forwarder in self.forwarders.values():
            forwarder.down = not up
        if not up:
            self.cut()

    def reconnected(self, *names: str) -> None:
        """Wait until the engine's sockets to ``names`` (default: every queue) connected
        again. A message the controller routes to the engine before then goes into the
        old, half-open connection and is lost: see the module's docstring."""
        for name in names or ("mux_engine", "control_engine", "task_engine", "broadcast_engine"):
            until(self.forwarders[name].reconnected, what=f"the engine's {name} reconnected")

    def stop(self) -> None:
        self.cluster.stop()
        for forwarder in self.forwarders.values():
            forwarder.close()


class TaskLost(Exception):
    """A known bug (below), told apart from any other failure of its test."""


@pytest.fixture
def blip_cluster(tmp_path: Path) -> Iterator[BlipCluster]:
    cluster = BlipCluster(tmp_path / "corral")
    try:
        yield cluster
    finally:
        cluster.stop()


def _runs_tasks(client: Any) -> None:
    """A task to the (only) engine, direct and load-balanced, completes."""
    engine_id = until(lambda: client.ids, what="the engine registered again")[0]
    assert client[engine_id].apply_sync(os.getpid) == client.load_balanced_view().apply_async(
        os.getpid
    ).get(timeout=TIMEOUT)


def test_a_cut_engine_connection_keeps_serving(blip_cluster: BlipCluster) -> None:
    """A cut the engine heals at once (ZeroMQ reconnects under the same identity, the
    controller still holding the old connection) loses neither the engine nor a task."""
    client = blip_cluster.client
    _runs_tasks(client)
    blip_cluster.cut()
    blip_cluster.reconnected()
    _runs_tasks(client)
    assert client.ids == [0]


@pytest.mark.xfail(raises=TaskLost, strict=False, reason="known, not understood yet")
def test_a_reply_made_after_its_engine_connection_was_cut_arrives(tmp_path: Path) -> None:
    """KNOWN BUG, not fixed (found here, also on main): the engine's queue connections
    break while it runs a task; it connects again (the queues hand its identity over)
    and only then finishes the task, yet its reply never reaches the client: the hub
    counts the task running for ever, while the engine serves the next task. Lost in
    every run here (a fresh engine, its mux and task connections forwarded), in about
    half with every engine port forwarded, never when the engine had run tasks before
    (not understood yet, hence not strict). Not the half-open window of the test below:
    the reply is made after the new connection's handshake."""
    queues = ("mux_engine", "task_engine")
    blips = BlipCluster(tmp_path / "corral", ports=queues)
    try:
        client = blips.client
        path = tmp_path / "release"

        def wait_for(release: str) -> str:
            import os
            import time

            while not os.path.exists(release):
                time.sleep(0.01)
            return "done"

        result = client[0].apply_async(wait_for, str(path))
        until(lambda: client.queue_status(0)["running"] == 1, what="the task started")
        blips.cut()
        blips.reconnected(*queues)
        path.touch()
        try:
            value = result.get(timeout=10)  # released: done in milliseconds
        except TimeoutError as exc:
            raise TaskLost(str(exc)) from exc
        assert value == "done"
    finally:
        blips.stop()


def test_an_engine_rejoins_after_an_outage_it_noticed(blip_cluster: BlipCluster) -> None:
    """An outage long enough for the hub to drop the engine and for the engine to miss
    the beats: once the network is back the engine registers again, on a new connection
    of its registration socket while the hub still holds the old one half-open. The hub
    used to refuse that identity for good (a ROUTER without handover): the registration
    went unanswered and the engine exited after ``registration_timeout``."""
    client = blip_cluster.client
    _runs_tasks(client)
    blip_cluster.network(up=False)
    until(lambda: not client.ids, what="the hub dropped the silent engine")
    until(lambda: blip_cluster.logged("no heartbeat from the controller"), what="silence seen")
    blip_cluster.network(up=True)
    until(lambda: blip_cluster.logged("re-registered"), what="the engine registered again")
    blip_cluster.reconnected()
    _runs_tasks(client)
    assert blip_cluster.engine.poll() is None


def test_a_client_data_channel_cut_on_its_side_keeps_working(tmp_path: Path) -> None:
    """A client's direct channel to an engine's data socket (a ROUTER the engine binds)
    breaks on the client's side; ZeroMQ reconnects it under the client's identity while
    the engine still holds the old connection. The engine used to refuse that identity
    for good, and every direct pull from then on waited for ever."""
    cluster = LiveCluster(tmp_path / "corral", n=1)
    try:
        client = cluster.client
        view = client[0]
        view.execute("x = 42", block=True)
        engine = client._engines[0]
        assert engine.data_url is not None
        forwarder = Forwarder(int(engine.data_url.rsplit(":", 1)[1]))
        # The client reaches the engine's data port through the forwarder (a NAT, say).
        client._engines[0] = dataclasses.replace(
            engine, data_url=f"tcp://127.0.0.1:{forwarder.port}"
        )
        try:
            assert view.pull("x", direct=True, block=False).get(timeout=TIMEOUT) == 42
            assert forwarder.cut() == 1
            until(forwarder.reconnected, what="the data channel reconnected")
            assert view.pull("x", direct=True, block=False).get(timeout=TIMEOUT) == 42
        finally:
            forwarder.close()
    finally:
        cluster.stop()


def test_an_engine_dropped_during_an_outage_it_did_not_notice_rejoins(tmp_path: Path) -> None:
    """An outage longer than the hub's heartbeat grace, shorter than the engine's silence
    timeout: the hub drops the engine, and its notice goes into a connection that broke.
    The engine, hearing beats again, used to linger for ever, registered nowhere (no
    task could reach it, nothing stopped it). Now the hub, hearing it still beat, tells
    it so, and it registers again (as it does after an outage it noticed)."""
    blips = BlipCluster(tmp_path / "corral", hb_misses=2)
    try:
        client = blips.client
        _runs_tasks(client)
        blips.network(up=False)
        until(lambda: not client.ids, what="the hub dropped the silent engine")
        blips.network(up=True)
        until(lambda: blips.logged("re-registered"), what="the engine registered again")
        blips.reconnected()
        _runs_tasks(client)
        assert blips.engine.poll() is None
    finally:
        blips.stop()


def test_a_client_whose_connection_blips_mid_map_reconnects(tmp_path: Path) -> None:
    """A client's connections to the controller break on its side mid-map (Wi-Fi). Its
    pending results fail at once (ControllerLost: it cannot tell a dead controller from
    an unreachable one), and the message says to call ``reconnect()`` and fetch the
    work with ``get_result()``. ``reconnect()`` used to wait for *another* controller
    (one restarted on the cluster) while this one, still running, was right there, and
    raised TimeoutError."""
    from corral.plugins.parallel.client import Client, ControllerLost

    cluster = LiveCluster(tmp_path / "corral", n=2)
    forwarders: list[Forwarder] = []
    try:
        info = json.loads(cluster.cluster_file.read_text())
        for name in ("registration", "mux", "control", "task", "broadcast", "notification"):
            forwarders.append(Forwarder(int(info[name])))
            info[name] = forwarders[-1].port
        client_file = tmp_path / "client-through-forwarders.json"
        client_file.write_text(json.dumps(info))
        os.chmod(client_file, 0o600)
        client = Client(connection_file=client_file)
        cluster.clients.append(client)
        client.wait_for_engines(2, timeout=TIMEOUT)

        def slow_double(x: int) -> int:  # defined here: pickled by value
            import time

            time.sleep(0.05)
            return 2 * x

        mapped = client.load_balanced_view().map_async(slow_double, range(40))
        until(lambda: mapped.progress > 0, what="the map started")
        for forwarder in forwarders:
            forwarder.cut()
        with pytest.raises(ControllerLost):
            mapped.get(timeout=TIMEOUT)
        client.reconnect(timeout=TIMEOUT)
        assert sorted(client.ids) == [0, 1]
        chunks = client.get_result(mapped.msg_ids).get(timeout=TIMEOUT)  # a list per task
        assert [y for chunk in chunks for y in chunk] == [2 * x for x in range(40)]
    finally:
        for forwarder in forwarders:
            forwarder.close()
        cluster.stop()


@pytest.mark.xfail(raises=TaskLost, strict=True, reason="known: no resend (see docstring)")
def test_a_task_routed_into_the_half_open_connection_is_not_lost(tmp_path: Path) -> None:
    """KNOWN BUG, not fixed. A task the mux queue routes to an engine after its connection
    broke on the engine's side, before the engine reconnected, goes into the old,
    half-open connection and is lost: the engine never sees it, still beats, so the hub
    never drops it, and the task waits for ever (the engine's reconnection, handed the
    identity over, changes nothing for what was already sent). On a real network the
    window lasts until the engine notices the break (at once after a reset, much later
    after a silent NAT or firewall drop). A fix needs the queues to keep what they sent
    until the engine acknowledges it, and send it again on a new connection."""
    blips = BlipCluster(tmp_path / "corral", hb_misses=50)  # the hub must not drop it
    try:
        client = blips.client
        _runs_tasks(client)
        blips.network(up=False)
        result = client[0].apply_async(os.getpid)
        mux = blips.forwarders["mux_engine"]
        until(lambda: mux.lost > 0, what="the task went into the half-open connection")
        blips.network(up=True)
        blips.reconnected()
        try:
            value = result.get(timeout=10)  # a task of microseconds
        except TimeoutError as exc:
            raise TaskLost(str(exc)) from exc
        assert value == blips.engine.pid
    finally:
        blips.stop()
