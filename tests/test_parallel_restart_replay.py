"""A request captured before a controller restart is refused after it (``door.RUN``).

Replay guards live in memory: a restarted controller (same key, same ports: it takes the
dead one's over) starts with empty ones. Without runs, a request captured on its way to
the old controller and resent to the new one was admitted again: the new task scheduler
sealed it for an engine that had never seen it, which ran it again, and the new hub served
a hub request again. Each start of a controller now has a run of its own, which requests
to the hub and the queues must name.

Real processes throughout: a controller in processes mode (killed with ``kill -9`` of its
process group, then started again on the same profile and cluster id), real engines, and
the capture technique of ``test_parallel_replay`` (a :class:`Relay` in the middle of one
client's connection). Each test here failed before runs existed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from parallel_client_harness import LiveCluster
from test_parallel_replay import GRACE, Relay, answered, attacker, body, mark, runs, url

from corral.plugins.parallel.client import Client, ControllerLost, RemoteError
from corral.plugins.parallel.client.messages import parse
from corral.transports.zmq import wire
from corral.transports.zmq.batch import is_batch, unbatch
from corral.transports.zmq.door import HUB, cluster_signer
from corral.transports.zmq.session import Session

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)

DEADLINE = 60.0


def engine_pid() -> int:
    return os.getpid()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path, n=1, threads=False, profile="restart-replay")
    yield live
    live.stop()
    for engine in live.engines:
        if engine.poll() is None:
            engine.kill()
            engine.wait(5)


def read_info(cluster: LiveCluster) -> dict[str, Any]:
    return dict(json.loads(Path(cluster.cluster_file).read_text()))


def relayed_client(
    cluster: LiveCluster, info: dict[str, Any], channels: tuple[str, ...]
) -> tuple[Client, dict[str, Relay]]:
    """A client whose ``channels`` run through relays that keep what it sends."""
    relays = {ch: Relay(info, url(info, ch)) for ch in channels}
    path = cluster.corral_dir / "relayed.json"
    path.write_text(json.dumps({**info, **{ch: r.port for ch, r in relays.items()}}))
    path.chmod(0o600)
    client = Client(connection_file=path, local=False)
    client.wait_for_engines(1, timeout=DEADLINE)
    return client, relays


def captured_type(relay: Relay, msg_type: str) -> list[bytes]:
    """The first request of ``msg_type`` the client sent through ``relay``."""
    end = time.monotonic() + DEADLINE
    while True:
        frames = relay.requests.get(timeout=max(0.01, end - time.monotonic()))
        at = frames.index(wire.DELIMITER)
        if json.loads(frames[at + 2]).get("msg_type") == msg_type:
            return frames


def msg_id_of(frames: list[bytes]) -> str:
    return str(json.loads(frames[frames.index(wire.DELIMITER) + 2])["msg_id"])


def reply_to(sock: zmq.Socket[Any], signer: Any, msg_id: str) -> Any:
    """The reply to ``msg_id`` arriving on ``sock`` (others skipped)."""
    end = time.monotonic() + DEADLINE
    while True:
        left = end - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000) + 1), f"no reply to {msg_id}"
        frames = sock.recv_multipart()
        for message in unbatch(frames, 0) if is_batch(frames[0]) else [frames]:
            reply = parse(message, signer)
            if reply.parent_id == msg_id:
                return reply


def restart_with_a_fresh_engine(cluster: LiveCluster) -> Client:
    """``kill -9`` the controller and the engine that ran the captured requests, start the
    controller again and an engine that never saw them; the harness's client, reconnected
    (a genuine client of the new controller)."""
    cluster.kill_controller()
    for engine in cluster.engines:
        engine.kill()
        engine.wait(10)
    cluster.restart_controller()
    cluster.add_engine()
    rc = cluster.client
    rc.reconnect(timeout=DEADLINE)
    rc.wait_for_engines(1, timeout=DEADLINE)
    return rc


def test_requests_captured_before_a_restart_are_refused_after_it(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    """A load-balanced task, a broadcast and a purge, captured before the restart and
    resent to the new controller's task scheduler, broadcast scheduler and hub: the tasks
    do not run again on the new engine, the purge does not purge the new records, and the
    hub says why; the reconnected client's new requests are served."""
    info = read_info(cluster)
    signer = cluster_signer(info["key"])
    rc, relays = relayed_client(cluster, info, ("task", "broadcast", "registration"))
    task_runs, broadcast_runs = tmp_path / "task-runs", tmp_path / "broadcast-runs"
    task = rc.load_balanced_view().apply_async(mark, str(task_runs))
    task.get(timeout=DEADLINE)
    sent = rc.broadcast_view().apply_async(mark, str(broadcast_runs))
    sent.get(timeout=DEADLINE)
    assert rc.purge_results("all") >= 1
    captured = {
        "task": relays["task"].captured(task.msg_ids[0]),
        "broadcast": relays["broadcast"].captured(sent.msg_ids[0]),
        "registration": captured_type(relays["registration"], "purge_request"),
    }
    rc.close()
    for relay in relays.values():
        relay.stop()
    assert runs(task_runs) == runs(broadcast_runs) and len(runs(task_runs)) == 1

    rc = restart_with_a_fresh_engine(cluster)
    after = read_info(cluster)
    assert after["key"] == info["key"] and after["task"] == info["task"]  # taken over
    kept = rc.load_balanced_view().apply_async(engine_pid)
    new_pid = kept.get(timeout=DEADLINE)
    assert new_pid != int(runs(task_runs)[0])

    socks = {name: attacker(after, url(after, name)) for name in captured}
    served: list[str] = []  # what the new controller did again
    try:
        for name, frames in captured.items():
            socks[name].send_multipart(body(frames))
        refusal = reply_to(socks["registration"], signer, msg_id_of(captured["registration"]))
        if refusal.content["status"] != "error":
            served.append(f"the purge, answered {refusal.content}")
        for name in ("task", "broadcast"):
            if answered(socks[name], signer, msg_id_of(captured[name]), GRACE):
                served.append(f"the {name} request, answered")
    finally:
        for sock in socks.values():
            sock.close()
    # The new engine would have added its pid; the purge would have taken the new record.
    for what, path in (("task", task_runs), ("broadcast", broadcast_runs)):
        if runs(path) != runs(task_runs)[:1]:
            served.append(f"the {what} request, run again: {runs(path)}")
    if not rc.db_query({"msg_id": kept.msg_ids[0]}, keys=["msg_id"]):
        served.append("the purge, which purged a record of the new run")
    assert not served, f"served again after the restart: {served}"
    assert refusal.content["ename"] == "WrongRun"
    assert "restarted" in refusal.content["evalue"]
    # The genuine client goes on: tasks, broadcasts and hub requests of the new run.
    assert rc.load_balanced_view().apply_sync(engine_pid) == new_pid
    assert rc.broadcast_view().apply_sync(engine_pid) == [new_pid]
    assert rc.purge_results("all") >= 1
    assert after["run"] != info["run"]


