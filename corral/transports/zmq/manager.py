"""The kernel manager: starts a kernel process, watches it, restarts it, stops it for good.

How a kernel is started: the manager picks a connection file *path* that does not exist yet
and runs ``python -m corral.plugins.kernel_main -f PATH`` in a new session (so it
and everything it spawns form one process group the manager can signal as a whole). The
kernel binds random ports and only then writes the file, so no other process can race
for the ports; the manager waits for the file while watching that the process stays alive,
and a kernel that dies first is reported with the tail of its output.

How a death is noticed: a reaper thread sits in ``Popen.wait()`` and learns of an exit the
moment it happens; a heartbeat thread pings the kernel's echo socket as a second signal for
a kernel that hangs without exiting. Either one ends up in :meth:`KernelManager._on_death`,
which tells the clients (their pending waits fail with
:class:`~corral.transports.zmq.client.KernelDiedError` instead of hanging), posts
``KERNEL_DIED``, and restarts the kernel unless restarts came too often. Clients handed out
by :meth:`KernelManager.client` are re-pointed to the new kernel, so callers keep their
objects.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import psutil
import zmq

from corral.core.private import private_parent
from corral.core.processes import Spawned, child_env
from corral.errors import CorralError
from corral.notification import NotificationCenter, shared_center
from corral.transports.zmq.aclient import AsyncKernelClient
from corral.transports.zmq.client import (
    BlockingKernelClient,
    KernelDiedError,
    _ClientBase,
    channel_url,
    describe_exit,
    kernel_public_key,
)
from corral.transports.zmq.connection import (
    ConnectionInfo,
    new_connection_file,
    read_connection_file,
)
from corral.transports.zmq.ipc import release_dead
from corral.transports.zmq.kernel_events import KERNEL_DIED, KERNEL_RESTARTED, KERNEL_STARTED
from corral.transports.zmq.kernel_main import KERNEL_MODULE
from corral.transports.zmq.wire import Signer, make_message, serialize

__all__ = ["KernelManager", "KernelStartError"]

log = logging.getLogger("corral.manager")


class KernelStartError(CorralError, RuntimeError):
    """The kernel process exited, or never wrote its connection file, while starting."""


def default_kernel_cmd() -> list[str]:
    """corral's own kernel, run by this interpreter; ``{connection_file}`` is filled in."""
    return [sys.executable, "-m", KERNEL_MODULE, "-f", "{connection_file}"]


class _KernelProcess(Spawned):
    """One kernel process (:class:`~corral.core.processes.Spawned`: detached, output in
    its log, a reaper thread that sees its end at once) and its process group."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        # Always a new session, even in Windows mode: the kernel is stopped by group.
        super().__init__(argv, log_file=log_path, env=env, new_session=True)
        # The kernel leads its own group: pgid == pid.
        self.pgid = self.pid
        #: Set once the manager has dealt with this process's end (expected or not).
        self.settled = False


class _HeartbeatMonitor(threading.Thread):
    """Pings the kernel's heartbeat every ``interval``; ``misses`` unanswered pings = dead.

    It complements the reaper: a process can be alive yet frozen (a deadlock in C code, a
    machine swapping to death); only an unanswered ping shows that.
    """

    def __init__(
        self,
        url: str,
        interval: float,
        misses: int,
        on_dead: Any,
        curve_server_key: str | None = None,
    ) -> None:
        super().__init__(name="corral-heartbeat-monitor", daemon=True)
        self.url = url
        self.interval = interval
        self.misses = misses
        self.on_dead = on_dead
        self.curve_server_key = curve_server_key
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def _socket(self) -> zmq.Socket[Any]:
        return _ping_socket(self.url, self.curve_server_key)

    def run(self) -> None:
        sock = self._socket()
        missed = 0
        try:
            while not self.stopped.is_set():
                sent = time.monotonic()
                sock.send(b"ping")
                if self._answered(sock, sent + self.interval):
                    sock.recv()
                    missed = 0
                    self.stopped.wait(max(0.0, sent + self.interval - time.monotonic()))
                    continue
                if self.stopped.is_set():
                    return
                missed += 1
                # A REQ socket without its reply cannot send again: start a fresh one.
                sock.close(linger=0)
                sock = self._socket()
                if missed >= self.misses:
                    self.on_dead()
                    return
        finally:
            sock.close(linger=0)

    def _answered(self, sock: zmq.Socket[Any], deadline: float) -> bool:
        """Wait for the echo in short slices so that :meth:`stop` takes effect promptly."""
        while not self.stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if sock.poll(int(min(left, 0.1) * 1000) + 1):
                return True
        return False


def _ping_socket(url: str, curve_server_key: str | None) -> zmq.Socket[Any]:
    """A REQ socket connected to a kernel's heartbeat (encrypted if the kernel is)."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.REQ)
    sock.linger = 0
    if curve_server_key:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = curve_server_key.encode("ascii")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.connect(url)
    return sock


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the whole group, give it ``grace`` seconds, then SIGKILL what is left.

    Sending to the group reaches what the kernel spawned too (``subprocess.Popen`` in user
    code), which would otherwise outlive the kernel as orphans.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        members = _group_members(pgid)
        if not members:
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        _, alive = psutil.wait_procs(members, timeout=wait)
        if not alive:
            return
    log.warning("processes of kernel group %d survived SIGKILL: %s", pgid, _group_members(pgid))


