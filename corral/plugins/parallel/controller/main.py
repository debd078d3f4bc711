"""Starting, supervising and stopping a controller: as processes, as threads, or from the CLI.

Process mode (the default) is built for a fast start. This process imports every module
once, then forks one child per component *before any ZeroMQ context exists* (a context
does not survive a fork). Each child makes its own context, binds its sockets and sends
the ports back through a pipe; the hub goes first because the queues connect to its
``monitor`` and ``notification``. With every port known the parent hands the hub the
whole cluster description, writes the cluster file (so whoever reads it can connect at
once) and then only supervises: a ``shutdown_request`` ends the hub, SIGTERM/SIGINT end the
parent, a crash ends a child, and each of these stops every component. Children are made
with a bare :func:`os.fork` and talk to the parent over a :func:`.base.control_pipe`:
importing :mod:`multiprocessing` for this cost every cluster start about 10 ms. Where
``fork`` is unavailable they are spawned through :mod:`multiprocessing` instead (slower
anyway: each imports afresh).

Threads mode runs the same components as threads of the calling process, each with its
own sockets on one shared context: no fork, handy for tests and notebooks.

``python -m corral.plugins.parallel.controller --profile P --cluster-id ID`` runs process
mode in the foreground and prints one JSON line, ``{"cluster_file": ..., "pids": [...]}``,
once the cluster file is written. :func:`start_controller` is the Python API for both modes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import zmq

from corral.core import compat
from corral.transports.zmq.gate import ENCRYPTIONS, Gate, stop_zap
from corral.transports.zmq.ipc import release_dead

from ..clusterfile import (
    ClusterInfo,
    cluster_file_path,
    new_key,
    new_run,
    read_cluster_file,
    write_cluster_file,
)
from ..flow import CLIENT_BOUND
from .base import STOP, Component, ControlPipe, control_pipe, endpoint, wait_readable
from .hub import Hub
from .iopub import IopubProxy
from .policies import POLICIES, get_policy
from .queues import DEFAULT_HWM, DIRECT_FEED, make_queue
from .taskdb import open_taskdb

if TYPE_CHECKING:
    import subprocess

__all__ = ["ControllerConfig", "ControllerHandle", "main", "start_controller"]

log = logging.getLogger("corral.plugins.parallel.controller")

#: Components after the hub, in the order they start.
_AFTER_HUB = ("mux", "control", "task", "broadcast", "iopub")
#: Those that follow the hub's engine notifications (the hub waits for them: see Hub.serve).
_QUEUES = ("mux", "control", "task", "broadcast")
#: The queues that tell the task scheduler which engines are busy with their requests
#: (see queues.PerEngineQueue, "The direct feed").
_FEEDS_TASKS = ("mux", "broadcast")
#: How long a component may take to bind before the start is declared failed.
_STARTUP_TIMEOUT = 30.0
#: How long stopping waits for a component before killing it.
_STOP_TIMEOUT = 5.0


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else bytes(value)


def _new_cluster_id() -> str:
    return f"{os.getpid()}-{os.urandom(4).hex()}"


class ControllerConfig:
    """Everything a controller component needs; picklable, so spawned children get it too.

    A plain class, not attrs nor a dataclass: importing attrs would add 17 ms to every
    cluster start, dataclasses (with inspect) 7 ms. ``cluster_id`` and ``key`` default to
    new ones.
    """

    def __init__(
        self,
        profile: str = "default",
        cluster_id: str | None = None,
        key: bytes | str | None = None,
        signature_scheme: str = "hmac-sha256",
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        db: str = "sqlite",
        db_path: str | None = None,
        store_buffers: bool = True,
        hb_period: float = 1.0,
        hb_misses: int = 2,
        log_level: str = "warning",
        hwm: int = DEFAULT_HWM,
        policy: str = "leastload",
        location: str = "",
        encryption: str = "none",
        memory_bound_mb: float | None = None,
    ) -> None:
        self.profile = profile
        self.cluster_id = cluster_id or _new_cluster_id()
        #: whether the caller chose the key (a restart then keeps it, not the old one's)
        self.key_given = key is not None
        self.key = _to_bytes(new_key() if key is None else key)
        #: this start of the controller: every request to the hub or a queue must name it
        #: (door.RUN), so none made before a restart is admitted after it. New with each
        #: config, and a config is made for each start (never carried over by take_over).
        self.run = new_run()
        #: ``{cluster file field: port}`` to bind again: see :func:`take_over`
        self.ports: dict[str, int] = {}
        self.signature_scheme = signature_scheme
        self.transport = transport
        self.ip = ip
        self.location = location
        self.db = db
        self.db_path = db_path
        self.store_buffers = store_buffers
        self.hb_period = hb_period
        self.hb_misses = hb_misses
        self.log_level = log_level
        self.hwm = hwm
        self.policy = policy
        if memory_bound_mb is not None and not memory_bound_mb >= 0:
            raise ValueError(f"memory_bound_mb must be >= 0, not {memory_bound_mb!r}")
        #: bytes of large results a component holds for a slow reader (see flow.py)
        self.flow_bound = (
            CLIENT_BOUND if memory_bound_mb is None else int(memory_bound_mb * (1 << 20))
        )
        if not isinstance(hwm, int) or isinstance(hwm, bool) or hwm < 0:
            raise ValueError(f"hwm must be an integer >= 0 (0: no bound), not {hwm!r}")
        get_policy(policy)  # a ValueError naming the known schemes
        self.encryption = encryption
        if transport not in ("tcp", "ipc"):
            raise ValueError(f"transport must be 'tcp' or 'ipc', not {transport!r}")
        if transport == "ipc" and ip in ("127.0.0.1", "", "*", "0.0.0.0"):
            # Unix sockets in the owner-only runtime directory: only this user connects.
            from corral.core.private import runtime_dir

            self.ip = str(runtime_dir() / f"cluster-{self.cluster_id}")
        if encryption not in ENCRYPTIONS:
            raise ValueError(f"encryption must be one of {ENCRYPTIONS}, not {encryption!r}")
        if self.db not in ("sqlite", "memory", "none"):
            raise ValueError(f"db must be sqlite, memory or none, not {self.db!r}")
        if self.hb_period <= 0 or self.hb_misses < 1:
            raise ValueError("hb_period must be > 0 and hb_misses >= 1")
        if self.db == "sqlite" and self.db_path is None:
            from corral.core.profiles import profile_dir

            self.db_path = str(profile_dir(self.profile) / "db" / f"tasks-{self.cluster_id}.sqlite")

    def __repr__(self) -> str:  # without the key: a repr ends up in logs
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "key")
        return f"ControllerConfig({fields})"

    @property
    def connect_ip(self) -> str:
        """Where the controller's own components reach each other: the bound address,
        or loopback when every interface is bound."""
        return "127.0.0.1" if self.ip in ("*", "0.0.0.0", "") else self.ip

    @property
    def advertised_ip(self) -> str:
        """The address written into the cluster file, for engines and clients: the
        ``location`` setting, else the bound address, else (every interface bound) this
        host's fully qualified name."""
        if self.location:
            return self.location
        if self.ip in ("*", "0.0.0.0", ""):
            import socket

            return socket.getfqdn()
        return self.ip

    def cluster_info(self, ports: dict[str, int]) -> ClusterInfo:
        return ClusterInfo(
            cluster_id=self.cluster_id,
            key=self.key,
            signature_scheme=self.signature_scheme,
            transport=self.transport,
            ip=self.advertised_ip,
            hb_period=self.hb_period,
            hb_misses=self.hb_misses,
            controller_pid=os.getpid(),
            encryption=self.encryption,
            run=self.run,
            **ports,
        )


