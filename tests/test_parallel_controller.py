"""The controller, running for real (threads and processes), with fake engines and clients.

Fake engines and clients (``parallel_fakes``) are real DEALER/SUB sockets on 127.0.0.1
that sign with the cluster key. Every wait is a socket poll with a timeout; "nothing
arrived" checks are made only after a later message proves the earlier one was handled.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from parallel_fakes import FakeClient, FakeEngine

from corral.plugins.parallel.clusterfile import (
    PORT_NAMES,
    ClusterInfo,
    cluster_file_path,
    read_cluster_file,
    write_cluster_file,
)
from corral.plugins.parallel.controller import ControllerHandle, start_controller
from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches
from corral.transports.zmq.door import HUB
from corral.transports.zmq.session import Session

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def corral_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    return tmp_path


class Cluster:
    """A running controller plus the fakes a test made, all closed at the end."""

    def __init__(self, handle: ControllerHandle) -> None:
        self.handle = handle
        self.info = read_cluster_file(handle.cluster_file)
        self.peers: list[Any] = []

    def engine(self, register: bool = True, **kw: Any) -> FakeEngine:
        eng = FakeEngine(self.info, **kw)
        self.peers.append(eng)
        if register:
            eng.register()
        return eng

    def client(self) -> FakeClient:
        c = FakeClient(self.info)
        self.peers.append(c)
        return c

    def component(self, name: str) -> Any:
        """A component object (threads mode only)."""
        return self.handle._threads.components[name]  # type: ignore[union-attr]

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.handle.stop()


@pytest.fixture
def make_cluster() -> Iterator[Any]:
    made: list[Cluster] = []

    def make(mode: str = "threads", **kw: Any) -> Cluster:
        kw.setdefault("db", "memory")
        cluster = Cluster(start_controller("test", mode=mode, **kw))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def cluster(make_cluster: Any) -> Cluster:
    return make_cluster()


def settle(client: FakeClient, done: Any) -> None:
    """Round trips to the hub until ``done()``: monitor copies reach the hub asynchronously,
    and every round trip is one more turn of its loop (which drains the monitor)."""
    for _ in range(1000):
        if done():
            return
        client.ask("connection_request")
    assert done()


def engines_and_client(cluster: Cluster, n: int = 2) -> tuple[list[FakeEngine], FakeClient]:
    client = cluster.client()
    engines = [cluster.engine() for _ in range(n)]
    for eng in engines:  # the queues heard the same notification
        note = client.notification()
        assert note["msg_type"] == "registration_notification"
        assert note["content"]["uuid"] == eng.uuid
    return engines, client


# ------------------------------------------------------------------ cluster file


def settled(component, timeout: float = 10.0) -> int:
    """The component's outstanding count once it stops changing to zero (bounded wait).

    In threads mode a queue sends a reply before it finishes its own bookkeeping, so the
    test thread may look a moment too early; there is no event to wait on from outside.
    """
    deadline = time.monotonic() + timeout
    while component.outstanding_count() and time.monotonic() < deadline:
        time.sleep(0.005)
    return component.outstanding_count()


def test_cluster_file_roundtrip_is_private(tmp_path: Path) -> None:
    info = ClusterInfo(cluster_id="x", registration=5)
    path = write_cluster_file(tmp_path / "sec" / "cluster-x.json", info)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_cluster_file(path) == info
    assert info.url("registration") == "tcp://127.0.0.1:5"
    assert "key" not in info.to_dict(include_key=False)
    with pytest.raises(ValueError):
        info.url("nope")
    with pytest.raises(ValueError):
        cluster_file_path("p", "../x")


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_start_writes_complete_cluster_file(make_cluster: Any, mode: str) -> None:
    cluster = make_cluster(mode)
    path = cluster.handle.cluster_file
    assert path == cluster_file_path("test", path.name[len("cluster-") : -len(".json")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = json.loads(path.read_text())
    assert set(raw) >= {*PORT_NAMES, "key", "cluster_id", "signature_scheme", "hb_period"}
    ports = [raw[name] for name in PORT_NAMES]
    assert all(p > 0 for p in ports) and len(set(ports)) == len(ports)
    assert len(raw["key"]) == 64 and raw["ip"] == "127.0.0.1"
    assert raw["controller_pid"] == cluster.handle.pid
    if mode == "processes":
        assert len(cluster.handle.pids) == 7  # supervisor + 6 components
        assert all(psutil.pid_exists(p) for p in cluster.handle.pids)


# ------------------------------------------------------------------ registration


def test_registration_ids_notifications_and_connection_reply(cluster: Cluster) -> None:
    client = cluster.client()
    engines = [cluster.engine() for _ in range(3)]
    assert [e.id for e in engines] == [0, 1, 2]
    for eng in engines:
        note = client.notification()
        assert note["msg_type"] == "registration_notification"
        assert note["content"] == {
            "id": eng.id,
            "uuid": eng.uuid,
            "hostname": "fakehost",
            "data_url": "tcp://x:1",
            "local_path": "",
            "holding": [],
            "monitored": False,  # no monitor will report its death (launchers/monitor.py)
        }
    dup = client.ask("registration_request", {"uuid": engines[0].uuid})
    assert dup["content"]["status"] == "error"

    reply = client.ask("connection_request")
    assert reply["msg_type"] == "connection_reply"
    assert reply["content"]["engines"] == {
        str(e.id): {
            "uuid": e.uuid,
            "hostname": "fakehost",
            "pid": 1,
            "data_url": "tcp://x:1",
            "local_path": "",
        }
        for e in engines
    }
    info = reply["content"]["cluster"]
    assert "key" not in info
    assert {k: info[k] for k in PORT_NAMES} == cluster.info.ports()

    eng = engines[1]
    assert eng.run == cluster.info.run  # the registration reply told it
    eng.session.send(
        eng.socks["registration"], "unregistration_request", {"id": eng.id}, dest=HUB, run=eng.run
    )
    note = client.notification()
    assert note["msg_type"] == "unregistration_notification"
    assert note["content"] == {"id": 1, "uuid": eng.uuid, "reason": "shutdown"}
    assert set(client.ask("connection_request")["content"]["engines"]) == {"0", "2"}


def test_a_repeated_registration_of_the_same_process_gets_the_same_answer(
    cluster: Cluster,
) -> None:
    """An engine sends its registration again when no reply came (a request or reply
    lost on the way, a slow hub): the hub must answer the repeat with the same
    registration, not "already registered", which would make the engine give up. The
    same uuid from another process is still refused."""
    client = cluster.client()
    engine = cluster.engine()
    first = engine.id
    again = engine.register()  # the same content: uuid, hostname, pid
    assert again == first
    assert set(client.ask("connection_request")["content"]["engines"]) == {str(first)}
    other = client.ask(
        "registration_request", {"uuid": engine.uuid, "hostname": "fakehost", "pid": 2}
    )
    assert other["content"]["status"] == "error"


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize("queue", ["mux", "control"])
def test_direct_routing(make_cluster: Any, mode: str, queue: str) -> None:
    cluster = make_cluster(mode)
    (a, b), client = engines_and_client(cluster)
    sent = client.apply(queue, engine=b, buffers=[b"\x80\x05payload", b"x" * 100_000])
    idents, got = b.next_request(queue)
    assert got["header"] == sent["header"]
    assert [bytes(x) for x in got["buffers"]] == [b"\x80\x05payload", b"x" * 100_000]
    assert len(idents) == 1  # [client_id]: the engine's own uuid was stripped
    b.reply(queue, idents, got, buffers=[b"result"])
    reply = client.reply(queue)
    assert reply["parent_header"]["msg_id"] == sent["msg_id"]
    assert reply["metadata"]["engine_id"] == b.id
    assert [bytes(x) for x in reply["buffers"]] == [b"result"]
    assert a.nothing(f"{queue}_engine", 0.05)

    bogus = FakeEngine.__new__(FakeEngine)
    bogus.ident = b"no-such-engine"
    client.apply(queue, engine=bogus)
    err = client.reply(queue)
    assert err["content"]["status"] == "error"
    assert err["content"]["ename"] == "EngineError"
    assert err["msg_type"] == "apply_reply"


def test_load_balancing_by_outstanding(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    for _ in range(4):
        client.apply()
    held_a = [a.next_request() for _ in range(2)]
    held_b = [b.next_request() for _ in range(2)]
    for idents, msg in held_a:  # a is idle now, b still has two outstanding
        a.reply("task", idents, msg)
    for _ in range(2):
        client.reply()
    client.apply()
    client.apply()
    for _ in range(2):
        a.answer()
        client.reply()
    for idents, msg in held_b:
        b.reply("task", idents, msg)
    for _ in range(2):
        client.reply()
    assert b.nothing("task_engine", 0.05)
    sched = cluster.component("task")
    assert settled(sched) == 0 and all(v == 0 for v in sched.load.values())


def test_a_batch_of_requests_is_routed_whole_even_with_odd_metadata(cluster: Cluster) -> None:
    """A client's batch: every request in it reaches an engine and is answered, even one
    whose timeout no float can hold (it used to raise, which lost the rest of the batch)."""
    (a, b), client = engines_and_client(cluster)
    base = {"targets": None, "after": [], "follow": [], "retries": 0}
    msgs = [
        client.session.msg(
            "apply_request",
            {},
            metadata={**base, "timeout": timeout},
            dest="task",
            run=cluster.info.run,
        )
        for timeout in (None, 10**400, 5.0)
    ]
    frames = [wire.serialize(m, client.session.signer) for m in msgs]
    (batch,) = pack_batches((), frames)
    client.socks["task"].send_multipart(batch)
    seen = set()
    poller = zmq.Poller()
    for eng in (a, b):
        poller.register(eng.socks["task_engine"], zmq.POLLIN)
    while len(seen) < 3:
        ready = dict(poller.poll(20_000))
        assert ready, f"only {len(seen)} of 3 requests reached an engine"
        for eng in (a, b):
            if eng.socks["task_engine"] in ready:
                for raw in eng.messages_of_one_recv("task_engine"):
                    idents, msg = eng.session.parse(raw)  # type: ignore[misc]
                    seen.add(msg["msg_id"])
                    eng.reply("task", idents, msg)
    assert seen == {m["msg_id"] for m in msgs}
    replies = {client.reply()["parent_header"]["msg_id"] for _ in msgs}
    assert replies == seen


def test_targets_subset(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    for _ in range(3):
        client.apply(metadata={"targets": [b.id]})
    for _ in range(3):
        b.answer()
        assert client.reply()["metadata"]["engine_id"] == b.id
    assert a.nothing("task_engine", 0.05)


def test_broadcast_fan_out(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    sent = client.apply("broadcast", buffers=[b"same-bytes" * 1000])
    for eng in (a, b):
        idents, got = eng.next_request("broadcast")
        assert got["header"] == sent["header"]
        assert bytes(got["buffers"][0]) == b"same-bytes" * 1000
        eng.reply("broadcast", idents, got)
    ids = {client.reply("broadcast")["metadata"]["engine_id"] for _ in range(2)}
    assert ids == {a.id, b.id}

    client.apply("broadcast", metadata={"targets": [a.id, 99]})
    a.answer("broadcast")
    replies = [client.reply("broadcast") for _ in range(2)]
    assert sorted(r["content"]["status"] for r in replies) == ["error", "ok"]
    assert b.nothing("broadcast_engine", 0.05)
    assert settled(cluster.component("broadcast")) == 0


# ------------------------------------------------------------------ dependencies


def test_after_waits_for_completion(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    first = client.apply(metadata={"targets": [a.id]})
    second = client.apply(metadata={"after": [first["msg_id"]]})
    idents, msg = a.next_request()
    assert msg["msg_id"] == first["msg_id"]
    assert b.nothing("task_engine", 0.05) and a.nothing("task_engine", 0.01)
    a.reply("task", idents, msg)
    assert client.reply()["parent_header"]["msg_id"] == first["msg_id"]
    got = b.answer()  # b had fewer outstanding
    assert got["msg_id"] == second["msg_id"]
    assert client.reply()["parent_header"]["msg_id"] == second["msg_id"]
    # a finished dependency is met at once; an unknown one counts as met
    third = client.apply(metadata={"after": [first["msg_id"], "never-seen"]})
    eng = a if not a.nothing("task_engine", 0.5) else b
    assert eng.answer()["msg_id"] == third["msg_id"]
    client.reply()


def test_failed_dependency_is_impossible(cluster: Cluster) -> None:
    (a,), client = engines_and_client(cluster, 1)
    first = client.apply()
    dependent = client.apply(metadata={"after": [first["msg_id"]]})
    a.answer(status="error")
    assert client.reply()["content"]["status"] == "error"
    err = client.reply()
    assert err["parent_header"]["msg_id"] == dependent["msg_id"]
    assert err["content"]["ename"] == "ImpossibleDependency"  # ipyparallel's type
    late = client.apply(metadata={"after": [first["msg_id"]]})
    err = client.reply()
    assert err["parent_header"]["msg_id"] == late["msg_id"]
    assert err["content"]["ename"] == "ImpossibleDependency"
    assert settled(cluster.component("task")) == 0


def flagged(ids: list[str], **flags: bool) -> dict[str, Any]:
    return {"dependencies": ids, "all": True, "success": True, "failure": False, **flags}


def test_flagged_dependencies(cluster: Cluster) -> None:
    (a,), client = engines_and_client(cluster, 1)
    bad = client.apply()
    good = client.apply()
    on_failure = client.apply(metadata={"after": flagged([bad["msg_id"]], failure=True)})
    only_failure = client.apply(
        metadata={"after": flagged([good["msg_id"]], success=False, failure=True)}
    )
    any_of = client.apply(metadata={"after": flagged([bad["msg_id"], good["msg_id"]], all=False)})
    a.answer(status="error")  # bad fails: on_failure may run, any_of still waits for good
    assert client.reply()["parent_header"]["msg_id"] == bad["msg_id"]
    a.answer()  # good succeeds: only_failure can never be met, any_of is
    assert client.reply()["parent_header"]["msg_id"] == good["msg_id"]
    err = client.reply()
    assert err["parent_header"]["msg_id"] == only_failure["msg_id"]
    assert err["content"]["ename"] == "ImpossibleDependency"
    ran = {a.answer()["msg_id"], a.answer()["msg_id"]}
    assert ran == {on_failure["msg_id"], any_of["msg_id"]}
    assert {client.reply()["content"]["status"] for _ in range(2)} == {"ok"}
    # every id failed and failures are not accepted: impossible at once, even with any
    late = client.apply(metadata={"after": flagged([bad["msg_id"]], all=False)})
    err = client.reply()
    assert (err["parent_header"]["msg_id"], err["content"]["ename"]) == (
        late["msg_id"],
        "ImpossibleDependency",
    )
    assert settled(cluster.component("task")) == 0


def test_flagged_follow_and_timeout(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    first = client.apply(metadata={"targets": [b.id]})
    b.answer()
    client.reply()
    follower = client.apply(metadata={"follow": flagged([first["msg_id"]], all=False)})
    assert b.answer()["msg_id"] == follower["msg_id"]  # where its dependency ran
    assert a.nothing("task_engine", 0.05)
    client.reply()
    blocker = client.apply(metadata={"targets": [a.id]})
    waiting = client.apply(
        metadata={"after": flagged([blocker["msg_id"]], failure=True), "timeout": 0.1}
    )
    idents, msg = a.next_request()
    err = client.reply()
    assert err["parent_header"]["msg_id"] == waiting["msg_id"]
    assert err["content"]["ename"] == "DependencyTimeout"
    a.reply("task", idents, msg)
    client.reply()
    assert settled(cluster.component("task")) == 0


def test_a_rejected_task_moves_to_another_engine(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    rejected = {"dependencies_met": False}
    task = client.apply(metadata={"targets": [a.id, b.id]})
    first, other = (a, b) if not a.nothing("task_engine", 0.5) else (b, a)
    idents, msg = first.next_request()
    first.reply("task", idents, msg, status="error", extra_metadata=rejected)
    assert other.answer()["msg_id"] == task["msg_id"]  # the same task, on the other engine
    reply = client.reply()
    assert reply["parent_header"]["msg_id"] == task["msg_id"]
    assert reply["content"]["status"] == "ok"  # the rejection never reached the client
    doomed = client.apply()
    for _ in range(2):
        for eng in (a, b):
            if not eng.nothing("task_engine", 0.2):
                idents, msg = eng.next_request()
                assert msg["msg_id"] == doomed["msg_id"]
                eng.reply("task", idents, msg, status="error", extra_metadata=rejected)
                break
    err = client.reply()
    assert err["parent_header"]["msg_id"] == doomed["msg_id"]
    assert err["content"]["ename"] == "ImpossibleDependency"
    assert "every engine rejected it" in err["content"]["evalue"]
    assert a.nothing("task_engine", 0.05) and b.nothing("task_engine", 0.01)
    assert settled(cluster.component("task")) == 0


def test_follow_runs_where_the_dependency_ran(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    first = client.apply(metadata={"targets": [b.id]})
    b.answer()
    client.reply()
    busy = client.apply(metadata={"targets": [b.id]})  # b now has more outstanding than a
    idents, held = b.next_request()
    follower = client.apply(metadata={"follow": [first["msg_id"]]})
    i2, got = b.next_request()
    assert got["msg_id"] == follower["msg_id"]
    assert a.nothing("task_engine", 0.05)
    b.reply("task", idents, held)
    b.reply("task", i2, got)
    assert {client.reply()["parent_header"]["msg_id"] for _ in range(2)} == {
        busy["msg_id"],
        follower["msg_id"],
    }


def test_dependency_timeout(cluster: Cluster) -> None:
    (a,), client = engines_and_client(cluster, 1)
    blocker = client.apply()
    waiting = client.apply(metadata={"after": [blocker["msg_id"]], "timeout": 0.1})
    idents, msg = a.next_request()
    err = client.reply()  # arrives while the blocker is still running
    assert err["parent_header"]["msg_id"] == waiting["msg_id"]
    assert err["content"]["ename"] == "DependencyTimeout"
    a.reply("task", idents, msg)
    assert client.reply()["parent_header"]["msg_id"] == blocker["msg_id"]
    assert a.nothing("task_engine", 0.05)


# ------------------------------------------------------------------ engine death


def test_heartbeat_death_answers_or_resubmits(make_cluster: Any) -> None:
    cluster = make_cluster(hb_period=0.1, hb_misses=2)
    (a, b), client = engines_and_client(cluster)
    busy = client.apply(metadata={"targets": [b.id]})
    held = b.next_request()
    retried = client.apply(metadata={"retries": 1})  # a: fewest outstanding
    doomed = client.apply(metadata={"targets": [a.id]})
    assert a.next_request()[1]["msg_id"] == retried["msg_id"]
    assert a.next_request()[1]["msg_id"] == doomed["msg_id"]
    # Direct work last: an engine that owes the mux or broadcast queue is not chosen
    # for load-balanced tasks while another engine is free of it.
    direct = client.apply("mux", engine=a)
    bcast = client.apply("broadcast", metadata={"targets": [a.id]})
    a.next_request("mux")
    a.next_request("broadcast")

    a.stop_heart()
    stopped = time.monotonic()
    note = client.notification(timeout=0.1 * (2 + 2))
    assert time.monotonic() - stopped <= 0.1 * (2 + 2) + 0.05
    assert note["msg_type"] == "unregistration_notification"
    assert note["content"] == {"id": a.id, "uuid": a.uuid, "reason": "heartbeat"}

    errors = {}
    for queue in ("mux", "broadcast", "task"):
        reply = client.reply(queue)
        errors[reply["parent_header"]["msg_id"]] = reply["content"]
    assert errors[direct["msg_id"]]["ename"] == "EngineError"
    assert errors[bcast["msg_id"]]["ename"] == "EngineError"
    assert errors[doomed["msg_id"]]["ename"] == "EngineError"
    assert retried["msg_id"] not in errors
    again = b.answer()
    assert again["msg_id"] == retried["msg_id"]
    reply = client.reply()
    assert reply["parent_header"]["msg_id"] == retried["msg_id"]
    assert reply["content"]["status"] == "ok"
    b.reply("task", *held)
    assert client.reply()["parent_header"]["msg_id"] == busy["msg_id"]
    for name in ("mux", "broadcast", "task"):
        assert settled(cluster.component(name)) == 0
    hub = cluster.component("hub")
    settle(client, lambda: not hub.pending)


# ------------------------------------------------------------------ the task database


def test_result_request_after_client_left(make_cluster: Any) -> None:
    cluster = make_cluster("processes", db="sqlite")
    (a,), client = engines_and_client(cluster, 1)
    payload = [os.urandom(200_000), b"", b"\x00tail"]
    sent = client.apply(buffers=[b"args"])
    idents, msg = a.next_request()
    a.publish_stream(msg, "stdout", "hello ")
    a.publish_stream(msg, "stdout", "world\n")
    a.publish_stream(msg, "stderr", "warn\n")
    a.reply("task", idents, msg, buffers=payload)
    client.reply()
    client.close()

    other = cluster.client()
    pending_id = other.apply(metadata={"targets": [a.id]})["msg_id"]
    a.next_request()  # dispatched, never answered
    for _ in range(200):  # output and records land asynchronously (batched writer)
        reply = other.ask("result_request", {"msg_ids": [sent["msg_id"], pending_id, "nope"]})
        results = reply["content"]["results"]
        done = results[sent["msg_id"]].get("stdout") == "hello world\n"
        if done and results[pending_id]["status"] == "pending":
            break
    assert reply["content"]["status"] == "ok"
    rec = results[sent["msg_id"]]
    assert rec["status"] == "completed"
    assert rec["result_status"] == "ok"
    assert rec["engine_id"] == a.id and rec["engine_uuid"] == a.uuid
    assert rec["stdout"] == "hello world\n" and rec["stderr"] == "warn\n"
    assert rec["header"]["msg_id"] == sent["msg_id"]
    assert rec["buffer_count"] == 3
    assert [bytes(b) for b in reply["buffers"]] == payload
    assert results[pending_id]["status"] == "pending"
    assert results["nope"] == {"status": "unknown"}


def test_db_request_queue_request_and_purge(cluster: Cluster) -> None:
    (a, b), client = engines_and_client(cluster)
    ids = []
    for eng in (a, b, a):
        ids.append(client.apply("mux", engine=eng)["msg_id"])
        eng.answer("mux", status="error" if eng is b else "ok")
        client.reply("mux")
    client.apply("mux", engine=b)
    b.next_request("mux")  # outstanding on b

    for _ in range(200):  # the hub counts from the queues' monitor copies (asynchronous)
        q = client.ask("queue_request", {"targets": None})["content"]
        if q[str(b.id)]["running"] == 1 and q[str(a.id)]["completed"] == 2:
            break
    assert q[str(a.id)] == {"queued": 0, "running": 0, "completed": 2}
    assert q[str(b.id)] == {"queued": 0, "running": 1, "completed": 1}

    found = client.ask("db_request", {"query": {"engine_id": a.id}, "keys": ["msg_type"]})
    recs = found["content"]["records"]
    assert [r["msg_id"] for r in recs] == [ids[0], ids[2]]
    assert recs[0] == {"msg_id": ids[0], "msg_type": "apply_request"}
    found = client.ask(
        "db_request",
        {"query": {"msg_id": {"$in": ids}, "result_status": {"$ne": "ok"}}, "keys": []},
    )
    assert [r["msg_id"] for r in found["content"]["records"]] == [ids[1]]
    assert found["content"]["records"][0]["result_content"]["ename"] == "ValueError"
    bad = client.ask("db_request", {"query": {"no_such_field": 1}})
    assert bad["content"]["status"] == "error"

    assert client.ask("purge_request", {"msg_ids": [ids[0]]})["content"]["purged"] == 1
    got = client.ask("result_request", {"msg_ids": [ids[0]]})["content"]["results"]
    assert got[ids[0]]["status"] == "unknown"
    assert client.ask("purge_request", {"msg_ids": "all"})["content"]["purged"] == 2
    left = client.ask("db_request", {"query": {}, "keys": ["result_status"]})
    assert [r["result_status"] for r in left["content"]["records"]] == [None]  # outstanding


def test_db_none_answers_unknown(make_cluster: Any) -> None:
    cluster = make_cluster(db="none")
    (a,), client = engines_and_client(cluster, 1)
    sent = client.apply()
    a.answer()
    client.reply()
    res = client.ask("result_request", {"msg_ids": [sent["msg_id"]]})["content"]["results"]
    assert res == {sent["msg_id"]: {"status": "unknown"}}


def test_state_stays_flat_over_many_tasks(make_cluster: Any) -> None:
    cluster = make_cluster(db="memory")
    (a, b), client = engines_and_client(cluster)
    total, window = 20_000, 500
    sock_a, sock_b = a.socks["task_engine"], b.socks["task_engine"]
    poller = zmq.Poller()
    poller.register(sock_a, zmq.POLLIN)
    poller.register(sock_b, zmq.POLLIN)
    frames = [b"x" * 16]
    for start in range(0, total, window):
        for i in range(window):
            client.apply(buffers=frames, metadata={"after": [f"old-{start + i - 1}"]})
        answered = 0
        while answered < window:
            ready = dict(poller.poll(20_000))
            assert ready, "tasks stopped flowing"
            for sock in ready:
                eng = a if sock is sock_a else b
                for frames in eng.messages_of_one_recv("task_engine"):
                    idents, msg = eng.session.parse(frames)  # type: ignore[misc]
                    eng.reply("task", idents, msg)
                    answered += 1
        for _ in range(window):
            client.reply()
    sched = cluster.component("task")
    hub = cluster.component("hub")
    assert settled(sched) == 0
    assert not sched.jobs and not sched.blocked and not sched.pool and not sched.pool_special
    assert all(not sent for sent in sched.sent.values())
    assert len(sched.results) <= sched.results_lru
    assert all(v == 0 for v in sched.load.values())
    settle(client, lambda: not hub.pending)
    assert len(hub.engines) == 2
    counts = client.ask("queue_request")["content"]
    assert counts[str(a.id)]["completed"] + counts[str(b.id)]["completed"] == total


# ------------------------------------------------------------------ shutdown


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_shutdown_request_stops_everything(make_cluster: Any, mode: str) -> None:
    cluster = make_cluster(mode)
    (a, b), client = engines_and_client(cluster)
    reply = client.ask("shutdown_request")
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "ok"
    for eng in (a, b):
        idents, msg = eng.next_request("control")
        assert msg["msg_type"] == "shutdown_request"
        eng.reply("control", idents, msg)
    assert cluster.handle.wait(20)
    assert cluster.handle.returncode == 0
    assert not cluster.handle.cluster_file.exists()
    if mode == "processes":
        for pid in cluster.handle.pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_sigterm_stops_processes(make_cluster: Any) -> None:
    cluster = make_cluster("processes")
    children = cluster.handle.pids[1:]
    cluster.handle.stop()
    assert cluster.handle.returncode == 0
    assert not any(psutil.pid_exists(p) for p in children)
    assert not cluster.handle.cluster_file.exists()


# ------------------------------------------------------------------ bad input


def _bad_messages(session: Session, routing: list[bytes]) -> list[list[bytes]]:
    """Malformed, unsigned, forged and replayed versions of one request."""
    good = session.msg("apply_request", {}, metadata={})
    frames = [bytes(f) for f in wire.serialize(good, session.signer, routing)]
    at = frames.index(wire.DELIMITER)
    unsigned = list(frames)
    unsigned[at + 1] = b""
    forged = list(frames)
    forged[at + 1] = b"0" * 64
    altered = list(frames)
    altered[at + 5] = b'{"evil": 1}'
    wrong_key = [bytes(f) for f in wire.serialize(good, wire.Signer(b"k" * 64), routing)]
    return [
        [b"garbage"],
        routing + [b"no delimiter", b"x"],
        routing + [wire.DELIMITER, b"sig"],
        routing + [wire.DELIMITER, frames[at + 1], b"{", b"{}", b"{}", b"{}"],
        unsigned,
        forged,
        altered,
        wrong_key,
        [],
    ]


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_bad_input_everywhere_is_dropped(make_cluster: Any, mode: str) -> None:
    cluster = make_cluster(mode)
    (a, b), client = engines_and_client(cluster)
    info = cluster.info
    ctx = zmq.Context.instance()
    attacker = Session(info.key)

    def raw(name: str, kind: int = zmq.DEALER) -> zmq.Socket[Any]:
        sock = client.gate.client(ctx.socket(kind))  # past the gate: the checks behind it
        sock.linger = 0
        sock.connect(info.url(name))
        return sock

    # A message that verifies, replayed: the first copy is served, the replay is not.
    valid = client.session.msg("connection_request", {}, dest=HUB, run=info.run)
    frames = [bytes(f) for f in wire.serialize(valid, client.session.signer)]
    client.socks["registration"].send_multipart(frames)
    client.recv("registration")
    client.socks["registration"].send_multipart(frames)
    for name in ("registration", "mux", "control", "task", "broadcast"):
        sock = raw(name)
        routing = [a.ident] if name in ("mux", "control") else []
        for bad in _bad_messages(attacker, routing):
            if bad:
                sock.send_multipart(bad)
        sock.close()
    for name in ("mux_engine", "control_engine", "task_engine", "broadcast_engine"):
        sock = raw(name)
        for bad in _bad_messages(attacker, [b"client"]):
            if bad:
                sock.send_multipart(bad)
        sock.close()
    for name, kind in (("monitor", zmq.PUSH), ("hb_pong", zmq.DEALER), ("iopub_engine", zmq.PUB)):
        sock = raw(name, kind)
        for bad in _bad_messages(attacker, [b"request", a.ident, b"client"]):
            if bad:
                sock.send_multipart(bad)
        sock.send_multipart([b"999999", b"1"])
        sock.close()

    # Everything keeps serving, and none of the bad input produced anything.
    assert client.ask("connection_request")["content"]["status"] == "ok"
    for queue, eng in (("mux", a), ("control", b), ("task", None), ("broadcast", None)):
        sent = client.apply(queue, engine=eng) if eng else client.apply(queue)
        targets = [eng] if eng else ([a, b] if queue == "broadcast" else None)
        if targets is None:
            got = None
            for candidate in (a, b):
                if not candidate.nothing(f"{queue}_engine", 0.5):
                    got = candidate
                    break
            assert got is not None
            targets = [got]
        for target in targets:
            idents, msg = target.next_request(queue)
            assert msg["msg_id"] == sent["msg_id"], "a bad message was forwarded"
            target.reply(queue, idents, msg)
        for _ in targets:
            assert client.reply(queue)["parent_header"]["msg_id"] == sent["msg_id"]
    assert client.nothing("registration", 0.05)
    assert a.nothing("mux_engine", 0.01) and b.nothing("control_engine", 0.01)
    recs = client.ask("db_request", {"query": {}, "keys": ["msg_type"]})["content"]["records"]
    assert {r["msg_type"] for r in recs} == {"apply_request"}
    assert len({r["msg_id"] for r in recs}) == 4
    note = client.ask("connection_request")["content"]["engines"]
    assert set(note) == {str(a.id), str(b.id)}  # no forged pong or death


# ------------------------------------------------------------------ no numpy


def test_controller_never_imports_numpy_or_cloudpickle(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys

            class _Forbid:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in ("numpy", "cloudpickle"):
                        raise ImportError(f"the controller must not import {name}")
                    return None

            sys.meta_path.insert(0, _Forbid())
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)])
    check = subprocess.run(
        [sys.executable, "-c", "import numpy"], env=env, capture_output=True, text=True
    )
    assert "must not import numpy" in check.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.plugins.parallel.controller",
            "--profile",
            "nonumpy",
            "--cluster-id",
            "nn",
            "--db",
            "sqlite",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        info = read_cluster_file(ready["cluster_file"])
        client = FakeClient(info)
        eng = FakeEngine(info)
        eng.register()
        # pickle protocol 5 frames as a client would send them: opaque bytes to the controller
        pickled = [b"\x80\x05\x95\x10\x00numpy.core.multiarray", os.urandom(4096)]
        sent = client.apply(buffers=pickled)
        idents, got = eng.next_request()
        assert [bytes(b) for b in got["buffers"]] == pickled
        eng.reply("task", idents, got, buffers=pickled[::-1])
        assert [bytes(b) for b in client.reply()["buffers"]] == pickled[::-1]
        for _ in range(200):  # the hub records the reply asynchronously (monitor copy)
            res = client.ask("result_request", {"msg_ids": [sent["msg_id"]]})
            if res["content"]["results"][sent["msg_id"]]["status"] == "completed":
                break
        assert [bytes(b) for b in res["buffers"]] == pickled[::-1]
        client.ask("shutdown_request")
        idents, msg = eng.next_request("control")
        eng.reply("control", idents, msg)
        assert proc.wait(20) == 0, proc.stderr.read().decode() if proc.stderr else ""
        client.close()
        eng.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")


@pytest.mark.parametrize("queue", ["mux", "control"])
def test_an_engine_that_leaves_politely_still_delivers_its_last_replies(
    cluster: Cluster, queue: str
) -> None:
    """An engine asked to shut down answers on its queue connection, then unregisters on
    another: the hub's notice can reach the queue first. The queue must still pass the
    engine's reply on, not answer "engine died" for work the engine did (a
    `shutdown_request` to an engine by id failed with EngineError in CI)."""
    (engine,), client = engines_and_client(cluster, 1)
    msg_type = "apply_request" if queue == "mux" else "shutdown_request"
    sent = client.send(queue, msg_type, engine=engine)
    idents, got = engine.next_request(queue)
    engine.session.send(
        engine.socks["registration"],
        "unregistration_request",
        {"id": engine.id},
        dest=HUB,
        run=engine.run,
    )
    note = client.notification()  # the queue subscribes to the same feed
    assert note["msg_type"] == "unregistration_notification"
    assert note["content"]["reason"] == "shutdown"
    engine.reply(queue, idents, got)
    reply = client.reply(queue)
    assert reply["parent_header"]["msg_id"] == sent["msg_id"]
    assert reply["content"]["status"] == "ok", reply["content"]