#: Managers holding a kernel, so that kernels nobody shut down do not outlive the program.
_live_managers: weakref.WeakSet[KernelManager] = weakref.WeakSet()


@atexit.register
def _shutdown_forgotten_kernels() -> None:
    """At exit, stop kernels whose managers were never shut down (orphans otherwise:
    kernels run in their own session, so they survive the frontend)."""
    for manager in list(_live_managers):
        try:
            manager.shutdown(now=True)
        except Exception:  # pragma: no cover - best effort while exiting
            log.exception("could not stop kernel %s at exit", manager.pid)


def kernel_settings(config: Any) -> dict[str, Any]:
    """The ``[kernel]`` values of ``config`` (None: no file, the declared defaults)."""
    from .kernel_options import KERNEL_OPTIONS

    values = {option.key: option.default for option in KERNEL_OPTIONS}
    if config is not None:
        values.update(config.section("kernel"))
    return values


class KernelManager:
    """Starts and owns one kernel process, and hands out clients that follow it.

    ``profile`` names the profile whose ``security/`` holds the connection file and whose
    ``log/`` receives the kernel's stdout and stderr. ``kernel_cmd`` replaces the command
    (``{connection_file}`` in it is replaced by the path). ``env`` is added to this process's
    environment. Notifications (see :mod:`corral.transports.zmq.kernel_events`) go to
    ``center`` with the manager as sender. ``restart_limit`` automatic restarts are allowed
    within ``restart_window`` seconds; one more death and the kernel stays dead.

    Usable as a context manager: ``with KernelManager() as km:`` starts the kernel and
    shuts it down at the end. Kernels still running when the program exits normally are
    shut down then too; a kernel meant to outlive its frontend needs its own launcher.

    .. versionadded:: 0.1
    """

    #: Unanswered heartbeats in a row after which a running kernel counts as dead.
    heartbeat_misses: int = 5
    #: Seconds to wait for the connection file of a starting kernel.
    startup_timeout: float = 60.0
    #: Seconds within which ``restart_limit`` automatic restarts are allowed.
    restart_window: float = 60.0
    #: Seconds between SIGTERM and SIGKILL when stopping the process group.
    kill_grace: float = 2.0

    def check_profile(self, directory: Path) -> Any:
        """Refuse a profile whose configuration is broken, before anything starts, and
        return the loaded configuration (None: nothing loaded, the declared defaults).

        Nothing to check at this layer: the options are declared by plugins, which the
        transports do not import. :class:`corral.plugins.kernels.KernelManager` (what
        ``corral.KernelManager`` is) overrides this with the full configuration check.
        """
        return None

    def __init__(
        self,
        *,
        profile: str = "default",
        connection_file: str | Path | None = None,
        autorestart: bool | None = None,
        kernel_cmd: list[str] | None = None,
        env: dict[str, str] | None = None,
        center: NotificationCenter | None = None,
        restart_limit: int | None = None,
        heartbeat_interval: float | None = None,
        transport: str = "ipc",
    ) -> None:
        from corral.core.profiles import profile_dir

        if transport not in ("ipc", "tcp"):
            raise ValueError(f"transport must be 'ipc' or 'tcp', not {transport!r}")
        #: "ipc" (the default): the kernel listens on Unix sockets in the owner-only
        #: runtime directory, so no other local user can connect or read its output;
        #: "tcp": 127.0.0.1 ports, for frontends that cannot use ipc. Only applies to
        #: corral's own kernel command (a custom ``kernel_cmd`` decides for itself).
        self.transport = transport
        self.profile = profile
        self._profile_dir = profile_dir(profile)
        config = self.check_profile(self._profile_dir)
        # Arguments win, then the profile's [kernel] section, then the declared defaults.
        settings = kernel_settings(config)
        autorestart = settings["autorestart"] if autorestart is None else autorestart
        restart_limit = settings["restart_limit"] if restart_limit is None else restart_limit
        if heartbeat_interval is None:
            heartbeat_interval = settings["heartbeat_interval"]
        if connection_file is None:
            connection_file = new_connection_file(self._profile_dir / "security")
        self.connection_file: Path = Path(connection_file)
        self.autorestart = autorestart
        self.kernel_cmd = list(kernel_cmd) if kernel_cmd is not None else default_kernel_cmd()
        self.env = dict(env or {})
        self.center = center if center is not None else shared_center
        self.restart_limit = restart_limit
        self.heartbeat_interval = heartbeat_interval
        self.restart_count = 0
        self.connection_info: ConnectionInfo | None = None
        self._lock = threading.RLock()
        self._proc: _KernelProcess | None = None
        self._monitor: _HeartbeatMonitor | None = None
        self._restarts: collections.deque[float] = collections.deque()
        self._clients: weakref.WeakSet[_ClientBase] = weakref.WeakSet()

    # ------------------------------------------------------------------ queries

    @property
    def pid(self) -> int | None:
        """The kernel process's id (None before start and after shutdown)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def has_kernel(self) -> bool:
        """Whether a kernel was started and not shut down (it may have died since)."""
        return self._proc is not None

    def is_alive(self) -> bool:
        """Whether the kernel process is running."""
        proc = self._proc
        return proc is not None and proc.running

    @property
    def log_file(self) -> Path:
        """Where the kernel's own stdout and stderr go (user output goes over iopub)."""
        return self._profile_dir / "log" / f"{self.connection_file.stem}.log"

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> KernelManager:
        if not self.has_kernel:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self) -> None:
        """Start the kernel and wait until it has written its connection file.

        Raises :class:`KernelStartError`, quoting the kernel's output, if it exits first or
        takes longer than :attr:`startup_timeout`.
        """
        with self._lock:
            if self.is_alive():
                raise RuntimeError(f"kernel already running (pid {self.pid})")
            self._launch()
            proc = self._proc
            assert proc is not None
        self.center.post(
            KERNEL_STARTED, self, pid=proc.pid, connection_file=str(self.connection_file)
        )

    def interrupt(self) -> None:
        """Interrupt what the kernel is running (SIGINT: a KeyboardInterrupt in user code)."""
        proc = self._require_proc()
        if proc.running:
            os.kill(proc.pid, signal.SIGINT)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel's whole process group."""
        os.killpg(self._require_proc().pgid, signum)

    def restart(self, now: bool = False) -> None:
        """Stop the kernel (politely unless ``now``) and start a new one.

        The new kernel writes the same connection file path (its ports may differ); every
        client from :meth:`client` follows it, and waits pending on the old one fail with
        ``KernelDiedError``.
        """
        with self._lock:
            proc = self._require_proc()
            self._stop(proc, now=now, timeout=5.0, restart=True)
            self._launch()
            info = self.connection_info
            new = self._proc
            assert new is not None
            for client in self._client_list():
                client._kernel_restarted(info)
        self.center.post(
            KERNEL_RESTARTED,
            self,
            pid=new.pid,
            restart_count=self.restart_count,
            connection_file=str(self.connection_file),
            automatic=False,
        )

    def shutdown(self, now: bool = False, timeout: float = 5) -> None:
        """Stop the kernel and everything it started; remove the connection file.

        Unless ``now``, the kernel is asked to shut down (``shutdown_request`` on the
        control channel) and given ``timeout`` seconds to exit; then its process group gets
        SIGTERM and, after :attr:`kill_grace` seconds, SIGKILL.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._stop(proc, now=now, timeout=timeout, restart=False)
            self._proc = None
            _live_managers.discard(self)
            error = KernelDiedError("the kernel was shut down", pid=proc.pid, reason="shutdown")
            error.exit_code = proc.exit_code
            for client in self._client_list():
                client._kernel_died(error)

    # ------------------------------------------------------------------ clients

    def client(self, **kwargs: Any) -> BlockingKernelClient:
        """A new blocking client for this kernel; it follows the kernel across restarts."""
        client = BlockingKernelClient(self._require_info(), **kwargs)
        self._register(client)
        return client

    def async_client(self, **kwargs: Any) -> AsyncKernelClient:
        """A new asyncio client for this kernel; it follows the kernel across restarts."""
        client = AsyncKernelClient(self._require_info(), **kwargs)
        self._register(client)
        return client

    def _register(self, client: _ClientBase) -> None:
        with self._lock:
            self._clients.add(client)

    def _client_list(self) -> list[_ClientBase]:
        with self._lock:
            return list(self._clients)

    def _require_proc(self) -> _KernelProcess:
        proc = self._proc
        if proc is None:
            raise RuntimeError("no kernel: call start() first")
        return proc

    def _require_info(self) -> ConnectionInfo:
        if self.connection_info is None:
            raise RuntimeError("no kernel: call start() first")
        return self.connection_info

    # ---------------------------------------------------------------- internals

    def _command(self) -> list[str]:
        path = str(self.connection_file)
        command = [arg.replace("{connection_file}", path) for arg in self.kernel_cmd]
        if self.kernel_cmd == default_kernel_cmd():
            command += ["--transport", self.transport]
        return command

    def _launch(self) -> None:
        """Spawn the kernel, wait until it serves, start watching it. Lock held.

        A connection file that already names every port (the user's own, or the previous
        kernel's on a restart) is kept: the kernel binds those ports again, so clients
        elsewhere that read the file keep working, and readiness is seen on the heartbeat.
        If that fails (a port was taken meanwhile), the kernel starts over on fresh ports.
        """
        known = self._reusable_connection_info()
        try:
            self._spawn(known)
        except KernelStartError as exc:
            if known is None:
                raise
            log.warning(
                "kernel could not reuse the ports in %s, taking new ones: %s",
                self.connection_file,
                exc,
            )
            self._spawn(None)

    def _reusable_connection_info(self) -> ConnectionInfo | None:
        try:
            info = read_connection_file(self.connection_file)
        except (OSError, ValueError, TypeError):
            return None
        ports = [info.port(ch) for ch in ("shell", "iopub", "stdin", "control", "hb")]
        return info if all(ports) else None

    def _spawn(self, known: ConnectionInfo | None) -> None:
        path = self.connection_file
        if known is None:
            # A file left by an earlier kernel must not be mistaken for the new one's.
            path.unlink(missing_ok=True)
        private_parent(path)  # not mkdir(parents=True): that follows the umask
        # The kernel exits by itself if this process dies without shutting it down.
        env = child_env({**self.env, "JPY_PARENT_PID": str(os.getpid())}, importable=False)
        proc = _KernelProcess(self._command(), self.log_file, env)
        proc.watch(self._on_exit)
        try:
            if known is None:
                info = self._wait_for_connection_file(proc)
            else:
                info = known
                self._wait_for_heartbeat(proc, info)
            monitor = _HeartbeatMonitor(
                channel_url(info, "hb"),
                self.heartbeat_interval,
                self.heartbeat_misses,
                lambda: self._on_death(proc, "heartbeat"),
                kernel_public_key(info),
            )
        except BaseException:
            # Never leave a kernel behind that nobody manages.
            proc.settled = True
            _kill_group(proc.pgid, 0.5)
            raise
        self.connection_info = info
        self._proc = proc
        self._monitor = monitor
        monitor.start()
        _live_managers.add(self)
        log.info("kernel %d started, connection file %s", proc.pid, path)

    def _startup_failure(self, proc: _KernelProcess, what: str) -> KernelStartError:
        tail = proc.output_tail() or "(no output)"
        return KernelStartError(
            f"{what}; command {self._command()}; the kernel's output ends with:\n{tail}"
        )

    def _wait_for_heartbeat(self, proc: _KernelProcess, info: ConnectionInfo) -> None:
        """Wait until the kernel echoes a ping on the ports it was told to reuse."""
        deadline = time.monotonic() + self.startup_timeout
        sock = _ping_socket(channel_url(info, "hb"), kernel_public_key(info))
        try:
            sock.send(b"ping")
            while not sock.poll(20):
                if not proc.running:
                    raise self._startup_failure(
                        proc,
                        f"kernel exited while starting ({describe_exit(proc.exit_code)}) "
                        f"on the ports of {self.connection_file}",
                    )
                if time.monotonic() >= deadline:
                    raise self._startup_failure(
                        proc,
                        f"kernel (pid {proc.pid}) did not answer its heartbeat within "
                        f"{self.startup_timeout}s",
                    )
            sock.recv()
        finally:
            sock.close(linger=0)

    def _wait_for_connection_file(self, proc: _KernelProcess) -> ConnectionInfo:
        path = self.connection_file
        deadline = time.monotonic() + self.startup_timeout
        pause = 0.005
        while True:
            if path.exists():
                # The kernel renames a complete file into place, so a file is final.
                try:
                    return read_connection_file(path)
                except (OSError, ValueError) as exc:
                    log.debug("connection file %s not readable yet: %s", path, exc)
            if not proc.running:
                raise self._startup_failure(
                    proc,
                    f"kernel exited while starting ({describe_exit(proc.exit_code)}) "
                    f"before writing {path}",
                )
            if time.monotonic() >= deadline:
                raise self._startup_failure(
                    proc,
                    f"kernel (pid {proc.pid}) did not write {path} within {self.startup_timeout}s",
                )
            # Waiting on the exit event doubles as the pause and the liveness check.
            proc.exited.wait(pause)
            pause = min(pause * 2, 0.05)

    def _stop(self, proc: _KernelProcess, *, now: bool, timeout: float, restart: bool) -> None:
        """End ``proc`` and its group on purpose (no ``KERNEL_DIED``). Lock held."""
        proc.settled = True
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if not now and proc.running and self.connection_info is not None:
            try:
                self._request_shutdown(self.connection_info, restart)
            except zmq.ZMQError as exc:
                log.warning("could not send shutdown_request: %s", exc)
            else:
                proc.exited.wait(timeout)
        _kill_group(proc.pgid, 0.0 if now else self.kill_grace)
        proc.exited.wait(5.0)
        info = self.connection_info
        if info is not None and info.transport == "ipc" and proc.exited.is_set():
            release_dead(info.ip, {proc.pid})  # a killed kernel released nothing
        if not restart:
            self.connection_file.unlink(missing_ok=True)

    def _request_shutdown(self, info: ConnectionInfo, restart: bool) -> None:
        """Send ``shutdown_request`` on the control channel; the reply is not awaited."""
        from corral.transports.zmq.client import _apply_curve
        from corral.transports.zmq.wire import new_id

        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        try:
            sock.linger = 1000
            _apply_curve(sock, info)
            sock.connect(channel_url(info, "control"))
            msg = make_message("shutdown_request", {"restart": restart}, session=new_id())
            sock.send_multipart(serialize(msg, Signer(info.key, info.signature_scheme)))
        finally:
            sock.close()

    def _on_exit(self, proc: _KernelProcess) -> None:
        """From the reaper thread: the process ended."""
        if proc.settled:
            return
        self._on_death(proc, "exited")

    def _on_death(self, proc: _KernelProcess, reason: str) -> None:
        """The kernel died (or froze) without being asked to: tell everyone, maybe restart."""
        with self._lock:
            if proc.settled or proc is not self._proc:
                return
            proc.settled = True
            if self._monitor is not None:
                self._monitor.stop()
                self._monitor = None
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > self.restart_window:
                self._restarts.popleft()
            within_limit = len(self._restarts) < self.restart_limit
            restarting = self.autorestart and within_limit
            what = "stopped answering heartbeats" if reason == "heartbeat" else "died"
            message = f"kernel {proc.pid} {what} ({describe_exit(proc.exit_code)})"
            if self.autorestart and not within_limit:
                message += (
                    f"; not restarting: {self.restart_limit} restarts within "
                    f"{self.restart_window:g}s already"
                )
            elif restarting:
                message += "; restarting it"
            error = KernelDiedError(message, pid=proc.pid, exit_code=proc.exit_code, reason=reason)
            for client in self._client_list():
                client._kernel_died(error)
            log.warning("%s", message)
        self.center.post(
            KERNEL_DIED,
            self,
            pid=proc.pid,
            exit_code=proc.exit_code,
            reason=reason,
            restarting=restarting,
            message=message,
        )
        if restarting:
            self._auto_restart(proc)

    def _auto_restart(self, dead: _KernelProcess) -> None:
        with self._lock:
            if dead is not self._proc:
                return  # shut down or restarted by hand meanwhile
            # Whatever the dead kernel spawned, and the kernel itself if it only froze.
            _kill_group(dead.pgid, 0.0)
            self._restarts.append(time.monotonic())
            try:
                self._launch()
            except KernelStartError as exc:
                self._proc = None
                _live_managers.discard(self)
                message = f"could not restart the kernel: {exc}"
                error = KernelDiedError(message, pid=dead.pid, reason="restart-failed")
                for client in self._client_list():
                    client._kernel_died(error)
                post: tuple[str, dict[str, Any]] = (
                    KERNEL_DIED,
                    {
                        "pid": dead.pid,
                        "exit_code": dead.exit_code,
                        "reason": "restart-failed",
                        "restarting": False,
                        "message": message,
                    },
                )
            else:
                self.restart_count += 1
                new = self._proc
                assert new is not None
                for client in self._client_list():
                    client._kernel_restarted(self.connection_info)
                post = (
                    KERNEL_RESTARTED,
                    {
                        "pid": new.pid,
                        "restart_count": self.restart_count,
                        "connection_file": str(self.connection_file),
                        "automatic": True,
                    },
                )
        self.center.post(post[0], self, **post[1])