def take_over(cfg: ControllerConfig, path: Path) -> None:
    """Restart a cluster whose controller died: keep its key and ports.

    Engines outlive a lost controller for a grace period, with their sockets still
    connected to the old ports. A controller started again on the same profile and
    cluster id finds the dead controller's cluster file, takes its key (unless the caller
    chose one) and binds the same ports where they are free, so those engines reconnect
    and re-register by themselves, keeping their ids, namespaces and finished results.

    :raises RuntimeError: that cluster's controller is still running.
    """
    try:
        old = read_cluster_file(path)
    except (OSError, ValueError):
        return
    if old.controller_pid and old.controller_pid != os.getpid():
        from corral.core.processes import process_alive

        if process_alive(old.controller_pid):
            raise RuntimeError(
                f"cluster {cfg.cluster_id!r} of profile {cfg.profile!r} is already running "
                f"(controller pid {old.controller_pid}, {path})"
            )
    if cfg.key_given and old.key != cfg.key:
        log.warning("%s names a dead controller with another key: not reusing its ports", path)
        return
    cfg.key = old.key
    if old.transport == cfg.transport and old.ip == cfg.ip:
        cfg.ports = old.ports()
    log.info(
        "taking over cluster %s from dead controller %d: its engines may re-register",
        cfg.cluster_id,
        old.controller_pid,
    )