def test_a_client_that_missed_the_restart_is_told_clearly(cluster: LiveCluster) -> None:
    """A client whose file names the old run (a copy older than the controller, say)
    learns the new run from the hub's signed connection reply when it connects; a request
    of the old run, or of none (a client older than runs), is refused with a reason."""
    old = read_info(cluster)
    stale = cluster.corral_dir / "stale-copy.json"
    stale.write_text(json.dumps(old))
    stale.chmod(0o600)
    restart_with_a_fresh_engine(cluster)
    fresh = read_info(cluster)
    assert fresh["run"] != old["run"]
    rc = Client(connection_file=stale, local=False)
    cluster.clients.append(rc)  # closed with the cluster
    rc.wait_for_engines(1, timeout=DEADLINE)
    assert rc.load_balanced_view().apply_sync(engine_pid) > 0  # on the new run
    # A request of the old run (what a client that missed the restart sends) is refused
    # with a reason: the caller sees it at once instead of a timeout.
    rc._builder.set_run(old["run"])
    with pytest.raises(RemoteError, match="WrongRun"):
        rc.queue_status()
    # Its connection request is still answered (any run), and the run the answer names
    # tells the client the controller was restarted under it: its work fails at once.
    rc._sync_engines(DEADLINE)
    assert rc.controller_lost
    with pytest.raises(ControllerLost, match="it was restarted"):
        rc.queue_status()
    # A client older than runs (its requests carry none) is refused even connecting.
    old_client = Session(fresh["key"].encode(), signer=cluster_signer(fresh["key"]))
    asking = old_client.msg("connection_request", {}, dest=HUB)
    sock = attacker(fresh, url(fresh, "registration"))
    try:
        sock.send_multipart(wire.serialize(asking, old_client.signer))
        refusal = reply_to(sock, old_client.signer, asking["msg_id"])
    finally:
        sock.close()
    assert refusal.content["ename"] == "WrongRun"
    assert "older than the controller" in refusal.content["evalue"]


