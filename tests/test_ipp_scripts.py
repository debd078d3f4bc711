"""ipyparallel users' scripts, run unchanged but for ``import corral as ipp``.

Each test writes a script in ipyparallel's idiom and runs it with a fresh interpreter: the
script starts its own cluster (real controller and engine processes), checks what
ipyparallel's documentation promises with plain ``assert``, and stops the cluster. A
failing assertion shows the script's own traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent

#: How the scripts start their cluster: quick heartbeats, a threads controller.
CLUSTER = 'ipp.Cluster(n=2, controller_mode="threads", hb_period=0.2, hb_misses=5)'


def run_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body).replace("CLUSTER", CLUSTER))
    env = dict(
        os.environ,
        CORRAL_DIR=str(tmp_path / "corral"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("OK"), done.stdout + done.stderr
    return done.stdout


def test_sync_spellings_results_metadata_and_the_error_module(tmp_path: Path) -> None:
    run_script(
        tmp_path,
        """
        import os
        import corral as ipp
        from corral.error import CompositeError, RemoteError

        def boom(x):
            raise ValueError(f"boom {x}")

        cluster = CLUSTER
        cluster.start_controller_sync()
        assert cluster.engine_count == 0
        cluster.start_engines_sync()
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(2, timeout=60)
        assert sorted(rc.ids) == [0, 1]
        # ipyparallel's first positional parameter (and url_file=) is the connection file
        by_path = ipp.Client(str(cluster.cluster_file))
        by_url = ipp.Client(url_file=cluster.cluster_file)
        assert by_path.cluster_id == by_url.cluster_id == cluster.cluster_id
        by_path.close()
        by_url.close()

        ar = rc[:].apply_async(os.getpid)
        pids = ar.get(timeout=60)
        for msg_id, pid in zip(ar.msg_ids, pids):
            assert rc.results[msg_id] == pid
            md = rc.metadata[msg_id]
            assert md["engine_id"] in (0, 1) and md["completed"] >= md["started"]
        assert set(ar.msg_ids) <= set(rc.results)
        assert set(ar.msg_ids) <= set(rc.metadata)
        assert "no-such-id" not in rc.results
        busy = rc[0].apply_async(__import__("time").sleep, 0.3)
        try:
            rc.purge_local_results("all")  # as in ipyparallel: not while tasks run
        except RuntimeError:
            pass
        else:
            raise AssertionError("purged outstanding tasks")
        busy.get(60)
        rc.purge_local_results(ar.msg_ids[:1])
        assert ar.msg_ids[0] not in rc.results and ar.msg_ids[1] in rc.results
        rc.purge_local_results(targets=[0, 1])
        assert ar.msg_ids[1] not in rc.metadata and busy.msg_ids[0] not in rc.metadata
        assert ar.get() == pids  # a result held keeps its value

        bad = rc[:].apply_async(boom, 7)
        try:
            bad.get(timeout=60)
        except ipp.error.CompositeError as e:
            assert isinstance(e, ipp.error.RemoteError) and isinstance(e, ipp.error.IPythonError)
            assert [t[0] for t in e.elist] == ["ValueError", "ValueError"]
            infos = [t[3] for t in e.elist]  # what the engines said about themselves
            assert [i["engine_id"] for i in infos] == [0, 1]
            assert all(i["method"] == "apply" and i["engine_uuid"] for i in infos)
            assert "boom 7" in e.elist[0][1]
        else:
            raise AssertionError("no CompositeError")
        try:
            rc[:].execute("1 / 0", block=True)
        except CompositeError as e:
            assert [t[3]["method"] for t in e.elist] == ["execute", "execute"]
        else:
            raise AssertionError("no CompositeError from execute")
        first = rc.results[bad.msg_ids[0]]
        assert isinstance(first, RemoteError) and first.ename == "ValueError"
        try:
            ipp.collect_exceptions([rc.results[m] for m in bad.msg_ids], "apply")
        except CompositeError as e:
            assert len(e.errors) == 2
        else:
            raise AssertionError("collect_exceptions did not raise")
        assert ipp.error.collect_exceptions([1, 2], "apply") == [1, 2]
        try:
            raise KeyError("local")
        except KeyError:
            content = ipp.error.wrap_exception({"engine_id": 3})
        err = ipp.error.unwrap_exception(content)
        assert (err.ename, err.engine_id) == ("KeyError", 3)

        clusters = ipp.ClusterManager().load_clusters()
        key = f"{cluster.profile}:{cluster.cluster_id}"
        assert key in clusters, clusters
        other = clusters[key].connect_client_sync()  # a handle found by the manager
        assert other.ids == rc.ids
        other.close()

        new = cluster.restart_engine_sync(0)
        assert len(new) == 1 and new[0] not in (0, 1)
        cluster.stop_cluster_sync()
        assert not cluster.is_running
        assert ipp.version_info[:2] == tuple(int(p) for p in ipp.__version__.split(".")[:2])
        print("OK")
        """,
    )


def test_async_spellings(tmp_path: Path) -> None:
    run_script(
        tmp_path,
        """
        import asyncio
        import os
        import time
        import corral as ipp

        async def main():
            cluster = CLUSTER
            await cluster.start_cluster()
            rc = await cluster.connect_client()  # ipyparallel's async spelling
            rc.wait_for_engines(2, timeout=60)
            pids = await rc[:].apply_async(os.getpid)
            assert len(set(pids)) == 2
            stopped = await cluster.stop_engine(1)
            assert stopped == [1]
            deadline = time.monotonic() + 30  # this client hears of it a moment later
            while rc.ids != [0]:
                assert time.monotonic() < deadline, rc.ids
                await asyncio.sleep(0.01)
            await cluster.stop_cluster()
            assert not cluster.is_running

        asyncio.run(main())
        print("OK")
        """,
    )


def test_a_tutorial_style_session(tmp_path: Path) -> None:
    """The direct and task interfaces as ipyparallel's tutorials use them."""
    run_script(
        tmp_path,
        """
        import os
        import time
        import corral as ipp

        with CLUSTER as rc:
            dview = rc[:]
            dview.block = True
            dview["a"] = 5
            assert dview["a"] == [5, 5]
            dview.scatter("x", list(range(16)))
            dview.execute("y = [i * 2 for i in x]")
            assert dview.gather("y") == [i * 2 for i in range(16)]

            lview = rc.load_balanced_view()
            squares = lview.map_async(lambda x: x**2, range(32))
            assert squares.get() == [x**2 for x in range(32)]
            for msg_id in squares.msg_ids:  # the view and the client share the results
                assert lview.results[msg_id] == rc.results[msg_id]
                assert rc.metadata[msg_id]["status"] == "ok"

            # one engine busy, its queue aborted by msg_id from the client
            started = os.path.join(os.getcwd(), "started")
            release = os.path.join(os.getcwd(), "release")

            def hold(started, release):
                import os, time
                open(started, "w").close()
                while not os.path.exists(release):
                    time.sleep(0.005)
                return "held"

            busy = rc[0].apply_async(hold, started, release)
            queued = rc[0].apply_async(os.getpid)
            while not os.path.exists(started):
                time.sleep(0.005)
            rc.abort(queued.msg_ids)
            open(release, "w").close()
            assert busy.get(60) == "held"
            try:
                queued.get(60)
            except ipp.TaskAborted:
                pass
            else:
                raise AssertionError("the queued task ran")

            # the dependency tutorial: after, follow and @require on the task interface
            first = lview.apply_async(os.getpid)
            with lview.temp_flags(follow=first):
                assert lview.apply_sync(os.getpid) == first.get()

            @ipp.require("json")
            def dumps():
                return json.dumps([1])

            assert lview.apply_sync(dumps) == "[1]"
        print("OK")
        """,
    )


