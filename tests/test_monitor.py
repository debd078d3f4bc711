"""The monitor every engine and controller runs under: restarts, memory limit, walltime,
signal forwarding, clean-up, and the cause of death in the failed task's error.

Real clusters on 127.0.0.1. Nothing here sleeps to wait for something: a task that must
be running before the test acts opens a FIFO the test reads (both block until the other
end is there), deaths are awaited through the failed task, and restarts through the
client's registration notifications.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cloudpickle
import psutil
import pytest
from cluster_waits import await_ids
from helpers import TIMEOUT, until

from corral.core import compat
from corral.notification import shared_center
from corral.plugins.parallel import events
from corral.plugins.parallel.client.errors import EngineError
from corral.plugins.parallel.cluster import Cluster
from corral.plugins.parallel.launchers.monitor import (
    Death,
    Monitor,
    Policy,
    death_cause,
    parse_size,
)

pytestmark = pytest.mark.timeout(300)
# The tasks below are functions of this module, which engines cannot import: by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    return tmp_path


def _cluster(n: int = 1, **engine: object) -> Cluster:
    options = {f"engine.{key}": value for key, value in engine.items()}
    return Cluster(n=n, profile="mon", hb_period=0.5, hb_misses=20, **options)


def _wait_started(fifo: Path, timeout: float = 120.0) -> None:
    """Block until the task wrote to ``fifo``, i.e. until it runs (a task that never
    starts fails the test after ``timeout`` instead of hanging it)."""
    import select

    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"the task did not start within {timeout} s"
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


def _run_then(fifo: str, what: str, arg: object = None) -> object:
    """A task: announce it runs (a byte on the FIFO), then do ``what``."""
    import os
    import subprocess
    import time

    with open(fifo, "wb") as fh:
        fh.write(b"x")
    if what == "sleep":
        time.sleep(float(arg))  # type: ignore[arg-type]
    elif what == "hog":
        block = bytearray(int(arg))  # type: ignore[call-overload]
        block[::4096] = b"x" * len(block[::4096])  # touch every page: resident
        time.sleep(120)
    elif what == "child":
        return subprocess.Popen(["sleep", "300"]).pid
    return os.getpid()


def _make_fifo(tmp_path: Path, name: str = "started") -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


# ------------------------------------------------------------------ pure parts


def test_sizes_and_causes_are_spelt_for_people():
    assert parse_size("200MB") == 200 << 20
    assert parse_size("1.5 GiB") == int(1.5 * (1 << 30))
    assert parse_size("4096") == 4096
    assert parse_size("") is None
    with pytest.raises(ValueError, match="512MB"):
        parse_size("lots")
    assert death_cause(-9) == "killed by SIGKILL"
    assert death_cause(-9, oom_kills=1) == "killed by the kernel's out-of-memory killer (SIGKILL)"
    assert death_cause(3) == "exited with status 3"
    text = death_cause(-9, memory=(300 << 20, 100 << 20))
    assert "memory_limit = 100 MB" in text and "resident 300 MB" in text
    assert "walltime = 5 s" in death_cause(-9, walltime=5.0)


def test_bad_memory_limit_fails_before_anything_starts():
    with pytest.raises(Exception, match="memory_limit"):
        _cluster(**{"memory_limit": "plenty"})


def test_restart_limit_then_the_childs_status():
    """A child that keeps crashing is restarted ``restart`` times, then given up on."""
    seen: list[tuple[str, bool]] = []
    monitor = Monitor(
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        Policy(role="controller", restart=2, backoff=0.0),
        on_death=lambda death, again: seen.append((death.cause, again)),
    )
    assert monitor.run() == 3
    assert monitor.restarts == 2
    assert seen == [("exited with status 3", True)] * 2 + [("exited with status 3", False)]


def test_clean_exit_is_not_a_crash():
    deaths: list[Death] = []
    monitor = Monitor(
        [sys.executable, "-c", "pass"],
        Policy(role="controller", restart=5),
        on_death=lambda death, again: deaths.append(death),
    )
    assert monitor.run() == 0
    assert [d.crashed for d in deaths] == [False]


# ------------------------------------------------------------------ real clusters


def test_killed_engine_is_restarted_and_the_task_says_it_was_sigkill(tmp_path):
    fifo = _make_fifo(tmp_path)
    cluster = _cluster(n=2, restart=1, restart_backoff=0.0)
    heard = _HubNotifications()
    try:
        client = cluster.start_and_connect()
        victim = client.ids[0]
        pid = client[victim].apply_sync(os.getpid)
        task = client[victim].apply_async(_run_then, str(fifo), "sleep", 60)
        _wait_started(fifo)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="killed by SIGKILL"):
            task.get(timeout=60)
        # The victim leaves and the engine its monitor restarted joins, with a new id.
        ids = await_ids(client, lambda ids: victim not in ids and len(ids) == 2)
        new = sorted(set(ids) - {victim})
        assert len(new) == 2 and max(new) > victim
        assert client[max(new)].apply_sync(os.getpid) != pid
        # The hub said so on the bus: the death its monitor reported, then the restart.
        died = heard.wait_for(events.ENGINE_DIED)
        assert died["engine_id"] == victim and died["reason"] == "died"
        restarted = heard.wait_for(events.ENGINE_RESTARTED)
        assert restarted["previous_engine_id"] == victim
        assert restarted["previous_uuid"] == died["uuid"]
        assert restarted["engine_id"] == max(new)
    finally:
        heard.close()
        cluster.stop()


class _HubNotifications:
    """The hub's engine notifications as re-posted in this (the client's) process."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self._changed = threading.Condition()
        for kind in events.ENGINE_TYPES:
            shared_center.add_observer(self, kind, "hub")

    def __call__(self, kind: str, sender: object, /, **info: object) -> None:
        with self._changed:
            self.seen.append((kind, info))
            self._changed.notify_all()

    def wait_for(self, kind: str, timeout: float = 60.0) -> dict:
        def found() -> dict | None:
            return next((info for k, info in self.seen if k == kind), None)

        with self._changed:
            assert self._changed.wait_for(lambda: found() is not None, timeout), self.seen
            return found()  # type: ignore[return-value]

    def close(self) -> None:
        for kind in events.ENGINE_TYPES:
            shared_center.remove_observer(self, kind, "hub")


