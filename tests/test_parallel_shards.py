"""Two controllers aggregated behind one client (corral/plugins/parallel/shards.py), real
processes: a map is served by both controllers' engines, work goes to the controller with
idle engines while the other's are busy, and every controller's records are found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import psutil
import pytest
from helpers import wait_for_file

from corral.core.config import ConfigError
from corral.plugins.parallel.aggregate import AggregateClient
from corral.plugins.parallel.client import Client, CompositeError, RemoteError, interactive
from corral.plugins.parallel.cluster import Cluster
from corral.plugins.parallel.cluster_manager import ClusterManager
from corral.plugins.parallel.shards import Shards

REPO = Path(__file__).resolve().parents[1]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def _corral_dir(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))


def where(*_: Any) -> int:
    import os

    return os.getpid()


def nap(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_cluster_with_several_controllers_is_an_aggregate(monkeypatch: Any) -> None:
    assert type(Cluster(n=2)) is Cluster
    assert type(Cluster(2, controllers=1)) is Cluster
    two = Cluster(4, controllers=2, hb_period=0.5)
    assert isinstance(two, Shards) and two.shares == [2, 2]
    assert {c.hb_period for c in two.clusters} == {0.5}
    assert len({c.cluster_id for c in two.clusters}) == 2
    monkeypatch.setenv("CORRAL_CLUSTER_CONTROLLERS", "3")
    three = Cluster(n=7)
    assert isinstance(three, Shards) and three.shares == [3, 2, 2]
    with pytest.raises(ConfigError, match="controllers"):
        Cluster(n=2, controllers=0)
    with pytest.raises(ValueError, match="cannot give each"):
        Cluster(n=2, controllers=3)


def corral(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env={**os.environ, "CORRAL_DIR": str(tmp_path), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_command_line_starts_lists_connects_and_stops_an_aggregate(tmp_path: Path) -> None:
    # [cluster] controllers from the profile's corral.ini.
    (tmp_path / "profile_default").mkdir(mode=0o700)
    (tmp_path / "profile_default" / "corral.ini").write_text("[cluster]\ncontrollers = 2\n")
    started = corral(tmp_path, "cluster", "start", "--daemon", "-n", "3", "--cluster-id", "ag")
    assert started.returncode == 0, started.stderr + started.stdout
    security = tmp_path / "profile_default" / "security"
    run = tmp_path / "profile_default" / "run"
    record = json.loads((run / "cluster-ag.json").read_text())
    pids = [record["manager_pid"], *record["controllers"], *record["engines"]]
    try:
        assert record["members"] == ["ag-0", "ag-1"] and len(record["engines"]) == 3
        assert len(set(record["controllers"])) == 2
        aggregate = security / "cluster-ag.json"
        assert aggregate.stat().st_mode & 0o077 == 0  # owner-only, like every keyed file
        data = json.loads(aggregate.read_text())
        members = [json.loads((security / f"cluster-ag-{k}.json").read_text()) for k in (0, 1)]
        assert [m["key"] for m in data["controllers"]] == [m["key"] for m in members]

        listed = corral(tmp_path, "cluster", "list")
        rows = [line for line in listed.stdout.splitlines()[1:] if line.strip()]
        assert len(rows) == 1 and rows[0].split()[:2] == ["ag", "3"]  # members not listed
        assert "running (2 controllers)" in rows[0]
        status = corral(tmp_path, "cluster", "status")
        assert status.returncode == 0, status.stderr
        assert "engines up: 3  ids: [0, 1, 2]" in status.stdout
        engines = corral(tmp_path, "cluster", "engines")
        listed_pids = {int(line.split()[-1]) for line in engines.stdout.splitlines()[1:]}
        assert listed_pids == set(record["engines"])

        # Any client of the profile connects to both controllers, by the aggregate file
        # or by the profile (the aggregate, not one of its members, is what is found).
        for client in (Client(), Client(str(aggregate)), Client(cluster_id="ag")):
            try:
                assert isinstance(client, AggregateClient)
                assert client.ids == [0, 1, 2]
                ran = client[:].apply_sync(where)
                assert sorted(ran) == sorted(record["engines"])
            finally:
                client.close()
        # The Python API finds it too: one handle on every member, one manager entry.
        handle = Cluster.from_profile()
        assert isinstance(handle, Shards) and handle.is_running and handle.n == 3
        assert [c.cluster_id for c in handle.clusters] == ["ag-0", "ag-1"]
        assert type(Cluster.from_file(security / "cluster-ag-1.json")) is Cluster
        aggregate_client = handle.connect_client()
        try:
            assert aggregate_client.ids == [0, 1, 2]
        finally:
            aggregate_client.close()
        assert list(ClusterManager().load_clusters()) == ["default:ag"]
        # One controller's own file is still a cluster of one controller.
        single = Client(connection_file=security / "cluster-ag-1.json")
        try:
            assert type(single) is Client and single.ids == [0]
        finally:
            single.close()
    finally:
        stopped = corral(tmp_path, "cluster", "stop")  # the only cluster: the aggregate
    assert stopped.returncode == 0, stopped.stderr
    assert "cluster ag stopped (2 controllers)" in stopped.stdout
    procs = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not list(security.glob("cluster-*.json")) and not list(run.glob("*.json"))


def test_an_aggregate_whose_manager_died_is_stopped_member_by_member(tmp_path: Path) -> None:
    started = corral(
        tmp_path, "cluster", "start", "--daemon", "--controllers", "2", "-n", "2",
        "--cluster-id", "orphan",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + started.stdout
    run = tmp_path / "profile_default" / "run"
    record = json.loads((run / "cluster-orphan.json").read_text())
    manager = psutil.Process(record["manager_pid"])
    children = manager.children(recursive=True)
    # The engines would follow a killed manager by their parent watch; keep the
    # controllers and engines alive by stopping the manager only (SIGSTOP), then
    # pretend it is gone.
    manager.suspend()
    try:
        record["manager_pid"] = None
        (run / "cluster-orphan.json").write_text(json.dumps(record))
        stopped = corral(tmp_path, "cluster", "stop", "--cluster-id", "orphan")
        assert stopped.returncode == 0, stopped.stderr
        assert "cluster orphan stopped (2 controllers)" in stopped.stdout
        workers = [p for p in children if p.pid in {*record["controllers"], *record["engines"]}]
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not list((tmp_path / "profile_default" / "security").glob("cluster-*.json"))
    finally:
        manager.resume()
        manager.terminate()
        manager.wait(30)


def test_two_controllers_serve_one_client() -> None:
    shards = Cluster(2, controllers=2, profile="shards", hb_period=0.2, hb_misses=5)
    assert isinstance(shards, Shards)
    with shards as client:
        shards._write_record()  # as `corral cluster start` does: stop removes it
        assert len(client.ids) == 2
        engine_pids = [set(c.direct_view().apply_sync(where)) for c in client.clients]
        assert engine_pids[0] and engine_pids[1] and not engine_pids[0] & engine_pids[1]
        # Direct views over both controllers' engines, by aggregate ids (controller k's
        # engine i is i * 2 + k): one value per engine, in target order.
        assert client.ids == [0, 1]
        everywhere = client[:]
        assert everywhere.apply_sync(where) == [*engine_pids[0], *engine_pids[1]]
        assert client[1].apply_sync(where) in engine_pids[1]
        client[0]["z"], client[1]["z"] = "a", "b"
        assert everywhere["z"] == ["a", "b"]
        assert client[[1, 0]].pull("z", block=True) == ["b", "a"]
        everywhere.push({"x": 3}, block=True)
        everywhere.execute("w = z * x", block=True)
        assert everywhere.pull(["w", "x"], block=True) == [["aaa", 3], ["bbb", 3]]
        with pytest.raises(Exception, match="ZeroDivisionError"):
            everywhere.execute("1 / 0", block=True)
        # Every engine's failure, named by its aggregate id (the first controller's
        # alone was raised, naming engines by that controller's own ids).
        with pytest.raises(CompositeError) as failed:
            everywhere.apply_sync(divide, 1, 0)
        assert [e.engine_id for e in failed.value.errors] == [0, 1]
        assert [info["engine_id"] for *_, info in failed.value.elist] == [0, 1]
        outcomes = client[[1, 0]].apply_async(divide, 2, 0).get(timeout=30, return_exceptions=True)
        assert [(type(o).__name__, o.engine_id) for o in outcomes] == [
            ("RemoteError", 1),
            ("RemoteError", 0),
        ]
        with pytest.raises(RemoteError) as one:
            client[[1]].apply_sync(divide, 1, 0)
        assert one.value.engine_id == 1
        # Sent zero-copy: the arrays may change once every member has sent its part.
        block = np.full(2**20, 2.0)
        pushed = everywhere.push({"block": block}, block=False)
        assert pushed.wait_for_send(60) and pushed.sent
        block[:] = 0.0
        pushed.get(timeout=60)
        assert everywhere.apply_sync(block_sum) == [2.0 * 2**20] * 2
        everywhere.scatter("part", list(range(5)), block=True)
        assert client[0]["part"] == [0, 1, 2] and client[1]["part"] == [3, 4]
        assert everywhere.gather("part", block=True) == [0, 1, 2, 3, 4]
        assert client.direct_view([0]).apply_sync(where) == [*engine_pids[0]]
        with pytest.raises(ValueError, match="no engine with id"):
            client.direct_view([0, 7]).apply_async(where)
        assert everywhere.map_sync(pow, range(7), [2] * 7) == [i**2 for i in range(7)]
        assert client[[1, 0]].map_sync(abs, [-1]) == [1]  # fewer items than engines
        broadcast = client.broadcast_view()
        assert broadcast.apply_sync(where) == [*engine_pids[0], *engine_pids[1]]
        broadcast.push({"z": "c"}, block=True)
        assert everywhere["z"] == ["c", "c"]
        with client.executor() as pool:
            assert list(pool.map(abs, range(-30, 0))) == list(range(30, 0, -1))
            assert pool.submit(where).result(30) in engine_pids[0] | engine_pids[1]
        view = client.load_balanced_view()
        # A map served by both controllers' engines.
        ran = view.map_sync(where, range(40))
        assert set(ran) == engine_pids[0] | engine_pids[1]
        # Controller 0's engine busy with a long task: new work goes to controller 1's.
        long = view.apply_async(nap, 3.0)
        start = time.monotonic()
        quick = [view.apply_sync(where) for _ in range(10)]
        assert time.monotonic() - start < 2.5  # none waited behind the long task
        long_pid = long.get(30)
        assert long_pid not in quick
        other = engine_pids[1] if long_pid in engine_pids[0] else engine_pids[0]
        assert set(quick) == other
        # Each controller's database holds its own tasks; the query merges them.
        records = client.db_query({"msg_id": {"$ne": ""}}, ["msg_id", "engine_uuid"])
        assert len(records) >= 40 + 1 + 10
        assert os.getpid() not in ran
        # A shared backlog: with room for one task per engine, the rest wait in the view
        # and go to whichever controller frees an engine first.
        pulling = client.load_balanced_view(window=1)
        long = pulling.apply_async(nap, 3.0)
        start = time.monotonic()
        shorts = pulling.map_async(nap, [0.01] * 20)
        assert any(getattr(r, "sent", 0) is None for r in shorts)  # held in the view, unsent
        served = [r.get(30) for r in shorts]
        assert time.monotonic() - start < 2.5  # none waited for the busy controller
        long_pid = long.get(30)
        assert long_pid not in served
        # Both controllers pull from the shared backlog when both are free.
        both = pulling.map_sync(nap, [0.05] * 20)
        assert set(both) == engine_pids[0] | engine_pids[1]
        pulling.close()
    profile = shards.clusters[0].profile_dir
    assert not list((profile / "run").glob("cluster-*.json"))
    assert not list((profile / "security").glob("cluster-*.json"))


@interactive
def block_sum() -> float:
    return float(block.sum())  # type: ignore[name-defined]  # noqa: F821


def divide(a: int, b: int) -> float:
    return a / b


def record_run(i: int, seconds: float = 0.01) -> int:
    import os
    import sys
    import time

    time.sleep(seconds)
    sys.__dict__.setdefault("_corral_test_runs", []).append(i)
    return os.getpid()


def runs() -> list[int]:
    import sys

    return list(sys.__dict__.get("_corral_test_runs", []))


def nap_once_started(started: str, seconds: float) -> int:
    open(started, "w").close()
    return nap(seconds)


def test_tasks_queued_behind_a_long_task_move_to_an_idle_controller_once(
    tmp_path: Path,
) -> None:
    shards = Cluster(2, controllers=2, profile="moves", hb_period=0.2, hb_misses=5)
    with shards as client:
        busy_pid, idle_pid = client[:].apply_sync(where)  # controller 0's, controller 1's
        # The engine says which tasks it had started when asked to abort them: the
        # running one is listed (it will finish), the queued one is not (never runs).
        own = client.clients[0].load_balanced_view()
        started = str(tmp_path / "started")
        running = own.apply_async(nap_once_started, started, 1.0)
        queued = own.apply_async(nap, 0)
        # Started on the engine, not merely given to it (queue_status's "running"): an
        # abort that overtakes the start would rightly report nothing started.
        wait_for_file(started)
        ids = [running.msg_ids[0], queued.msg_ids[0]]
        replies = client.clients[0]._control("abort_request", {"msg_ids": ids}, [0])
        assert replies[0].result(10).content["started"] == [running.msg_ids[0]]
        assert running.get(10) == busy_pid
        with pytest.raises(Exception, match="aborted"):
            queued.get(10)

        # Default window: half the map is sent to controller 0, behind a long task.
        view = client.load_balanced_view()
        long = view.apply_async(nap, 4.0)
        start = time.monotonic()
        shorts = view.map_async(record_run, range(40))
        served = [r.get(30) for r in shorts]
        assert time.monotonic() - start < 3.0  # none waited for the long task
        assert long.get(30) == busy_pid and set(served) == {idle_pid}
        assert view.moved > 0 and sum(r.moves for r in shorts) == view.moved
        # Exactly once: every task ran on one engine, once; the copies aborted at the
        # busy controller were answered "aborted" when its engine got to them.
        ran = [i for engine in client[:].apply_sync(runs) for i in engine]
        assert sorted(ran) == list(range(40))
        # Many batches of uneven tasks: the tail of each moves tasks, some of them just
        # as they start (the engines then report them started, and they stay). Still
        # every task runs once.
        uneven = client.load_balanced_view(window=4)
        durations = [0.0, 0.03, 0.001, 0.02, 0.0, 0.01, 0.025, 0.002]
        for batch in range(25):
            ids = range(100 + batch * 8, 108 + batch * 8)
            served = uneven.map_sync(record_run, ids, durations[batch % 8 :] + durations)
            assert len(served) == 8
        ran = [i for engine in client[:].apply_sync(runs) for i in engine]
        assert sorted(ran) == [*range(40), *range(100, 300)]
        assert uneven.moved > 0  # (a run here: 28 moved, 3 found started and stayed)
        uneven.close()
        view.close()