def build_component(name: str, cfg: ControllerConfig, hub_ports: dict[str, int]) -> Component:
    """The component ``name`` (hub, mux, control, task, broadcast, iopub), not yet bound."""
    component = _new_component(name, cfg, hub_ports)
    component.preferred = cfg.ports
    return component


def _new_component(name: str, cfg: ControllerConfig, hub_ports: dict[str, int]) -> Component:
    common: dict[str, Any] = {
        "transport": cfg.transport,
        "ip": cfg.ip,
        "gate": Gate(cfg.key, cfg.encryption),
    }
    if name == "hub":
        db = open_taskdb(cfg.db, cfg.db_path, store_buffers=cfg.store_buffers)
        return Hub(
            key=cfg.key,
            db=db,
            scheme=cfg.signature_scheme,
            hb_period=cfg.hb_period,
            hb_misses=cfg.hb_misses,
            flow_bound=cfg.flow_bound,
            queues=_QUEUES,
            run=cfg.run,
            **common,
        )
    if name == "iopub":
        return IopubProxy(**common)
    return make_queue(
        name,
        key=cfg.key,
        scheme=cfg.signature_scheme,
        monitor_url=endpoint(cfg.transport, cfg.connect_ip, hub_ports["monitor"]),
        notification_url=endpoint(cfg.transport, cfg.connect_ip, hub_ports["notification"]),
        hwm=cfg.hwm,
        policy=cfg.policy,
        results_on_disk=cfg.db == "sqlite" and cfg.store_buffers,
        flow_bound=cfg.flow_bound,
        run=cfg.run,
        **common,
    )


def _direct_feed(cfg: ControllerConfig, ports: dict[str, int]) -> str:
    """The endpoint of the task scheduler's direct feed, taken out of ``ports`` (it is
    no cluster file field: only the controller's own queues connect to it)."""
    return endpoint(cfg.transport, cfg.connect_ip, ports.pop(DIRECT_FEED))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s corral-controller[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _remove_cluster_file(path: Path, pid: int) -> None:
    """Remove the cluster file if it is still this controller's."""
    try:
        if read_cluster_file(path).controller_pid == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------ process mode


def _component_main(
    name: str,
    cfg: ControllerConfig,
    hub_ports: dict[str, int],
    conn: ControlPipe,
    inherited: list[int],
) -> None:
    """A child process: bind, report the ports, serve until told to stop.

    ``inherited`` are the supervisor's descriptors for its earlier children (and for this
    one's own pipe), which a forked child holds too: closed here, or a supervisor's death
    would never reach those children as EOF (a sibling would still hold their pipe open).
    """
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _setup_logging(cfg.log_level)
    ctx = zmq.Context()
    try:
        component = build_component(name, cfg, hub_ports)
        ports = component.bind(ctx)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("ports", ports))
    try:
        component.serve(conn)
    finally:
        ctx.term()
        component.release()


def _await_ports(name: str, conn: ControlPipe, deadline: float) -> dict[str, int]:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise RuntimeError(f"controller component {name} did not start in time")
    try:
        kind, value = conn.recv()
    except EOFError:
        raise RuntimeError(f"controller component {name} died while starting") from None
    if kind != "ports":
        raise RuntimeError(f"controller component {name} failed to start: {value}")
    return dict(value)


def _exit_child(name: str, run: Callable[[], None]) -> NoReturn:
    """In a forked child: ``run()``, then leave at once with its exit code (1 if it
    raised, after logging why). Never returns: the atexit handlers and finalizers this
    child inherited are the parent's to run, as with multiprocessing's fork."""
    code = 1
    _name_process(name.replace("controller-", ""))
    try:
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        log.exception("%s failed", name)
    finally:
        _flush_std_streams()
        os._exit(code)


