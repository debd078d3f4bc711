"""``corral.Cluster`` and the local launchers, with real controllers and engines.

Every test checks that what it started is gone afterwards, by pid: a leaked engine is a
bug users pay for in cores and ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.launchers import EngineSetLauncher, get_launchers
from corral.plugins.parallel.launchers.local import (
    LocalControllerLauncher,
    LocalEngineSetLauncher,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    return tmp_path


def _all_pids(cluster: Cluster) -> list[int]:
    """Controller (with its component processes) and engines."""
    pids = cluster.pids()
    found = [pids["controller"], *pids["engines"]]
    try:
        found += [p.pid for p in psutil.Process(pids["controller"]).children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    return found


def _assert_gone(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running: {alive}"


def test_start_and_stop_leaves_nothing_behind(corral_dir):
    cluster = Cluster(n=2, profile="t", hb_period=0.2, hb_misses=5)
    client = cluster.start_and_connect()
    try:
        assert sorted(client.ids) == [0, 1]
        assert cluster.cluster_file.exists()
        assert cluster.record_file.exists()
        run = corral_dir / "profile_t" / "run"
        assert (run / f"controller-{cluster.cluster_id}.pid").exists()
        assert len(list(run.glob(f"engine-{cluster.cluster_id}-*.pid"))) == 2
        pids = _all_pids(cluster)
        assert len(pids) >= 3
    finally:
        cluster.stop()
    _assert_gone(pids)
    assert not cluster.cluster_file.exists()
    assert not cluster.record_file.exists()
    assert not list((corral_dir / "profile_t" / "run").glob("*.pid"))
    assert not cluster.is_running
    cluster.stop()  # twice is fine


def test_a_stopped_cluster_starts_again(corral_dir):
    """As with ipyparallel: the same Cluster object, stopped, can be started again."""
    cluster = Cluster(n=1, profile="t", controller_mode="threads", hb_period=0.2, hb_misses=5)
    first = cluster.start_and_connect()
    first_pids = _all_pids(cluster)
    cluster.stop()
    assert first.closed
    try:
        again = cluster.start_and_connect()
        assert again.ids == [0]
        assert again[0].apply_sync(abs, -3) == 3
        assert not set(_all_pids(cluster)) & set(first_pids)
        with pytest.raises(ClusterError, match="already started"):
            cluster.start()
    finally:
        cluster.stop()
    assert not cluster.is_running


def test_stop_is_orderly_every_time(corral_dir):
    """Every engine acknowledges the hub's shutdown (batched through the control queue),
    nobody logs a warning, and the database is checkpointed (no -wal or -shm left)."""
    for _ in range(3):
        cluster = Cluster(n=2, profile="t", hb_period=0.2, hb_misses=5)
        client = cluster.start_and_connect()
        try:
            assert client.load_balanced_view().map_sync(abs, range(-4, 0)) == [4, 3, 2, 1]
            pids = _all_pids(cluster)
        finally:
            cluster.stop()
        _assert_gone(pids)
        logs = corral_dir / "profile_t" / "log"
        for log_file in logs.glob(f"*{cluster.cluster_id}*.log"):
            text = log_file.read_text()
            assert "WARNING" not in text and "ERROR" not in text, (log_file.name, text)
        db = corral_dir / "profile_t" / "db"
        leftovers = [p.name for p in db.iterdir() if p.name.endswith(("-wal", "-shm"))]
        assert not leftovers


def test_context_manager_yields_working_client():
    cluster = Cluster(n=2, controller_mode="threads", hb_period=0.2, hb_misses=5)
    with cluster as rc:
        assert len(rc.ids) == 2
        assert rc.load_balanced_view().map_sync(lambda x: x * x, range(10)) == [
            x * x for x in range(10)
        ]
        pids = _all_pids(cluster)
    _assert_gone(pids)


def test_async_with():
    async def main() -> tuple[list[int], list[int]]:
        cluster = Cluster(n=2, controller_mode="threads", hb_period=0.2, hb_misses=5)
        async with cluster as rc:
            result = await rc.load_balanced_view().apply_async(pow, 7, 2)
            assert result == 49
            return list(rc.ids), _all_pids(cluster)

    ids, pids = asyncio.run(main())
    assert ids == [0, 1]
    _assert_gone(pids)


def test_failed_controller_reports_its_log_tail(corral_dir):
    cluster = Cluster(n=2, controller_args=("--no-such-option",))
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert "exited with code 2" in message
    assert "unrecognized arguments: --no-such-option" in message
    assert "controller-" in message  # the log file is named
    # The engines started beside it were not left waiting for a file that never comes.
    _assert_gone(cluster.pids()["engines"])
    assert not cluster.cluster_file.exists()


def test_a_script_that_drops_its_cluster_leaves_nothing_behind(corral_dir):
    """``corral.Cluster(n=1).start_and_connect()``, the Cluster object never kept: at the
    script's end the cluster is stopped properly, and no record is left for `corral
    cluster stop` to trip over."""
    script = textwrap.dedent(
        """
        import json
        import corral
        rc = corral.Cluster(n=1, profile="t", hb_period=0.2).start_and_connect()
        print(json.dumps(rc[:].apply_sync(__import__("os").getpid)), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    import json

    engines = json.loads(done.stdout)
    _assert_gone(engines)
    profile = corral_dir / "profile_t"
    assert not list((profile / "run").glob("*.json")), list((profile / "run").iterdir())
    assert not list((profile / "security").glob("cluster-*.json"))


def test_engines_follow_the_launching_process_when_it_dies(corral_dir):
    """SIGKILL the process holding the Cluster: its engines and controller must not linger
    (the bootstrap watches CORRAL_PARENT_PID and ends its process group)."""
    script = textwrap.dedent(
        """
        import json, sys
        from corral.plugins.parallel.cluster import Cluster
        cluster = Cluster(n=2, controller_mode="threads", hb_period=0.2, hb_misses=5)
        cluster.start_and_connect()
        print(json.dumps(cluster.pids()), flush=True)
        sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        import json

        pids = json.loads(proc.stdout.readline())
        assert len(pids["engines"]) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_gone([pids["controller"], *pids["engines"]])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_add_engines_to_a_running_cluster():
    cluster = Cluster(n=1, controller_mode="threads", hb_period=0.2, hb_misses=5)
    rc = cluster.start_and_connect()
    try:
        cluster.add_engines(1)
        assert len(rc.wait_for_engines(2, timeout=60)) == 2
        pids = _all_pids(cluster)
    finally:
        cluster.stop()
    _assert_gone(pids)


def test_a_handle_from_profile_counts_the_running_engines():
    """A handle on someone else's cluster reports its engines and n, not 0 and 1."""
    cluster = Cluster(n=2, controller_mode="threads", hb_period=0.2, hb_misses=5)
    rc = cluster.start_and_connect()
    try:
        handle = Cluster.from_profile("default", cluster.cluster_id)
        assert handle.n == 2
        assert handle.engine_count == len(rc.ids) == 2
        # Waiting for its own new engine, the handle must not take the engines it cannot
        # see (started by another process) for dead ones.
        replaced = handle.restart_engines([rc.ids[0]])
        assert len(replaced) == 1 and replaced[0] not in (0, 1)
        assert handle.engine_count == 2
    finally:
        cluster.stop()
    assert handle.engine_count == 0


def test_launcher_seam():
    controller_cls, engines_cls = get_launchers("local")
    assert controller_cls is LocalControllerLauncher
    assert engines_cls is LocalEngineSetLauncher
    assert issubclass(engines_cls, EngineSetLauncher)
    with pytest.raises(ValueError, match="known launchers: htcondor, local, lsf, mpi"):
        get_launchers("no-such-launcher")
    with pytest.raises(ValueError, match="controller_mode"):
        Cluster(controller_mode="fibres")
    assert Cluster().n == (os.cpu_count() or 1)
