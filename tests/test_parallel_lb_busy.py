"""Load-balanced tasks and engines busy with direct work (controller/queues.py, "The direct
feed"): a task goes to an engine free of direct work while there is one, so it neither
waits behind a long direct task nor deadlocks a direct task that waits for it.

Each test holds engine 0 in a direct task that blocks on reading a FIFO (an event, not a
sleep) until the test writes to it, and checks which engine ran what while it is held.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import until
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.controller.loadindex import LoadIndex

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # engines cannot import tests

# -- the index ---------------------------------------------------------------------------


def test_engines_set_aside_are_chosen_only_when_no_other_is_left() -> None:
    index = LoadIndex()
    for engine in (b"a", b"b", b"c"):
        index[engine] = 0
    index.set_aside(b"a", True)
    index.check()
    assert index.least(2) == b"b"
    index[b"b"] += 2
    index[b"a"] += 1  # a set-aside engine keeps counting its tasks
    assert index.least(2) == b"c"
    index[b"c"] += 2
    assert index.least(2) is None  # the free engines are full: wait, not the busy one
    assert index.least(0) in (b"b", b"c")
    assert (len(index), index[b"a"], index.get(b"a"), b"a" in index) == (3, 1, 1, True)
    index.set_aside(b"b", True)
    index.set_aside(b"c", True)
    assert index.least(2) == b"a"  # every engine busy: the least loaded of them
    index.set_aside(b"b", False)
    assert (index.least(0), index[b"b"], index.aside, index.others) == (b"b", 2, 2, 1)
    del index[b"a"]
    index.check()
    assert sorted(index) == [b"b", b"c"]


# -- live clusters -----------------------------------------------------------------------


def hold(started: str, fifo: str) -> int:
    """Say it started, then block until someone writes to ``fifo``."""
    import os

    open(started, "w").close()
    with open(fifo) as f:
        f.read()
    return os.getpid()


def nested_map(cluster_file: str, n: int) -> list[int]:
    """From inside an engine: ``n`` load-balanced subtasks, waited for."""
    import os

    from corral.plugins.parallel.client import Client

    rc = Client(connection_file=cluster_file)
    try:
        # bounded: a subtask queued behind this task fails the test instead of hanging it
        return rc.load_balanced_view().map_async(lambda _: os.getpid(), range(n)).get(timeout=30)
    finally:
        rc.close()


def release(fifo: Path) -> None:
    with open(fifo, "w") as f:
        f.write("go")


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def live(request: Any, tmp_path: Path) -> Any:
    cluster = LiveCluster(tmp_path / "corral", n=2, threads=request.param)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_lb_tasks_avoid_an_engine_busy_with_a_direct_task(live: Any, tmp_path: Path) -> None:
    rc = live.client
    started, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    busy = rc[0].apply_async(hold, str(started), str(fifo))  # through the mux
    until(lambda: started.exists() or busy.ready())
    assert not busy.ready(), busy.get()
    lview = rc.load_balanced_view()
    results = [lview.apply_async(os.getpid) for _ in range(6)]
    # All of them finish while engine 0 is still held: none was queued behind it.
    pids = [r.get(timeout=60) for r in results]
    assert not busy.ready()
    assert set(pids) == {rc.engines[1].pid}
    assert {r.engine_id for r in results} == {1}
    release(fifo)
    first = rc.engines[0].pid
    assert busy.get(timeout=60) == first
    # Free again, engine 0 takes load-balanced tasks as before.
    until(lambda: lview.apply_async(os.getpid).get(timeout=60) == first)


def test_a_direct_task_waiting_for_lb_subtasks_does_not_deadlock(live: Any) -> None:
    rc = live.client
    parent = rc[0].apply_async(nested_map, str(live.cluster_file), 3)
    assert parent.get(timeout=60) == [rc.engines[1].pid] * 3


def test_a_blocking_call_waiting_for_lb_subtasks_does_not_deadlock(live: Any) -> None:
    # apply_sync on an engine of this host goes over its Unix socket, past the mux: the
    # subtasks themselves say which engine they come from (``avoid``).
    rc = live.client
    assert rc[0].apply_sync(nested_map, str(live.cluster_file), 3) == [rc.engines[1].pid] * 3


def test_an_lb_task_waiting_for_lb_subtasks_does_not_deadlock(live: Any) -> None:
    rc = live.client
    parent = rc.load_balanced_view().apply_async(nested_map, str(live.cluster_file), 4)
    subtasks = parent.get(timeout=60)
    (other,) = {e.pid for e in rc.engines.values()} - {rc.engines[parent.engine_id].pid}
    assert subtasks == [other] * 4


def test_a_broadcast_counts_as_direct_work(live: Any, tmp_path: Path) -> None:
    rc = live.client
    started, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    busy = rc.broadcast_view(targets=[0]).apply_async(hold, str(started), str(fifo))
    until(started.exists)
    lview = rc.load_balanced_view()
    results = [lview.apply_async(os.getpid) for _ in range(4)]
    assert {r.get(timeout=60) for r in results} == {rc.engines[1].pid}
    assert not busy.ready()
    release(fifo)
    busy.get(timeout=60)


def test_a_task_may_still_go_to_busy_engines_when_every_one_is(live: Any, tmp_path: Path) -> None:
    rc = live.client
    starts = [tmp_path / "s0", tmp_path / "s1"]
    fifos = [tmp_path / "f0", tmp_path / "f1"]
    for fifo in fifos:
        os.mkfifo(fifo)
    busy = [rc[i].apply_async(hold, str(starts[i]), str(fifos[i])) for i in (0, 1)]
    until(lambda: all(s.exists() for s in starts))
    # Both engines busy: the task still goes to one of them, and runs once that
    # engine's direct task is done.
    task = rc.load_balanced_view().apply_async(os.getpid)
    for fifo in fifos:
        release(fifo)
    assert task.get(timeout=60) in {e.pid for e in rc.engines.values()}
    for b in busy:
        b.get(timeout=60)