def _name_process(title: str) -> None:
    """Name this process for ``ps``/``top`` (Linux: 15 characters of ``comm``), so an
    operator, or a benchmark, tells the hub from the schedulers; elsewhere a no-op."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(title[:15])
    except OSError:
        pass


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None, or closed
            pass


class _Forked:
    """A child process running a function: the parts of ``multiprocessing.Process`` the
    supervisor uses (``pid``, ``name``, ``sentinel``, ``join``, ``is_alive``, ``kill``,
    ``exitcode``, ``close``) over a bare :func:`os.fork`.

    The sentinel is the read end of a pipe whose only write end the child holds until it
    exits: it reads EOF (so polls as readable) exactly when the child is gone.
    """

    def __init__(self, name: str, run: Callable[[], None]) -> None:
        self.name = name
        self.exitcode: int | None = None
        _flush_std_streams()  # or the child would write the parent's buffered output again
        sentinel, alive = os.pipe()
        try:
            self.pid = os.fork()
        except OSError:
            os.close(sentinel)
            os.close(alive)
            raise
        if self.pid == 0:
            os.close(sentinel)
            _exit_child(name, run)
        os.close(alive)
        self.sentinel = sentinel

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the child to exit; reap it if it has."""
        if self.exitcode is None and wait_readable([self.sentinel], timeout):
            _, status = os.waitpid(self.pid, 0)
            self.exitcode = os.waitstatus_to_exitcode(status)

    def is_alive(self) -> bool:
        self.join(0)
        return self.exitcode is None

    def kill(self) -> None:
        if self.exitcode is None:
            os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class _Children:
    """The component processes of one controller, and how to stop them."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, Any] = {}  # _Forked, or multiprocessing's Process
        self.conns: dict[str, ControlPipe] = {}
        #: every descriptor this process holds for its children: a new child closes them
        self.held: list[int] = []

    def start(self, name: str, hub_ports: dict[str, int]) -> None:
        if not compat.HAS_FORK:  # Windows, or CORRAL_PLATFORM_COMPAT=windows
            self.procs[name], self.conns[name] = _spawn(name, self.cfg, hub_ports)
            return
        parent_end, child_end = control_pipe()
        held = [*self.held, *parent_end.fds()]
        try:
            proc = _Forked(
                f"corral-controller-{name}",
                lambda: _component_main(name, self.cfg, hub_ports, child_end, held),
            )
        except OSError:  # no fork (out of memory or processes): no pipes left behind
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.held += [*parent_end.fds(), proc.sentinel]
        self.procs[name] = proc
        self.conns[name] = parent_end

    def launch(self) -> dict[str, int]:
        """Start every component; the ports of all of them."""
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        self.start("hub", {})
        ports = _await_ports("hub", self.conns["hub"], deadline)
        hub_ports = dict(ports)
        for name in _AFTER_HUB:
            self.start(name, hub_ports)
        for name in _AFTER_HUB:
            ports.update(_await_ports(name, self.conns[name], deadline))
        feed = _direct_feed(self.cfg, ports)
        for name in _FEEDS_TASKS:
            self.conns[name].send((DIRECT_FEED, feed))
        return ports

    def stop(self) -> None:
        pids = {p.pid for p in self.procs.values() if p.pid}
        for conn in self.conns.values():
            try:
                conn.send(STOP)
            except OSError:
                pass  # that child is gone already
        deadline = time.monotonic() + _STOP_TIMEOUT
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.is_alive():
                log.warning("controller component %s did not stop; killing it", proc.name)
                proc.kill()
                proc.join()
            proc.close()
        for conn in self.conns.values():
            conn.close()
        if self.cfg.transport == "ipc":  # SIGTERM gave the children no chance to release
            release_dead(self.cfg.ip, pids)


def _spawn(name: str, cfg: ControllerConfig, hub_ports: dict[str, int]) -> tuple[Any, Any]:
    """Where there is no fork: a spawned process and its control pipe, both from
    :mod:`multiprocessing` (imported only here; this path is slow anyway)."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    parent_end, child_end = mp.Pipe()
    proc = mp.Process(
        target=_component_main,
        args=(name, cfg, hub_ports, child_end, []),
        name=f"corral-controller-{name}",
        daemon=True,
    )
    proc.start()
    child_end.close()
    return proc, parent_end


