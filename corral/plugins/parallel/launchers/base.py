"""The launcher seam: how a cluster's processes are started, watched and stopped.

A :class:`~corral.plugins.parallel.cluster.Cluster` never spawns a process itself. It asks
a *controller launcher* for one controller and an *engine-set launcher* for ``n`` engines,
and from then on only talks to them through this interface: ``start()``, ``poll()`` /
``is_running``, ``stop(signum)``, ``wait(timeout)``, ``on_stop`` callbacks and
``log_file``. Where and how the processes really run (a local subprocess, an ``ssh``
session, a Slurm job, an ``mpiexec``) is the launcher's business alone, so a cluster on a
laptop and one on a supercomputer are driven by the same code.

What a launcher gives back from :meth:`Launcher.start` is a list of :class:`LaunchHandle`:
a pid where the process is local, a job id where a batch system owns it, or both.

Launchers by name
-----------------
Launchers are looked up by name (``Cluster(engines="ssh")``, ``[cluster] engines = ssh``)
through :func:`get_launchers`, which asks the ``corral_launchers`` hook: every plugin
returns ``{name: (ControllerLauncherClass, EngineSetLauncherClass)}``. The built-in
launchers (``local``, ``ssh``, ``mpi``) register through that same hook, from
:mod:`corral.plugins.parallel.launchers.builtin`::

    @hookimpl
    def corral_launchers():
        return {"slurm": (SlurmControllerLauncher, SlurmEngineSetLauncher)}

A launcher's options live in section ``[launcher:NAME]`` (declared with
``corral_add_options``) and reach it as the ``options`` mapping, already validated.

Launchers whose processes run elsewhere set :attr:`EngineSetLauncher.remote`: the
cluster then starts them only once the controller's cluster file is complete and hands
them its content as :attr:`EngineSetLauncher.cluster_info`, to pass on through their own
channel (ssh's stdin, the job's environment, ...): no shared file system is assumed.
"""

from __future__ import annotations

import abc
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from corral.core.processes import tail
from corral.errors import CorralError

__all__ = [
    "ControllerLauncher",
    "EngineSetLauncher",
    "LaunchError",
    "LaunchHandle",
    "Launcher",
    "tail",
]


class LaunchError(CorralError, RuntimeError):
    """A process could not be started, or exited while starting. The message quotes the
    end of its log, because that is almost always where the reason is."""


class LaunchHandle(NamedTuple):
    """One thing a launcher started: a local pid, a batch job id, or both (immutable).

    A named tuple, not attrs nor a dataclass: this module is imported by every controller
    and engine process (the bootstrap in :mod:`.local` lives next to it), where importing
    attrs would cost 11 ms and dataclasses (with inspect) 7 ms of each start.
    """

    pid: int | None = None
    job_id: str | None = None
    #: Process group to signal (local launchers start each process in its own group).
    pgid: int | None = None
    log_file: Path | None = None


StopCallback = Callable[["Launcher"], None]


