"""``corral.Cluster``: start a controller and engines, hand out clients, stop everything.

::

    import corral

    with corral.Cluster(n=4) as rc:          # a connected Client, 4 engines registered
        print(rc.load_balanced_view().map_sync(pow, range(10), range(10)))

The cluster is a lifecycle object only: it owns the *processes* (through launchers, see
:mod:`corral.plugins.parallel.launchers`), never the computation, which goes through the
:class:`~corral.plugins.parallel.client.Client` it hands out.

Start-up is built for speed, because a cluster that takes seconds to start is one people
keep running "just in case": the controller and the engines are launched at the same
moment; the engines import what they need while the controller binds, and register the
instant its cluster file is complete. Waiting is done by polling a file or a process every
millisecond or so and on events (a process's exit wakes the waiter at once), never by
fixed sleeps.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.core.private import private_dir, write_private
from corral.core.processes import process_alive
from corral.core.profiles import profile_dir
from corral.plugins.parallel.launchers.base import (
    ControllerLauncher,
    EngineSetLauncher,
    LaunchError,
    get_launchers,
)

if TYPE_CHECKING:
    from corral.plugins.parallel.client import Client

__all__ = ["Cluster", "ClusterError", "LaunchError", "new_cluster_id", "read_record"]

log = logging.getLogger("corral.cluster")


class ClusterError(RuntimeError):
    """The cluster could not be started, or lost its processes while starting."""


def new_cluster_id() -> str:
    """A short id unique enough for one profile: a timestamp (sorts by age) and noise."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def record_path(profile_path: Path, cluster_id: str) -> Path:
    """``<profile>/run/cluster-ID.json``: who runs the cluster, for ``corral cluster``."""
    return profile_path / "run" / f"cluster-{cluster_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A cluster record, or None if it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Cluster:
    """A controller and ``n`` engines on this machine (or wherever ``launcher`` puts them).

    :param n: engines to start; default: one per CPU core.
    :param profile: the profile (directory) holding the cluster's files.
    :param cluster_id: names the cluster file ``security/cluster-ID.json``; default: new.
    :param controller_mode: ``"processes"`` (one process per controller component: the
        fastest under load) or ``"threads"`` (one process: lighter, starts faster).
    :param hb_period: seconds between heartbeats; an engine that misses ``hb_misses`` in a
        row is declared dead.
    :param db: the controller's task database: ``"sqlite"``, ``"memory"`` or ``"none"``.
    :param launcher: launcher family by name (see :func:`~.launchers.base.get_launchers`).
    :param engine_timeout: seconds to wait for the controller's file and for engines.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        n: int | None = None,
        profile: str = "default",
        cluster_id: str | None = None,
        controller_mode: str = "processes",
        hb_period: float = 1.0,
        db: str = "sqlite",
        launcher: str = "local",
        engine_timeout: float = 30,
        *,
        hb_misses: int | None = None,
        ip: str | None = None,
        controller_args: tuple[str, ...] = (),
        engine_args: tuple[str, ...] = (),
        stop_grace: float = 3.0,
        encryption: str = "none",
        transport: str = "tcp",
    ) -> None:
        if controller_mode not in ("processes", "threads"):
            raise ValueError(
                f"controller_mode must be 'processes' or 'threads', not {controller_mode!r}"
            )
        self.n = (os.cpu_count() or 1) if n is None else n
        self.profile = profile
        self.cluster_id = cluster_id or new_cluster_id()
        self.controller_mode = controller_mode
        self.hb_period = hb_period
        self.hb_misses = hb_misses
        self.db = db
        self.ip = ip
        self.launcher = launcher
        self.engine_timeout = engine_timeout
        self.stop_grace = stop_grace
        if encryption not in ("none", "curve"):
            raise ValueError(f"encryption must be 'none' or 'curve', not {encryption!r}")
        #: "curve": every cluster socket encrypted (docs/security.md).
        self.encryption = encryption
        self.controller_args = tuple(controller_args)
        if encryption != "none":
            self.controller_args += ("--encryption", encryption)
        if transport not in ("tcp", "ipc"):
            raise ValueError(f"transport must be 'tcp' or 'ipc', not {transport!r}")
        #: "ipc": the controller's sockets are Unix sockets in the owner-only runtime
        #: directory (engines and clients on this host only); "tcp": ports on ``ip``.
        self.transport = transport
        if transport != "tcp":
            self.controller_args += ("--transport", transport)
        self.engine_args = tuple(engine_args)
        self.controller: ControllerLauncher | None = None
        self.engines: list[EngineSetLauncher] = []
        self.cluster_info: dict[str, Any] | None = None
        self._clients: list[Client] = []
        self._lock = threading.RLock()
        self._stopped = False

    # ------------------------------------------------------------------ paths

    @property
    def profile_dir(self) -> Path:
        return profile_dir(self.profile)

    @property
    def cluster_file(self) -> Path:
        """The file clients and engines connect with (written by the controller)."""
        return self.profile_dir / "security" / f"cluster-{self.cluster_id}.json"

    @property
    def record_file(self) -> Path:
        return record_path(self.profile_dir, self.cluster_id)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<Cluster {self.cluster_id!r} profile={self.profile!r} n={self.n} {state}>"

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """True while the controller process is alive."""
        return self.controller is not None and self.controller.is_running

    @property
    def engine_count(self) -> int:
        """Engine processes alive (not necessarily registered yet)."""
        return sum(es.running_count for es in self.engines)

    def pids(self) -> dict[str, Any]:
        """The pids this cluster started: ``{"controller": pid, "engines": [pids]}``."""
        controller = (
            self.controller.handles[0].pid if self.controller and self.controller.handles else None
        )
        engines = [h.pid for es in self.engines for h in es.handles if h.pid is not None]
        return {"controller": controller, "engines": engines}

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start the controller and the engines; return once the cluster file is written.

        The engines are launched together with the controller and wait for its file
        themselves; so this returns about when the controller is ready, and the engines
        register a few tens of milliseconds later (:meth:`start_and_connect` waits for
        them). A controller that exits, or writes no file within ``engine_timeout``
        seconds, raises :class:`ClusterError` quoting the end of its log.
        """
        with self._lock:
            if self.controller is not None:
                raise ClusterError(f"cluster {self.cluster_id!r} was already started")
            controller_cls, engines_cls = get_launchers(self.launcher)
            pdir = self.profile_dir
            self._remove_stale_file()
            self.controller = controller_cls(
                profile_dir=pdir,
                cluster_id=self.cluster_id,
                profile=self.profile,
                mode=self.controller_mode,
                db=self.db,
                hb_period=self.hb_period,
                hb_misses=self.hb_misses,
                ip=self.ip,
                extra_args=self.controller_args,
            )
            self._stopped = False
            _live_clusters.add(self)
            self.controller.start()
            try:
                if self.n:
                    self._launch_engines(self.n)
                self.cluster_info = self._wait_for_cluster_file()
            except BaseException:
                self._kill_all()
                raise
            self._write_record()
            log.info("cluster %s started: %s", self.cluster_id, self.pids())

    def _launch_engines(self, n: int) -> EngineSetLauncher:
        _, engines_cls = get_launchers(self.launcher)
        engines = engines_cls(
            n,
            profile_dir=self.profile_dir,
            cluster_id=self.cluster_id,
            cluster_file=self.cluster_file,
            extra_args=self.engine_args,
        )
        self.engines.append(engines)
        engines.start()
        return engines

    def add_engines(self, n: int) -> None:
        """Start ``n`` more engines on a running cluster (they register by themselves)."""
        if not self.is_running:
            raise ClusterError("the cluster is not running; call start() first")
        self._launch_engines(n)
        self.n += n
        self._write_record()

    def _remove_stale_file(self) -> None:
        """A leftover file from a dead controller would be mistaken for the new one's."""
        path = self.cluster_file
        if not path.exists():
            return
        info = read_record(path) or {}
        pid = info.get("controller_pid")
        if pid and pid != os.getpid() and process_alive(pid):
            raise ClusterError(
                f"cluster {self.cluster_id!r} is already running (controller pid {pid}); "
                f"stop it with `corral cluster stop --cluster-id {self.cluster_id}`"
            )
        path.unlink(missing_ok=True)

    def _failure(self, what: str) -> ClusterError:
        assert self.controller is not None
        tail = self.controller.output_tail() or "(no output)"
        return ClusterError(
            f"{what}\ncommand: {' '.join(self.controller.command())}\n"
            f"log: {self.controller.log_file}\nthe controller's output ends with:\n{tail}"
        )

    def _wait_for_cluster_file(self) -> dict[str, Any]:
        """Poll for the complete cluster file while watching the controller process."""
        assert self.controller is not None
        path = self.cluster_file
        deadline = time.monotonic() + self.engine_timeout
        pause = 0.0005
        wait_exit = getattr(self.controller, "wait_exited", None)
        while True:
            try:
                info = json.loads(path.read_bytes())
                if isinstance(info, dict) and info.get("registration"):
                    return info
            except (OSError, ValueError):
                pass
            code = self.controller.poll()
            if code is not None:
                raise self._failure(
                    f"the controller of cluster {self.cluster_id!r} exited with code {code} "
                    f"before writing {path}"
                )
            if time.monotonic() > deadline:
                raise self._failure(
                    f"the controller of cluster {self.cluster_id!r} wrote no {path} within "
                    f"{self.engine_timeout} s"
                )
            # Waiting on the exit event is both the pause and an instant death notice.
            if wait_exit is not None:
                wait_exit(pause)
            else:
                time.sleep(pause)
            pause = min(pause * 2, 0.004)

    def _write_record(self) -> None:
        record = {
            "cluster_id": self.cluster_id,
            "profile": self.profile,
            "n": self.n,
            "manager_pid": os.getpid(),
            "controller_mode": self.controller_mode,
            "cluster_file": str(self.cluster_file),
            "started": time.time(),
            **self.pids(),
        }
        path = self.record_file
        private_dir(path.parent)
        tmp = path.with_suffix(".tmp")
        write_private(tmp, json.dumps(record, indent=1))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ clients

    def connect_client(self, **kwargs: Any) -> Client:
        """A new :class:`Client` connected to this cluster (closed again by :meth:`stop`)."""
        from corral.plugins.parallel.client import Client

        if self.cluster_info is None:
            raise ClusterError("the cluster is not started; call start() first")
        client = Client(connection_file=str(self.cluster_file), **kwargs)
        self._clients.append(client)
        return client

    def wait_for_engines(self, client: Client, n: int | None = None) -> None:
        """Wait until ``n`` engines (default: all started) are registered with ``client``.

        Waits in short slices so that engines that die while starting are reported at
        once, with the end of their log, rather than after ``engine_timeout``.
        """
        n = self.n if n is None else n
        deadline = time.monotonic() + self.engine_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                client.wait_for_engines(n, timeout=max(0.0, min(0.25, remaining)))
                return
            except TimeoutError:
                pass
            if not self.is_running:
                raise self._failure(f"the controller of cluster {self.cluster_id!r} exited")
            alive = self.engine_count
            if alive < n:
                tails = [es.output_tail() for es in self.engines if es.poll() is not None]
                tails += [es.output_tail() for es in self.engines if es.running_count < es.n]
                raise ClusterError(
                    f"only {alive} of {n} engine processes of cluster {self.cluster_id!r} are "
                    f"alive; an engine's output ends with:\n{(tails or ['(no output)'])[0]}"
                )
            if remaining <= 0:
                raise ClusterError(
                    f"{len(client.ids)} of {n} engines registered with cluster "
                    f"{self.cluster_id!r} within {self.engine_timeout} s"
                )

    def start_and_connect(self, n: int | None = None) -> Client:
        """Start (``n`` engines if given), connect a client, wait until every engine is
        registered, and return the client."""
        if n is not None:
            self.n = n
        self.start()
        try:
            client = self.connect_client()
            self.wait_for_engines(client)
        except BaseException:
            self.stop()
            raise
        return client

    # ------------------------------------------------------------------ stop

    def stop(self, grace: float | None = None) -> None:
        """Stop everything: ask the controller to shut the cluster down through a client,
        then SIGTERM every process group still alive, SIGKILL after ``grace`` seconds;
        remove the cluster, record and pid files. Safe to call twice."""
        grace = self.stop_grace if grace is None else grace
        with self._lock:
            if self._stopped or self.controller is None:
                self._close_clients()
                return
            self._stopped = True
            launchers: list[Any] = [*self.engines, self.controller]
            if self.controller.is_running:
                self._request_shutdown()
                deadline = time.monotonic() + min(grace, 2.0)
                for launcher in launchers:
                    launcher.wait(max(0.0, deadline - time.monotonic()))
            self._close_clients()
            # Engines first, so none re-registers with a controller that is going away.
            for launcher in launchers:
                if launcher.is_running:
                    launcher.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for launcher in launchers:
                if not launcher.wait(max(0.0, deadline - time.monotonic())):
                    launcher.send_signal(signal.SIGKILL)
                    launcher.wait(5.0)
            self._cleanup_files()
            _live_clusters.discard(self)
            log.info("cluster %s stopped", self.cluster_id)

    def _request_shutdown(self) -> None:
        """The polite way: the hub tells every engine to shut down, then exits itself."""
        for client in self._clients:
            try:
                client.shutdown()
                return
            except Exception as exc:  # a broken client must not prevent the stop
                log.debug("shutdown through client failed: %s", exc)

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception as exc:
                log.debug("closing client failed: %s", exc)

    def _kill_all(self) -> None:
        """After a failed start: no politeness, nothing left behind."""
        self._stopped = True
        for launcher in [*self.engines, self.controller]:
            if launcher is not None and launcher.handles:
                launcher.stop(signal.SIGKILL)
        self._close_clients()
        self._cleanup_files()
        _live_clusters.discard(self)

    def _cleanup_files(self) -> None:
        self.cluster_file.unlink(missing_ok=True)
        self.record_file.unlink(missing_ok=True)
        run = self.profile_dir / "run"
        for pattern in (f"controller-{self.cluster_id}.pid", f"engine-{self.cluster_id}-*.pid"):
            for path in run.glob(pattern):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ with / async with

    def __enter__(self) -> Client:
        return self.start_and_connect()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def start_async(self) -> None:
        """:meth:`start` in a worker thread, so the event loop keeps running."""
        await _to_thread(self.start)

    async def start_and_connect_async(self, n: int | None = None) -> Client:
        """:meth:`start_and_connect` in a worker thread."""
        return await _to_thread(self.start_and_connect, n)

    async def stop_async(self, grace: float | None = None) -> None:
        """:meth:`stop` in a worker thread."""
        await _to_thread(self.stop, grace)

    async def __aenter__(self) -> Client:
        return await self.start_and_connect_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()


#: Clusters started in this process and not stopped, so they can be stopped at exit.
_live_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _stop_forgotten_clusters() -> None:
    """Processes run in their own sessions, so they would outlive this interpreter (until
    their parent watch notices); stop them now instead."""
    for cluster in list(_live_clusters):
        try:
            cluster.stop(grace=1.0)
        except Exception as exc:
            log.warning("could not stop cluster %s at exit: %s", cluster.cluster_id, exc)


async def _to_thread(func: Any, *args: Any) -> Any:
    """``asyncio.to_thread``, importing asyncio only when the async API is used: it costs
    35 ms, a fifth of a cluster's start, for scripts that never touch it."""
    import asyncio

    return await asyncio.to_thread(func, *args)
