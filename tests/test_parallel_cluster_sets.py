"""ipyparallel's Cluster API ("Cluster API.ipynb") on corral: engine sets by id, methods
that work called plainly and awaited, launcher names in any case, ``from_file`` by
profile and cluster id. Real controllers and engines."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
from pathlib import Path

import cloudpickle
import psutil
import pytest
from helpers import until, wait_for_file

from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.launchers import get_launchers

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = {"controller_mode": "threads", "hb_period": 0.2, "hb_misses": 5}


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    return tmp_path


def touch_then_wait(started: str, release: str) -> str:
    Path(started).write_text("")
    return wait_for_file(release)


def _ended(pid: int) -> bool:
    try:
        return psutil.wait_procs([psutil.Process(pid)], timeout=30)[1] == []
    except psutil.NoSuchProcess:
        return True


def test_engine_sets_stop_and_restart_by_id_leaving_the_others_running():
    cluster = Cluster(n=0, profile="sets", **FAST)
    assert cluster.start_controller_sync() is None
    try:
        first = cluster.start_engines_sync(2)
        second = cluster.start_engines(1)  # ipyparallel's coroutine name, called plainly
        assert isinstance(first, str) and isinstance(second, str) and first != second
        assert list(cluster.engine_sets) == [first, second]
        rc = cluster.connect_client()
        rc.wait_for_engines(3, timeout=60)
        pids = {i: rc.engines[i].pid for i in rc.ids}

        stopped = cluster.stop_engines(second)
        assert isinstance(stopped, list) and inspect.isawaitable(stopped) and len(stopped) == 1
        assert _ended(pids[stopped[0]])
        until(lambda: stopped[0] not in rc.ids, what="the client never heard of the stop")
        kept = sorted(set(pids) - set(stopped))
        assert sorted(rc.ids) == kept
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids[i] for i in kept)
        assert list(cluster.engine_sets) == [first]

        new = cluster.restart_engines(first)  # same set id, new engines
        assert len(new) == 2 and not set(new) & set(pids)
        assert list(cluster.engine_sets) == [first]
        assert all(_ended(pids[i]) for i in kept)
        assert sorted(rc.wait_for_engines(2, timeout=60)) == sorted(new)

        with pytest.raises(ValueError, match="no engine set 'nope'"):
            cluster.stop_engines("nope")
        assert cluster.stop_engines() == sorted(new)  # None: every engine, as before
    finally:
        cluster.stop()


def test_awaited_like_ipyparallel_signal_interrupts_only_that_set(tmp_path):
    async def main() -> None:
        cluster = Cluster(n=0, profile="aw", **FAST)
        assert await cluster.start_controller() is cluster
        try:
            busy = await cluster.start_engines(1)
            idle = await cluster.start_engines(n=1)
            rc = await cluster.connect_client()
            rc.wait_for_engines(2, timeout=60)
            tasks = {
                i: rc[i].apply_async(
                    touch_then_wait, str(tmp_path / f"s{i}"), str(tmp_path / f"r{i}")
                )
                for i in rc.ids
            }
            for i in tasks:  # SIGINT interrupts a running task: wait until both run
                wait_for_file(tmp_path / f"s{i}")
            [hit] = await cluster.signal_engines(signal.SIGINT, busy)
            with pytest.raises(Exception, match="KeyboardInterrupt"):
                tasks[hit].get(30)
            [other] = [i for i in tasks if i != hit]
            assert not tasks[other].ready()  # the other set was not signalled
            (tmp_path / f"r{other}").write_text("")
            assert tasks[other].get(30) == "released"
            # gather, as ipyparallel's own stop_cluster does: awaitables, not coroutines
            assert await asyncio.gather(cluster.stop_engines(idle)) == [[other]]
            assert list(cluster.engine_sets) == [busy]
            assert await cluster.stop_cluster() is cluster
            assert not cluster.is_running
        finally:
            cluster.stop()

    asyncio.run(main())


def test_engine_sets_keep_their_own_log_and_pid_files():
    """Every set numbered its engines from 0 in the same file names: a second set wrote
    into the first one's logs and pid files, and stopping it removed the pid files of the
    first set's engines, still running (``corral cluster clean`` then saw nothing)."""
    cluster = Cluster(n=2, profile="sets", **FAST)
    rc = cluster.start_and_connect()
    try:
        first = list(cluster.engine_sets)[0]
        second = cluster.start_engines(2)
        rc.wait_for_engines(4, timeout=60)
        logs = [path for name, path in cluster.logs().items() if name != "controller"]
        assert len(logs) == 4 and len(set(logs)) == 4, logs
        run = cluster.profile_dir / "run"
        assert len(list(run.glob(f"engine-{cluster.cluster_id}-*.pid"))) == 4
        cluster.stop_engines(second)
        until(lambda: len(rc.ids) == 2, what="the second set never stopped")
        still = sorted(run.glob(f"engine-{cluster.cluster_id}-*.pid"))
        assert len(still) == 2, still  # the first set's engines are still running
        assert {int(path.read_text()) for path in still} <= set(
            cluster.engine_sets[first].handles[i].pid for i in range(2)
        )
    finally:
        cluster.stop()


def test_launcher_names_in_any_case():
    assert Cluster(n=1, engines="MPI").engine_launcher == "mpi"
    cluster = Cluster(n=1, launcher="Local")
    assert (cluster.engine_launcher, cluster.controller_launcher) == ("local", "local")
    assert Cluster(n=1, engines="Slurm").engine_launcher == "slurm"
    assert get_launchers("SSH") == get_launchers("ssh")
    with pytest.raises(ValueError, match="unknown launcher 'Nope'"):
        Cluster(n=1, engines="Nope")


def test_from_file_by_profile_and_cluster_id():
    cluster = Cluster(n=1, **FAST)  # the default profile
    cluster.start()
    try:
        for handle in (
            Cluster.from_file(),
            Cluster.from_file(profile="default"),
            Cluster.from_file(profile="default", cluster_id=cluster.cluster_id),
        ):
            assert handle.cluster_id == cluster.cluster_id
            rc = handle.connect_client()
            assert rc.wait_for_engines(1, timeout=60)
            rc.close()
        with pytest.raises(ClusterError, match="has no cluster file|not a cluster"):
            Cluster.from_file(cluster_id="missing")
    finally:
        cluster.stop()
    with pytest.raises(ClusterError, match="0 running clusters"):
        Cluster.from_file()
