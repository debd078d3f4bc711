"""Two controllers aggregated behind one client (corral/plugins/parallel/shards.py), real
processes: a map is served by both controllers' engines, work goes to the controller with
idle engines while the other's are busy, and every controller's records are found."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from corral.core.config import ConfigError
from corral.plugins.parallel.cluster import Cluster
from corral.plugins.parallel.shards import Shards

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


def test_the_command_line_refuses_an_aggregate(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_DIR": str(tmp_path), "CORRAL_CLUSTER_CONTROLLERS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "corral", "cluster", "start", "-n", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "controllers above 1 is for the Python API" in done.stderr


def test_two_controllers_serve_one_client() -> None:
    shards = Cluster(2, controllers=2, profile="shards", hb_period=0.2, hb_misses=5)
    assert isinstance(shards, Shards)
    with shards as client:
        assert len(client.ids) == 2
        engine_pids = [set(c.direct_view().apply_sync(where)) for c in client.clients]
        assert engine_pids[0] and engine_pids[1] and not engine_pids[0] & engine_pids[1]
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