def test_memory_limit_kills_with_the_limit_in_the_error(tmp_path):
    fifo = _make_fifo(tmp_path)
    cluster = _cluster(n=1, memory_limit="150MB", restart=1, restart_backoff=0.0)
    try:
        client = cluster.start_and_connect()
        victim = client.ids[0]
        task = client[victim].apply_async(_run_then, str(fifo), "hog", 400 << 20)
        _wait_started(fifo)
        with pytest.raises(EngineError, match=r"exceeded memory_limit = 150 MB"):
            task.get(timeout=60)
        await_ids(client, lambda ids: len(ids) == 1 and victim not in ids)
    finally:
        cluster.stop()


def test_walltime_kills_the_engine_and_says_so(tmp_path):
    fifo = _make_fifo(tmp_path)
    cluster = _cluster(n=1, walltime=4.0)
    try:
        client = cluster.start_and_connect()
        pid = client[:].apply_sync(os.getpid)[0]
        task = client[client.ids[0]].apply_async(_run_then, str(fifo), "sleep", 120)
        _wait_started(fifo)
        with pytest.raises(EngineError, match=r"ran past walltime = 4 s"):
            task.get(timeout=60)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        await_ids(client, lambda ids: ids == [])  # restart = 0: not replaced
    finally:
        cluster.stop()


def test_sigint_through_the_monitor_interrupts_the_running_task(tmp_path):
    fifo = _make_fifo(tmp_path)
    cluster = _cluster(n=1)
    try:
        client = cluster.start_and_connect()
        task = client[client.ids[0]].apply_async(_run_then, str(fifo), "sleep", 120)
        _wait_started(fifo)
        # ids=None: through the launcher, i.e. to the monitor, which forwards it.
        cluster.signal_engines(signal.SIGINT)
        with pytest.raises(Exception, match="KeyboardInterrupt"):
            task.get(timeout=60)
        assert client[client.ids[0]].apply_sync(lambda: 42) == 42  # engine still serves
    finally:
        cluster.stop()


def test_sigint_while_engines_start_register_and_idle_is_ignored(tmp_path):
    """ipyparallel's engines survive SIGINT at any time; an idle one ignores it. Ours used
    to die of it while starting (the monitor or the engine still in its imports, with
    Python's default handler): SIGINT every few milliseconds from launch to serving."""
    cluster = _cluster(n=2)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.wait(0.003):
            cluster.signal_engines(signal.SIGINT)

    cluster.start()  # launches the monitors and engines, returns before they register
    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        client = cluster.connect_client()
        engines = cluster.engines[0]
        until(
            lambda: len(client.ids) == 2 or engines.running_count < 2,
            what="engines neither registered nor died",
        )
        pids = client[:].apply_sync(os.getpid)  # idle engines, SIGINTs still coming
        stop.set()
        thread.join(TIMEOUT)
        assert engines.running_count == 2, engines.output_tail()
        assert client[:].apply_sync(os.getpid) == pids
    finally:
        stop.set()
        cluster.stop()


