"""The parallel layer on the bus: a real controller and engines, observed through the
notification center (client side, and inside an engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import JsonLines
from observers import NoticeLog
from parallel_client_harness import LiveCluster

from corral.notification import shared_center
from corral.plugins.parallel import events
from corral.plugins.parallel.client import interactive

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveCluster]:
    cluster = LiveCluster(tmp_path / "corral", n=1, threads=True)
    yield cluster
    cluster.stop()


@pytest.fixture
def recorder() -> Iterator[NoticeLog]:
    rec = NoticeLog()
    for kind in events.PARALLEL_TYPES:
        shared_center.add_observer(rec, kind)
    yield rec
    for kind in events.PARALLEL_TYPES:
        shared_center.remove_observer(rec, kind)


def chatty(x: int) -> int:
    print(f"working on {x}")
    return x + 1


def failing() -> None:
    raise ValueError("no good")


def engine_pid() -> int:
    return os.getpid()


def test_a_client_side_observer_sees_engines_tasks_and_output(
    live: LiveCluster, recorder: NoticeLog
) -> None:
    rc = live.client
    # An engine joins: registered.
    live.add_engine()
    joined = recorder.first(events.ENGINE_REGISTERED)
    new_id = joined["engine_id"]
    assert isinstance(new_id, int) and isinstance(joined["uuid"], str)
    assert rc.wait_for_engines(2, timeout=WAIT)

    # A task that prints: submitted, its output, completed ok (in that order).
    result = rc[new_id].apply_async(chatty, 41)
    assert result.get(timeout=WAIT) == 42
    msg_id = result.msg_ids[0]
    done = recorder.first(events.TASK_COMPLETED, lambda i: i["msg_id"] == msg_id)
    assert done["status"] == "ok" and done["engine_id"] == new_id
    out = recorder.first(events.OUTPUT, lambda i: i["msg_id"] == msg_id)
    assert out["msg_type"] == "stream" and "working on 41" in out["content"]["text"]
    assert out["engine_id"] == new_id
    kinds = [kind for kind, _, _ in recorder.about(msg_id)]
    assert kinds[0] == events.TASK_SUBMITTED
    assert kinds.index(events.TASK_SUBMITTED) < kinds.index(events.TASK_COMPLETED)
    submitted = recorder.first(events.TASK_SUBMITTED, lambda i: msg_id in i["msg_ids"])
    assert submitted["msg_type"] == "apply_request" and submitted["channel"] == "mux"

    # A load-balanced task that fails: completed with an error status.
    failed = rc.load_balanced_view().apply_async(failing)
    with pytest.raises(Exception, match="no good"):
        failed.get(timeout=WAIT)
    bad = recorder.first(events.TASK_COMPLETED, lambda i: i["msg_id"] == failed.msg_ids[0])
    assert bad["status"] == "error"
    assert recorder.first(events.TASK_SUBMITTED, lambda i: i["channel"] == "task")

    # The engine is killed: died (not a polite unregistration).
    pid = rc[new_id].apply_sync(engine_pid)
    os.kill(pid, signal.SIGKILL)
    died = recorder.first(events.ENGINE_DIED, lambda i: i["engine_id"] == new_id)
    assert died["reason"] in ("heartbeat", "exited")
    assert died["uuid"] == joined["uuid"]
    assert not [s for s in recorder.seen if s[0] == events.ENGINE_UNREGISTERED]
    # Engines come and go in the hub, which posted them (re-posted here by name, once);
    # so are the engines' task starts, which the hub relays while followed (as here: the
    # recorder observes them); tasks submitted, completed and output are the client's.
    hub_kinds = {*events.ENGINE_TYPES, *events.TASK_FEED_TYPES}
    assert {s for k, s, _ in recorder.seen if k in hub_kinds} == {"hub"}
    assert {id(s) for k, s, _ in recorder.seen if k not in hub_kinds} == {id(rc)}
    assert [k for k, _, i in recorder.seen if k == events.ENGINE_DIED] == [events.ENGINE_DIED]


@interactive  # its globals are the engine's namespace
def start_recording() -> None:
    """Engine side: record the engine's task notifications in ``task_log``."""
    from corral.notification import shared_center
    from corral.plugins.parallel import events

    log: list[tuple[str, str, str, int]] = []
    globals()["task_log"] = log

    def record(type: str, sender: Any, /, **info: Any) -> None:  # noqa: A002
        log.append((type, info["msg_id"], info["msg_type"], info["engine_id"]))

    for kind in (events.TASK_STARTED, events.TASK_FINISHED):
        shared_center.add_observer(record, kind)


def test_an_engine_posts_each_task_started_and_finished(live: LiveCluster) -> None:
    rc = live.client
    view = rc[0]
    view.apply_sync(start_recording)
    results = [view.apply_async(chatty, i) for i in range(3)]
    assert [r.get(timeout=WAIT) for r in results] == [1, 2, 3]
    log = view.pull("task_log", block=True)
    by_id = {msg_id: [] for msg_id in (r.msg_ids[0] for r in results)}
    for kind, msg_id, msg_type, engine_id in log:
        if msg_id in by_id:
            by_id[msg_id].append(kind)
            assert msg_type == "apply_request" and engine_id == 0
    for kinds in by_id.values():
        assert kinds == [events.TASK_STARTED, events.TASK_FINISHED]


WATCHER = """
import json, sys
from corral.notification import shared_center
from corral.plugins.parallel import events
from corral.plugins.parallel.bus import watch_cluster

def show(type, sender, /, **info):
    print(json.dumps([type, sender, info]), flush=True)

for kind in events.PARALLEL_TYPES:
    shared_center.add_observer(show, kind)
with watch_cluster(sys.argv[1]):
    print(json.dumps(["ready", None, {}]), flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_an_observer_in_another_process_hears_the_hub_post_an_engine_death(
    live: LiveCluster,
) -> None:
    """Not a client: a process that only watches the cluster's feed. The death is the
    hub's (the sender), seen once, after the same engine's registration."""
    env = dict(live.env)
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(live.cluster_file)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = JsonLines(watcher)
        assert lines.wait_for(lambda line: line[0] == "ready")
        # The subscription may take a moment: engines join until the watcher hears one.
        rc = live.client
        joined, added = None, 0
        while added < 5:
            live.add_engine()
            added += 1
            joined = lines.wait_for(lambda line: line[0] == events.ENGINE_REGISTERED, 10)
            if joined:
                break
        assert joined, "the watcher never heard an engine register"
        _, sender, info = joined
        engine_id = info["engine_id"]
        assert sender == "hub" and isinstance(info["uuid"], str)
        assert rc.wait_for_engines(1 + added, timeout=WAIT)
        pid = rc[engine_id].apply_sync(engine_pid)
        os.kill(pid, signal.SIGKILL)
        died = lines.wait_for(
            lambda line: line[0] == events.ENGINE_DIED and line[2]["engine_id"] == engine_id
        )
        assert died is not None and died[1] == "hub"
        assert died[2]["uuid"] == info["uuid"] and died[2]["reason"] in ("heartbeat", "exited")
        # Only the hub's engine notifications cross: the client's task ones stay with it.
        assert {line[0] for line in lines.seen} <= {"ready", *events.ENGINE_TYPES}
    finally:
        if watcher.stdin is not None:
            watcher.stdin.close()
        assert watcher.wait(WAIT) == 0
