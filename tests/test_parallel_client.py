"""The cluster client against a real controller (threads mode) and two real engines.

Every public API of the client is exercised end to end: views, maps, lazy maps,
decorators, namespaces, the data path, results, errors, the executor and the hub's
database. Destructive tests (killing engines, shutting the cluster down) get clusters of
their own, in tests/test_parallel_client_failure.py.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from helpers import until, wait_for_file
from parallel_client_harness import LiveCluster

from corral.core.serialize import SerializationError
from corral.plugins.parallel.client import (
    AsyncMapResult,
    AsyncResult,
    BroadcastView,
    Client,
    CompositeError,
    DirectView,
    LoadBalancedView,
    RemoteError,
    TaskAborted,
    UnmetDependency,
    as_completed,
    interactive,
)

# Engines cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def rc(cluster: LiveCluster) -> Client:
    return cluster.client


def double(x: int) -> int:
    return 2 * x


def touch_then_wait(started: str, release: str) -> int:
    Path(started).write_text(str(os.getpid()))
    wait_for_file(release)
    return os.getpid()


# ------------------------------------------------------------------------ client


def test_ids_views_and_engines(rc: Client) -> None:
    assert rc.ids == [0, 1]
    assert len(rc) == 2
    assert rc.wait_for_engines(2, timeout=1) == [0, 1]
    with pytest.raises(TimeoutError):
        rc.wait_for_engines(3, timeout=0.2)
    for key, targets in [(slice(None), [0, 1]), (slice(None, None, 2), [0]), ([0, 1], [0, 1])]:
        view = rc[key]
        assert isinstance(view, DirectView) and view.targets == targets
    assert rc[1].targets == 1
    assert rc[-1].targets == 1
    with pytest.raises(IndexError):
        rc[7]
    pids = rc[:].apply_sync(os.getpid)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert {e.pid for e in rc.engines.values()} == set(pids)
    assert rc[1].apply_sync(os.getpid) == rc.engines[1].pid


def test_client_finds_newest_cluster_file_by_profile(
    cluster: LiveCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(cluster.corral_dir))
    with Client(profile=cluster.profile) as other:
        assert other.ids == [0, 1]
        assert other.cluster_id == cluster.cluster_id
    assert other.closed
    with Client(profile=cluster.profile, cluster_id=cluster.cluster_id) as named:
        assert named.load_balanced_view().apply_sync(double, 4) == 8


def test_queue_status(rc: Client) -> None:
    status = rc.queue_status()
    assert set(status) == {0, 1, "unassigned"}  # ipyparallel's shape
    assert set(status[0]) == {"queue", "tasks", "queued", "running", "completed"}
    assert status[0]["queue"] == status[0]["queued"] + status[0]["running"]
    assert set(rc.queue_status(0)) == set(status[0])


# ------------------------------------------------------------------------ apply


def test_apply_variants(rc: Client) -> None:
    lview = rc.load_balanced_view()
    assert isinstance(lview, LoadBalancedView)
    result = lview.apply(double, 21)
    assert isinstance(result, AsyncResult)
    assert result.get(30) == 42
    assert lview.apply_sync(lambda a, b=1: a + b, 1, b=2) == 3
    dview = rc[:]
    assert dview.apply_sync(double, 2) == [4, 4]
    assert rc[0].apply_sync(double, 3) == 6
    with dview.temp_flags(block=True):
        assert dview.apply(double, 5) == [10, 10]
    assert dview.block is False


def test_pipelined_apply_async(rc: Client) -> None:
    lview = rc.load_balanced_view()
    results = [lview.apply_async(double, i) for i in range(2000)]
    assert [r.get(60) for r in results] == [2 * i for i in range(2000)]
    assert {r.metadata["engine_id"] for r in results} == {0, 1}


def test_a_burst_leaves_in_batches_and_every_task_is_answered(rc: Client) -> None:
    """Requests queued while the I/O thread is busy go out as a few batches (the queues,
    the engines and the hub take them apart); each still gets its own result."""
    lview = rc.load_balanced_view()
    direct = rc[rc.ids[0]]
    io = rc._io
    gate = threading.Event()
    io.call_soon(lambda: gate.wait(30))  # holds the I/O thread: the burst queues up
    try:
        sent_before = io.sent
        balanced = [lview.apply_async(double, i) for i in range(100)]
        on_one = [direct.apply_async(double, -i) for i in range(30)]
    finally:
        gate.set()
    assert [r.get(timeout=30) for r in balanced] == [2 * i for i in range(100)]
    assert [r.get(timeout=30) for r in on_one] == [-2 * i for i in range(30)]
    # 130 requests in a handful of zmq messages (batches hold up to 64 requests, and
    # under 60 KiB).
    assert 3 <= io.sent - sent_before <= 8
    assert {r.metadata["engine_id"] for r in on_one} == {rc.ids[0]}


def test_unpicklable_argument_fails_before_sending(rc: Client) -> None:
    lview = rc.load_balanced_view()
    pending = len(rc._pending)
    sent = rc._io.sent
    with pytest.raises(SerializationError) as info:
        lview.apply_async(double, threading.Lock())
    assert info.value.argument == 0
    assert len(rc._pending) == pending and rc._io.sent == sent


# ------------------------------------------------------------------------ map


def test_load_balanced_map(rc: Client) -> None:
    lview = rc.load_balanced_view()
    assert lview.map_sync(double, range(100)) == [2 * i for i in range(100)]
    assert lview.map_sync(pow, [2, 3, 4], [2, 2, 2, 99], chunksize=1) == [4, 9, 16]
    result = lview.map_async(double, range(50), chunksize=7)
    assert isinstance(result, AsyncMapResult)
    assert len(result) == 50 and len(result.msg_ids) == 8
    assert list(result) == [2 * i for i in range(50)]
    unordered = lview.map(double, range(40), ordered=False, chunksize=3)
    assert sorted(unordered) == [2 * i for i in range(40)]
    assert lview.map(double, range(4), block=True) == [0, 2, 4, 6]
    assert lview.map_sync(double, []) == []


def test_direct_map_scatters_across_targets(rc: Client) -> None:
    result = rc[:].map_async(lambda x: (x, os.getpid()), range(10))
    values = result.get(30)
    assert [x for x, _ in values] == list(range(10))
    pids = [pid for _, pid in values]
    assert pids[:5] == [rc.engines[0].pid] * 5 and pids[5:] == [rc.engines[1].pid] * 5
    assert rc[:].map_sync(double, range(7), chunksize=2) == [2 * i for i in range(7)]


def test_imap_infinite_generator_with_bounded_in_flight(rc: Client) -> None:
    pulled = itertools.count()
    produced = []

    def naturals() -> Any:
        for n in pulled:
            produced.append(n)
            yield n

    lview = rc.load_balanced_view()
    results = lview.imap(double, naturals(), max_in_flight=6)
    for consumed, value in enumerate(itertools.islice(results, 200), start=1):
        assert value == 2 * (consumed - 1)
        assert len(produced) - consumed <= 6
    assert len(produced) <= 206
    results.close()
    unordered = lview.imap(double, range(30), ordered=False, max_in_flight=4, chunksize=4)
    assert sorted(unordered) == [2 * i for i in range(30)]
    assert list(rc[:].imap(double, range(5))) == [0, 2, 4, 6, 8]


# ------------------------------------------------------------------------ decorators


def test_remote_and_parallel_decorators(rc: Client) -> None:
    lview = rc.load_balanced_view()

    @lview.remote(block=True)
    def square(x: int) -> int:
        return x * x

    assert square(7) == 49
    assert square.__name__ == "square"

    @lview.remote(block=False)
    def later(x: int) -> int:
        return x + 1

    assert later(1).get(30) == 2

    @lview.parallel(block=True, chunksize=3)
    def halve(x: float) -> float:
        return x / 2

    assert halve.map(range(10)) == [x / 2 for x in range(10)]  # elementwise
    assert halve.map([8, 6]) == [4.0, 3.0]

    # Called on a sequence, the function gets partitions (ipyparallel's semantics): one
    # call per engine on a direct view.
    @rc[:].parallel(block=True)
    def pid_of(part: Any) -> list[int]:
        return [os.getpid()] * len(part)

    pids = pid_of(range(4))
    assert len(pids) == 4 and set(pids) == {e.pid for e in rc.engines.values()}


# ------------------------------------------------------------------------ namespaces


def test_push_pull_execute_and_item_access(rc: Client) -> None:
    dview = rc[:]
    dview.push({"a": 1, "b": [1, 2]}, block=True)
    assert dview.pull("a", block=True) == [1, 1]
    assert dview.pull(["a", "b"], block=True) == [[1, [1, 2]], [1, [1, 2]]]
    dview["c"] = "see"
    assert dview["c"] == ["see", "see"]
    assert rc[0]["c"] == "see"
    dview.execute("d = a + 10", block=True)
    assert dview.pull("d", block=True) == [11, 11]

    @interactive
    def read_d() -> int:
        return d + a  # type: ignore[name-defined]  # noqa: F821

    assert rc[1].apply_sync(read_d) == 12
    with pytest.raises(RemoteError) as info:
        rc[0].pull("nope", block=True)
    assert info.value.engine_id == 0


def test_scatter_gather_and_run(rc: Client, tmp_path: Path) -> None:
    dview = rc[:]
    dview.scatter("part", list(range(9)), block=True)
    assert rc[0]["part"] == [0, 1, 2, 3, 4] and rc[1]["part"] == [5, 6, 7, 8]
    assert dview.gather("part", block=True) == list(range(9))
    dview.scatter("arr", np.arange(10), block=True)
    gathered = dview.gather("arr", block=True)
    assert isinstance(gathered, np.ndarray) and gathered.tolist() == list(range(10))
    script = tmp_path / "script.py"
    script.write_text("ran_script = 'yes'\n")
    dview.run(script, block=True)
    assert dview["ran_script"] == ["yes", "yes"]


def test_large_numpy_push_pull_over_data_path(rc: Client) -> None:
    big = np.random.default_rng(0).integers(0, 2**31, size=50 * 2**20 // 8, dtype=np.int64)
    dview = rc[:]
    dview.push({"big": big}, block=True)
    assert rc._data_channels, "a 50 MB push goes over the engines' data path"
    pulled = rc[1].pull("big", block=False)
    back = pulled.get(60)
    assert len(pulled.msg_ids) == 2, "probe on the mux, then the data path"
    assert back.dtype == big.dtype and back.shape == big.shape
    assert back.tobytes() == big.tobytes()
    checksums = dview.apply_sync(_checksum_big)
    assert checksums == [int(big.sum())] * 2


def _import_from(directory: str) -> int:
    import importlib
    import os

    back = os.getcwd()
    os.chdir(directory)
    try:
        return int(importlib.import_module("corral_cwd_module").VALUE)
    finally:
        os.chdir(back)


def test_engines_import_from_their_working_directory(rc: Client, tmp_path: Path) -> None:
    """``""`` is on an engine's ``sys.path``, as on ipyparallel's: a task that moves the
    engine to a project directory imports its modules (the start directory was there,
    absolute, and the import failed)."""
    (tmp_path / "corral_cwd_module.py").write_text("VALUE = 42\n")
    assert rc[:].apply_sync(_import_from, str(tmp_path)) == [42, 42]


def _log_a_warning() -> int:
    import logging

    logging.getLogger("user.task").warning("from the task's logger")
    return 1


def test_a_task_logging_is_in_its_stderr(rc: Client) -> None:
    """The root logger is the user's on an engine too (as on an ipyparallel engine): a
    task's log records reach its captured stderr, not the engine's log file."""
    ar = rc[0].apply_async(_log_a_warning)
    assert ar.get(30) == 1 and ar.wait_for_output(30)
    assert "from the task's logger" in ar.stderr


def _min_max(array: Any) -> tuple[float, float]:
    return float(array.min()), float(array.max())


def test_an_array_may_change_once_wait_for_send_returns(rc: Client) -> None:
    """Arrays go without a copy, read by libzmq after the call returned: wait_for_send()
    is where ipyparallel's users change them next. It returned True at once, and the
    change made the engines refuse the request (BuffersAltered)."""
    array = np.full(4 * 2**20, 7.0)  # 32 MB: still being sent when the call returns
    pushed = rc[:].push({"pushed": array}, block=False)
    applied = rc[0].apply_async(_min_max, array)
    balanced = rc.load_balanced_view().apply_async(_min_max, array)
    assert pushed.wait_for_send(60) and applied.wait_for_send(60) and balanced.wait_for_send(60)
    assert pushed.sent and applied.sent
    array[:] = -1.0
    assert applied.get(60) == (7.0, 7.0) and balanced.get(60) == (7.0, 7.0)
    pushed.get(60)
    assert rc[:].apply_sync(_pushed_min_max) == [(7.0, 7.0), (7.0, 7.0)]
    small = rc[0].apply_async(_min_max, np.zeros(8))  # copied when sent: nothing to wait for
    assert small.wait_for_send(0) and small.get(60) == (0.0, 0.0)


@interactive
def _pushed_min_max() -> tuple[float, float]:
    array = pushed  # type: ignore[name-defined]  # noqa: F821
    return float(array.min()), float(array.max())


@interactive
def _checksum_big() -> int:
    return int(big.sum())  # type: ignore[name-defined]  # noqa: F821


def test_sync_imports_and_temp_flags(rc: Client, capsys: pytest.CaptureFixture[str]) -> None:
    dview = rc[:]
    with dview.sync_imports():
        import colorsys  # noqa: F401
    assert "importing colorsys" in capsys.readouterr().out
    dview.execute("mod_name = colorsys.__name__", block=True)
    assert dview["mod_name"] == ["colorsys", "colorsys"]
    lview = rc.load_balanced_view()
    with lview.temp_flags(block=True, retries=2, timeout=30):
        assert lview.retries == 2
        assert lview.apply(double, 1) == 2
    assert (lview.block, lview.retries, lview.timeout) == (False, 0, None)
    with pytest.raises(KeyError):
        lview.set_flags(nonsense=1)


def test_broadcast_view(rc: Client) -> None:
    bview = rc.broadcast_view()
    assert isinstance(bview, BroadcastView)
    pids = bview.apply_sync(os.getpid)
    assert sorted(pids) == sorted(e.pid for e in rc.engines.values())
    assert pids == [rc.engines[0].pid, rc.engines[1].pid]
    bview.push({"bx": 5}, block=True)
    assert bview.pull("bx", block=True) == [5, 5]
    bview.execute("by = bx * 2", block=True)
    assert rc[:]["by"] == [10, 10]
    assert rc.broadcast_view(targets=[1]).apply_sync(double, 4) == [8]


# ------------------------------------------------------------------------ results


def test_result_api_metadata_and_outputs(rc: Client, capsys: pytest.CaptureFixture[str]) -> None:
    def chatty(x: int) -> int:
        print("hello from", x)
        print("to stderr", file=sys.stderr)
        return x

    result = rc.load_balanced_view().apply_async(chatty, 3)
    assert result.wait(30) and result.ready() and result.successful()
    assert result.get() == 3
    assert result.wait_for_output(30)
    md = result.metadata
    assert md["stdout"] == "hello from 3\n" and md["stderr"] == "to stderr\n"
    assert md["engine_id"] in (0, 1) and md["status"] == "ok"
    assert md["submitted"] is not None and md["started"] and md["completed"] and md["received"]
    assert md.started == md["started"] and md.engine_id == md["engine_id"]  # ipyparallel's
    with pytest.raises(AttributeError):
        md.no_such_key  # noqa: B018
    result.display_outputs()
    out, err = capsys.readouterr()
    assert out == "hello from 3\n"  # one engine: printed as is (ipyparallel)
    assert "to stderr" in err
    both = rc[:].apply_async(chatty, 4)
    both.get(30)
    both.display_outputs()
    out, err = capsys.readouterr()
    assert "[stdout:0] \nhello from 4\n" in out and "[stdout:1] \nhello from 4\n" in out
    # groupby, as ipyparallel's: by engine, by type, or by type with outputs collated
    shown = rc[:].execute(
        "import os\nfrom corral.display import display\n"
        "print('out', os.getpid())\ndisplay('first')\ndisplay('second')",
        block=False,
    )
    shown.get(30)
    assert shown.wait_for_output(30)
    labels = {}
    for groupby in ("engine", "type", "order"):
        text = io.StringIO()
        shown.display_outputs(groupby, file=text)
        labels[groupby] = [
            line.split("] ")[0] + "] " + (line.split("] ")[1].split() or [""])[0]
            for line in text.getvalue().splitlines()
            if not line.startswith("out ")  # the text under a [stdout:N] label line
        ]
    assert labels["engine"] == [
        "[stdout:0] ", "[Display:0] 'first'", "[Display:0] 'second'",
        "[stdout:1] ", "[Display:1] 'first'", "[Display:1] 'second'",
    ]  # fmt: skip
    assert labels["type"] == [
        "[stdout:0] ", "[stdout:1] ",
        "[Display:0] 'first'", "[Display:0] 'second'",
        "[Display:1] 'first'", "[Display:1] 'second'",
    ]  # fmt: skip
    assert labels["order"] == [
        "[stdout:0] ", "[stdout:1] ",
        "[Display:0] 'first'", "[Display:1] 'first'",
        "[Display:0] 'second'", "[Display:1] 'second'",
    ]  # fmt: skip
    # displays land in outputs, the value in execute_result (as in ipyparallel)
    executed = rc[0].execute("from corral.display import display\ndisplay(41)\n40 + 2", block=False)
    executed.get(30)
    assert executed.wait_for_output(30)
    assert [o["data"] for o in executed.metadata["outputs"]] == [{"text/plain": "41"}]
    assert executed.metadata["execute_result"]["data"]["text/plain"] == "42"


def test_each_execute_on_an_engine_gets_the_next_execution_count(rc: Client) -> None:
    """Executes are numbered per engine as IPython numbers cells (ipyparallel's
    `Out[0:N]`), an error included; a silent one is not counted."""
    view = rc[0]
    first = view.execute("q = 1", block=True).get()
    second = view.execute("q + 1", block=True)
    assert second.get().execution_count == first.execution_count + 1
    assert second.execute_result["execution_count"] == first.execution_count + 1
    with pytest.raises(RemoteError) as info:
        view.execute("1/0", block=True)
    assert f"Cell In[{first.execution_count + 2}]" in info.value.traceback
    view.execute("q", silent=True, block=True)
    assert view.execute("q", block=True).get().execution_count == first.execution_count + 3


def test_await_as_completed_and_wait_interactive(rc: Client) -> None:
    lview = rc.load_balanced_view()

    async def gather() -> list[int]:
        return list(await asyncio.gather(*(lview.apply_async(double, i) for i in range(5))))

    assert asyncio.run(gather()) == [0, 2, 4, 6, 8]
    results = [lview.apply_async(double, i) for i in range(10)]
    assert sorted(r.get() for r in as_completed(results, timeout=30)) == [2 * i for i in range(10)]
    mapped = lview.map_async(double, range(20), chunksize=2)
    out = io.StringIO()
    mapped.wait_interactive(interval=0.01, file=out)
    assert mapped.ready() and "20/20" in out.getvalue()  # elements, as len() counts


def test_remote_exceptions(rc: Client) -> None:
    def fail(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    with pytest.raises(RemoteError) as info:
        rc.load_balanced_view().apply_sync(fail, 1)
    error = info.value
    assert error.ename == "ValueError" and error.evalue == "odd 1"
    assert error.engine_id in (0, 1)
    assert "ValueError: odd 1" in str(error) and "fail" in str(error)
    with pytest.raises(CompositeError) as composite:
        rc.load_balanced_view().map_sync(fail, range(6), chunksize=1)
    assert [e.evalue for e in composite.value.errors] == ["odd 1", "odd 3", "odd 5"]
    with pytest.raises(CompositeError) as multi:
        rc[:].apply_sync(fail, 3)
    assert sorted(multi.value.engine_ids) == [0, 1]


def test_abort_queued_task(rc: Client, tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    engine = rc[0]
    blocker = engine.apply_async(wait_for_file, release)
    queued = engine.apply_async(double, 1)
    queued.abort()
    Path(release).touch()
    assert blocker.get(30) == "released"
    with pytest.raises(TaskAborted):
        queued.get(30)


def test_interrupt_running_task(rc: Client, tmp_path: Path) -> None:
    started, release = str(tmp_path / "started"), str(tmp_path / "never")
    running = rc[1].apply_async(touch_then_wait, started, release)
    until(lambda: os.path.exists(started))
    running.interrupt()
    with pytest.raises(RemoteError) as info:
        running.get(30)
    assert info.value.ename == "KeyboardInterrupt"
    assert rc[1].apply_sync(double, 2) == 4  # the engine lives on


def test_interrupt_load_balanced_task(rc: Client, tmp_path: Path) -> None:
    started, release = tmp_path / "started", str(tmp_path / "never")
    running = rc.load_balanced_view().apply_async(touch_then_wait, str(started), release)
    until(started.exists)
    pid = int(started.read_text())
    running.interrupt()
    with pytest.raises(RemoteError) as info:
        running.get(30)
    assert info.value.ename == "KeyboardInterrupt"
    assert rc.engines[info.value.engine_id].pid == pid


def test_dependencies(rc: Client, tmp_path: Path) -> None:
    lview = rc.load_balanced_view()
    marker = str(tmp_path / "first")
    first = lview.apply_async(touch_then_wait, marker, marker)
    with lview.temp_flags(after=[first]):
        second = lview.apply_async(os.path.exists, marker)
    assert second.get(30) is True and first.ready()

    def boom() -> None:
        raise RuntimeError("no")

    failed = lview.apply_async(boom)
    with lview.temp_flags(after=failed):
        dependent = lview.apply_async(double, 1)
    with pytest.raises(UnmetDependency):
        dependent.get(30)


# ------------------------------------------------------------------------ executor


def test_executor(rc: Client) -> None:
    with rc.executor() as pool:
        future = pool.submit(double, 4)
        assert future.result(30) == 8
        assert list(pool.map(double, range(10))) == [2 * i for i in range(10)]
        assert list(pool.map(pow, [2, 3], [3, 2])) == [8, 9]
        pending = [pool.submit(double, i) for i in range(20)]
    assert all(f.done() for f in pending)
    with pytest.raises(RuntimeError):
        pool.submit(double, 1)
    never = str(Path(rc.connection_file).parent / "never-released")
    with pytest.raises(TimeoutError):
        list(rc.executor().map(lambda p: wait_for_file(p, 1.0), [never], timeout=0.1))


# ------------------------------------------------------------------------ hub database


def test_get_result_db_query_and_purge(cluster: LiveCluster) -> None:
    first = cluster.connect()
    result = first.load_balanced_view().apply_async(double, 50)
    assert result.get(30) == 100
    msg_id = result.msg_ids[0]
    assert first.get_result(msg_id) is result
    first.close()
    with pytest.raises(RuntimeError):
        first.load_balanced_view().apply_async(double, 1)
    second = cluster.connect()
    fetched = second.get_result(msg_id)
    assert fetched.get(30) == 100
    assert fetched.metadata["engine_id"] in (0, 1)
    records = second.db_query({"msg_id": msg_id}, keys=["msg_id", "engine_id", "completed"])
    assert len(records) == 1 and records[0]["msg_id"] == msg_id
    assert records[0]["engine_id"] == fetched.metadata["engine_id"]
    assert second.db_query({"msg_id": {"$in": [msg_id, "nothing"]}}, ["msg_id"])
    assert second.purge_results(msg_id) == 1
    with pytest.raises(RemoteError, match="no task"):
        second.get_result(msg_id).get(30)
    # a result still running when asked for arrives once it completes
    release = str(Path(cluster.corral_dir) / "release-hub")
    slow = second.load_balanced_view().apply_async(wait_for_file, release)
    third = cluster.connect()
    pending = third.get_result(slow.msg_ids)
    assert not pending.wait(0.05)
    Path(release).touch()
    assert pending.get(30) == ["released"]  # a list of msg_ids: a list, as ipyparallel
    second.close()
    third.close()


def test_result_status_lists_pending_and_completed(cluster: LiveCluster, rc: Client) -> None:
    """ipyparallel's callers read `result_status(...)["pending"]` and `["completed"]`."""
    done = rc.load_balanced_view().apply_async(double, 2)
    assert done.get(30) == 4
    started = Path(cluster.corral_dir) / "started-status"
    release = Path(cluster.corral_dir) / "release-status"
    slow = rc.load_balanced_view().apply_async(touch_then_wait, str(started), str(release))
    try:
        wait_for_file(started)
        ids = [*done.msg_ids, *slow.msg_ids]
        # The hub hears of a task and of its result beside the client, so ask until it has.
        status = until(
            lambda: (
                (s := rc.result_status(ids))["completed"] == done.msg_ids
                and s["pending"] == slow.msg_ids
                and s
            ),
            what="the hub's record of both tasks",
        )
        assert status["results"][slow.msg_ids[0]]["status"] == "pending"
        # A msg_id nobody knows: ipyparallel's hub answers KeyError, raised as RemoteError.
        with pytest.raises(RemoteError, match="no task 'no-such-task'"):
            rc.result_status([*ids, "no-such-task"])
    finally:
        release.touch()
    slow.get(30)