def engine_with(cluster: LiveCluster, path: Path) -> subprocess.Popen[Any]:
    """An engine of ``cluster`` started with the cluster file at ``path``."""
    engine = subprocess.Popen(
        [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(path)],
        env={**cluster.env, **cluster.engine_env},
        start_new_session=True,
    )
    cluster.engines.append(engine)  # stopped with the cluster
    return engine


def test_an_engine_registration_captured_before_a_restart_registers_nothing_after_it(
    cluster: LiveCluster,
) -> None:
    """A registration is refused by a controller of another run, like any request: one
    captured before the restart and resent to the new hub registered a phantom engine
    under the old uuid (found dead only after its missed heartbeats; meanwhile the
    schedulers gave it work). The refusal names the current run, which a genuine engine
    adopts: one started with the file of before the restart registers."""
    info = read_info(cluster)
    signer = cluster_signer(info["key"])
    relay = Relay(info, url(info, "registration"))
    relayed = cluster.corral_dir / "relayed-engine.json"
    relayed.write_text(json.dumps({**info, "registration": relay.port}))
    relayed.chmod(0o600)
    old_copy = cluster.corral_dir / "old-copy.json"
    old_copy.write_text(json.dumps(info))
    old_copy.chmod(0o600)
    engine_with(cluster, relayed)
    captured = captured_type(relay, "registration_request")
    cluster.client.wait_for_engines(2, timeout=DEADLINE)
    relay.stop()

    rc = restart_with_a_fresh_engine(cluster)
    after = read_info(cluster)
    assert after["run"] != info["run"] and len(hub_engines(rc)) == 1
    sock = attacker(after, url(after, "registration"))
    try:
        sock.send_multipart(body(captured))
        refusal = reply_to(sock, signer, msg_id_of(captured))
    finally:
        sock.close()
    assert refusal.content["status"] == "error", f"registered again: {refusal.content}"
    assert refusal.content["ename"] == "WrongRun"
    assert refusal.content["run"] == after["run"]
    assert len(hub_engines(rc)) == 1  # no phantom
    # A genuine engine whose file is older than the controller: refused, then registered
    # under the run the refusal named.
    engine_with(cluster, old_copy)
    rc.wait_for_engines(2, timeout=DEADLINE)
    assert len(set(rc[:].apply_sync(engine_pid))) == 2


def hub_engines(rc: Client) -> set[str]:
    """The engine ids the hub itself lists (its connection reply)."""
    return set(rc._hub_request("connection_request", {}, DEADLINE).content["engines"])


def test_an_engine_that_rejoined_a_restart_unregisters_under_the_new_run(
    tmp_path: Path,
) -> None:
    """An engine that outlived its controller learns the new run from its re-registration
    reply: its unregistration on shutdown is accepted at once (were it refused, the hub
    would list the engine until its heartbeats, a minute here, declare it dead)."""
    cluster = LiveCluster(tmp_path, n=1, threads=False, hb_period=0.2, hb_misses=300)
    try:
        rc = cluster.client
        cluster.kill_controller()
        cluster.restart_controller()
        rc.reconnect(timeout=DEADLINE)
        (engine_id,) = rc.wait_for_engines(1, timeout=DEADLINE)
        # Not waited for: its reply races the notice of its leaving (either may come first).
        rc.shutdown(targets=[engine_id], block=False)
        assert cluster.engines[0].wait(DEADLINE) == 0  # it sent its unregistration
        end = time.monotonic() + 20.0
        while str(engine_id) in hub_engines(rc):
            assert time.monotonic() < end, "the hub kept an engine that unregistered"
            with rc._engines_changed:  # woken by the hub's notice of its leaving
                rc._engines_changed.wait(0.2)
    finally:
        cluster.stop()
