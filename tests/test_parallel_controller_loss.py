"""The controller may die: clients fail at once, engines wait, a restart carries on.

Real processes throughout: a controller in processes mode (so ``kill -9`` of its process
group kills every component), two engines, and a controller started again on the same
profile and cluster id.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from helpers import TIMEOUT, until
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import Client, ControllerLost, RemoteError
from corral.plugins.parallel.controller.main import ControllerConfig, take_over

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


def wait_for_path(path: str, timeout: float = 600.0) -> str:
    """Engine side: block until ``path`` exists (the test releases the task). The
    timeout only keeps an engine from waiting forever: a test's own waits, which say
    what they waited for, come first (on a loaded CI machine a controller restart and
    reconnect took over a minute before a task's gate opened)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return path


def start_then_wait(started: str, gate: str) -> str:
    """Engine side: say it runs, then wait for the test to release it."""
    open(started, "w").close()
    return wait_for_path(gate)


def engine_pid() -> int:
    return os.getpid()


for _function in (wait_for_path, start_then_wait, engine_pid):
    _function.__module__ = "__main__"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path, threads=False, hb_period=0.2, hb_misses=5)
    yield live
    live.stop()
    for engine in live.engines:
        if engine.poll() is None:
            engine.kill()
            engine.wait(5)


def test_pending_results_fail_with_controller_lost(cluster: LiveCluster, tmp_path: Path) -> None:
    rc = cluster.client
    gate = str(tmp_path / "gate")
    lview = rc.load_balanced_view()
    running = [lview.apply_async(wait_for_path, gate) for _ in range(4)]
    direct = rc[0].apply_async(wait_for_path, gate)
    mapped = lview.map_async(wait_for_path, [gate] * 6)
    cluster.kill_controller()
    for result in [*running, direct, mapped]:
        error = result.exception(timeout=TIMEOUT)
        assert isinstance(error, ControllerLost), error
        # what the client saw: the connection closed (a dead controller, or the network)
        assert "connection to the controller" in str(error) and "reconnect()" in str(error)
    with pytest.raises(ControllerLost):
        lview.apply_sync(engine_pid)
    with pytest.raises(ControllerLost):
        rc.queue_status()
    with pytest.raises(ControllerLost):
        list(lview.imap(engine_pid, range(3)))
    assert rc.controller_lost
    open(gate, "w").close()