def test_dropped_results_and_pulled_values_are_freed_at_once(rc: Client) -> None:
    """Nothing in the client keeps a result or its value once the caller drops them: no
    cache holds them strongly and no reference cycle waits for the cyclic GC (a pulled
    100 MB array per call used to pile up until it ran)."""
    view = rc[rc.ids[0]]
    view.push({"blob": np.arange(1000.0)}, block=True)
    gc.disable()
    try:
        for direct in (None, True, False):  # staged, data path, mux
            value = view.pull("blob", block=True, direct=direct)
            ref = weakref.ref(value)
            del value
            assert ref() is None, direct
        result = rc.load_balanced_view().apply_async(np.ones, 10)
        array = result.get(30)
        refs = (weakref.ref(result), weakref.ref(array))
        del result, array
        assert refs[0]() is None and refs[1]() is None
    finally:
        gc.enable()


def test_get_result_of_a_broadcast_has_every_engine(cluster: LiveCluster) -> None:
    """A broadcast is one msg_id answered by each target: the hub gives all of them back,
    in target order, and a failure on one engine is a CompositeError naming it."""
    first = cluster.connect()
    view = first.broadcast_view(targets=[1, 0])
    live = view.apply_async(os.getpid)
    pids = live.get(30)
    failing = view.apply_async(_fail_in_process, pids[1])  # targets [1, 0]: engine 0
    with pytest.raises(CompositeError):
        failing.get(30)
    alone = first.broadcast_view(targets=[1]).apply_async(os.getpid)
    alone_pids = alone.get(30)
    msg_ids = [live.msg_ids[0], failing.msg_ids[0]]
    first.close()
    second = cluster.connect()
    assert second.get_result(msg_ids[0]).get(30) == pids
    # one target is still a broadcast: a list of one, as the live result gave it
    assert second.get_result(alone.msg_ids[0]).get(30) == alone_pids == [pids[0]]
    with pytest.raises(CompositeError) as failed:
        second.get_result(msg_ids[1]).get(30)
    assert failed.value.engine_ids == [0]
    assert "says no" in str(failed.value)
    second.close()


def _fail_in_process(pid: int) -> str:
    """Fails in the one engine process ``pid``, succeeds elsewhere."""
    import os as _os

    if _os.getpid() == pid:
        raise ValueError(f"process {pid} says no")
    return "fine"


def print_lines(count: int) -> int:
    for i in range(count):
        print(f"line {i:06d} " + "y" * 88)
    return count


def test_stdout_read_right_after_get_is_all_of_it(rc: Client) -> None:
    """Output travels on iopub, apart from the reply; ``ar.stdout`` read just after
    ``get()`` returned what had arrived so far, 8 of 11 MB in a user's script."""
    count = 80_000
    ar = rc[0].apply_async(print_lines, count)
    assert ar.get(timeout=120) == count
    lines = ar.stdout.splitlines()
    assert len(lines) == count and lines[-1].startswith(f"line {count - 1:06d} ")