class Launcher(abc.ABC):
    """Starts processes of one role and keeps track of them until they end.

    Subclasses implement :meth:`start`, :meth:`poll` and :meth:`send_signal`; the rest
    (waiting, graceful stop with escalation, ``on_stop`` callbacks) is built on those.
    Launchers are single-use: start once, stop once.
    """

    #: Name under which :func:`get_launchers` finds this launcher's family.
    name: ClassVar[str] = ""

    def __init__(
        self, *, profile_dir: Path, cluster_id: str, options: Mapping[str, Any] | None = None
    ) -> None:
        self.profile_dir = Path(profile_dir)
        self.cluster_id = cluster_id
        #: This launcher's ``[launcher:NAME]`` settings, validated by the schema.
        self.options: dict[str, Any] = dict(options or {})
        self.handles: list[LaunchHandle] = []
        self._stop_callbacks: list[StopCallback] = []
        self._stopped = threading.Event()
        self._callbacks_lock = threading.Lock()
        self._callbacks_done = False

    # ------------------------------------------------------------ to implement

    @abc.abstractmethod
    def start(self) -> list[LaunchHandle]:
        """Start the process(es) and return at once, without waiting for them to serve."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """``None`` while any process of this launcher runs, else an exit code (the first
        non-zero one, if any)."""

    @abc.abstractmethod
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to every process (group) still running."""

    @property
    @abc.abstractmethod
    def log_file(self) -> Path | None:
        """Where the (first) process's stdout and stderr go, for error messages."""

    # ------------------------------------------------------------ built on them

    @property
    def is_running(self) -> bool:
        """True while at least one process of this launcher is alive."""
        return bool(self.handles) and self.poll() is None

    def on_stop(self, callback: StopCallback) -> None:
        """Call ``callback(launcher)`` once, when every process has ended (for whatever
        reason). Called at once if that already happened."""
        with self._callbacks_lock:
            if not self._callbacks_done:
                self._stop_callbacks.append(callback)
                return
        callback(self)

    def _notify_stopped(self) -> None:
        """Subclasses call this once all their processes are gone."""
        with self._callbacks_lock:
            if self._callbacks_done:
                return
            self._callbacks_done = True
            callbacks, self._stop_callbacks = self._stop_callbacks, []
        self._stopped.set()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a broken observer must not stop the others
                import logging

                logging.getLogger("corral.launchers").exception("on_stop callback failed")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every process has ended; False on timeout."""
        if not self.handles:
            return True
        return self._stopped.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, *, grace: float = 3.0) -> None:
        """Send ``signum``; if processes are still alive after ``grace`` seconds, SIGKILL.

        SIGTERM first so engines and controllers can close sockets and remove their files;
        SIGKILL after, because a cluster that cannot be stopped is worse than one that
        stopped untidily.
        """
        if not self.is_running:
            return
        self.send_signal(signum)
        if signum != signal.SIGKILL and not self.wait(grace):
            self.send_signal(signal.SIGKILL)
            self.wait(5.0)

    def output_tail(self) -> str:
        """The end of :attr:`log_file` (see :func:`tail`)."""
        return tail(self.log_file)


class ControllerLauncher(Launcher):
    """Starts the controller, which binds its sockets and then writes the cluster file."""

    def __init__(
        self,
        *,
        profile_dir: Path,
        cluster_id: str,
        profile: str = "default",
        mode: str = "processes",
        db: str = "sqlite",
        hb_period: float = 1.0,
        hb_misses: int | None = None,
        ip: str | None = None,
        location: str | None = None,
        log_level: str | None = None,
        extra_args: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(profile_dir=profile_dir, cluster_id=cluster_id, options=options)
        if mode not in ("processes", "threads"):
            raise ValueError(f"controller mode must be 'processes' or 'threads', not {mode!r}")
        self.profile = profile
        self.mode = mode
        self.db = db
        self.hb_period = hb_period
        self.hb_misses = hb_misses
        self.ip = ip
        self.location = location or None
        self.log_level = log_level
        self.extra_args = list(extra_args)

    @property
    def cluster_file(self) -> Path:
        """Where the controller writes its ports and key (fixed before it starts)."""
        return self.profile_dir / "security" / f"cluster-{self.cluster_id}.json"

    def command(self) -> list[str]:
        """The controller command line, for this or any machine with corral installed."""
        cmd = [
            sys.executable,
            "-m",
            "corral.plugins.parallel.controller",
            "--profile",
            self.profile,
            "--cluster-id",
            self.cluster_id,
            "--db",
            self.db,
            "--hb-period",
            repr(self.hb_period),
        ]
        if self.mode == "threads":
            cmd.append("--threads")
        if self.hb_misses is not None:
            cmd += ["--hb-misses", str(self.hb_misses)]
        if self.ip is not None:
            cmd += ["--ip", self.ip]
        if self.location is not None:
            cmd += ["--location", self.location]
        if self.log_level is not None:
            cmd += ["--log-level", self.log_level]
        return cmd + self.extra_args


class EngineSetLauncher(Launcher):
    """Starts ``n`` engines, each told only where the cluster file is (or, for a
    :attr:`remote` launcher, what it holds)."""

    #: True when the engines run on other hosts: they need the controller on TCP at an
    #: address they can reach, and the cluster file's content rather than its path.
    remote: ClassVar[bool] = False
    #: True when engines may run on other hosts (ssh, MPI, batch systems): the controller
    #: must then listen on TCP rather than a same-host transport.
    needs_tcp: ClassVar[bool] = False

    def __init__(
        self,
        n: int,
        *,
        profile_dir: Path,
        cluster_id: str,
        cluster_file: Path,
        extra_args: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
        cluster_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(profile_dir=profile_dir, cluster_id=cluster_id, options=options)
        if n < 0:
            raise ValueError(f"number of engines must be >= 0, not {n}")
        self.n = n
        self.cluster_file = Path(cluster_file)
        self.extra_args = list(extra_args)
        #: What each engine's monitor does (a ``monitor.Policy``; None: the defaults).
        #: Set by the cluster from ``[engine] restart``, ``memory_limit``, ``walltime``.
        self.policy: Any = None
        #: Names this set in ``Cluster.stop_engines(id)`` and the like (set by the
        #: cluster when it starts the set; ipyparallel addresses engines by set).
        self.engine_set_id = ""
        #: Which of its cluster's engine sets this is, in start order (set by the
        #: cluster; 0: the first); see :attr:`file_prefix`.
        self.set_index = 0
        #: The cluster file's content, given to :attr:`remote` launchers before start.
        self.cluster_info: dict[str, Any] | None = (
            dict(cluster_info) if cluster_info is not None else None
        )

    @property
    def file_prefix(self) -> str:
        """How this set's log, pid and job-script files begin: ``engine-ID`` for the
        cluster's first set, ``engine-ID-sK`` for the K-th started after it.

        Why: every set numbers its engines (or array tasks, or ssh sessions) from 0, so
        without the set in the name a second set (``add_engines``, ``start_engines``)
        wrote into the first one's logs and pid files, and stopping it removed the pid
        files of engines that were still running.
        """
        base = f"engine-{self.cluster_id}"
        return base if self.set_index == 0 else f"{base}-s{self.set_index}"

    def command(self) -> list[str]:
        """The engine command line."""
        return [
            sys.executable,
            "-m",
            "corral.plugins.parallel.engine",
            "--file",
            str(self.cluster_file),
            *self.extra_args,
        ]

    def describe(self) -> str:
        """What the launcher knows about engines that have not arrived (a batch
        system's job states and reasons), for error messages; "" if nothing."""
        return ""

    def preflight(self, advertised_ip: str) -> str | None:
        """Why this launcher cannot work as configured (a missing command, hosts that
        cannot reach ``advertised_ip``), or None. Called before anything starts, so a
        doomed cluster fails at once and leaves nothing behind."""
        return None

    @property
    def running_count(self) -> int:
        """How many engine processes are alive (subclasses with better knowledge override)."""
        return self.n if self.is_running else 0
