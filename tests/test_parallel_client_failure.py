"""The client when things go wrong, and with a controller in process mode.

Each test gets a cluster of its own, because it kills engines or shuts the cluster down.
The promise under test: no result ever hangs. Every task ends as a value or an error
(EngineError for a dead engine), which ``get(timeout=...)`` proves without any sleep.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import until, wait_for_file
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import ControllerLost, EngineError, RemoteError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


def record_pid_then_wait(folder: str, release: str) -> int:
    """Engine side: note which process runs this attempt, then wait for ``release``.

    The first attempt blocks (its engine is killed); a retry on another engine finds
    the first note and returns at once.
    """
    notes = Path(folder)
    earlier = list(notes.iterdir())
    (notes / str(os.getpid())).touch()
    if earlier:
        return os.getpid()
    wait_for_file(release)
    return os.getpid()


def square(x: int) -> int:
    return x * x


@pytest.fixture
def live(tmp_path: Path) -> Any:
    cluster = LiveCluster(tmp_path / "corral", threads=True)
    yield cluster
    cluster.stop()


def test_kill_engine_mid_task_nothing_hangs(live: LiveCluster, tmp_path: Path) -> None:
    rc = live.client
    victim = 1
    victim_pid = rc.engines[victim].pid
    started, release = tmp_path / "started", str(tmp_path / "never")
    started.mkdir()
    direct = rc[victim].apply_async(record_pid_then_wait, str(started), release)
    queued = [rc[victim].apply_async(square, i) for i in range(5)]
    broadcast = rc.broadcast_view().apply_async(wait_for_file, release, 2.0)
    lview = rc.load_balanced_view()
    balanced = [lview.apply_async(square, i) for i in range(200)]
    until(lambda: any(started.iterdir()))
    assert int(next(started.iterdir()).name) == victim_pid
    os.kill(victim_pid, signal.SIGKILL)
    for result in [direct, *queued]:
        with pytest.raises(EngineError) as info:
            result.get(timeout=30)
        assert info.value.engine_id == victim
    with pytest.raises(RemoteError):
        broadcast.get(timeout=30)
    for i, result in enumerate(balanced):
        try:
            assert result.get(timeout=30) == i * i
        except EngineError:
            pass
    until(lambda: rc.ids == [0])
    assert rc.load_balanced_view().apply_sync(square, 3) == 9
    with pytest.raises(IndexError):
        rc[victim]


def test_retries_move_a_task_to_the_other_engine(live: LiveCluster, tmp_path: Path) -> None:
    rc = live.client
    notes = tmp_path / "notes"
    notes.mkdir()
    lview = rc.load_balanced_view()
    with lview.temp_flags(retries=1):
        result = lview.apply_async(record_pid_then_wait, str(notes), str(tmp_path / "never"))
    until(lambda: any(notes.iterdir()))
    first_pid = int(next(notes.iterdir()).name)
    os.kill(first_pid, signal.SIGKILL)
    second_pid = result.get(timeout=60)
    assert second_pid != first_pid
    assert second_pid in {e.pid for e in rc.engines.values()}


def test_new_engine_joins_and_shutdown_stops_cluster(live: LiveCluster) -> None:
    rc = live.client
    live.add_engine()
    assert rc.wait_for_engines(3, timeout=60) == [0, 1, 2]
    assert rc.engines[2].pid is not None or rc[2].apply_sync(os.getpid)
    assert rc[2].apply_sync(square, 5) == 25
    rc.shutdown(hub=True)
    for proc in [*live.engines, live.controller]:
        assert proc.wait(30) is not None


def test_process_mode_controller(tmp_path: Path) -> None:
    cluster = LiveCluster(tmp_path / "corral", threads=False)
    try:
        rc = cluster.client
        lview = rc.load_balanced_view()
        assert lview.map_sync(square, range(50)) == [i * i for i in range(50)]
        results = [lview.apply_async(square, i) for i in range(500)]
        assert [r.get(60) for r in results] == [i * i for i in range(500)]
        assert rc[:].apply_sync(os.getpid) == [rc.engines[0].pid, rc.engines[1].pid]
        rc[:].push({"z": 3}, block=True)
        assert rc[:].pull("z", block=True) == [3, 3]
        msg_id = results[0].msg_ids[0]
        other = cluster.connect()
        assert other.get_result(msg_id).get(30) == 0
    finally:
        cluster.stop()


def test_a_crashed_io_thread_fails_pending_work_instead_of_hanging(live: LiveCluster) -> None:
    """Every reply comes through the client's I/O thread: if an unexpected error ends it,
    what is pending fails at once with a ControllerLost that says so, and reconnect()
    brings the client back."""
    rc = live.client
    assert rc[0].apply_sync(square, 3) == 9
    io = rc._io
    real_send = io._send_now

    def broken_send(channel: str, frames: list[Any], copy: bool) -> None:
        raise RuntimeError("a bug in the I/O thread")

    io._send_now = broken_send  # type: ignore[method-assign]
    ar = rc[0].apply_async(square, 4)
    with pytest.raises(ControllerLost, match="I/O thread stopped on an unexpected error"):
        ar.get(timeout=30)
    assert rc.controller_lost
    io._send_now = real_send  # type: ignore[method-assign]
    rc.reconnect(timeout=30)
    assert rc[0].apply_sync(square, 5) == 25


def _broken_send(channel: str, frames: list[Any], copy: bool) -> None:
    raise RuntimeError("a bug in the I/O thread")


def test_reconnect_works_while_the_controller_still_holds_the_old_identity(
    live: LiveCluster,
) -> None:
    """A ROUTER drops every message of a second peer under an identity it still holds.
    reconnect() after an I/O thread crash came back under the client's old identity; in
    CI the hub had not yet seen the old connection close, and never answered the
    connection_request. Here a socket takes the old identity first, on purpose: its
    own hub round trip proves the hub routes that identity to it."""
    import queue

    import zmq

    from corral.plugins.parallel.client.channels import dest_for
    from corral.plugins.parallel.client.client import _url
    from corral.plugins.parallel.client.io import ClientIO

    rc = live.client
    old_identity = rc._io.identity
    crashed = rc._io
    crashed._send_now = _broken_send  # type: ignore[method-assign]
    with pytest.raises(ControllerLost):
        rc[0].apply_async(square, 4).get(timeout=30)
    crashed._thread.join(30)
    assert not crashed.alive

    def take_old_identity() -> ClientIO | None:
        """A socket under the old identity that the hub answered, or None. A ROUTER
        refuses for good a connection that arrives under an identity it still holds, so
        while the crashed thread's close may still be on its way to the hub, each try
        is a new connection (with a queue of its own: no late answer to an earlier try)."""
        replies: queue.Queue[list[Any]] = queue.Queue()
        holder = ClientIO(rc._context, lambda _, frames: replies.put(frames), old_identity)
        holder.secure = rc.gate.client
        holder.add_socket("registration", zmq.DEALER, _url(rc.cluster_info, "registration"))
        holder.start()
        request = rc._builder.build("connection_request", {}, dest=dest_for("registration"))
        holder.send("registration", request[1])
        try:
            replies.get(timeout=1.0)
        except queue.Empty:
            holder.stop()
            return None
        return holder

    holder = until(take_old_identity, timeout=30, interval=0.0)
    try:
        rc.reconnect(timeout=30)
        assert rc._io.identity != old_identity
        assert rc[0].apply_sync(square, 5) == 25
    finally:
        holder.stop()


def test_close_leaves_a_busy_io_thread_its_sockets(
    live: LiveCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """close() waits a while for the I/O thread; if a callback still holds it, the
    sockets stay with it (closing them from here, while it may be polling them, can
    crash the process inside libzmq) and it ends the context itself when it gets free."""
    from corral.plugins.parallel.client import client as client_module

    monkeypatch.setattr(client_module, "IO_STOP_WAIT", 0.2)
    rc = live.connect()
    rc.wait_for_engines(2, timeout=60)
    entered = threading.Event()
    release = threading.Event()

    def hold_the_io_thread(_: Any) -> None:
        entered.set()
        release.wait(60)

    ar = rc[0].apply_async(square, 6)
    ar.add_done_callback(hold_the_io_thread)
    assert entered.wait(30)
    io = rc._io
    rc.close()
    assert io.alive and not rc._context.closed  # nothing closed under the busy thread
    release.set()
    io._thread.join(30)
    assert not io.alive
    until(lambda: rc._context.closed)
    assert ar.get(timeout=1) == 36
    assert "I/O thread crashed" not in caplog.text


def test_every_client_hears_an_orderly_shutdown(
    live: LiveCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the client that asked for the shutdown knew it was one: every other client
    of the cluster logged "lost the controller ... pending results failed" as an error."""
    bystander = live.connect()
    bystander.wait_for_engines(2, timeout=60)
    (tmp_path / "notes").mkdir()
    pending = bystander[0].apply_async(
        record_pid_then_wait, str(tmp_path / "notes"), str(tmp_path / "never")
    )
    live.client.shutdown(hub=True, timeout=30)
    # the engine stops under it (interrupted, or gone) or the hub goes first
    with pytest.raises((ControllerLost, RemoteError)):
        pending.get(timeout=60)
    until(lambda: bystander.controller_lost)
    assert "was shut down" in str(bystander._lost)
    assert "lost the controller" not in caplog.text
    assert "connection to the controller" not in caplog.text


def test_a_task_running_when_the_cluster_stops_says_so(live: LiveCluster, tmp_path: Path) -> None:
    """Stopping the cluster interrupts the tasks that run: their error was a bare
    ``KeyboardInterrupt:`` with no message, which nobody had typed. It now says the
    engine was shut down; what was still queued fails with ``ControllerLost``."""
    rc = live.client
    started, release = tmp_path / "started", str(tmp_path / "never")
    started.mkdir()
    running = rc[0].apply_async(record_pid_then_wait, str(started), release)
    until(lambda: any(started.iterdir()))
    rc.shutdown(hub=True, block=True)
    with pytest.raises(RemoteError, match="shut down .* while this task ran") as info:
        running.get(timeout=30)
    assert info.value.ename == "KeyboardInterrupt"
