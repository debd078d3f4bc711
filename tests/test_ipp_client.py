"""ipyparallel's everyday client and view calls, against a real controller and engines.

Each test is what an ipyparallel user's script does, run with corral's client, checking
the values and exceptions ipyparallel documents.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import wait_for_file
from parallel_client_harness import LiveCluster

import corral as ipp
from corral.plugins.parallel.client import (
    AsyncMapResult,
    AsyncResult,
    Client,
    CompositeError,
    RemoteError,
)

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


def fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def touch_then_wait(started: str, release: str) -> str:
    Path(started).write_text("")
    return wait_for_file(release)


# ------------------------------------------------------------------- item 1: everyday


def test_len_of_views_and_get_dict(rc: Client) -> None:
    assert len(rc[:]) == 2
    assert len(rc[0]) == 1
    assert len(rc.load_balanced_view()) == 2
    assert len(rc.broadcast_view()) == 2
    assert bool(rc.direct_view([]))  # a view with no engines is still a view
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get_dict()
    assert set(pids) == {0, 1}
    assert pids[0] == rc.engines[0].pid
    assert rc[1].apply_async(double, 4).get_dict() == {1: 8}
    mapped = rc.load_balanced_view().map_async(double, range(10), chunksize=1)
    mapped.wait()
    with pytest.raises(ValueError, match="ran on engine"):
        mapped.get_dict()


def test_client_wait_outstanding_history(rc: Client, tmp_path: Path) -> None:
    release = tmp_path / "release"
    lview = rc.load_balanced_view()
    ar = lview.apply_async(wait_for_file, str(release))
    assert set(ar.msg_ids) <= rc.outstanding
    assert rc.history[-1] == ar.msg_ids[-1]
    assert rc.wait(ar, timeout=0.05) is False
    assert rc.wait(timeout=0.05) is False  # every outstanding task
    release.write_text("go")
    assert rc.wait([ar.msg_ids[0]], timeout=30) is True
    assert rc.wait(-1) is True  # an index into history
    assert rc.wait() is True
    assert not set(ar.msg_ids) & rc.outstanding
    assert ar.get() == "released"


def test_view_wait_with_and_without_jobs(rc: Client, tmp_path: Path) -> None:
    lview = rc.load_balanced_view()
    release = tmp_path / "go"
    ar = lview.apply_async(wait_for_file, str(release))
    assert lview.wait(timeout=0.05) is False
    assert lview.wait(ar, 0.05) is False
    release.write_text("")
    assert lview.wait(timeout=30) is True
    assert lview.wait([ar]) is True


def test_hub_history_and_get_result(rc: Client) -> None:
    ar = rc[0].apply_async(double, 21)
    ar.get(30)
    msg_id = ar.msg_ids[0]
    deadline = time.monotonic() + 30
    while msg_id not in rc.hub_history():  # the hub records off its hot path
        assert time.monotonic() < deadline
        time.sleep(0.01)
    history = rc.hub_history()
    assert history.index(msg_id) >= 0
    found = rc.get_result(msg_id, block=True, owner=True)
    assert isinstance(found, AsyncResult)
    assert found.get() == 42
    assert rc.get_result(-1).msg_ids == rc.get_result(rc.history[-1]).msg_ids


def test_resubmit_runs_the_task_again(rc: Client) -> None:
    lview = rc.load_balanced_view()
    ar = lview.apply_async(os.getpid)
    ar.get(30)
    again = rc.resubmit(ar)
    assert again.msg_ids != ar.msg_ids
    assert again.get(30) in {e.pid for e in rc.engines.values()}
    direct = rc[:].apply_async(double, 5)
    direct.get(30)
    assert rc.resubmit(direct.msg_ids, block=True).get() == [10, 10]
    # ipyparallel's shapes: a list of msg_ids gives a list of values, even of one
    assert rc.resubmit(ar.msg_ids).get(30) in [[e.pid] for e in rc.engines.values()]
    assert rc.get_result(ar.msg_ids).get(30) == [ar.get()]
    assert rc.get_result(ar.msg_ids[0]).get(30) == ar.get()
    assert rc[:].scatter("shape", [1, 2], block=True) is None  # as a blocking push
    mapped = lview.map_async(double, range(6), chunksize=2)
    mapped.get(30)
    assert rc.resubmit(mapped).get(30) == [0, 2, 4, 6, 8, 10]


def test_block_flags_on_clear_shutdown_and_wait_for_engines(rc: Client) -> None:
    dview = rc[:]
    dview.push({"gone": 1}, block=True)
    future = rc.clear(block=False)
    assert isinstance(future, concurrent.futures.Future)
    future.result(30)
    with pytest.raises(RemoteError):
        dview.pull("gone", block=True)
    dview.push({"gone": 2}, block=True)
    assert dview.clear(block=True) is None
    with pytest.raises(RemoteError):
        dview.pull("gone", block=True)
    waiting = rc.wait_for_engines(2, timeout=-1, block=False)
    assert waiting.result(30) == [0, 1]
    assert rc.wait_for_engines(timeout=5) == [0, 1]
    with pytest.raises(ValueError, match="restart"):
        rc.shutdown(targets=[0], restart=True)


def test_shutdown_one_engine_and_send_signal(tmp_path: Path) -> None:
    live = LiveCluster(tmp_path, n=3, threads=True, cluster_id="sig")
    try:
        rc = live.client
        assert rc.ids == [0, 1, 2]
        # A task on each engine first: its control socket is then surely connected.
        assert len(set(rc[:].apply_sync(os.getpid))) == 3
        started = tmp_path / "started"
        ar = rc[0].apply_async(touch_then_wait, str(started), str(tmp_path / "never"))
        wait_for_file(str(started), 30)
        rc.send_signal("SIGINT", targets=0)
        with pytest.raises(RemoteError) as info:
            ar.get(30)
        assert info.value.ename == "KeyboardInterrupt"
        pid = rc.engines[1].pid
        rc.send_signal(signal.SIGTERM, targets=[1])
        deadline = time.monotonic() + 30
        while 1 in rc.ids:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (proc,) = [p for p in live.engines if p.pid == pid]
        assert proc.wait(30) is not None
        assert pid not in {e.pid for e in rc.engines.values()}
        with pytest.raises(RemoteError, match="unknown signal"):
            rc.send_signal("SIGNOPE", targets=0)
        rc.send_signal(0, targets=0)  # signal 0, a liveness probe (as os.kill): accepted
        # shutdown(targets=...) stops that engine only; the controller stays up.
        rc.shutdown(targets=2, block=True)
        deadline = time.monotonic() + 30
        while 2 in rc.ids:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert rc[0].apply_sync(double, 1) == 2
    finally:
        live.stop()


# ------------------------------------------------------------------- item 2: calls


def test_execute_returns_a_result_with_execute_result(rc: Client) -> None:
    dview = rc[:]
    ar = dview.execute("a = 5\na * 2", block=True)
    assert isinstance(ar, AsyncResult)
    replies = ar.get()
    assert len(replies) == 2
    ar.wait_for_output(10)
    assert [r.execute_result["data"]["text/plain"] for r in replies] == ["10", "10"]
    assert ar.execute_result[0]["data"]["text/plain"] == "10"
    one = rc[0].execute("print('hi'); a + 1", block=True)
    one.wait_for_output(10)
    assert one.get().execute_result["data"]["text/plain"] == "6"
    assert one.stdout == "hi\n"
    assert "Out[0:" in repr(one.get())
    with pytest.raises(RemoteError) as info:
        dview.execute("1/0", block=True)
    assert info.value.ename == "ZeroDivisionError"
    pending = dview.execute("b = 1", block=False)
    assert isinstance(pending, AsyncResult)
    pending.get(30)
    bview = rc.broadcast_view()
    assert isinstance(bview.execute("c = 3", block=True), AsyncResult)
    assert bview.pull("c", block=True) == [3, 3]


def test_execute_block_returns_with_its_output(rc: Client) -> None:
    # the execute_result travels on iopub, apart from the reply: a blocking execute (and
    # get()) waits for it, so it is there at once, every time
    for i in range(40):
        reply = rc[i % 2].execute(f"print('out', {i}); {i} * 2", block=True).get()
        assert reply.execute_result["data"]["text/plain"] == str(i * 2)
        assert reply.stdout == f"out {i}\n"
    ar = rc[:].execute("7 * 6")
    assert [r.execute_result["data"]["text/plain"] for r in ar.get()] == ["42", "42"]
    fetched = rc.get_result(ar.msg_ids[0]).get()
    assert fetched.execute_result["data"]["text/plain"] == "42"


def fail_first(rank: int) -> int:
    import time

    if rank == 0:
        raise ValueError("rank 0 fails at once")
    time.sleep(0.5)
    return rank


def test_split_and_wait_first_exception(rc: Client) -> None:
    dview = rc[:]
    dview.scatter("rank", rc.ids, flatten=True, block=True)
    ar = dview.apply_async(fail_first, ipp.Reference("rank"))
    done, pending = ar.wait(timeout=30, return_when=ipp.FIRST_EXCEPTION)
    assert len(done) == 1 and len(pending) == 1  # back before the slow engine is done
    (first,) = done
    assert first.msg_ids == ar.msg_ids[:1] and first.engine_id == 0
    with pytest.raises(RemoteError):
        first.get()
    assert ar.wait(timeout=30) is True
    parts = ar.split()
    assert [p.get(return_exceptions=True) for p in parts][1] == 1
    assert parts[1].metadata is ar.metadata[1]  # the parts share the metadata
    # one task of a multi-task result, by msg_id: its part, with its value
    assert rc.get_result(ar.msg_ids[1]) is parts[1]
    mapped = rc.load_balanced_view().map_async(double, range(6), chunksize=2)
    assert [p.get(30) for p in mapped.split()] == [[0, 2], [4, 6], [8, 10]]
    single = rc[0].apply_async(double, 1)
    assert single.split() == (single,)
    bcast = rc.broadcast_view().apply_async(double, 2)
    assert rc.get_result(bcast.msg_ids[0]) is bcast  # a broadcast is one task


def test_map_takes_iterators_and_generators(rc: Client) -> None:
    lview = rc.load_balanced_view()
    assert lview.map_sync(double, iter(range(5))) == [0, 2, 4, 6, 8]
    assert lview.map_sync(pow, (i for i in range(4)), iter([2] * 4)) == [0, 1, 4, 9]
    assert rc[:].map_sync(double, (i for i in range(5))) == [0, 2, 4, 6, 8]
    gen = lview.imap(double, (i for i in range(20)), max_outstanding=2)
    assert list(gen) == [2 * i for i in range(20)]
    with pytest.raises(TypeError, match="not both"):
        lview.imap(double, range(3), max_in_flight=2, max_outstanding=3)


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_cancel_stops_taking_input(rc: Client, ordered: bool) -> None:
    import itertools

    lview = rc.load_balanced_view()
    taken: list[int] = []

    def source() -> Any:
        for i in itertools.count():
            taken.append(i)
            yield i

    gen = lview.imap(double, source(), ordered=ordered, max_outstanding=3)
    first = [next(gen), next(gen)]
    gen.cancel()  # an infinite input: stop once we have what we need
    rest = list(gen)  # the tasks already submitted still give their results
    assert len(taken) <= 5  # 3 in flight, plus one more per result consumed
    assert sorted(first + rest) == [2 * i for i in taken]


def test_abort_by_msg_id(rc: Client, tmp_path: Path) -> None:
    release = tmp_path / "go"
    engine0 = rc[0]
    blocker = engine0.apply_async(wait_for_file, str(release))
    queued = engine0.apply_async(double, 1)
    engine0.abort(queued.msg_ids)
    release.write_text("")
    assert blocker.get(30) == "released"
    with pytest.raises(ipp.TaskAborted):
        queued.get(30)


def test_pull_targets_dotted_names_and_getitem(rc: Client) -> None:
    dview = rc[:]
    dview.execute("import types\nns = types.SimpleNamespace(b=7)\nv = 1", block=True)
    dview.push({"v": 9}, targets=0, block=True)
    assert dview.pull("v", targets=0, block=True) == 9
    assert dview.pull("v", targets=1, block=True) == 1
    assert dview.pull("v", block=True) == [9, 1]
    assert dview["ns.b"] == [7, 7]
    assert rc[0]["ns.b"] == 7
    assert dview.pull(["v", "ns.b"], targets=[1], block=True) == [[1, 7]]
    with pytest.raises(NameError):
        dview.pull("ns.1b", block=True)
    assert dview.targets == [0, 1]  # targets= did not change the view


def test_importer_cloudpickle_executor(rc: Client) -> None:
    dview = rc[:]
    with dview.importer:
        import json  # noqa: F401
    assert dview.apply_sync(lambda: json.dumps([1])) == ["[1]", "[1]"]  # noqa: F821
    dview.use_cloudpickle()
    assert dview.use_cloudpickle().get(30) == [None, None]
    with rc.load_balanced_view().executor as pool:
        assert list(pool.map(double, range(4))) == [0, 2, 4, 6]


def test_apply_with_a_keyword_named_f(rc: Client) -> None:
    def g(f: int = 1, *, self: int = 0) -> int:
        return f + self

    assert rc.load_balanced_view().apply_async(g, f=5).get(30) == 5
    assert rc[0].apply_sync(g, f=5, self=1) == 6
    assert rc[:].apply(g, f=2).get(30) == [2, 2]


def test_parallel_decorator_calls_once_per_engine(rc: Client) -> None:
    dview = rc[:]

    @dview.parallel(block=True)
    def lengths(part: Any) -> list[int]:
        return [len(part)]

    assert lengths(range(10)) == [5, 5]

    @ipp.parallel(dview, block=True)
    def add_one(part: Any) -> list[int]:
        return [x + 1 for x in part]

    assert add_one(range(5)) == [1, 2, 3, 4, 5]
    assert dview.parallel(block=True)(double).map(range(3)) == [0, 2, 4]
    lview = rc.load_balanced_view()

    @lview.parallel(block=True)
    def sizes(part: Any) -> list[int]:
        return [len(part)]

    assert sizes(range(4)) == [1, 1, 1, 1]

    @ipp.remote(rc[0], block=True)
    def where() -> int:
        return os.getpid()

    assert where() == rc.engines[0].pid
    pending = dview.parallel(block=False)(lambda part: list(part))(range(4))
    assert isinstance(pending, AsyncMapResult)
    assert pending.get(30) == [0, 1, 2, 3]


# ------------------------------------------------------------------- item 3: results


def test_metadata_attributes_and_times(rc: Client) -> None:
    ar = rc[0].apply_async(time.sleep, 0.01)
    ar.get(30)
    assert ar["engine_id"] == 0
    assert ar.engine_id == 0
    for key in ("submitted", "started", "completed", "received"):
        assert isinstance(ar[key], datetime), key
    assert ar.started <= ar.completed
    assert ar.wall_time > 0
    assert 0 < ar.serial_time <= ar.wall_time
    many = rc[:].apply_async(time.sleep, 0)
    many.get(30)
    assert many["engine_id"] == [0, 1]
    assert all(isinstance(t, datetime) for t in many.completed)
    with pytest.raises(AttributeError):
        many.no_such_key  # noqa: B018
    pending = rc[0].apply_async(time.sleep, 0.5)
    with pytest.raises(TimeoutError):
        pending.wall_time  # noqa: B018
    pending.get(30)


def test_views_take_the_client_block_flag(rc: Client) -> None:
    """ipyparallel's scripts set ``rc.block = True`` once: every view made after it
    blocks, so ``apply`` gives values and ``execute`` raises (they got AsyncResults, and
    a failing execute passed silently)."""
    assert rc[:].block is False
    rc.block = True
    try:
        assert rc[:].block and rc[0].block and rc.load_balanced_view().block
        assert rc[:].apply(fail_on_odd, 2) == [2, 2]
        with pytest.raises(CompositeError):
            rc[:].execute("1 / 0")
        assert rc.direct_view(block=False).block is False  # an explicit flag still wins
    finally:
        rc.block = False
    assert rc[:].block is False


def test_return_exceptions(rc: Client) -> None:
    lview = rc.load_balanced_view()
    values = lview.map(fail_on_odd, range(4), block=True, chunksize=1, return_exceptions=True)
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], RemoteError) and values[1].ename == "ValueError"
    ar = lview.map_async(fail_on_odd, range(4), chunksize=1)
    assert ar.get(30, return_exceptions=True)[3].evalue == "odd 3"
    single = lview.apply_async(fail_on_odd, 1)
    assert isinstance(single.get(30, return_exceptions=True), RemoteError)
    items = list(lview.imap(fail_on_odd, range(4), return_exceptions=True))
    assert [type(x).__name__ for x in items] == ["int", "RemoteError", "int", "RemoteError"]
    # A chunk is one task, but each element has its own outcome (one failure stood for
    # the whole chunk, and the elements after it never ran).
    chunked = list(lview.imap(fail_on_odd, range(4), chunksize=2, return_exceptions=True))
    assert [type(x).__name__ for x in chunked] == ["int", "RemoteError", "int", "RemoteError"]
    for view in (lview, rc[:]):
        outcomes = view.map(fail_on_odd, range(8), chunksize=4, return_exceptions=True)
        assert [o if isinstance(o, int) else o.evalue for o in outcomes] == [
            0, "odd 1", 2, "odd 3", 4, "odd 5", 6, "odd 7"
        ]  # fmt: skip
        assert "fail_on_odd" in outcomes[1].traceback and outcomes[1].engine_id in (0, 1)
        lazy = view.map_async(fail_on_odd, range(8), chunksize=4, return_exceptions=True)
        assert [type(x).__name__ for x in lazy][:2] == ["int", "RemoteError"]
        with pytest.raises(RemoteError, match="odd 1"):
            view.map_sync(fail_on_odd, range(8), chunksize=4)
    with pytest.raises(RemoteError):
        ar.get(30, return_when=ipp.FIRST_EXCEPTION)


def test_gather_reprs_and_progress(rc: Client) -> None:
    dview = rc[:]
    dview.scatter("part", list(range(6)), block=True)
    gathered = dview.gather("part")
    assert isinstance(gathered, AsyncMapResult)
    assert gathered.get(30) == list(range(6))
    assert repr(gathered) == "<AsyncMapResult(gather): finished>"
    pulled = dview.pull("part")
    pulled.get(30)
    assert repr(pulled) == "<AsyncResult(pull): finished>"
    mapped = rc.load_balanced_view().map_async(double, range(1000))
    mapped.get(60)
    assert len(mapped) == 1000 and mapped.progress == 1000


def test_single_engine_display_outputs_has_no_prefix(rc: Client, capsys: Any) -> None:
    ar = rc[0].execute("print('plain')", block=True)
    ar.display_outputs()
    assert capsys.readouterr().out == "plain\n"
    both = rc[:].execute("print('x')\nprint('y')", block=True)
    both.display_outputs()  # ipyparallel's layout: a label line, the text under it
    assert capsys.readouterr().out == "[stdout:0] \nx\ny\n[stdout:1] \nx\ny\n"


# ------------------------------------------------------------------- item 6: quirks


def test_queue_status_shape_and_client_indexing(rc: Client) -> None:
    status = rc.queue_status()
    assert set(status) == {0, 1, "unassigned"}
    assert {"queue", "completed", "tasks"} <= set(status[0])
    assert status[0]["completed"] >= 1
    assert isinstance(status["unassigned"], int)
    assert {"queue", "completed", "tasks"} <= set(rc.queue_status(0))
    with pytest.raises(TypeError):
        rc[None]
    assert rc.load_balanced_view(-1).targets == 1
    assert rc.load_balanced_view(-1).apply_sync(os.getpid) == rc.engines[1].pid


# ------------------------------------------------------------- items 4, 5: errors, names


def test_composite_error_api(rc: Client, capsys: Any) -> None:
    with pytest.raises(ipp.CompositeError) as info:
        rc[:].apply_sync(fail_on_odd, 1)
    error = info.value
    assert isinstance(error, ipp.RemoteError) and isinstance(error, ipp.KernelError)
    assert [e[0] for e in error.elist] == ["ValueError", "ValueError"]
    assert [e[3]["engine_id"] for e in error.elist] == [0, 1]
    assert error.tb_limit == 4
    lines = error.render_traceback()
    assert any("ValueError" in line for line in lines)
    assert error.render_traceback(1)[0].startswith("[engine 1] ValueError")
    with pytest.raises(IndexError):
        error.render_traceback(5)
    error.print_traceback()
    assert "odd 1" in capsys.readouterr().out
    assert error._render_traceback_() == lines
    with pytest.raises(ipp.RemoteError) as one:
        error.raise_exception(1)
    assert one.value.engine_id == 1
    assert issubclass(ipp.DependencyTimeout, ipp.ImpossibleDependency)
    assert issubclass(ipp.InvalidDependency, ipp.UnmetDependency)
    assert issubclass(ipp.TaskTimeout, ipp.RemoteError)


def test_names_exported() -> None:
    for name in (
        "Reference",
        "require",
        "depend",
        "dependent",
        "Dependency",
        "FIRST_EXCEPTION",
        "bind_kernel",
        "TaskTimeout",
        "InvalidDependency",
        "ImpossibleDependency",
        "KernelError",
        "AsyncMapResult",
        "DirectView",
        "LoadBalancedView",
    ):
        assert getattr(ipp, name) is not None, name
    assert ipp.FIRST_EXCEPTION == concurrent.futures.FIRST_EXCEPTION
    with pytest.raises(RuntimeError, match="runs on an engine"):
        ipp.bind_kernel()  # here, not on an engine (tests/test_parallel_bind_kernel.py)


def test_reference_arguments(rc: Client) -> None:
    dview = rc[:]
    dview.push({"base": 10}, targets=0, block=True)
    dview.push({"base": 20}, targets=1, block=True)
    assert dview.apply_sync(lambda x, y=0: x + y, ipp.Reference("base"), y=1) == [11, 21]
    assert rc[0].apply_sync(double, ipp.Reference("base")) == 20
    with pytest.raises(RemoteError) as info:
        rc[0].apply_sync(double, ipp.Reference("missing_name"))
    assert info.value.ename == "NameError"
    # expressions, and References standing for the function (ipyparallel)
    rc[0]["g"] = list(range(5))
    assert rc[0].apply_sync(double, ipp.Reference("g[3]")) == 6
    dview.execute("times = lambda x, y: x * y", block=True)
    xs, ys = list(range(10)), list(range(10))[::-1]
    expected = [x * y for x, y in zip(xs, ys, strict=True)]
    assert dview.map_sync(ipp.Reference("times"), xs, ys) == expected
    assert rc.load_balanced_view().map_sync(ipp.Reference("times"), xs, ys) == expected
    assert rc[1].apply_sync(ipp.Reference("times"), 6, 7) == 42
    with pytest.raises(TypeError):
        ipp.Reference("not an expression(")


def publishing(n: int) -> str:
    from corral.datapub import publish_data

    for i in range(n):
        publish_data({"i": i, "square": i * i})
    return "done"


def test_publish_data_reaches_ar_data(rc: Client) -> None:
    ar = rc[:].apply_async(publishing, 5)
    assert ar.get(30) == ["done", "done"]
    assert ar.wait_for_output(30)
    assert ar.data == [{"i": 4, "square": 16}] * 2  # merged per task, later keys win
    code = (
        "from corral.datapub import publish_data\nfor i in range(3):\n    publish_data(dict(i=i))"
    )
    one = rc[0].execute(code, block=True)
    assert one.data == {"i": 2}
    assert rc[1].apply_sync(double, 1) == 2 and rc[1].apply_async(double, 2).get(30) == 4
    with pytest.raises(RuntimeError, match="corral engine"):
        ipp.datapub.publish_data({"here": 1})


def test_outputs_values_and_rich_execute_replies(rc: Client) -> None:
    e0 = rc[0]
    code = "from corral.display import display, HTML\n[display(i) for i in range(3)]\n"
    shown = e0.execute(code + "HTML('<b>b</b>')", block=True)
    # as in ipyparallel: outputs are the displays; the value has its own key
    assert [o["data"] for o in shown.outputs] == [{"text/plain": str(i)} for i in range(3)]
    reply = shown.get()
    assert reply._repr_html_() == "<b>b</b>"
    assert reply._repr_png_() is None
    assert "text/html" in reply._repr_mimebundle_()


def test_require_and_depend_are_checked_on_the_engine(rc: Client) -> None:
    @ipp.require("json")
    def dumps() -> str:
        return json.dumps({"a": 1})  # type: ignore[name-defined]  # noqa: F821

    assert rc.load_balanced_view().apply_sync(dumps) == '{"a": 1}'

    @ipp.require("no_such_module_for_corral")
    def impossible() -> int:
        return 1

    with pytest.raises(ipp.UnmetDependency):
        rc.load_balanced_view().apply_sync(impossible)

    def on_engine(engine_pid: int) -> bool:
        return os.getpid() == engine_pid

    pid0 = rc.engines[0].pid

    @ipp.depend(on_engine, pid0)
    def mine() -> int:
        return os.getpid()

    assert rc[0].apply_sync(mine) == pid0
    with pytest.raises(ipp.UnmetDependency):
        rc[1].apply_sync(mine)
    assert mine() == os.getpid()  # locally, a plain call


def _make_tripler() -> Any:
    def tripled(x: int) -> int:
        return 3 * x

    return tripled


def test_require_pushes_functions_and_names(rc: Client) -> None:
    # ``tripled`` and ``scale`` are no globals here: only require() can provide them
    @ipp.require(_make_tripler(), scale=7)
    def uses(x: int) -> int:
        return tripled(x) * scale  # type: ignore[name-defined]  # noqa: F821

    assert rc.load_balanced_view().apply_sync(uses, 2) == 42
    assert rc[0].apply_sync(uses, 1) == 21
    with pytest.raises(TypeError):
        ipp.require(42)


def test_after_with_a_dependency_set(rc: Client, tmp_path: Path) -> None:
    lview = rc.load_balanced_view()
    marker = tmp_path / "first"
    first = lview.apply_async(lambda p: Path(p).write_text("x") and "done", str(marker))
    with lview.temp_flags(after=ipp.Dependency([first])):
        second = lview.apply_async(lambda p: Path(p).exists(), str(marker))
    assert second.get(30) is True
    with pytest.raises(ValueError):
        ipp.Dependency([first], success=False, failure=False)


def boom_task() -> None:
    raise RuntimeError("dependency fails")


def test_dependency_flags_and_unreachable_dependencies(rc: Client, tmp_path: Path) -> None:
    lview = rc.load_balanced_view()
    failed = lview.apply_async(boom_task)
    ok = lview.apply_async(os.getpid)
    with pytest.raises(RemoteError):
        failed.get(30)
    pid = ok.get(30)
    # ipyparallel's error type for a dependency that can never be met
    with pytest.raises(ipp.ImpossibleDependency):
        with lview.temp_flags(after=failed):
            lview.apply_sync(os.getpid)
    with lview.temp_flags(after=ipp.Dependency([failed], success=False, failure=True)):
        assert lview.apply_sync(double, 2) == 4  # runs because the dependency failed
    with lview.temp_flags(after=ipp.Dependency([failed, ok], all=False)):
        assert lview.apply_sync(double, 3) == 6  # one success is enough
    with lview.temp_flags(follow=ipp.Dependency([ok], all=False)):
        assert lview.apply_sync(os.getpid) == pid  # where its dependency ran
    with lview.temp_flags(after=ipp.Dependency([ok], success=False, failure=True)):
        with pytest.raises(ipp.ImpossibleDependency) as info:
            lview.apply_sync(os.getpid)
    assert info.value.ename == "ImpossibleDependency"
    # waiting past ``timeout``: ipyparallel's TaskTimeout (corral's DependencyTimeout)
    release = tmp_path / "release"
    blocker = lview.apply_async(wait_for_file, str(release))
    with lview.temp_flags(after=blocker, timeout=0.1):
        with pytest.raises(ipp.TaskTimeout) as timed_out:
            lview.apply_sync(os.getpid)
    assert isinstance(timed_out.value, ipp.DependencyTimeout)
    release.write_text("")
    assert blocker.get(30) == "released"


def test_depend_on_a_load_balanced_view_finds_the_engine(rc: Client) -> None:
    def on_engine(engine_pid: int) -> bool:
        return os.getpid() == engine_pid

    lview = rc.load_balanced_view()
    for engine_id in rc.ids:  # wherever the scheduler sends it first, it runs there
        pid = rc.engines[engine_id].pid

        @ipp.depend(on_engine, pid)
        def where() -> int:
            return os.getpid()

        results = [lview.apply_async(where) for _ in range(4)]
        assert [r.get(30) for r in results] == [pid] * 4
        assert {r.engine_id for r in results} == {engine_id}

    @ipp.require("no_such_module_for_corral")
    def impossible() -> int:
        return 1

    with pytest.raises(ipp.ImpossibleDependency, match="every engine rejected it"):
        lview.apply_sync(impossible)


def test_remote_tracebacks_name_the_file_and_show_the_line(rc: Client, tmp_path: Path) -> None:
    import linecache

    source = (
        "def helper(y):\n"
        "    raise ValueError(f'bad {y}')\n"
        "\n"
        "def boom(x):\n"
        "    y = x + 1\n"
        "    return helper(y)\n"
    )
    script = tmp_path / "script.py"
    script.write_text(source)
    ns: dict[str, Any] = {"__name__": "__main__"}  # as a script's or a notebook's functions
    exec(compile(source, str(script), "exec"), ns)
    with pytest.raises(RemoteError) as info:
        rc[0].apply_sync(ns["boom"], 1)
    text = info.value.traceback
    assert f"File {script}:6, in boom(x)" in text
    assert "----> 6     return helper(y)" in text
    assert f"File {script}:2, in helper(y)" in text
    assert "raise ValueError(f'bad {y}')" in text
    # A notebook cell of corral's kernel: named as the cell, like local tracebacks.
    cell = "def in_cell():\n    return 1 / 0\n"
    linecache.cache["<cell-7>"] = (len(cell), None, cell.splitlines(True), "<cell-7>")
    cell_ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(cell, "<cell-7>", "exec"), cell_ns)
    with pytest.raises(RemoteError) as info:
        rc.load_balanced_view().apply_sync(cell_ns["in_cell"])
    assert "Cell In[7], line 2, in in_cell()" in info.value.traceback
    assert "return 1 / 0" in info.value.traceback
    # A terminal IPython cell (<ipython-input-N-HASH>): named as IPython names it here.
    name = "<ipython-input-12-0123abcd>"
    cell = "def in_ipython():\n    return {}['missing']\n"
    linecache.cache[name] = (len(cell), None, cell.splitlines(True), name)
    ipython_ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(cell, name, "exec"), ipython_ns)
    with pytest.raises(RemoteError) as info:
        rc[0].apply_sync(ipython_ns["in_ipython"])
    assert "Cell In[12], line 2, in in_ipython()" in info.value.traceback
    assert "ipython-input" not in info.value.traceback


def test_map_tracebacks_name_the_file_and_show_the_line(rc: Client, tmp_path: Path) -> None:
    """A map runs the user's function inside the library's chunk runner: its frames are
    named and quoted as apply's are, on load-balanced and direct views."""
    source = (
        "def bad(x):\n    if x == 3:\n        raise ValueError(f'bad value {x}')\n    return x\n"
    )
    script = tmp_path / "mapped.py"
    script.write_text(source)
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, str(script), "exec"), ns)
    for view in (rc.load_balanced_view(), rc[:]):
        with pytest.raises(CompositeError) as info:
            view.map_sync(ns["bad"], range(5))
        text = str(info.value)
        assert f"File {script}:3, in bad(x)" in text
        assert "----> 3         raise ValueError(f'bad value {x}')" in text


