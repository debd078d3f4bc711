"""Aggregated controllers answer the Cluster API, ipyparallel's spellings included.

A profile with ``[cluster] controllers = 2`` turns ``Cluster(...)`` into a
:class:`~corral.plugins.parallel.shards.Shards`. Scripts written for one controller (and
ipyparallel scripts) call ``start_controller``, ``start_engines``, ``stop_engines``,
``signal_engines``, ``restart_engines``, their ``_sync`` twins and ``async with``; each
of those must work on the aggregate, with engines named by aggregate ids. Real
controllers and engines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import TIMEOUT

from corral.plugins.parallel.aggregate import AggregateClient
from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.shards import Shards

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _corral_dir(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))


def pid() -> int:
    return os.getpid()


def pids_by_engine(rc: AggregateClient) -> dict[int, int]:
    return {i: rc[i].apply_sync(pid) for i in rc.ids}


def test_an_ipyparallel_async_script_runs_on_two_controllers() -> None:
    async def script() -> tuple[list[int], list[int], list[int], bool]:
        cluster = Cluster(n=4, controllers=2)
        assert isinstance(cluster, Shards)
        await cluster.start_controller()
        try:
            engine_set = await cluster.start_engines(4)
            rc = await cluster.connect_client()
            rc.wait_for_engines(4, timeout=TIMEOUT)
            ids = rc.ids
            per_controller = [len(member.ids) for member in rc.clients]
            stopped = await cluster.stop_engines(engine_set)
            left = rc.ids
            rc.close()
        finally:
            await cluster.stop_cluster()
        return ids, per_controller, list(stopped) + left, cluster.is_running

    ids, per_controller, stopped_then_left, running = asyncio.run(script())
    assert ids == [0, 1, 2, 3]
    assert per_controller == [2, 2]  # the set was shared over both controllers
    assert stopped_then_left == [0, 1, 2, 3]  # all stopped, none left
    assert not running


def test_engines_are_managed_by_aggregate_id() -> None:
    cluster = Cluster(n=3, controllers=2)
    cluster.start_cluster_sync()
    try:
        rc = cluster.connect_client_sync()
        cluster.wait_for_engines(rc)
        assert rc.ids == [0, 1, 2] and cluster.engine_count == 3
        # One more engine goes to the controller with fewer (controller 1: id 3).
        added = cluster.start_engines_sync(1)
        rc.wait_for_engines(4, timeout=TIMEOUT)
        assert rc.ids == [0, 1, 2, 3]
        assert len(cluster.engine_sets) == 2 and added in cluster.engine_sets
        assert [len(member.ids) for member in rc.clients] == [2, 2]

        # Engines named by aggregate ids everywhere, errors included.
        with pytest.raises(
            ValueError, match=r"no engine with id \[9\]; live engines: \[0, 1, 2, 3\]"
        ):
            cluster.stop_engines([9])
        before = pids_by_engine(rc)
        assert cluster.stop_engine_sync(3) == [3]
        assert rc.ids == [0, 1, 2]
        assert cluster.signal_engines_sync(signal.SIGINT, [1]) == [1]  # an idle engine lives
        assert rc[1].apply_sync(pid) == before[1]

        new = cluster.restart_engine_sync(2)
        assert len(new) == 1 and new[0] not in before
        assert new[0] % 2 == 0  # engine 2 was controller 0's: so is its replacement
        assert sorted(rc.ids) == sorted([0, 1, *new])
        assert rc[new[0]].apply_sync(pid) != before[2]
        assert cluster.n == 3
    finally:
        cluster.stop_cluster_sync()
    assert not cluster.is_running


def test_async_with_and_awaited_start_and_connect() -> None:
    async def script() -> tuple[int, int]:
        async with Cluster(n=2, controllers=2) as rc:
            first = len(rc.ids)
        cluster = Cluster(n=2, controllers=2)
        rc = await cluster.start_and_connect()
        try:
            second = len(rc.ids)
        finally:
            rc.close()
            await cluster.stop_cluster()
        return first, second

    assert asyncio.run(script()) == (2, 2)


def test_activate_on_an_aggregate_says_why_it_cannot() -> None:
    cluster = Cluster(n=2, controllers=2)
    with pytest.raises(ClusterError, match="%px magics need one controller"):
        cluster.start_and_connect_sync(activate=True)
    assert cluster.controller is None  # nothing was started
