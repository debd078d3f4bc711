"""More ipyparallel users' scripts, run unchanged but for ``import corral as ipp``.

As in ``test_ipp_scripts.py``: each script starts its own two-engine cluster the way
ipyparallel's documentation does, checks what ipyparallel does with plain ``assert``
(each check was run against ipyparallel 9 first), and stops the cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ipp_scripts import run_script

pytestmark = pytest.mark.timeout(240)


def test_result_status_values_and_purge_by_engine(tmp_path: Path) -> None:
    """``result_status(ids, status_only=False)`` (ipyparallel's second parameter) maps
    completed msg_ids to their values; ``purge_results(targets=...)`` forgets what ran
    on those engines only."""
    run_script(
        tmp_path,
        """
        import time
        import corral as ipp
        from corral.error import RemoteError

        def add(a, b):
            return a + b

        def boom():
            raise ValueError("boom")

        def recorded(rc, msg_ids):
            deadline = time.monotonic() + 30
            while len(rc.db_query({"msg_id": {"$in": msg_ids}}, keys=["msg_id"])) < len(msg_ids):
                assert time.monotonic() < deadline, "the hub never recorded the tasks"
                time.sleep(0.05)

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            ok = lview.apply_async(add, 1, 1)
            assert ok.get(timeout=30) == 2
            recorded(rc, ok.msg_ids)  # the hub's record comes beside the client's result
            status = rc.result_status(ok.msg_ids)
            assert status["completed"] == ok.msg_ids and status["pending"] == []
            assert ok.msg_ids[0] not in status  # status only: no values
            for status in (
                rc.result_status(ok.msg_ids, status_only=False),
                rc.result_status(ok.msg_ids, False),
            ):
                assert status["completed"] == ok.msg_ids
                assert status[ok.msg_ids[0]] == 2
            bad = rc[0].apply_async(boom)
            bad.wait(30)
            recorded(rc, bad.msg_ids)
            both = rc.result_status(ok.msg_ids + bad.msg_ids, status_only=False)
            assert both[ok.msg_ids[0]] == 2
            assert isinstance(both[bad.msg_ids[0]], RemoteError)
            try:  # one failed task asked for alone: its error is raised
                rc.result_status(bad.msg_ids, status_only=False)
            except RemoteError as e:
                assert e.ename == "ValueError"
            else:
                raise AssertionError("result_status did not raise the task's error")

            on0 = rc[0].apply_async(add, 0, 0)
            on1 = rc[1].apply_async(add, 1, 1)
            assert (on0.get(timeout=30), on1.get(timeout=30)) == (0, 2)
            recorded(rc, on0.msg_ids + on1.msg_ids)
            rc.purge_results(targets=[0])
            assert rc.db_query({"msg_id": {"$in": on0.msg_ids}}) == []
            assert len(rc.db_query({"msg_id": {"$in": on1.msg_ids}})) == 1
            rc.purge_hub_results(targets=1)
            assert rc.db_query({"msg_id": {"$in": on1.msg_ids}}) == []
        print("OK")
        """,
    )


def test_abort_stays_on_the_engines_named(tmp_path: Path) -> None:
    """``rc[0].abort()`` aborts what rc[0] queued on engine 0 only, ``lview.abort()``
    what the load balancer was sent, ``rc.abort(jobs, targets=...)`` sends the abort to
    those engines only, and ``block=False`` gives a future, as in ipyparallel."""
    run_script(
        tmp_path,
        """
        import concurrent.futures
        import os
        import time
        import corral as ipp
        from corral import error

        def wait_for(path):
            import os, time
            open(path + ".started", "w").close()
            while not os.path.exists(path):
                time.sleep(0.01)
            return path

        def started(paths):
            deadline = time.monotonic() + 30
            while not all(os.path.exists(p + ".started") for p in paths):
                assert time.monotonic() < deadline, "the engines never started their tasks"
                time.sleep(0.01)

        def add(a, b):
            return a + b

        def aborted(result):
            try:
                result.get(timeout=30)
            except error.TaskAborted:
                return True
            return False

        def occupy(rc, round):
            release = [os.path.abspath(f"release{round}-{i}") for i in range(2)]
            busy = [rc[i].apply_async(wait_for, release[i]) for i in range(2)]
            started(release)  # running tasks are not aborted; make sure these run
            return release, busy

        def free(release, busy):
            for path in release:
                open(path, "w").close()
            assert [b.get(timeout=30) for b in busy] == release

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            occupied = occupy(rc, 0)
            queued0 = rc[0].apply_async(add, 0, 0)
            queued1 = rc[1].apply_async(add, 1, 1)
            balanced = lview.apply_async(add, 5, 5)
            rc[0].abort()  # what rc[0] sent, on engine 0 only
            rc.abort(queued1, targets=[0])  # engine 0 does not hold it
            free(*occupied)
            assert aborted(queued0)
            assert queued1.get(timeout=30) == 2
            assert balanced.get(timeout=30) == 10

            occupied = occupy(rc, 2)
            balanced = lview.apply_async(add, 5, 5)
            queued0 = rc[0].apply_async(add, 0, 0)
            lview.abort()  # what the load balancer was sent, not rc[0]'s task
            free(*occupied)
            assert aborted(balanced)
            assert queued0.get(timeout=30) == 0

            occupied = occupy(rc, 1)
            queued = rc[1].apply_async(add, 2, 2)
            future = rc[1].abort(queued, block=False)
            assert isinstance(future, concurrent.futures.Future)
            future.result(30)
            assert isinstance(rc.abort(queued, block=False), concurrent.futures.Future)
            free(*occupied)
            assert aborted(queued)
        print("OK")
        """,
    )


def test_a_loop_over_a_failed_map_raises_composite_error(tmp_path: Path) -> None:
    """ipyparallel's "Parallel exceptions": iterating a map whose task failed raises the
    ``CompositeError`` that ``get()`` raises (corral raised the bare ``RemoteError``, so
    ``except CompositeError`` around the loop missed it)."""
    run_script(
        tmp_path,
        """
        import corral as ipp

        def maybe_fail(x):
            if x == 2:
                raise ValueError(f"bad {x}")
            return x

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            for result in (
                lview.map(maybe_fail, range(4)),
                lview.map(maybe_fail, range(4), chunksize=1, ordered=False),
                rc[:].map(maybe_fail, range(4)),
                rc[:].apply_async(maybe_fail, 2),
            ):
                try:
                    for x in result:
                        pass
                except ipp.CompositeError as e:
                    assert e.elist[0][:2] == ("ValueError", "bad 2")
                    try:
                        e.raise_exception()
                    except ipp.RemoteError as r:
                        assert (r.ename, r.evalue) == ("ValueError", "bad 2")
                else:
                    raise AssertionError(f"{result!r} iterated without an error")
            assert list(lview.imap(maybe_fail, range(2))) == [0, 1]
        print("OK")
        """,
    )


def test_map_of_a_required_function_checks_on_the_engine(tmp_path: Path) -> None:
    """``view.map`` of a ``@require``/``@depend`` function imports its modules on the
    engine and honours its conditions, as ``apply`` does (corral's map called the bare
    function: a NameError for the module, unmet conditions ignored)."""
    run_script(
        tmp_path,
        """
        import corral as ipp

        @ipp.require("math")
        def floor(x):
            return math.floor(x)  # math is not imported here: the engine imports it

        @ipp.require("no_such_module_here")
        def unmet(x):
            return x

        @ipp.depend(lambda: False)
        def never(x):
            return x

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            dview, lview = rc[:], rc.load_balanced_view()
            assert lview.map_sync(floor, [1.5, 2.5, 3.5]) == [1, 2, 3]
            assert dview.map_sync(floor, [1.5, 2.5, 3.5]) == [1, 2, 3]
            assert dview.map_async(floor, [4.5], return_exceptions=True).get(timeout=30) == [4]
            for view, ename in ((dview, "UnmetDependency"), (lview, "ImpossibleDependency")):
                for f in (unmet, never):
                    try:
                        view.map_async(f, [1, 2]).get(timeout=30)
                    except ipp.CompositeError as e:
                        assert {x[0] for x in e.elist} == {ename}, e.elist
                    else:
                        raise AssertionError(f"{f.__name__} ran on {view!r}")
        print("OK")
        """,
    )


def test_references_inside_a_list_or_dict_argument(tmp_path: Path) -> None:
    """ipyparallel resolves a ``Reference`` one level into a short list, tuple or dict
    argument; corral passed the Reference object itself to the function."""
    run_script(
        tmp_path,
        """
        import corral as ipp

        def echo(*args, **kwargs):
            return args, kwargs

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            rc[:].push({"a": 1, "b": [2]}, block=True)
            a, b = ipp.Reference("a"), ipp.Reference("b")
            args, kwargs = rc[0].apply_sync(echo, [a, b], (a,), {"k": b}, a, opt=[b])
            assert args == ([1, [2]], (1,), {"k": [2]}, 1), args
            assert kwargs == {"opt": [[2]]}, kwargs
            assert rc.load_balanced_view().apply_sync(echo, [a]) == (([1],), {})
        print("OK")
        """,
    )


def test_wait_interactive_takes_ipyparallel_arguments(tmp_path: Path) -> None:
    """``ar.wait_interactive(timeout=-1)`` waits until done (corral stopped after one
    interval), and ``widget=`` / ``return_when=`` are accepted, as in ipyparallel."""
    run_script(
        tmp_path,
        """
        import os
        import time
        import corral as ipp

        def wait_for(path):
            import os, time
            while not os.path.exists(path):
                time.sleep(0.01)
            return path

        def work(x, path):
            import os, time
            if x == 0:
                raise ValueError("early")
            while not os.path.exists(path):
                time.sleep(0.01)
            return path

        def release_later(path):
            import threading
            threading.Timer(0.5, lambda: open(path, "w").close()).start()

        with CLUSTER as rc:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            release = os.path.abspath("release")
            ar = lview.map_async(wait_for, [release] * 2, chunksize=1)
            release_later(release)
            ar.wait_interactive(interval=0.05, timeout=-1, widget=False)
            assert ar.ready()

            hold = os.path.abspath("hold")
            ar = lview.map_async(work, [0, 1], [hold] * 2, chunksize=1)
            ar.wait_interactive(interval=0.05, return_when=ipp.FIRST_EXCEPTION)
            assert ar.progress == 1 and not ar.ready()  # stopped at the failure
            ar.wait_interactive(interval=0.05, timeout=0.2, return_when=ipp.ALL_COMPLETED)
            assert not ar.ready()  # the timeout ended it
            open(hold, "w").close()
            assert ar.wait(30) and ar.progress == 2
        print("OK")
        """,
    )


def test_start_and_connect_with_activate_as_ipyparallel_documents_it(tmp_path: Path) -> None:
    """``rc = await Cluster(...).start_and_connect(n=2, activate=True)`` (ipyparallel's
    docstring example) was a TypeError: only the ``_sync`` twin took ``activate``."""
    run_script(
        tmp_path,
        """
        import asyncio
        import warnings
        import corral as ipp

        async def main():
            cluster = CLUSTER
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rc = await cluster.start_and_connect(n=2, activate=True)
            try:
                assert sorted(rc.ids) == [0, 1]
                # no IPython in a script: activating %px says so, as ipyparallel does
                assert any("%px" in str(w.message) for w in caught), caught
            finally:
                await cluster.stop_cluster()

        asyncio.run(main())
        print("OK")
        """,
    )