def test_task_labels(tmp_path: Path) -> None:
    """ipyparallel's ``label`` flag: set on a view, for a ``with`` block, or per call (map,
    execute); the tasks' metadata carries it and ``db_query`` finds them by it."""
    run_script(
        tmp_path,
        """
        import os
        import corral as ipp

        cluster = CLUSTER
        with cluster as rc:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            dview = rc[:]
            assert lview.set_flags(label="lb") is lview  # ipyparallel returns the view
            assert lview.set_flags(track=True).track  # accepted (corral always tracks)
            ar = lview.apply_async(os.getpid)
            ar.get(60)
            assert ar.metadata["label"] == "lb" and rc.metadata[ar.msg_ids[0]].label == "lb"
            with dview.temp_flags(label="direct"):
                direct = dview.apply_async(os.getpid)
            assert dview.label is None  # restored after the block
            direct.get(60)
            assert [md["label"] for md in direct.metadata] == ["direct", "direct"]
            dview.execute("a = 1", label="exec", block=True)
            assert dview.map_sync(abs, [-1, -2, -3, -4], label="map") == [1, 2, 3, 4]
            one = rc[0]
            one.label = "one"  # a single engine's apply_sync goes through the hub then
            one.apply_sync(os.getpid)
            plain = rc[1].apply_async(os.getpid)
            plain.get(60)
            assert plain.metadata["label"] is None
            # the rest of what ipyparallel's metadata says of the request
            ran = dview.execute("b = 2", block=True)
            assert [md["execute_input"] for md in ran.metadata] == ["b = 2", "b = 2"]
            with lview.temp_flags(after=[ar], label=None):
                later = lview.apply_async(os.getpid)
            later.get(60)
            assert later.metadata["after"] == ar.msg_ids and later.metadata["follow"] == []
            assert not later.metadata["is_broadcast"] and later.metadata["execute_input"] is None
            everywhere = rc.broadcast_view().apply_async(os.getpid)
            everywhere.get(60)
            assert all(md["is_broadcast"] for md in everywhere.metadata)

            def found(label):
                records = rc.db_query({"label": label}, keys=["label", "msg_type"])
                return sorted((r["msg_type"], r["label"]) for r in records)

            assert found("lb") == [("apply_request", "lb")]
            assert found("direct") == [("apply_request", "direct")] * 2
            assert found("exec") == [("execute_request", "exec")] * 2
            assert found("map") == [("apply_request", "map")] * 2
            assert found("one") == [("apply_request", "one")]
            assert rc.db_query({"label": "lb"})[0]["msg_id"] == ar.msg_ids[0]
            # another client reads the label back from the hub's record
            other = cluster.connect_client_sync()
            stored = other.get_result(ar.msg_ids[0])
            assert stored.get(60) == ar.get() and stored.metadata["label"] == "lb"
        print("OK")
        """,
    )
