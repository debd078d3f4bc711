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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.core import compat
from corral.core.private import private_dir, write_private
from corral.core.processes import process_alive
from corral.core.profiles import profile_dir
from corral.errors import CorralError
from corral.plugins.parallel.cluster_compat import AwaitableList, ClusterCompat
from corral.plugins.parallel.launchers.base import (
    ControllerLauncher,
    EngineSetLauncher,
    LaunchError,
)
from corral.plugins.parallel.launchers.registry import get_launchers
from corral.transports.zmq.kernel_options import engine_args

if TYPE_CHECKING:
    from corral.plugins.parallel.client import Client

__all__ = ["Cluster", "ClusterError", "LaunchError", "new_cluster_id", "read_record"]

log = logging.getLogger("corral.cluster")


def _only_child(pid: int) -> int | None:
    """The one child process of ``pid`` (a monitor's), or None (none yet, several, or no
    way to tell on this system)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = listing.read().split()
    except OSError:
        try:
            import psutil
        except ImportError:
            return None
        try:
            children = [str(c.pid) for c in psutil.Process(pid).children()]
        except psutil.Error:
            return None
    return int(children[0]) if len(children) == 1 else None


class ClusterError(CorralError, RuntimeError):
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


class Cluster(ClusterCompat):
    """A controller and ``n`` engines, on this machine or wherever the launchers put them.

    Every setting below is also an option of the profile's ``corral.ini`` (section
    ``[cluster]`` unless noted), a ``CORRAL_CLUSTER_<KEY>`` environment variable and a
    ``corral cluster start`` flag; keyword arguments win, and every value is checked by
    the same rules wherever it comes from (:mod:`corral.plugins.parallel.settings`). A bad
    value raises :class:`~corral.core.config.ConfigError` (a ``ValueError``) here, before
    any process starts, naming its source (file and line, variable or argument).

    :param n: engines to start; default: ``[cluster] n``, else every slot of the engine
        launcher (ssh: the hosts' counts), else one per CPU core.
    :param profile: the profile (directory) holding the cluster's files and corral.ini.
    :param cluster_id: names the cluster file ``security/cluster-ID.json``; default: new.
    :param controller_mode: ``"processes"`` or ``"threads"``.
    :param hb_period: seconds between heartbeats (> 0).
    :param db: the controller's task database: ``"sqlite"``, ``"memory"`` or ``"none"``.
    :param launcher: sets both ``engines`` and ``controller`` (the older spelling).
    :param engine_timeout: seconds to wait for the controller's file and for engines.
    :param engines: the engine launcher: ``"local"``, ``"ssh"``, ``"mpi"`` or a plugin's.
    :param controller: the controller launcher (``"local"`` or a plugin's).
    :param ip: interface the controller binds (``"*"``: all).
    :param location: address engines and clients connect to (default: ``ip``).
    :param options: keys of the chosen launchers' ``[launcher:NAME]`` sections, e.g.
        ``Cluster(engines="ssh", hosts=["node1:4", "node2:8"])``.

    ``controllers`` (``[cluster] controllers``) above 1 makes this an aggregate of that
    many controllers, each with its share of the ``n`` engines, behind one client: the
    object returned is a :class:`~corral.plugins.parallel.shards.Shards` (same
    ``start_and_connect``, ``stop`` and ``with``), whose client balances over all of them.

    .. versionadded:: 0.1
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from .shards import aggregate_if_asked

        aggregate = aggregate_if_asked(cls, args, kwargs)
        return aggregate if aggregate is not None else super().__new__(cls)

    def __init__(
        self,
        n: int | str | None = None,
        profile: str = "default",
        cluster_id: str | None = None,
        controller_mode: str | None = None,
        hb_period: float | None = None,
        db: str | None = None,
        launcher: str | None = None,
        engine_timeout: float | None = None,
        *,
        engines: str | None = None,
        controller: str | None = None,
        hb_misses: int | None = None,
        ip: str | None = None,
        location: str | None = None,
        controller_args: Sequence[str] | None = None,
        engine_args: Sequence[str] | None = None,
        stop_grace: float | None = None,
        encryption: str | None = None,
        transport: str | None = None,
        **options: Any,
    ) -> None:
        from corral.plugins.parallel.launchers.registry import canonical_name
        from corral.plugins.parallel.settings import resolve

        # ipyparallel takes launcher names in any case: Cluster(engines="MPI").
        engines, controller, launcher = (
            None if name is None else canonical_name(name)
            for name in (engines, controller, launcher)
        )
        given = {
            "n": n,
            "controller_mode": controller_mode,
            "hb_period": hb_period,
            "hb_misses": hb_misses,
            "db": db,
            "engines": engines if engines is not None else launcher,
            "controller": controller if controller is not None else launcher,
            "engine_timeout": engine_timeout,
            "ip": ip,
            "location": location,
            "stop_grace": stop_grace,
            "controller.args": list(controller_args) if controller_args is not None else None,
            "engine.args": list(engine_args) if engine_args is not None else None,
        }
        self.profile = profile
        #: The resolved settings (``config.get("cluster", "hb_period")``, and where each
        #: value came from: ``config.source(...)``).
        self.config = resolve(profile, {k: v for k, v in given.items() if v is not None}, options)
        cfg = self.config.section("cluster")
        self.engine_launcher: str = canonical_name(cfg["engines"])
        self.controller_launcher: str = canonical_name(cfg["controller"])
        self.launcher = self.engine_launcher
        self.cluster_id = cluster_id or new_cluster_id()
        self.controller_mode: str = cfg["controller_mode"]
        self.hb_period: float = cfg["hb_period"]
        self.hb_misses: int = cfg["hb_misses"]
        self.db: str = cfg["db"]
        self.ip: str = cfg["ip"]
        self.location: str = cfg["location"]
        self.engine_timeout: float = cfg["engine_timeout"]
        self.stop_grace: float = cfg["stop_grace"]
        self.controller_args = tuple(self.config.get("controller", "args"))
        self.engine_args = tuple(self.config.get("engine", "args"))
        self.n: int = cfg["n"] if cfg["n"] is not None else self._default_n()
        if encryption is None:
            encryption = (
                self.config.get("security", "encryption") if _has_security(self.config) else "none"
            )
        if encryption not in ("none", "curve"):
            raise ValueError(f"encryption must be 'none' or 'curve', not {encryption!r}")
        #: "curve": every cluster socket encrypted (docs/security.md).
        self.encryption = encryption
        if encryption != "none":
            self.controller_args += ("--encryption", encryption)
        transport = transport or "tcp"
        if transport not in ("tcp", "ipc"):
            raise ValueError(f"transport must be 'tcp' or 'ipc', not {transport!r}")
        if transport == "ipc" and not compat.HAS_UNIX_SOCKETS:
            raise ValueError("transport 'ipc' needs Unix sockets, which Windows lacks: use 'tcp'")
        #: "ipc": the controller's sockets are Unix sockets in the owner-only runtime
        #: directory (engines and clients on this host only); "tcp": ports on ``ip``.
        self.transport = transport
        if transport != "tcp":
            self.controller_args += ("--transport", transport)
        self.controller: ControllerLauncher | None = None
        self.engines: list[EngineSetLauncher] = []
        self.cluster_info: dict[str, Any] | None = None
        self._clients: list[Client] = []
        self._admin: Client | None = None
        self._attached = False  # re-attached by from_file: someone else's processes
        self._lock = threading.RLock()
        self._stopped = False
        self._sets_started = 0  # names each engine set's files apart (file_prefix)

    def _launcher_options(self, name: str) -> dict[str, Any]:
        section = f"launcher:{name}"
        if section not in self.config.schema.sections():
            return {}
        return self.config.section(section)

    def _default_n(self) -> int:
        _, engines_cls = get_launchers(self.engine_launcher)
        default = getattr(engines_cls, "default_n", None)
        if default is not None:
            return int(default(self._launcher_options(self.engine_launcher)))
        return os.cpu_count() or 1

    @property
    def remote(self) -> bool:
        """Whether engines run on other hosts (so the controller must speak TCP on an
        address they can reach: ``ip``/``location``)."""
        return bool(getattr(get_launchers(self.engine_launcher)[1], "remote", False))

    @property
    def needs_tcp(self) -> bool:
        """TCP rather than a same-host transport: a launcher whose engines may run on
        other hosts, or ``ip`` or ``location`` set away from loopback."""
        loopback = ("127.0.0.1", "localhost", "::1", "")
        engines_cls = get_launchers(self.engine_launcher)[1]
        off_host = bool(getattr(engines_cls, "needs_tcp", False))
        return off_host or self.ip not in loopback or self.location not in loopback

    @property
    def advertised_ip(self) -> str:
        """The controller address engines and clients are told (``location``, else ``ip``)."""
        if self.location:
            return self.location
        if self.ip in ("*", "0.0.0.0"):
            import socket

            return socket.getfqdn()
        return self.ip

    def _ip_problem(self) -> str | None:
        """Why a local controller cannot bind ``[cluster] ip``, or None.

        Checked here, before anything starts: the controller found it out a second
        later, and the user read a page of its traceback (ZMQError: Cannot assign
        requested address). A controller on another host (``controller = ssh``) binds
        that host's interfaces, which only it can check.
        """
        import socket

        if self.controller_launcher != "local" or self.ip in ("*", "0.0.0.0", ""):
            return None
        where = f"[cluster] ip = {self.ip} ({self.config.source('cluster', 'ip')})"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.ip, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except (socket.gaierror, UnicodeError) as error:
            return f"{where}: not a known host name or address ({error})"
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
        except OSError as error:
            return (
                f"{where}: the controller cannot listen there ({error.strerror or error}); "
                "give an address of one of this host's interfaces, 127.0.0.1, or * for all"
            )
        return None

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
        if self._attached and self.controller is None:
            pid = (self.cluster_info or {}).get("controller_pid")
            return process_alive(int(pid)) if pid else False
        return self.controller is not None and self.controller.is_running

    @property
    def engine_count(self) -> int:
        """Engine processes alive (not necessarily registered yet).

        A handle from :meth:`from_file` / :meth:`from_profile` launched none of them, so it
        counts the engines registered with the controller instead, whichever process or
        host started them (the launching process's count would always be 0 there).
        """
        if self._attached and self.controller is None:
            return len(self._admin_client().ids) if self.is_running else 0
        return sum(es.running_count for es in self.engines)

    def pids(self) -> dict[str, Any]:
        """The pids of this cluster's processes on this host: ``{"controller": pid,
        "engines": [pids], "monitors": [pids]}``.

        Local controllers and engines run under a monitor each (launchers/monitor.py);
        ``controller`` and ``engines`` are the processes doing the work (what
        ``os.getpid()`` says in a task), ``monitors`` their monitors. A process whose
        monitor has not started it yet (or is restarting it) is named by its monitor.
        """
        monitors: list[int] = []
        controller = None
        if self.controller and self.controller.handles and self.controller.handles[0].pid:
            controller = _worker_pid(self.controller, self.controller.handles[0].pid, monitors)
        engines = [pid for es in self.engines for pid in _worker_pids(es, monitors)]
        return {"controller": controller, "engines": engines, "monitors": monitors}

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start the controller and the engines; return once the cluster file is written.

        The engines are launched together with the controller and wait for its file
        themselves; so this returns about when the controller is ready, and the engines
        register a few tens of milliseconds later (:meth:`start_and_connect` waits for
        them). A controller that exits, or writes no file within ``engine_timeout``
        seconds, raises :class:`ClusterError` quoting the end of its log. A cluster that
        was stopped starts again (same id and settings; its old clients stay closed).
        """
        with self._lock:
            if self.controller is not None:
                if not self._stopped or self._attached:
                    raise ClusterError(f"cluster {self.cluster_id!r} was already started")
                # Stopped: start afresh, same id and settings (as ipyparallel allows).
                self.controller = None
                self.engines = []
                self.cluster_info = None
            controller_cls = get_launchers(self.controller_launcher)[0]
            pdir = self.profile_dir
            first = self._new_engine_set(self.n)
            problem = self._ip_problem() or first.preflight(self.advertised_ip)
            if problem:
                raise ClusterError(problem)
            self._remove_stale_file()
            self._retain_old_files()
            self.controller = controller_cls(
                profile_dir=pdir,
                cluster_id=self.cluster_id,
                profile=self.profile,
                mode=self.controller_mode,
                db=self.db,
                hb_period=self.hb_period,
                hb_misses=self.hb_misses,
                ip=self.ip,
                location=self.location or None,
                log_level=self.config.get("controller", "log_level"),
                extra_args=(
                    "--hwm",
                    str(self.config.get("controller", "hwm")),
                    "--policy",
                    self.config.get("controller", "policy"),
                    "--memory-bound-mb",
                    repr(float(self.config.get("controller", "memory_bound_mb"))),
                    *self.controller_args,
                ),
                options=self._launcher_options(self.controller_launcher),
            )
            self._stopped = False
            _live_clusters.add(self)
            self.controller.start()
            try:
                if not first.remote:
                    # Local engines import while the controller binds (see the module doc).
                    self._start_engine_set(first)
                self.cluster_info = self._wait_for_cluster_file()
                if first.remote:
                    first.cluster_info = dict(self.cluster_info)
                    self._start_engine_set(first)
            except BaseException:
                self._kill_all()
                raise
            self._write_record()
            log.info("cluster %s started: %s", self.cluster_id, self.pids())

    def _engine_command_args(self) -> list[str]:
        return [
            "--timeout",
            repr(float(self.config.get("engine", "timeout"))),
            "--log-level",
            self.config.get("engine", "log_level"),
            "--controller-grace",
            repr(float(self.config.get("engine", "controller_grace"))),
            # The profile's [kernel] settings engines honour (exec_lines, working_dir).
            *engine_args(self.config.section("kernel")),
            *self.engine_args,
        ]

    def _new_engine_set(self, n: int) -> EngineSetLauncher:
        from corral.plugins.parallel.launchers.monitor import Policy

        _, engines_cls = get_launchers(self.engine_launcher)
        engines = engines_cls(
            n,
            profile_dir=self.profile_dir,
            cluster_id=self.cluster_id,
            cluster_file=self.cluster_file,
            extra_args=self._engine_command_args(),
            options=self._launcher_options(self.engine_launcher),
            cluster_info=self.cluster_info,
        )
        engines.policy = Policy.from_config(self.config)
        return engines

    def _start_engine_set(
        self, engines: EngineSetLauncher, engine_set_id: str | None = None
    ) -> EngineSetLauncher:
        engines.engine_set_id = engine_set_id or self._new_engine_set_id()
        engines.set_index, self._sets_started = self._sets_started, self._sets_started + 1
        self.engines.append(engines)
        try:
            engines.start()
        except LaunchError:
            raise  # already says what failed, in the launcher's (or scheduler's) words
        except (OSError, RuntimeError, ValueError) as error:
            raise ClusterError(
                f"the {self.engine_launcher} launcher could not start engines: {error}"
            ) from error
        return engines

    def _new_engine_set_id(self) -> str:
        """ipyparallel's form, the start time in seconds (``"1733550000"``), with
        ``-1``, ``-2``... for sets started within the same second."""
        base = new_id = str(int(time.time()))
        taken = {es.engine_set_id for es in self.engines}
        suffix = 0
        while new_id in taken:
            suffix += 1
            new_id = f"{base}-{suffix}"
        return new_id

    @property
    def engine_sets(self) -> dict[str, EngineSetLauncher]:
        """The engine sets started and not stopped, by id: ipyparallel's
        ``cluster.engines`` (corral's :attr:`engines` stays the list of launchers)."""
        return {es.engine_set_id: es for es in self.engines if es.n > 0}

    def add_engines(self, n: int) -> None:
        """Start ``n`` more engines on a running cluster (they register by themselves)."""
        self._add_engine_set(n)

    def _add_engine_set(self, n: int, engine_set_id: str | None = None) -> str:
        """:meth:`add_engines`, returning the new set's id (``start_engines`` returns it)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"add_engines(n): n must be an integer >= 1, not {n!r}")
        if not self.is_running:
            raise ClusterError("the cluster is not running; call start() first")
        if engine_set_id is not None and engine_set_id in self.engine_sets:
            raise ValueError(f"engine set {engine_set_id!r} is running already")
        engines = self._start_engine_set(self._new_engine_set(n), engine_set_id)
        self.n += n
        self._write_record()
        return engines.engine_set_id

    def _engine_set(self, engine_set_id: str) -> EngineSetLauncher:
        try:
            return self.engine_sets[engine_set_id]
        except KeyError:
            raise ValueError(
                f"no engine set {engine_set_id!r}; engine sets: {list(self.engine_sets)}"
            ) from None

    def _set_engine_ids(self, engines: EngineSetLauncher) -> list[int]:
        """The registered engines of one set, found by pid: the pids its launcher
        started on this host. Engines it started elsewhere (ssh, MPI, a batch system)
        have pids this host does not know, so they are not listed."""
        import socket

        pids = set(_worker_pids(engines, []))
        here = socket.gethostname()
        infos = self._admin_client().engines
        return sorted(
            i
            for i, info in infos.items()
            if info.pid in pids and (not info.hostname or info.hostname == here)
        )

    # ------------------------------------------------------------------ engines by id

    def _admin_client(self) -> Client:
        """A client of the cluster's own, for engine management (closed by stop)."""
        if self._admin is None:
            self._admin = self.connect_client()
        return self._admin

    def _check_ids(self, ids: Any) -> list[int]:
        client = self._admin_client()
        live = client.ids
        if ids is None:
            return live
        wanted = [ids] if isinstance(ids, int) else list(ids)
        unknown = [i for i in wanted if i not in live]
        if unknown:
            raise ValueError(f"no engine with id {unknown}; live engines: {live}")
        return wanted

    def stop_engines(self, ids: Any = None, *, timeout: float | None = None) -> AwaitableList:
        """Shut engines ``ids`` (an id, a list, or None: all) down cleanly through the
        controller, which works whichever launcher started them; returns once they have
        unregistered. Returns the ids stopped (a list, awaitable as in ipyparallel).

        ``ids`` may also be an engine set's id (a ``str``, from :meth:`start_engines`):
        that set's engines stop and its launcher is stopped (what it started elsewhere
        is ended by the launcher); the others keep running.
        """
        if isinstance(ids, str):
            return self._stop_engine_set(self._engine_set(ids), timeout)
        targets = self._check_ids(ids)
        self._shut_down(targets, timeout)
        self.n -= len(targets)
        self._write_record()
        return AwaitableList(targets)

    def _shut_down(self, targets: list[int], timeout: float | None) -> None:
        """Ask the controller to shut engines down; return once they unregistered."""
        client = self._admin_client()
        client.shutdown(targets=targets, hub=False)
        deadline = time.monotonic() + (self.engine_timeout if timeout is None else timeout)
        while any(i in client.ids for i in targets):
            if time.monotonic() > deadline:
                raise ClusterError(f"engines {targets} did not stop within the timeout")
            time.sleep(0.01)

    def _stop_engine_set(self, engines: EngineSetLauncher, timeout: float | None) -> AwaitableList:
        """Stop one engine set: its registered engines cleanly, then whatever its
        launcher still runs (engines not registered yet, or on other hosts)."""
        targets = self._set_engine_ids(engines)
        if targets:
            self._shut_down(targets, timeout)
        engines.stop(grace=self.stop_grace)
        self.engines.remove(engines)
        self.n = max(0, self.n - engines.n)
        self._write_record()
        return AwaitableList(targets)

    def restart_engines(self, ids: Any = None) -> AwaitableList:
        """Stop engines ``ids`` and start as many new ones; returns the new engines' ids
        once they are registered (engine ids are never reused).

        An engine set's id (a ``str``) restarts that set: as many engines, same set id.
        """
        client = self._admin_client()
        before = set(client.ids)
        if isinstance(ids, str):
            engines = self._engine_set(ids)
            stopped = self._stop_engine_set(engines, None)
            self._add_engine_set(engines.n, ids)
            self.wait_for_engines(client, len(before) - len(stopped) + engines.n)
            return AwaitableList(sorted(set(client.ids) - before))
        targets = self._check_ids(ids)
        self.stop_engines(targets)
        self.add_engines(len(targets))
        self.wait_for_engines(client, len(before))
        return AwaitableList(sorted(set(client.ids) - (before - set(targets))))

    def signal_engines(self, signum: int, ids: Any = None) -> AwaitableList:
        """Send ``signum`` to engines ``ids`` (None: every engine, through the
        launchers, wherever they run). Engines named by id must run on this host (they
        are signalled by pid); for remote engines signal them all. Returns the ids
        signalled (all registered ones when ``ids`` is None), a list also awaitable.

        An engine set's id (a ``str``) signals that set through its launcher; the ids
        returned are its engines on this host."""
        import socket

        if isinstance(ids, str):
            engines = self._engine_set(ids)
            ids_in_set = self._set_engine_ids(engines)
            engines.send_signal(signum)
            return AwaitableList(ids_in_set)
        if ids is None:
            for engines in self.engines:
                engines.send_signal(signum)
            return AwaitableList(self._admin_client().ids if self.is_running else [])
        targets = self._check_ids(ids)
        infos = self._admin_client().engines
        here = socket.gethostname()
        for engine_id in targets:
            info = infos[engine_id]
            if info.pid is None or (info.hostname and info.hostname != here):
                raise ValueError(
                    f"engine {engine_id} runs on {info.hostname or 'another host'}: only "
                    "engines on this host can be signalled by id; use ids=None"
                )
        for engine_id in targets:
            pid = infos[engine_id].pid
            assert pid is not None
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return AwaitableList(targets)

    # ------------------------------------------------------------------ logs

    def logs(self) -> dict[str, Path]:
        """The log files of this cluster's processes: ``{"controller": path, "engine
        set 0": path, ...}`` (launchers that write several logs list each)."""
        found: dict[str, Path] = {}
        if self.controller is not None and self.controller.log_file is not None:
            found["controller"] = self.controller.log_file
        for number, engines in enumerate(self.engines):
            paths = [h.log_file for h in engines.handles if h.log_file is not None]
            for k, path in enumerate(dict.fromkeys(paths)):
                found[f"engines {number}.{k}"] = path
        return found

    def _retain_old_files(self) -> None:
        """Keep ``keep_logs`` log files and ``keep_dbs`` task databases of earlier
        clusters: a profile used daily otherwise piles up hundreds of them."""
        from corral.plugins.parallel.retention import prune

        prune(
            self.profile_dir,
            keep_logs=self.config.get("cluster", "keep_logs"),
            keep_dbs=self.config.get("cluster", "keep_dbs"),
        )

    # ------------------------------------------------------------------ re-attach

    @classmethod
    def from_file(
        cls,
        cluster_file: str | os.PathLike[str] | None = None,
        *,
        profile: str | None = None,
        profile_dir: str | os.PathLike[str] | None = None,
        cluster_id: str = "",
    ) -> Cluster:
        """A handle on a cluster started elsewhere, from its record file
        (``<profile>/run/cluster-ID.json``) or its cluster file: it can hand out clients,
        manage engines by id and :meth:`stop` it, though it did not start it.

        Without ``cluster_file``, as in ipyparallel, the cluster file of ``cluster_id``
        in ``profile_dir`` (a profile's directory), else in ``profile`` (default:
        "default"). ipyparallel's ``cluster_id=""`` names the cluster ``ipcluster
        start`` runs; corral clusters always have an id, so ``""`` means the profile's
        only running cluster (:meth:`from_profile`).
        """
        if cluster_file is None:
            if profile_dir is not None:
                if not Path(profile_dir).is_dir():
                    raise ClusterError(f"profile directory {profile_dir} does not exist")
                return cls._from_profile_dir(Path(profile_dir), cluster_id or None)
            return cls.from_profile(profile or "default", cluster_id or None)
        path = Path(cluster_file)
        info = read_record(path)
        if info is None:
            raise ClusterError(f"{path} is not a cluster record or cluster file")
        if info.get("members") or isinstance(info.get("controllers"), list):
            # An aggregate's record or file: a handle on all its member controllers.
            from .shards import Shards

            return Shards.from_file(path)  # type: ignore[return-value]
        if "registration" in info:  # a cluster file: profile/security/cluster-ID.json
            cluster_id = str(info["cluster_id"])
            profile = path.parent.parent.name.removeprefix("profile_")
            # The engine count is in the starter's record beside it, not in the file.
            record = read_record(record_path(path.parent.parent, cluster_id)) or {}
            info = {**info, "n": record.get("n")}
        else:
            cluster_id = str(info["cluster_id"])
            profile = str(info.get("profile") or "default")
        # controllers=1: this handle is one controller's, whatever [cluster] controllers
        # of the profile says (an aggregate's member is one, too).
        cluster = cls(
            n=max(1, int(info.get("n") or 1)),
            profile=profile,
            cluster_id=cluster_id,
            controllers=1,
        )
        if not cluster.cluster_file.exists():
            raise ClusterError(f"cluster {cluster_id!r} has no cluster file; is it running?")
        cluster.cluster_info = read_record(cluster.cluster_file)
        cluster._attached = True
        return cluster

    @classmethod
    def from_profile(cls, profile: str = "default", cluster_id: str | None = None) -> Cluster:
        """The running cluster ``cluster_id`` of ``profile`` (or its only one)."""
        from corral.core.profiles import locate_profile

        return cls._from_profile_dir(locate_profile(profile), cluster_id, repr(profile))

    @classmethod
    def _from_profile_dir(
        cls, pdir: Path, cluster_id: str | None, profile: str | None = None
    ) -> Cluster:
        """:meth:`from_profile` of the profile in directory ``pdir``."""
        if profile is None:
            profile = str(pdir)
        if cluster_id is not None:
            return cls.from_file(pdir / "security" / f"cluster-{cluster_id}.json")
        from .aggregatefile import member_cluster_ids

        members = member_cluster_ids(pdir / "security")  # reached through their aggregate
        files = [
            f
            for f in sorted((pdir / "security").glob("cluster-*.json"))
            if f.stem.removeprefix("cluster-") not in members
        ]
        if len(files) != 1:
            found = [f.stem.removeprefix("cluster-") for f in files]
            raise ClusterError(
                f"profile {profile} has {len(files)} running clusters {found}; "
                "name one with cluster_id="
            )
        return cls.from_file(files[0])

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
                f"stop it with `corral --profile {self.profile} cluster stop --cluster-id "
                f"{self.cluster_id}`"
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
        if self._attached:
            # Someone else manages this cluster: keep their record, only the count moves.
            existing = read_record(self.record_file)
            if existing is None:
                return
            existing["n"] = self.n
            self._store_record(existing)
            return
        record = {
            "cluster_id": self.cluster_id,
            "profile": self.profile,
            "n": self.n,
            "engine_launcher": self.engine_launcher,
            "manager_pid": os.getpid(),
            "controller_mode": self.controller_mode,
            "cluster_file": str(self.cluster_file),
            "started": time.time(),
            **self.pids(),
        }
        self._store_record(record)

    def _store_record(self, record: dict[str, Any]) -> None:
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
            # Every launcher says its processes are gone: the client may not have heard
            # of the deaths yet, but no engine is coming.
            if n > 0 and self.engines and all(es.poll() is not None for es in self.engines):
                raise self._engines_gone(n, 0)
            remaining = deadline - time.monotonic()
            try:
                client.wait_for_engines(n, timeout=max(0.0, min(0.25, remaining)))
                return
            except TimeoutError:
                pass
            if not self.is_running:
                raise self._failure(f"the controller of cluster {self.cluster_id!r} exited")
            # Fewer engine processes than wanted: some died. Only the starter sees them all:
            # a handle from from_file counts registered engines, and fewer of those is
            # what a wait is for (its new engines have not registered yet).
            alive = self.engine_count
            if alive < n and not self._attached:
                raise self._engines_gone(n, alive)
            if remaining <= 0:
                said = "; ".join(d for d in (es.describe() for es in self.engines) if d)
                raise ClusterError(
                    f"{len(client.ids)} of {n} engines registered with cluster "
                    f"{self.cluster_id!r} within {self.engine_timeout} s"
                    + (f"; the {self.engine_launcher} launcher says: {said}" if said else "")
                )

    def _engines_gone(self, n: int, alive: int) -> ClusterError:
        """Fewer engine processes than wanted: the end of a dead engine's log, and what a
        batch system says about the ended job (a walltime kill, ...)."""
        tails = [es.output_tail() for es in self.engines if es.poll() is not None]
        tails += [es.output_tail() for es in self.engines if es.running_count < es.n]
        said = "; ".join(d for d in (es.describe() for es in self.engines) if d)
        return ClusterError(
            f"only {alive} of {n} engine processes of cluster {self.cluster_id!r} are alive"
            + (f"; the {self.engine_launcher} launcher says: {said}" if said else "")
            + f"; an engine's output ends with:\n{(tails or ['(no output)'])[0]}"
        )

    def start_and_connect(self, n: int | None = None, activate: bool = False) -> Client:
        """Start (``n`` engines if given), connect a client, wait until every engine is
        registered, and return the client; with ``activate``, ``%px`` runs on all
        engines (ipyparallel's ``start_and_connect(n, activate=True)``)."""
        if n is not None:
            self.n = n
        self.start()
        try:
            client = self.connect_client()
            self.wait_for_engines(client)
        except BaseException:
            self.stop()
            raise
        if activate:
            client.activate()
        return client

    # ------------------------------------------------------------------ stop

    def stop(self, grace: float | None = None) -> None:
        """Stop everything: ask the controller to shut the cluster down through a client,
        then SIGTERM every process group still alive, SIGKILL after ``grace`` seconds;
        remove the cluster, record and pid files. Safe to call twice."""
        grace = self.stop_grace if grace is None else grace
        with self._lock:
            if self._attached and not self._stopped:
                self._stop_attached()
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

    def _stop_attached(self) -> None:
        """Stop a cluster this object did not start, as ``corral cluster stop`` does."""
        from corral.plugins.parallel.commands import stop_cluster

        self._stopped = True
        self._close_clients()
        record = read_record(self.record_file) or {
            "cluster_id": self.cluster_id,
            "cluster_file": str(self.cluster_file),
            "controller": (self.cluster_info or {}).get("controller_pid"),
        }
        record.setdefault("cluster_file", str(self.cluster_file))
        stop_cluster(self.profile, record)
        for engines in self.engines:  # engines this object added
            engines.stop(grace=self.stop_grace)

    def _request_shutdown(self) -> None:
        """The polite way: the hub tells every engine to shut down, then exits itself."""
        for client in self._clients:
            try:
                client.shutdown()
                return
            except Exception as exc:  # a broken client must not prevent the stop
                log.debug("shutdown through client failed: %s", exc)

    def _close_clients(self) -> None:
        self._admin = None
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
                launcher.wait(5.0)
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


#: Clusters started in this process and not stopped, so they can be stopped at exit.
#: Held strongly: ``corral.Cluster(n=2).start_and_connect()`` keeps no reference to its
#: Cluster, and a weak set let it go, so its processes ended by their parent watch
#: and its record stayed behind, confusing ``corral cluster stop`` and ``status``.
_live_clusters: set[Cluster] = set()


@atexit.register
def _stop_forgotten_clusters() -> None:
    """Processes run in their own sessions, so they would outlive this interpreter (until
    their parent watch notices); stop them now instead."""
    for cluster in list(_live_clusters):
        try:
            cluster.stop(grace=1.0)
        except Exception as exc:
            log.warning("could not stop cluster %s at exit: %s", cluster.cluster_id, exc)


def _worker_pids(launcher: Any, monitors: list[int]) -> list[int]:
    """The pids of the processes doing a launcher's work: a monitored launcher's handles
    are monitors (appended to ``monitors``), each running one worker; a worker not
    started yet (or restarting) is named by its monitor."""
    return [_worker_pid(launcher, h.pid, monitors) for h in launcher.handles if h.pid is not None]


def _worker_pid(launcher: Any, pid: int, monitors: list[int]) -> int:
    if not getattr(launcher, "monitored", False):
        return pid
    monitors.append(pid)
    return _only_child(pid) or pid


def _has_security(config: Any) -> bool:
    """Whether the resolved settings know ``[security] encryption`` (the security
    plugin's option, present unless plugins are disabled)."""
    try:
        config.get("security", "encryption")
    except Exception:
        return False
    return True
