"""Local launchers: the controller and the engines as subprocesses of this machine.

Every process runs in its own session (so its own process group): a signal to the group
reaches whatever it spawned too (the controller's component processes, subprocesses of
user code on an engine), and Ctrl-C in the terminal does not hit the engines behind the
user's back. Output goes to ``<profile>/log/``, pids to ``<profile>/run/``.

Processes are started through a small bootstrap, ``python -m
corral.plugins.parallel.launchers.local MODULE [--wait-file PATH] [--warm MODS] -- ARGS``,
which does two things the controller and engine need not know about:

* it ends its whole process group if the process named by ``CORRAL_PARENT_PID`` (the
  one that launched it) goes away without stopping it: a crashed notebook does not leave
  a cluster behind eating cores;
* with ``--wait-file`` it imports the engine's modules *while* the controller is still
  starting, and runs the engine the instant the cluster file is complete. Interpreter
  start-up and imports are most of an engine's start time, so overlapping them with the
  controller's roughly halves the time to a ready cluster.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import runpy
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from corral.core import compat
from corral.core.processes import Spawned, child_env
from corral.plugins.parallel.launchers.base import (
    ControllerLauncher,
    EngineSetLauncher,
    LaunchHandle,
)

__all__ = ["LocalControllerLauncher", "LocalEngineSetLauncher", "LocalProcess"]

BOOT_MODULE = "corral.plugins.parallel.launchers.local"
#: Modules an engine needs anyway; imported before the cluster file exists. Not
#: cloudpickle: only a function sent by value needs it (unpickling imports it then), and
#: its 19 ms per engine, with dataclasses and inspect, slowed every cluster start on 2
#: cores, where the engines' imports compete with the controller's.
ENGINE_WARM = ("zmq", "corral.core.serialize", "corral.transports.zmq.wire")
PARENT_ENV = "CORRAL_PARENT_PID"


class LocalProcess(Spawned):
    """One subprocess in its own session (:class:`~corral.core.processes.Spawned`), whose
    end is noticed at once, and a pid file while it lives."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_file: Path,
        pid_file: Path | None,
        env: dict[str, str],
        on_exit: object = None,
    ) -> None:
        super().__init__(argv, log_file=log_file, env=env)
        self.pid_file = pid_file
        if pid_file is not None:
            from corral.core.private import private_dir, write_private

            private_dir(pid_file.parent)
            write_private(pid_file, f"{self.pid}\n")
        self.watch(on_exit if callable(on_exit) else None)

    def reaped(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def signal_group(self, signum: int) -> None:
        """Signal the whole process group (pgid == pid: the process leads its session).

        Sent even after the leader exited: its children may not have, and the group id
        lives on as long as any member does.
        """
        compat.signal_group(self.pid, signum)

    def handle(self) -> LaunchHandle:
        return LaunchHandle(pid=self.pid, pgid=self.pid, log_file=self.log_file)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a launched process: this one's, the same corral importable, and
    ``CORRAL_PARENT_PID`` (the bootstrap ends the group if this process dies)."""
    return child_env({PARENT_ENV: str(os.getpid()), **(extra or {})})


def _boot_argv(
    module: str, args: Sequence[str], *, wait_file: Path | None = None, warm: Sequence[str] = ()
) -> list[str]:
    argv = [sys.executable, "-m", BOOT_MODULE, module]
    if wait_file is not None:
        argv += ["--wait-file", str(wait_file)]
    if warm:
        argv += ["--warm", ",".join(warm)]
    return [*argv, "--", *args]


class LocalControllerLauncher(ControllerLauncher):
    #: each process it starts is a monitor whose one child is the controller
    monitored = True

    """The controller as a local subprocess (plus its component processes, all in one
    process group). Log: ``<profile>/log/controller-ID.log``; pid file
    ``<profile>/run/controller-ID.pid``."""

    name = "local"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.process: LocalProcess | None = None

    @property
    def log_file(self) -> Path:
        return self.profile_dir / "log" / f"controller-{self.cluster_id}.log"

    @property
    def pid_file(self) -> Path:
        return self.profile_dir / "run" / f"controller-{self.cluster_id}.pid"

    def start(self) -> list[LaunchHandle]:
        if self.process is not None:
            raise RuntimeError("this launcher has already started its controller")
        from corral.plugins.parallel.launchers.monitor import Policy, monitor_argv

        command = self.command()
        self.process = LocalProcess(
            monitor_argv(_boot_argv(command[2], command[3:]), Policy(role="controller")),
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=_child_env(),
            on_exit=lambda proc: self._notify_stopped(),
        )
        self.handles = [self.process.handle()]
        return self.handles

    def poll(self) -> int | None:
        if self.process is None or self.process.running:
            return None
        return self.process.exit_code

    def send_signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.signal_group(signum)

    def output_tail(self) -> str:
        return self.process.output_tail() if self.process else ""

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the controller process to end; doubles as a pause
        that wakes at once when the controller dies."""
        return self.process.exited.wait(timeout) if self.process else True


class LocalEngineSetLauncher(EngineSetLauncher):
    #: each process it starts is a monitor whose one child is the engine
    monitored = True

    """``n`` engines as local subprocesses, each in its own process group, started at once.

    With ``prestart=True`` (what :class:`~corral.plugins.parallel.cluster.Cluster` uses)
    the engines may be started before the cluster file exists: each imports what it needs
    and begins serving the moment the file is complete. Logs:
    ``<profile>/log/engine-ID-K.log``; pid files ``<profile>/run/engine-ID-K.pid``.
    """

    name = "local"

    def __init__(self, n: int, *, prestart: bool = True, **kwargs: object) -> None:
        super().__init__(n, **kwargs)  # type: ignore[arg-type]
        self.prestart = prestart
        self.processes: list[LocalProcess] = []
        self._lock = threading.Lock()
        self._first_index = 0

    @property
    def log_file(self) -> Path | None:
        return self.processes[0].log_file if self.processes else None

    def start(self) -> list[LaunchHandle]:
        """Start all ``n`` engines now (Popen returns as soon as each is forked, so they
        boot side by side)."""
        return self.add(self.n)

    def add(self, count: int) -> list[LaunchHandle]:
        """Start ``count`` more engines (scaling up a running cluster)."""
        from corral.plugins.parallel.launchers.monitor import Policy, hold_sigint, monitor_argv

        command = self.command()
        env = _child_env()
        policy = self.policy or Policy()
        new = []
        for _ in range(count):
            with self._lock:
                index = self._first_index
                self._first_index += 1
            argv = _boot_argv(
                command[2],
                command[3:],
                wait_file=self.cluster_file if self.prestart else None,
                warm=ENGINE_WARM,
            )
            # Every engine runs under its monitor (restarts, limits, death reports).
            argv = monitor_argv(argv, policy, cluster_file=self.cluster_file)
            # SIGINT held until the monitor's forwarder is in place (see .monitor): an
            # interrupt of a starting engine must not kill it.
            with hold_sigint():
                proc = LocalProcess(
                    argv,
                    log_file=self.profile_dir / "log" / f"{self.file_prefix}-{index}.log",
                    pid_file=self.profile_dir / "run" / f"{self.file_prefix}-{index}.pid",
                    env=env,
                    on_exit=self._on_engine_exit,
                )
            with self._lock:
                self.processes.append(proc)
            new.append(proc.handle())
        with self._lock:
            self.handles = [p.handle() for p in self.processes]
            self.n = len(self.processes)
        return new

    def _on_engine_exit(self, proc: LocalProcess) -> None:
        with self._lock:
            done = all(not p.running for p in self.processes)
        if done:
            self._notify_stopped()

    def poll(self) -> int | None:
        with self._lock:
            processes = list(self.processes)
        if not processes or any(p.running for p in processes):
            return None
        codes = [p.exit_code or 0 for p in processes]
        return next((code for code in codes if code), 0)

    @property
    def running_count(self) -> int:
        with self._lock:
            return sum(p.running for p in self.processes)

    def send_signal(self, signum: int) -> None:
        with self._lock:
            processes = list(self.processes)
        for proc in processes:
            proc.signal_group(signum)

    def output_tail(self) -> str:
        """The end of the log of the first engine that died (or of engine 0)."""
        with self._lock:
            processes = list(self.processes)
        dead = [p for p in processes if not p.running]
        chosen = next(iter(dead or processes), None)
        return chosen.output_tail() if chosen is not None else ""


# ---------------------------------------------------------------------- bootstrap


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process's parent, grandparent, ... (Linux: /proc; elsewhere
    only the parent can be known, and a live pid that is not it counts as ours)."""
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            with open(f"/proc/{current}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return not os.path.isdir("/proc")
        # The command name may hold spaces and parentheses: the ppid follows the last ")".
        current = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return False


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """End this process group when ``parent_pid`` is gone: SIGTERM, then SIGKILL."""

    def parent_alive() -> bool:
        if os.getppid() == parent_pid:
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # The pid exists, but it is ours only while it is still an ancestor: a launcher
        # may sit in between (mpiexec, a batch system's daemon), and a re-parented
        # process's old parent pid may have been reused by someone else.
        return _is_ancestor(parent_pid)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if not parent_alive():
                print(f"corral: launching process {parent_pid} is gone; exiting", flush=True)
                for signum in (compat.TERMINATE, compat.KILL):
                    if compat.HAS_PROCESS_GROUPS:
                        try:
                            os.killpg(os.getpgid(0), signum)
                        except ProcessLookupError:
                            return
                    else:  # no group to end: this process's descendants, then itself
                        compat.signal_group(os.getpid(), signum)
                    stop.wait(3.0)

    threading.Thread(target=watch, name="corral-parent-watch", daemon=True).start()


def _wait_for_file(path: Path, timeout: float = 120.0) -> None:
    """Until ``path`` holds complete JSON: the controller may write it in place, so a file
    that exists is not yet a file that parses."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            with open(path, "rb") as fh:
                json.loads(fh.read())
            return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"corral: no cluster file {path} after {timeout} s")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.005)


def _warm(modules: Sequence[str], target: str) -> None:
    """Import what ``target`` will need, without importing ``target`` itself (running an
    already imported module as ``__main__`` would execute it twice)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            pass
    try:
        spec = importlib.util.find_spec(target)
    except Exception:
        return
    if spec is not None and spec.submodule_search_locations is not None:
        try:
            importlib.import_module(target)  # a package: its __main__ is what runs
        except Exception:
            pass


def main(argv: Sequence[str] | None = None) -> None:
    """Bootstrap: watch the parent, warm imports, wait for the cluster file, run MODULE."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to MODULE, untouched by this parser.
    split = argv.index("--") if "--" in argv else len(argv)
    own, args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog=f"python -m {BOOT_MODULE}")
    parser.add_argument("module")
    parser.add_argument("--wait-file", type=Path)
    parser.add_argument("--warm", default="")
    ns = parser.parse_args(own)
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        _watch_parent(int(parent))
    _warm([m for m in ns.warm.split(",") if m], ns.module)
    if ns.wait_file is not None:
        _wait_for_file(ns.wait_file)
    sys.argv = [ns.module, *args]
    runpy.run_module(ns.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
