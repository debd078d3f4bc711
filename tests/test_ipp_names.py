"""ipyparallel's names and keyword arguments, as its users' scripts spell them.

Each test calls a method the way ipyparallel 9's signature allows (keywords by their
ipyparallel names, arguments corral had no parameter for, a call repeated as a re-run
notebook cell repeats it) against a real controller and engines, and checks the value
ipyparallel documents.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import cloudpickle
import pytest
from helpers import TIMEOUT, until, wait_for_file
from parallel_client_harness import LiveCluster

import corral as ipp
from corral.plugins.parallel.client import AsyncResult, Client, RemoteError
from corral.plugins.parallel.cluster import ClusterError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    corral_dir = tmp_path_factory.mktemp("corral")
    # Cluster.from_file finds profiles under CORRAL_DIR in this process too.
    patch = pytest.MonkeyPatch()
    patch.setenv("CORRAL_DIR", str(corral_dir))
    live = LiveCluster(corral_dir, threads=True)
    try:
        yield live
    finally:
        live.stop()
        patch.undo()


@pytest.fixture(scope="module")
def rc(cluster: LiveCluster) -> Client:
    return cluster.client


def plus_one(x: int) -> int:
    return x + 1


def touch(path: str) -> str:
    Path(path).write_text("")
    return path


# ------------------------------------------------------------------ client


def test_become_dask_twice_gives_a_working_client(rc: Client) -> None:
    """A notebook cell with ``client = rc.become_dask()`` run again: ipyparallel hands
    back another client of the same dask cluster."""
    pytest.importorskip("distributed", reason="dask is an optional extra")
    first = rc.become_dask()
    try:
        second = rc.become_dask()
        assert second.scheduler_info()["address"] == first.scheduler_info()["address"]
        assert len(second.scheduler_info()["workers"]) == 2  # no second worker per engine
        assert second.submit(sum, [1, 2, 3]).result(TIMEOUT) == 6
        assert first.submit(sum, [4, 5]).result(TIMEOUT) == 9
    finally:
        rc.stop_dask()
    assert first.status == "closed" and second.status == "closed"
    assert rc[:].apply_sync(plus_one, 1) == [2, 2]


def test_wait_for_engines_takes_interactive_and_widget(
    rc: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rc.wait_for_engines(2, timeout=TIMEOUT, interactive=False, widget=False) == [0, 1]
    assert capsys.readouterr().err == ""
    assert rc.wait_for_engines(2, timeout=TIMEOUT, interactive=True, widget=False) == [0, 1]
    assert "engines" in capsys.readouterr().err  # the progress bar
    with pytest.raises(TimeoutError, match="2 of 3 engines"):
        rc.wait_for_engines(3, timeout=0.3, interactive=True)


def test_result_status_of_an_unknown_msg_id_raises(rc: Client) -> None:
    """ipyparallel's hub answers ``KeyError('No such message: ...')``, which its client
    raises as a RemoteError."""
    with pytest.raises(RemoteError, match="no task 'unknown-msg-id'") as caught:
        rc.result_status(["unknown-msg-id"])
    assert caught.value.ename == "KeyError"
    ar = rc[0].apply_async(plus_one, 1)
    ar.get(TIMEOUT)
    status = rc.result_status(ar.msg_ids)  # known ids still answer
    assert status["completed"] == ar.msg_ids and status["pending"] == []
    with pytest.raises(RemoteError, match="no task 'other-unknown'"):
        rc.result_status([*ar.msg_ids, "other-unknown"])


def test_purge_everything_clears_the_history(cluster: LiveCluster) -> None:
    rc = cluster.connect()
    try:
        rc[:].apply_sync(plus_one, 1)
        assert len(rc.history) == 2  # one task per engine
        rc.purge_everything()
        assert rc.history == []
    finally:
        rc.close()


def test_close_takes_linger(cluster: LiveCluster, tmp_path: Path) -> None:
    """``linger`` (ms): how long closing lets a request just sent reach the controller."""
    rc = cluster.connect()
    flag = tmp_path / "ran"
    rc[0].apply_async(touch, str(flag))
    rc.close(linger=5000)
    assert rc.closed
    wait_for_file(str(flag))
    other = cluster.connect()
    other.close(linger=0)
    assert other.closed


# ------------------------------------------------------------------ views


def test_push_scatter_gather_by_ipyparallel_keywords(rc: Client) -> None:
    dv = rc[:]
    dv.block = True
    dv.push(ns={"a": 5}, track=True)
    assert dv.pull("a") == [5, 5]
    dv.push({"b": 6}, targets=0, block=True, track=False)
    assert rc[0].pull("b", block=True) == 6
    dv.scatter(key="x", seq=list(range(6)), track=True)
    assert dv.pull("x") == [[0, 1, 2], [3, 4, 5]]
    assert dv.gather(key="x") == list(range(6))
    ar = dv.scatter(key="y", seq=list(range(4)), block=False, track=True)
    assert ar.wait_for_send(TIMEOUT)
    assert dv.gather(key="y", block=False).get(TIMEOUT) == list(range(4))


def test_map_takes_track(rc: Client) -> None:
    expected = [1, 2, 3, 4]
    dv = rc[:]
    assert dv.map(plus_one, range(4), block=True, track=True) == expected
    assert dv.map_sync(plus_one, range(4), track=True) == expected
    ar = dv.map_async(plus_one, range(4), track=True)
    assert ar.wait_for_send(TIMEOUT)
    assert ar.get(TIMEOUT) == expected
    bv = rc.broadcast_view()
    assert bv.map(plus_one, range(4), block=True, track=True) == expected
    lv = rc.load_balanced_view()
    assert lv.map(plus_one, range(4), block=True, track=False) == expected


# ------------------------------------------------------------------ results


def test_display_outputs_result_only(rc: Client) -> None:
    for view in (rc[0], rc[:]):
        ar = view.execute("print('noise'); 6 * 7", block=False)
        ar.get(TIMEOUT)
        everything = io.StringIO()
        ar.display_outputs(file=everything)
        assert "noise" in everything.getvalue() and "42" in everything.getvalue()
        value_only = io.StringIO()
        ar.display_outputs(result_only=True, file=value_only)
        assert "noise" not in value_only.getvalue()
        assert "42" in value_only.getvalue()
        by_engine = io.StringIO()
        ar.display_outputs("engine", True, file=by_engine)
        assert "noise" not in by_engine.getvalue() and "42" in by_engine.getvalue()


def test_timedelta_takes_keys_and_any_sequence(rc: Client) -> None:
    ar = rc[:].apply_async(os.getpid)
    ar.get(TIMEOUT)
    assert ar.timedelta(tuple(ar.submitted), tuple(ar.received)) >= 0
    t0 = datetime(2026, 1, 1)
    starts = [t0, t0 + timedelta(seconds=1)]
    ends = [t0 + timedelta(seconds=3), t0 + timedelta(seconds=5)]
    assert AsyncResult.timedelta(starts, ends) == 5.0
    assert ar.timedelta(starts, ends, start_key=max, end_key=min) == 2.0
    assert ar.timedelta(t0, ends[0]) == 3.0


def test_join_is_the_inverse_of_split(rc: Client) -> None:
    ar = rc[:].apply_async(plus_one, 1)
    parts = ar.split()
    assert len(parts) == 2
    joined = AsyncResult.join(*parts)
    assert joined.get(TIMEOUT) == [2, 2]
    assert set(joined.msg_ids) == set(ar.msg_ids)
    assert AsyncResult.join(parts[0]) is parts[0]
    other = rc[0].apply_async(plus_one, 10)
    assert ipp.AsyncResult.join(ar, other).get(TIMEOUT) == [2, 2, 11]
    with pytest.raises(ValueError, match="at least one"):
        AsyncResult.join()


# ------------------------------------------------------------------ cluster


def test_cluster_from_file_by_ipyparallel_keywords(cluster: LiveCluster, rc: Client) -> None:
    by_file = ipp.Cluster.from_file(cluster_file=cluster.cluster_file)
    assert by_file.cluster_id == rc.cluster_id
    profile_dir = cluster.cluster_file.parent.parent
    by_dir = ipp.Cluster.from_file(profile_dir=str(profile_dir), cluster_id=cluster.cluster_id)
    assert by_dir.cluster_id == rc.cluster_id
    only = ipp.Cluster.from_file(profile_dir=profile_dir)  # its only cluster
    assert only.cluster_id == rc.cluster_id
    client = only.connect_client()
    try:
        assert client.wait_for_engines(2, timeout=TIMEOUT) == [0, 1]
    finally:
        client.close()
    with pytest.raises(ClusterError, match="does not exist"):
        ipp.Cluster.from_file(profile_dir=profile_dir / "missing")


def test_aggregate_purge_results_takes_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two controllers: ``purge_results(targets=[i])`` forgets the tasks of aggregate
    engine ``i`` only, as the one-controller client does."""
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    cluster = ipp.Cluster(n=2, controllers=2)
    cluster.start_cluster_sync()
    try:
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(2, timeout=TIMEOUT)
        assert rc.ids == [0, 1]
        on_0 = rc[0].apply_async(plus_one, 1)
        on_1 = rc[1].apply_async(plus_one, 2)
        assert (on_0.get(TIMEOUT), on_1.get(TIMEOUT)) == (2, 3)
        member_0, _ = rc.locate(0)
        member_1, _ = rc.locate(1)
        for member, ar in ((member_0, on_0), (member_1, on_1)):  # the hubs recorded them
            done = {"msg_id": ar.msg_ids[0], "completed": {"$ne": None}}
            until(lambda m=member, q=done: m.db_query(q), what="the hub's record")
        assert rc.purge_results(targets=[1]) == 1
        assert member_0.db_query({"msg_id": on_0.msg_ids[0]}, keys=["msg_id"])
        assert not member_1.db_query({"msg_id": on_1.msg_ids[0]}, keys=["msg_id"])
        assert rc.purge_results() == 1  # the rest
        assert not member_0.db_query({"msg_id": on_0.msg_ids[0]}, keys=["msg_id"])
        rc.close()
    finally:
        cluster.stop_cluster_sync()
