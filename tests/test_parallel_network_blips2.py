"""More blips: a client's data channel that drops under a request, and a client whose
own connection to a live controller drops (on the same host as the controller, or as if
on another: see :func:`test_reconnect_needs_no_local_controller_pid`).

The forwarders and their cuts are :mod:`test_parallel_network_blips`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT, until
from parallel_client_harness import LiveCluster
from test_parallel_network_blips import Forwarder

from corral.plugins.parallel.client import Client, ControllerLost, DataChannelLost, EngineError

#: The controller ports a client connects to.
CLIENT_PORTS = ("registration", "mux", "control", "task", "broadcast", "notification")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path / "corral", n=1)
    try:
        yield live
    finally:
        live.stop()


def _through_forwarder(client: Client, engine_id: int) -> Forwarder:
    """Route ``client``'s data channel to ``engine_id`` through a new forwarder."""
    engine = client._engines[engine_id]
    assert engine.data_url is not None
    forwarder = Forwarder(int(engine.data_url.rsplit(":", 1)[1]))
    client._engines[engine_id] = dataclasses.replace(
        engine, data_url=f"tcp://127.0.0.1:{forwarder.port}"
    )
    return forwarder


@pytest.mark.parametrize("op", ["pull", "push"])
def test_a_data_request_lost_with_its_connection_fails_saying_so(
    cluster: LiveCluster, op: str
) -> None:
    """A direct pull (or a push large enough for the data path) goes into the data
    connection; the connection then breaks, taking the request with it, and ZeroMQ
    connects again. Only the channel's "up" flag used to change: the result waited for
    ever (or the caller's timeout). Now it fails with DataChannelLost naming the engine
    and its data address, and the channel serves the next call."""
    client = cluster.client
    view = client[0]
    view.execute("x = 42", block=True)
    forwarder = _through_forwarder(client, 0)
    try:
        assert view.pull("x", direct=True, block=False).get(timeout=TIMEOUT) == 42
        pairs = list(forwarder._pairs)
        assert len(pairs) == 1
        forwarder.freeze()  # what is sent from now on is lost on the way
        if op == "pull":
            result = view.pull("x", direct=True, block=False)
        else:
            result = view.push({"y": os.urandom(2 << 20)}, block=False)
        until(lambda: forwarder.lost > 0, what="the request went into the broken connection")
        for near, _far in pairs:
            near.shutdown(socket.SHUT_RD)  # and the connection breaks (a reset)
        with pytest.raises(DataChannelLost) as caught:
            result.get(timeout=TIMEOUT)
        error = caught.value
        assert isinstance(error, ConnectionError)
        assert error.engine_id == 0
        assert f"127.0.0.1:{forwarder.port}" in str(error) and op in str(error)
        until(forwarder.reconnected, what="the data channel reconnected")
        assert view.pull("x", direct=True, block=False).get(timeout=TIMEOUT) == 42
    finally:
        forwarder.close()