def test_more_ipyparallel_names(rc: Client, capsys: Any) -> None:
    lview = rc.load_balanced_view()
    ar = lview.apply_async(double, 3)
    assert ar.r == 6 and ar.result_dict() == {ar.engine_id: 6}
    assert ar.wait_for_send() and ar.owner and ar.sent
    assert lview.history[-1] == ar.msg_ids[0]
    assert lview.get_result().get(30) == 6  # the last task
    assert isinstance(lview.outstanding, set)
    rc.wait_interactive([lview.apply_async(double, 1)])
    assert "tasks" in capsys.readouterr().err  # the progress bar
    chatty = rc[:].execute("print('streamed')")
    with chatty.stream_output():
        chatty.wait(30)
        chatty.wait_for_output(30)
    blocks = capsys.readouterr().out.split("[stdout:")[1:]  # each engine's own block
    assert sorted(blocks) == ["0] \nstreamed\n", "1] \nstreamed\n"]
    rc.spin()
    assert ipp.ViewExecutor is ipp.plugins.parallel.client.executor.ClusterExecutor
    assert ipp.use_cloudpickle() is None and ipp.use_pickle() is None
    assert ipp.use_dill() is None  # a habit of ipyparallel notebooks: accepted
    rc[:].use_dill().get(30)
    assert rc[:].apply_sync(lambda k=3: (lambda x: x * k)(2)) == [6, 6]  # closures go anyway
    assert issubclass(ipp.NoEnginesRegistered, ipp.KernelError)
    assert ipp.FIRST_COMPLETED == concurrent.futures.FIRST_COMPLETED