def run_processes(cfg: ControllerConfig, *, announce: bool = True) -> int:
    """Run a controller as one process per component until shutdown; the exit code."""
    path = cluster_file_path(cfg.profile, cfg.cluster_id)
    take_over(cfg, path)
    children = _Children(cfg)
    try:
        ports = children.launch()
    except BaseException:
        children.stop()
        raise
    info = cfg.cluster_info(ports)
    children.conns["hub"].send(("cluster", info.to_dict()))
    write_cluster_file(path, info)
    # Signals now only wake the supervision wait below (set_wakeup_fd writes to a pipe;
    # on Windows it takes only a socket, so Windows mode uses a socket pair).
    wake_pair = None
    if compat.WINDOWS_MODE:
        import socket

        wake_pair = socket.socketpair()
        wake_pair[1].setblocking(False)
        wake_r: Any = wake_pair[0]
        wake_w = wake_pair[1].fileno()
    else:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
    previous_fd = signal.set_wakeup_fd(wake_w)
    handlers = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    if announce:
        pids = [os.getpid(), *(p.pid for p in children.procs.values())]
        print(json.dumps({"cluster_file": str(path), "pids": pids}), flush=True)
    code = 0
    try:
        sentinels = {p.sentinel: name for name, p in children.procs.items()}
        ready = wait_readable([wake_r, *sentinels], None)
        if wake_r in ready:
            log.info("controller stopping on a signal")
        else:
            for sentinel in ready:
                name = sentinels[sentinel]
                children.procs[name].join()  # its sentinel closed: it has exited, reap it
                exitcode = children.procs[name].exitcode
                if name == "hub" and exitcode == 0:
                    log.info("controller stopping: shutdown requested")
                else:
                    log.error("controller component %s exited with %s", name, exitcode)
                    code = 1
    finally:
        children.stop()
        _remove_cluster_file(path, os.getpid())
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if wake_pair is not None:
            for end in wake_pair:
                end.close()
        else:
            os.close(wake_r)
            os.close(wake_w)
    return code


# --------------------------------------------------------------------- threads mode