def test_a_direct_pull_whose_engine_dies_still_says_the_engine_died(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    """A killed engine's data connection closes at once, before the hub has declared the
    engine dead: the pull waiting on it must fail with EngineError (what happened), not
    with DataChannelLost (what a dropped connection looks like)."""
    from helpers import wait_for_file

    client = cluster.client
    view = client[0]
    view.execute("x = 42", block=True)
    assert view.pull("x", direct=True, block=False).get(timeout=TIMEOUT) == 42
    view.apply_async(wait_for_file, str(tmp_path / "never"))  # keeps the engine busy
    until(lambda: client.queue_status(0)["running"] == 1, what="the task started")
    pulled = view.pull("x", direct=True, block=False)
    cluster.engines[0].send_signal(signal.SIGKILL)
    with pytest.raises(EngineError):
        pulled.get(timeout=TIMEOUT)


def _client_through_forwarders(
    cluster: LiveCluster, tmp_path: Path, **changes: Any
) -> tuple[Client, list[Forwarder]]:
    """A client of ``cluster`` whose controller connections pass through forwarders (its
    cluster file copied, ports replaced, ``changes`` applied)."""
    info = json.loads(cluster.cluster_file.read_text())
    forwarders = []
    for name in CLIENT_PORTS:
        forwarders.append(Forwarder(int(info[name])))
        info[name] = forwarders[-1].port
    info.update(changes)
    client_file = tmp_path / "client-through-forwarders.json"
    client_file.write_text(json.dumps(info))
    os.chmod(client_file, 0o600)
    client = Client(connection_file=client_file)
    cluster.clients.append(client)
    client.wait_for_engines(1, timeout=TIMEOUT)
    return client, forwarders


def _blip(client: Client, forwarders: list[Forwarder], tmp_path: Path) -> ControllerLost:
    """Cut the client's connections under a running task; the ControllerLost it got.
    The task is released then (it runs on, the controller being alive)."""
    from helpers import wait_for_file

    release = tmp_path / "release"
    pending = client[0].apply_async(wait_for_file, str(release))
    until(lambda: client.queue_status(0)["running"] == 1, what="the task started")
    for forwarder in forwarders:
        forwarder.cut()
    error = pending.exception(timeout=TIMEOUT)
    release.touch()
    assert isinstance(error, ControllerLost), error
    return error


def test_a_client_whose_own_connection_drops_is_told_what_was_seen(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    """The controller stays up; only this client's connections break. It used to say it
    "lost the controller" and that engines wait for a controller restarted: what it saw
    is a connection to the controller, at an address, that closed. reconnect() then
    finds the same controller and the client works again."""
    client, forwarders = _client_through_forwarders(cluster, tmp_path)
    try:
        error = _blip(client, forwarders, tmp_path)
        text = str(error)
        assert "connection to the controller" in text, text
        assert "lost the controller" not in text
        ports = {f"127.0.0.1:{forwarder.port}" for forwarder in forwarders}
        assert any(port in text for port in ports), text
        assert "reconnect()" in text
        client.reconnect(timeout=TIMEOUT)
        assert client.ids == [0]
        assert client[0].apply_sync(os.getpid) == cluster.engines[0].pid
    finally:
        for forwarder in forwarders:
            forwarder.close()


def test_reconnect_needs_no_local_controller_pid(cluster: LiveCluster, tmp_path: Path) -> None:
    """A client on another host than its controller: the cluster file's controller_pid
    names no process here. reconnect() judged the controller by that pid and waited for
    ever (TimeoutError) while the controller answered; it now asks the hub."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(done.stdout)  # a pid that names no process on this host now
    assert gone != cluster.controller.pid
    client, forwarders = _client_through_forwarders(cluster, tmp_path, controller_pid=gone)
    try:
        _blip(client, forwarders, tmp_path)
        client.reconnect(timeout=TIMEOUT)
        assert client.ids == [0]
        assert client[0].apply_sync(os.getpid) == cluster.engines[0].pid
    finally:
        for forwarder in forwarders:
            forwarder.close()


def test_reconnect_to_a_controller_that_does_not_answer_times_out(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    """The controller's pid is alive here, but its ports lead nowhere now (a network
    still down): reconnect() raises TimeoutError, and the client stays lost (calls
    raise ControllerLost at once, nothing waits). The pid alone used to pass it."""
    client, forwarders = _client_through_forwarders(cluster, tmp_path)
    try:
        _blip(client, forwarders, tmp_path)
        for forwarder in forwarders:
            forwarder.down = True  # new connections are reset at once
        with pytest.raises(TimeoutError):
            client.reconnect(timeout=3)
        assert client.controller_lost
        with pytest.raises(ControllerLost):
            client.queue_status()
    finally:
        for forwarder in forwarders:
            forwarder.close()


def test_reconnect_on_a_healthy_client_fails_what_it_cannot_answer(cluster: LiveCluster) -> None:
    """``reconnect()`` called while the client still counts itself connected (a user's
    remedy for a connection gone quietly half-open): a task pending then was sent through
    the connections reconnect() replaces, so its reply can never arrive. It used to wait
    for ever; it fails with ControllerLost saying why, and the client works again."""
    client = cluster.client
    started = cluster.corral_dir / "started"
    code = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(60)"
    pending = client[0].execute(code, block=False)
    until(started.exists, what="the task started on the engine")
    client.reconnect()
    with pytest.raises(ControllerLost, match="reconnect"):
        pending.get(timeout=TIMEOUT)
    assert 0 in client.queue_status()  # the hub answers on the new connections