@pytest.mark.skipif(not compat.HAS_PROCESS_GROUPS, reason="process groups only")
def test_monitor_cleans_up_what_a_killed_engine_left(tmp_path):
    fifo = _make_fifo(tmp_path)
    cluster = _cluster(n=1)
    try:
        client = cluster.start_and_connect()
        eid = client.ids[0]
        engine_pid = client[eid].apply_sync(os.getpid)
        socket_file = client.engines[eid].local_path
        assert socket_file and Path(socket_file).exists()
        task = client[eid].apply_async(_run_then, str(fifo), "child")
        _wait_started(fifo)
        orphan = task.get(timeout=60)
        assert psutil.pid_exists(orphan)
        doomed = client[eid].apply_async(_run_then, str(_make_fifo(tmp_path, "b")), "sleep", 60)
        _wait_started(tmp_path / "b")
        os.kill(engine_pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="SIGKILL"):
            doomed.get(timeout=60)
        gone, alive = psutil.wait_procs([psutil.Process(orphan)], timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not Path(socket_file).exists()  # removed by the monitor
    finally:
        cluster.stop()


def test_killing_a_monitor_takes_its_engine_and_stop_leaves_nothing(tmp_path):
    cluster = _cluster(n=2)
    try:
        client = cluster.start_and_connect()
        engine_pids = client[:].apply_sync(os.getpid)
        pids = cluster.pids()
        monitors = pids["monitors"][1:]  # the first is the controller's
        assert sorted(pids["engines"]) == sorted(engine_pids)
        assert set(monitors).isdisjoint(engine_pids)  # the engines run under monitors
        os.kill(monitors[0], signal.SIGKILL)
        # Its engine notices the monitor is gone and ends itself.
        procs = [psutil.Process(p) for p in engine_pids]
        psutil.wait_procs([p for p in procs if p.ppid() == monitors[0]], timeout=30)
    finally:
        cluster.stop()
    leftover = [p for p in (*engine_pids, *monitors) if psutil.pid_exists(p)]
    leftover = [p for p in leftover if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not leftover
    assert not list((Path(os.environ["CORRAL_DIR"])).rglob("*.pid"))


WINDOWS_MODE_CHILD = textwrap.dedent(
    """
    import sys, threading
    from corral.core import compat
    assert compat.WINDOWS_MODE and not compat.HAS_PROCESS_GROUPS and not compat.HAS_FORK
    from corral.plugins.parallel.launchers.monitor import Monitor, Policy

    causes = []
    monitor = Monitor(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        Policy(role="controller", restart=3),
        on_death=lambda death, again: causes.append((death.cause, death.crashed, again)),
    )
    runner = threading.Thread(target=monitor.run)
    runner.start()
    monitor.started.wait(30)
    monitor.stop()  # terminate(), not killpg: no groups in this mode
    runner.join(30)
    print(causes)
    """
)


def test_monitor_runs_under_windows_mode_paths():
    """The Windows code paths (no process groups: terminate/kill by pid) on this host."""
    env = {**os.environ, "CORRAL_PLATFORM_COMPAT": "windows"}
    out = subprocess.run(
        [sys.executable, "-c", WINDOWS_MODE_CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # Stopped on request: not a crash, not restarted.
    assert "[('killed by SIGTERM', False, False)]" in out.stdout


WINDOWS_MODE_CLUSTER = textwrap.dedent(
    """
    import psutil
    from corral.plugins.parallel.cluster import Cluster

    cluster = Cluster(n=1, profile="win", hb_period=0.5)
    client = cluster.start_and_connect()
    try:
        assert client[:].apply_sync(lambda: 6 * 7) == [42]
        info = next(iter(client.engines.values()))
        assert not info.local_path, info  # no Unix socket advertised
        controller = psutil.Process(cluster.cluster_info["controller_pid"])
        parts = [" ".join(p.cmdline()) for p in controller.children()]
        # components spawned through multiprocessing, not forked copies of the parent
        assert parts and all("multiprocessing" in c for c in parts), parts
        print("ok", len(parts))
    finally:
        cluster.stop()
    """
)


def test_windows_mode_cluster_spawns_and_uses_no_unix_sockets(tmp_path):
    env = {**os.environ, "CORRAL_PLATFORM_COMPAT": "windows", "CORRAL_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])])
    out = subprocess.run(
        [sys.executable, "-c", WINDOWS_MODE_CLUSTER],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok")


def test_controller_killed_then_stop_leaves_no_process_and_no_file(tmp_path):
    """kill -9 of the controller (its monitor sees it at once): stop() still ends every
    process (monitors, engines) and removes the cluster's files."""
    cluster = _cluster(n=2)
    client = cluster.start_and_connect()
    controller_pid = cluster.cluster_info["controller_pid"]
    controller = psutil.Process(controller_pid)
    everyone = [controller_pid, *(p.pid for p in controller.children(recursive=True))]
    everyone += [*client[:].apply_sync(os.getpid), *cluster.pids()["monitors"]]
    assert cluster.pids()["controller"] == controller_pid
    monitor = controller.parent()
    assert "corral.plugins.parallel.launchers.monitor" in " ".join(monitor.cmdline())
    os.kill(controller_pid, signal.SIGKILL)
    assert cluster.controller.wait(30)  # the monitor exits with its controller
    cluster.stop()
    procs = []
    for pid in everyone:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    profile = Path(os.environ["CORRAL_DIR"]) / "profile_mon"
    assert not list(profile.rglob("*.pid")) and not list(profile.rglob("cluster-*.json"))