class _Threads:
    """Every component as a thread of this process, on one shared context."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.components: dict[str, Component] = {}
        self.conns: dict[str, ControlPipe] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.done = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.path = cluster_file_path(cfg.profile, cfg.cluster_id)

    def launch(self) -> ClusterInfo:
        take_over(self.cfg, self.path)
        try:
            hub = build_component("hub", self.cfg, {})
            self.components["hub"] = hub
            hub_ports = hub.bind(self.ctx)
            ports = dict(hub_ports)
            for name in _AFTER_HUB:
                component = build_component(name, self.cfg, hub_ports)
                self.components[name] = component
                ports.update(component.bind(self.ctx))
            feed = _direct_feed(self.cfg, ports)
            for name in _FEEDS_TASKS:  # before their threads start: no race on the socket
                self.components[name].configure((DIRECT_FEED, feed))
        except BaseException:
            stop_zap(self.ctx)  # destroy() would close its socket under its thread
            self.ctx.destroy(linger=0)
            for component in self.components.values():
                component.release()
            raise
        info = self.cfg.cluster_info(ports)
        hub.configure(("cluster", info.to_dict()))
        for name, component in self.components.items():
            parent_end, child_end = control_pipe()
            self.conns[name] = parent_end
            thread = threading.Thread(
                target=self._serve,
                args=(name, component, child_end),
                name=f"corral-controller-{name}",
                daemon=True,
            )
            self.threads[name] = thread
            thread.start()
        write_cluster_file(self.path, info)
        return info

    def _serve(self, name: str, component: Component, conn: ControlPipe) -> None:
        try:
            component.serve(conn)
        except Exception:
            log.exception("controller component %s crashed", name)
        finally:
            conn.close()
            component.release()
        if name == "hub" or not self._stopped:
            # The hub ends on shutdown_request; any other ending is a failure. Either way
            # the whole controller goes (from another thread: this one must finish).
            threading.Thread(target=self.stop, name="corral-controller-stop", daemon=True).start()

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        for conn in self.conns.values():
            try:
                conn.send(STOP)
            except OSError:
                pass
        for thread in self.threads.values():
            if thread is not threading.current_thread():
                thread.join(_STOP_TIMEOUT)
        self.ctx.term()
        for conn in self.conns.values():
            conn.close()
        _remove_cluster_file(self.path, os.getpid())
        self.done.set()


# ----------------------------------------------------------------------- the handle


class ControllerHandle:
    """A running controller: where its cluster file is, its pids, and how to stop it.

    ``mode`` is ``"processes"`` (a ``python -m corral.plugins.parallel.controller``
    subprocess, whose children are the components) or ``"threads"`` (this process).
    """

    def __init__(
        self,
        mode: str,
        cluster_file: Path,
        pids: list[int],
        *,
        process: subprocess.Popen[bytes] | None = None,
        threads: _Threads | None = None,
    ) -> None:
        self.mode = mode
        self.cluster_file = cluster_file
        self.pids = pids
        self._process = process
        self._threads = threads

    @property
    def info(self) -> ClusterInfo:
        """The cluster file's content (read again on each access)."""
        return read_cluster_file(self.cluster_file)

    @property
    def pid(self) -> int:
        """The supervising process (this process in threads mode)."""
        return self.pids[0]

    @property
    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._threads is not None and not self._threads.done.is_set()

    @property
    def returncode(self) -> int | None:
        """The supervisor's exit code (process mode), None while it runs."""
        if self._process is not None:
            return self._process.poll()
        return None if self.alive else 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the controller has stopped; False on timeout."""
        if self._process is not None:
            import subprocess

            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        assert self._threads is not None
        return self._threads.done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every component (engines are not asked to shut down; see shutdown_request)."""
        if self._process is not None:
            import subprocess

            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            return
        assert self._threads is not None
        self._threads.stop()

    def __enter__(self) -> ControllerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ControllerHandle {self.mode} {self.cluster_file} pids={self.pids}>"