def test_an_idle_client_says_nothing_loud_when_its_controller_goes(
    cluster: LiveCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A script's client left open while its cluster is stopped lost nothing: no error on
    stderr (ipyparallel's says nothing either); its next call still raises the whole
    story."""
    rc = cluster.client
    assert rc[:].apply_sync(engine_pid)  # used, and nothing pending now
    with caplog.at_level("INFO", logger="corral.plugins.parallel.client"):
        cluster.kill_controller()
        until(lambda: rc.controller_lost, what="the client never noticed")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert not errors, errors
    assert any("connection to the controller" in r.getMessage() for r in caplog.records)
    with pytest.raises(ControllerLost, match="reconnect"):
        rc[:].apply_sync(engine_pid)


def test_iterating_a_map_wakes_when_the_controller_dies(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    rc = cluster.client
    gate = str(tmp_path / "gate")
    mapped = rc.load_balanced_view().map_async(wait_for_path, [gate] * 4)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        iterating = pool.submit(lambda: list(mapped))
        cluster.kill_controller()
        with pytest.raises(ControllerLost):
            iterating.result(TIMEOUT)
    open(gate, "w").close()


def test_engines_outlive_the_controller_and_rejoin_a_restart(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    rc = cluster.client
    ids = rc.ids
    pids = rc[:].apply_sync(engine_pid)
    rc[:].push({"kept": "namespace"}, block=True)
    gate = str(tmp_path / "gate")
    started = str(tmp_path / "started")
    slow = rc.load_balanced_view().apply_async(start_then_wait, started, gate)
    # Wait until it runs, so that it finishes while no controller is there.
    wait_for_path(started, TIMEOUT)
    msg_id = slow.msg_ids[0]
    cluster.kill_controller()
    assert isinstance(slow.exception(timeout=TIMEOUT), ControllerLost)
    open(gate, "w").close()  # the task finishes with nobody to tell
    cluster.restart_controller()
    rc.reconnect(timeout=TIMEOUT)
    assert not rc.controller_lost
    # reconnect() returns with the engines it knew back (a view of all was empty before)
    assert rc.ids == ids
    assert rc[:].apply_sync(engine_pid) == pids
    assert rc[:].pull("kept", block=True) == ["namespace"] * len(ids)
    # The reply the engine held reaches the new controller's database.
    assert rc.get_result(msg_id).get(timeout=TIMEOUT) == gate
    assert rc.load_balanced_view().map_sync(abs, range(-5, 0)) == [5, 4, 3, 2, 1]


def test_a_new_client_of_a_restarted_controller_sees_the_old_engines(
    cluster: LiveCluster,
) -> None:
    ids = cluster.client.ids
    cluster.kill_controller()
    cluster.restart_controller()
    fresh: Client = cluster.connect()
    assert fresh.wait_for_engines(len(ids), timeout=TIMEOUT) == ids
    assert fresh[:].apply_sync(engine_pid) == [fresh.engines[i].pid for i in fresh.ids]


def test_a_new_client_of_a_dead_controller_is_told_at_once(cluster: LiveCluster) -> None:
    """A cluster file left by a controller killed with ``kill -9`` (no clean stop removed
    it): a new client waited its whole timeout for a handshake nobody could give, then
    for a reply (15 s with the default ``timeout=10``), and said only "the hub did not
    answer connection_request". Nothing listens at those ports, so it knows at once."""
    cluster.kill_controller()
    started = time.monotonic()
    with pytest.raises(ControllerLost, match="no controller .* is running: nothing listens"):
        cluster.connect(timeout=10)
    assert time.monotonic() - started < 5
    cluster.restart_controller()  # the same file, taken over: a client connects again
    assert cluster.connect(timeout=TIMEOUT).wait_for_engines(2, timeout=TIMEOUT)


def test_a_running_controller_is_not_taken_over(cluster: LiveCluster) -> None:
    config = ControllerConfig(profile="client", cluster_id="c1")
    with pytest.raises(RuntimeError, match="already running"):
        take_over(config, cluster.cluster_file)
    assert cluster.client.load_balanced_view().apply_sync(abs, -1) == 1


def test_engines_exit_when_no_controller_comes_back(tmp_path: Path) -> None:
    live = LiveCluster(
        tmp_path,
        threads=False,
        hb_period=0.1,
        hb_misses=2,
        engine_env={"CORRAL_CONTROLLER_GRACE": "0.5"},
    )
    try:
        live.kill_controller()
        assert live.cluster_file.exists(), "kept for a restart while engines wait"
        for engine in live.engines:
            assert engine.wait(TIMEOUT) == 1
        assert not live.cluster_file.exists(), "no stale file once nobody waits"
    finally:
        live.stop()


def test_tasks_the_dead_scheduler_never_gave_out_are_unknown_after_a_restart(
    tmp_path: Path,
) -> None:
    live = LiveCluster(tmp_path, threads=False, hb_period=0.2, controller_args=("--hwm", "1"))
    try:
        rc = live.client
        gate = str(tmp_path / "gate")
        started = [str(tmp_path / f"started-{i}") for i in range(2)]
        lview = rc.load_balanced_view()
        running = [lview.apply_async(start_then_wait, path, gate) for path in started]
        for path in started:
            wait_for_path(path, TIMEOUT)  # one task on each engine, which holds no more
        waiting = [lview.apply_async(wait_for_path, gate) for _ in range(3)]
        began = time.monotonic()

        def phase(name: str) -> None:
            """Shown with a failure: where the time went (CI once spent over a minute
            between the kill and the gate, and the engines' own wait ran out)."""
            print(f"{time.monotonic() - began:7.2f} s  {name}")

        live.kill_controller()
        phase("controller killed")
        live.restart_controller()
        phase("controller restarted")
        rc.reconnect(timeout=TIMEOUT)
        phase("client reconnected")
        rc.wait_for_engines(2, timeout=TIMEOUT)
        phase("engines re-registered")
        for result in waiting:  # never left the dead scheduler: unknown, not pending
            with pytest.raises(RemoteError) as info:
                rc.get_result(result.msg_ids[0]).get(timeout=TIMEOUT)
            assert "submit it again" in str(info.value)
            phase("a waiting task answered as unknown")
        open(gate, "w").close()
        for result in running:
            assert rc.get_result(result.msg_ids[0]).get(timeout=TIMEOUT) == gate
    finally:
        live.stop()