def start_controller(
    profile: str = "default",
    cluster_id: str | None = None,
    *,
    mode: str = "processes",
    db: str = "sqlite",
    hb_period: float = 1.0,
    hb_misses: int = 2,
    ip: str = "127.0.0.1",
    store_buffers: bool = True,
    log_level: str = "warning",
    timeout: float = _STARTUP_TIMEOUT,
    hwm: int = DEFAULT_HWM,
    policy: str = "leastload",
    encryption: str = "none",
    memory_bound_mb: float | None = None,
) -> ControllerHandle:
    """Start a controller and return once its cluster file is written.

    ``mode="processes"`` runs ``python -m corral.plugins.parallel.controller`` (one process
    per component); ``mode="threads"`` runs every component as a thread of this process.
    ``hwm`` bounds the load-balanced tasks one engine holds (0: no bound) and ``policy``
    names the task scheduler's policy (see :mod:`.policies`).
    """
    cluster_id = cluster_id or _new_cluster_id()
    if mode == "threads":
        cfg = ControllerConfig(
            profile=profile,
            cluster_id=cluster_id,
            db=db,
            store_buffers=store_buffers,
            hb_period=hb_period,
            hb_misses=hb_misses,
            ip=ip,
            log_level=log_level,
            hwm=hwm,
            policy=policy,
            encryption=encryption,
            memory_bound_mb=memory_bound_mb,
        )
        threads = _Threads(cfg)
        threads.launch()
        return ControllerHandle("threads", threads.path, [os.getpid()], threads=threads)
    if mode != "processes":
        raise ValueError(f"mode must be 'processes' or 'threads', not {mode!r}")
    argv = [
        sys.executable,
        "-m",
        "corral.plugins.parallel.controller",
        "--profile",
        profile,
        "--cluster-id",
        cluster_id,
        "--db",
        db,
        "--hb-period",
        repr(float(hb_period)),
        "--hb-misses",
        str(int(hb_misses)),
        "--ip",
        ip,
        "--log-level",
        log_level,
        "--hwm",
        str(int(hwm)),
        "--policy",
        policy,
        "--encryption",
        encryption,
    ]
    if not store_buffers:
        argv.append("--no-store-buffers")
    if memory_bound_mb is not None:
        argv += ["--memory-bound-mb", repr(float(memory_bound_mb))]
    import subprocess  # here: the controller's own processes import this module too

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not wait_readable([proc.stdout.fileno()], left):
            proc.kill()
            proc.wait()
            raise RuntimeError("the controller did not start in time")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            proc.wait()
            raise RuntimeError(f"the controller exited with {proc.returncode} while starting")
        line += chunk
    proc.stdout.close()
    ready = json.loads(line)
    return ControllerHandle(
        "processes", Path(ready["cluster_file"]), list(ready["pids"]), process=proc
    )


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m corral.plugins.parallel.controller",
        description="Run a corral cluster controller until shutdown_request or SIGTERM.",
    )
    parser.add_argument("--profile", default="default", help="profile name (default: default)")
    parser.add_argument("--cluster-id", default=None, help="cluster id (default: random)")
    parser.add_argument(
        "--threads", action="store_true", help="run every component as a thread of one process"
    )
    parser.add_argument("--db", choices=("sqlite", "memory", "none"), default="sqlite")
    parser.add_argument(
        "--no-store-buffers", action="store_true", help="do not keep result buffers in the db"
    )
    parser.add_argument("--hb-period", type=float, default=1.0, help="seconds between beats")
    parser.add_argument("--hb-misses", type=int, default=2, help="missed beats mean death")
    parser.add_argument("--ip", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument(
        "--location", default="", help="address engines and clients connect to (default: --ip)"
    )
    parser.add_argument(
        "--transport",
        default="tcp",
        choices=("tcp", "ipc"),
        help="ipc: Unix sockets in the owner-only runtime directory (single host only)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--hwm",
        type=int,
        default=DEFAULT_HWM,
        help=f"load-balanced tasks one engine holds at most; 0: no bound ({DEFAULT_HWM})",
    )
    parser.add_argument(
        "--memory-bound-mb",
        type=float,
        default=None,
        help="MB of large results a controller process holds for a client that is not "
        "reading, or for the task database, before it stores them or pauses (32)",
    )
    parser.add_argument(
        "--policy",
        default="leastload",
        help=f"how the task scheduler picks among engines with room: {', '.join(POLICIES)}, "
        "or a plugin's (corral_schedulers); default leastload",
    )
    parser.add_argument(
        "--encryption",
        default="none",
        choices=ENCRYPTIONS,
        help="curve: encrypt every cluster socket with CurveZMQ (keys derived from the "
        "cluster key); none: authenticate connections only (the default)",
    )
    return parser.parse_args(argv)


def _config_from_args(args: argparse.Namespace, kwargs: dict[str, Any]) -> ControllerConfig:
    return ControllerConfig(
        profile=args.profile,
        db=args.db,
        store_buffers=not args.no_store_buffers,
        hb_period=args.hb_period,
        hb_misses=args.hb_misses,
        ip=args.ip,
        location=args.location,
        transport=args.transport,
        log_level=args.log_level,
        encryption=args.encryption,
        hwm=args.hwm,
        policy=args.policy,
        memory_bound_mb=args.memory_bound_mb,
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """The CLI: run in the foreground; exit 0 after shutdown_request or SIGTERM."""
    args = parse_args(argv)
    _setup_logging(args.log_level)
    kwargs: dict[str, Any] = {}
    if args.cluster_id:
        kwargs["cluster_id"] = args.cluster_id
    try:
        cfg = _config_from_args(args, kwargs)
    except ValueError as error:  # a bad value is a usage error, not a crash
        print(f"corral controller: {error}", file=sys.stderr, flush=True)
        return 2
    if not args.threads:
        return run_processes(cfg)
    threads = _Threads(cfg)
    threads.launch()
    print(json.dumps({"cluster_file": str(threads.path), "pids": [os.getpid()]}), flush=True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    done_r, done_w = os.pipe()
    threading.Thread(
        target=lambda: (threads.done.wait(), os.write(done_w, b"x")), daemon=True
    ).start()
    wait_readable([wake_r, done_r], None)
    threads.stop()
    return 0
