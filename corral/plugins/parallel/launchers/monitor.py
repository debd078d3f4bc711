"""The monitor every local controller and engine runs under (seed: "a daemon for
monitoring, signaling and clean up").

``python -m corral.plugins.parallel.launchers.monitor [options] -- CHILD ARGV...``

Why a separate process: the process that knows *why* an engine died must outlive it. The
hub only sees heartbeats stop; a queue only sees a connection close. The monitor is the
engine's parent, so ``waitpid`` tells it at once whether the engine exited, was killed by
a signal, by the kernel's OOM killer, or by the monitor itself for exceeding
``memory_limit`` or ``walltime``. It then:

* **reports the death to the hub at once** (a signed ``unregistration_request`` naming
  the engine's uuid and the cause), so the tasks the engine owed fail with an
  ``EngineError`` that says what happened instead of a bare "engine 3 died";
* **restarts** a crashed engine when ``[engine] restart`` allows (a new engine, a new id:
  its namespace died with it), waiting ``restart_backoff`` seconds, doubled each time;
* **enforces** ``memory_limit`` (RSS of the engine's whole process tree, polled like
  dask's Nanny does) and ``walltime``;
* **forwards signals**: SIGINT interrupts the running task, SIGTERM/SIGHUP stop the child
  (and never restart it), SIGUSR1/SIGUSR2 pass through;
* **holds SIGINT until it can be handled**: the launcher starts the monitor, and the
  monitor its engine, with SIGINT *blocked* (:func:`hold_sigint`; a blocked signal stays
  pending, and the mask survives ``exec``). Each unblocks it once its handler is in place
  (:func:`release_sigint`; the engine after its interrupt guard), so a SIGINT sent while
  a process is still starting is handled then (an idle engine ignores it) instead of
  killing the interpreter in its imports, as Python's default handler would;
* **cleans up** on exit: every process still left in the child's tree, and the engine's
  same-host socket file a killed engine could not remove.

With ``CORRAL_PLATFORM_COMPAT=windows`` (or on Windows) the same monitor runs without
process groups or POSIX-only signals (:mod:`corral.core.compat`): the child is ended with
``terminate()``/``kill()``, and its tree is found through psutil.

Its own imports are kept to the standard library until something happens: a monitor
costs each engine one small interpreter start, not a second engine's imports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.core import compat
from corral.core.processes import child_env, start_detached

__all__ = [
    "Death",
    "Monitor",
    "Policy",
    "death_cause",
    "hold_sigint",
    "monitor_argv",
    "parse_size",
    "release_sigint",
    "report_death",
]

MODULE = "corral.plugins.parallel.launchers.monitor"
#: The engine reads its uuid from here, so the monitor can name it to the hub.
UUID_ENV = "CORRAL_ENGINE_UUID"
#: Set for a monitored child (the engine then leaves its death to the monitor to report).
MONITORED_ENV = "CORRAL_MONITORED"
#: A restarted engine finds here the uuid of the engine it replaces (the hub then posts
#: ENGINE_RESTARTED, corral.plugins.parallel.events).
RESTART_OF_ENV = "CORRAL_RESTART_OF"
#: Seconds between SIGTERM and SIGKILL when the monitor stops its child.
GRACE = 3.0
#: Seconds between memory samples when a memory limit is set.
MEMORY_INTERVAL = 0.2

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int | None) -> int | None:
    """``"200MB"``, ``"1.5 GiB"``, ``"4096"`` -> bytes; ``""``/``None``/``0`` -> no limit.

    :raises ValueError: anything else, with the accepted forms.
    """
    if text is None or text == "" or text == 0:
        return None
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is not a size")
        return text
    raw = text.strip().lower().replace(" ", "")
    for suffix in ("ib", "b"):
        if raw.endswith(suffix) and raw[: -len(suffix)][-1:].isalpha():
            raw = raw[: -len(suffix)]
            break
    unit = raw[-1:] if raw[-1:].isalpha() else ""
    number = raw[: -len(unit)] if unit else raw
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise ValueError(f"{text!r} is not a size such as 512MB, 2GB or 1048576")
    return int(value * _UNITS[unit]) or None


class Policy:
    """What a monitor does about its child (plain class: imported on start-up paths)."""

    __slots__ = ("backoff", "memory_limit", "restart", "role", "walltime")

    def __init__(
        self,
        *,
        role: str = "engine",
        restart: int = 0,
        backoff: float = 0.5,
        memory_limit: int | None = None,
        walltime: float | None = None,
    ) -> None:
        self.role = role
        self.restart = restart
        self.backoff = backoff
        self.memory_limit = memory_limit
        self.walltime = walltime or None

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        """The ``[engine]`` restart/memory/walltime settings of a resolved config."""
        return cls(
            restart=int(config.get("engine", "restart")),
            backoff=float(config.get("engine", "restart_backoff")),
            memory_limit=parse_size(config.get("engine", "memory_limit")),
            walltime=float(config.get("engine", "walltime")) or None,
        )

    def args(self) -> list[str]:
        """This policy as the monitor's command-line options."""
        argv = ["--role", self.role, "--restart", str(self.restart)]
        argv += ["--backoff", repr(self.backoff)]
        if self.memory_limit:
            argv += ["--memory-limit", str(self.memory_limit)]
        if self.walltime:
            argv += ["--walltime", repr(self.walltime)]
        return argv


#: Whether this platform has per-thread signal masks (not Windows).
_MASKS = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def hold_sigint() -> Iterator[None]:
    """Block SIGINT in the calling thread for the ``with`` body: a process started in it
    begins with SIGINT blocked (the mask is inherited by ``fork`` and kept by ``exec``).

    Per thread, so any thread of a launching program may use it, and nothing is lost: a
    SIGINT for this process meanwhile stays pending and arrives when the block ends.
    """
    if not _MASKS:
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def release_sigint() -> None:
    """Unblock SIGINT in the calling thread, once a handler for it is installed: a
    SIGINT that came while the process started is delivered now, to that handler."""
    if _MASKS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def monitor_argv(
    child: Sequence[str], policy: Policy, *, cluster_file: Path | str | None = None
) -> list[str]:
    """The command line that runs ``child`` under a monitor with ``policy``."""
    argv = [sys.executable, "-m", MODULE, *policy.args()]
    if cluster_file is not None:
        argv += ["--cluster-file", str(cluster_file)]
    return [*argv, "--", *child]


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MB"


class Death:
    """How one run of the child ended, and what to say about it."""

    __slots__ = ("cause", "code", "crashed")

    def __init__(self, code: int, cause: str, crashed: bool) -> None:
        self.code = code
        self.cause = cause
        #: False for a clean exit (status 0) or a stop the monitor was asked for.
        self.crashed = crashed


def death_cause(
    code: int,
    *,
    oom_kills: int = 0,
    memory: tuple[int, int] | None = None,
    walltime: float | None = None,
) -> str:
    """Words for a child's end: ``code`` as ``Popen.returncode`` (negative: a signal),
    ``oom_kills`` new in the cgroup meanwhile, ``memory`` = (RSS seen, limit) when the
    monitor killed it for memory, ``walltime`` when it killed it for time."""
    if memory is not None:
        rss, limit = memory
        return (
            f"exceeded memory_limit = {_mb(limit)} (resident {_mb(rss)}); "
            "killed by its monitor ([engine] memory_limit)"
        )
    if walltime is not None:
        return f"ran past walltime = {walltime:g} s; killed by its monitor ([engine] walltime)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if oom_kills and -code == getattr(signal, "SIGKILL", 9):
            return f"killed by the kernel's out-of-memory killer ({name})"
        return f"killed by {name}"
    return f"exited with status {code}"


def _cgroup_oom_kills() -> int:
    """OOM kills so far in this process's memory cgroup (v2 or v1), 0 if unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return 0
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
            candidates += [
                base / path.lstrip("/") / "memory.oom_control",
                base / "memory.oom_control",
            ]
    for candidate in candidates:
        try:
            text = candidate.read_text()
        except OSError:
            continue
        for row in text.splitlines():
            key, _, value = row.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0


def report_death(cluster_file: Path, engine_uuid: str, cause: str, timeout: float = 10.0) -> bool:
    """Tell the hub that engine ``engine_uuid`` died of ``cause``; True once it answered.

    A signed ``unregistration_request`` on the registration socket, as an engine leaving
    sends one, but naming the engine by uuid (the monitor never learns its id) and
    carrying the cause, which the hub passes on to the queues for the tasks' errors.
    """
    import json

    import zmq

    from corral.plugins.parallel.engine._wire import Replier, send_frames
    from corral.transports.zmq import wire
    from corral.transports.zmq.door import HUB, cluster_signer
    from corral.transports.zmq.gate import gate_for

    try:
        info = json.loads(Path(cluster_file).read_text())
    except (OSError, ValueError):
        return False
    key = str(info.get("key", "")).encode("ascii")
    signer = cluster_signer(key, str(info.get("signature_scheme") or "hmac-sha256"))
    host = str(info.get("ip") or "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
    transport = str(info.get("transport") or "tcp")
    port = int(info["registration"])
    url = f"ipc://{host}-{port}" if transport == "ipc" else f"{transport}://{host}:{port}"
    ctx = zmq.Context()
    sock = gate_for(info).client(ctx.socket(zmq.DEALER))
    # Not 0: on a busy host the connection may not be up yet when we give up waiting,
    # and a report dropped unsent leaves the tasks' errors without their cause.
    sock.linger = 1000
    try:
        sock.connect(url)
        content = {"uuid": engine_uuid, "reason": "died", "cause": cause}
        replier = Replier(signer, wire.new_id(), "monitor")
        run = info.get("run")  # the controller's run: the hub refuses any other (door.RUN)
        frames = replier.frames(
            (), "unregistration_request", b"{}", b"{}", wire.json_dumps(content), dest=HUB,
            run=run if isinstance(run, str) else None,
        )  # fmt: skip
        send_frames(sock, frames)
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(0)
        ctx.term()


class Monitor:
    """Runs ``argv`` under ``policy`` until it ends for good; see the module docstring.

    ``on_death(death, restarting)`` is called after each run (the CLI prints and reports
    it); tests drive the class directly.
    """

    def __init__(
        self,
        argv: Sequence[str],
        policy: Policy,
        *,
        cluster_file: Path | None = None,
        on_death: Callable[[Death, bool], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.policy = policy
        self.cluster_file = cluster_file
        self.on_death = on_death
        self.child: subprocess.Popen[bytes] | None = None
        self.child_uuid: str | None = None
        self.restarts = 0
        #: Set each time a child has been started (tests and callers can await it).
        self.started = threading.Event()
        self._stopping = threading.Event()
        self._killed_for: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- the child

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The child ends if we are killed (CORRAL_PARENT_PID); it writes into our log.
        env = child_env(
            {"CORRAL_PARENT_PID": str(os.getpid()), MONITORED_ENV: "1"}, importable=False
        )
        if self.policy.role == "engine":
            if self.child_uuid is not None:
                env[RESTART_OF_ENV] = self.child_uuid
            self.child_uuid = os.urandom(16).hex()  # not uuid: 2.5 ms of each start
            env[UUID_ENV] = self.child_uuid
        self._killed_for = None
        if self.policy.role != "engine":
            return start_detached(self.argv, env=env)
        # The engine unblocks SIGINT once its interrupt guard is its handler.
        with hold_sigint():
            return start_detached(self.argv, env=env)

    def send(self, signum: int) -> None:
        """Pass ``signum`` on to the child (its group, where groups exist)."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        compat.signal_process(child, signum)

    def stop(self, signum: int | None = None) -> None:
        """Stop for good: no restart; SIGTERM (or ``signum``), SIGKILL after GRACE."""
        self._stopping.set()
        child = self.child
        if child is None:
            return
        compat.signal_process(child, signum or compat.TERMINATE)
        threading.Thread(target=self._escalate, args=(child,), daemon=True).start()

    def _escalate(self, child: subprocess.Popen[bytes]) -> None:
        try:
            child.wait(GRACE)
        except subprocess.TimeoutExpired:
            compat.signal_process(child, compat.KILL)

    def _kill_for(self, reason: str, detail: Any) -> None:
        with self._lock:
            if self._killed_for is None:
                self._killed_for = (reason, detail)
        if self.child is not None:
            compat.signal_process(self.child, compat.KILL)

    def _watch_limits(self, child: subprocess.Popen[bytes], started: float) -> None:
        """Sample memory and the clock until ``child`` ends; kill it past a limit."""
        limit, walltime = self.policy.memory_limit, self.policy.walltime
        process = None
        if limit:
            import psutil

            try:
                process = psutil.Process(child.pid)
            except psutil.Error:
                return
        interval = MEMORY_INTERVAL if limit else max(0.05, min(1.0, (walltime or 1) / 20))
        while True:
            try:
                child.wait(interval)
                return
            except subprocess.TimeoutExpired:
                pass
            if walltime and time.monotonic() - started > walltime:
                self._kill_for("walltime", walltime)
                return
            if process is not None:
                rss = _tree_rss(process)
                if rss > limit:  # type: ignore[operator]
                    self._kill_for("memory", (rss, limit))
                    return

    def run_once(self) -> Death:
        """Start the child, wait for its end, and say how it ended."""
        oom_before = _cgroup_oom_kills()
        started = time.monotonic()
        self.child = child = self._spawn()
        print(f"corral-monitor: started {self.policy.role} pid {child.pid}", flush=True)
        self.started.set()
        if self._stopping.is_set():  # a stop that came while the child was being made
            self.stop()
        if self.policy.memory_limit or self.policy.walltime:
            threading.Thread(target=self._watch_limits, args=(child, started), daemon=True).start()
        code = child.wait()
        cleanup_tree(child.pid)
        killed = self._killed_for
        cause = death_cause(
            code,
            oom_kills=_cgroup_oom_kills() - oom_before,
            memory=killed[1] if killed and killed[0] == "memory" else None,
            walltime=killed[1] if killed and killed[0] == "walltime" else None,
        )
        crashed = code != 0 and not (self._stopping.is_set() and killed is None)
        return Death(code, cause, crashed)

    def run(self) -> int:
        """Run, restarting per the policy; the child's last exit status (0 on a stop)."""
        while True:
            death = self.run_once()
            restarting = (
                death.crashed
                and not self._stopping.is_set()
                and self.restarts < self.policy.restart
            )
            if self.on_death is not None:
                self.on_death(death, restarting)
            if not restarting:
                return 0 if not death.crashed else (death.code if death.code > 0 else 1)
            delay = self.policy.backoff * (2**self.restarts)
            self.restarts += 1
            if self._stopping.wait(delay):
                return 0


def _tree_rss(process: Any) -> int:
    """Resident bytes of ``process`` and its descendants (what it really costs)."""
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def cleanup_tree(pid: int) -> None:
    """Kill what is left of ``pid``'s process group (its subprocesses, if it made any).

    With process groups the group id outlives its leader while any member lives; without
    (Windows mode) psutil finds the orphans by their parent's pid in /proc.
    """
    if compat.HAS_PROCESS_GROUPS:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    import psutil

    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            if child.ppid() in (pid, 1) or child.pid == pid:
                child.kill()
        except psutil.Error:
            pass


def _engine_socket_file(engine_uuid: str) -> None:
    """Remove the same-host socket file of an engine that could not remove it itself."""
    from corral.plugins.parallel.engine.local import socket_directory

    try:
        (socket_directory() / f"{engine_uuid}.sock").unlink(missing_ok=True)
    except OSError:
        pass


def _watch_parent(parent: int, monitor: Monitor, interval: float = 0.5) -> None:
    """Stop the child and exit when the launching process (our parent) is gone: a
    crashed notebook must not leave engines behind. The monitor is always its
    launcher's direct child, so a changed parent pid is the whole test (the bootstrap's
    fuller check in :mod:`.local` would cost every monitor its imports)."""

    def watch() -> None:
        while not monitor._stopping.wait(interval):
            if os.getppid() != parent:
                print(f"corral-monitor: launching process {parent} is gone", flush=True)
                monitor.stop()
                return

    threading.Thread(target=watch, name="corral-monitor-parent", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """The monitor process; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, child = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--role", default="engine", choices=("engine", "controller"))
    parser.add_argument("--restart", type=int, default=0)
    parser.add_argument("--backoff", type=float, default=0.5)
    parser.add_argument("--memory-limit", type=int, default=None)
    parser.add_argument("--walltime", type=float, default=None)
    parser.add_argument("--cluster-file", type=Path, default=None)
    ns = parser.parse_args(own)
    if not child:
        parser.error("no command to run after --")
    policy = Policy(
        role=ns.role,
        restart=ns.restart,
        backoff=ns.backoff,
        memory_limit=ns.memory_limit,
        walltime=ns.walltime,
    )

    def on_death(death: Death, restarting: bool) -> None:
        what = "restarting" if restarting else "not restarting"
        print(f"corral-monitor: {policy.role} {death.cause}; {what}", flush=True)
        if policy.role == "engine" and monitor.child_uuid:
            _engine_socket_file(monitor.child_uuid)
            if death.crashed and ns.cluster_file is not None:
                try:
                    report_death(ns.cluster_file, monitor.child_uuid, death.cause)
                except Exception as exc:  # the controller may be gone too
                    print(f"corral-monitor: could not report to the hub: {exc}", flush=True)

    monitor = Monitor(child, policy, cluster_file=ns.cluster_file, on_death=on_death)
    for signum in compat.FORWARDED_SIGNALS:
        signal.signal(signum, lambda s, _f: monitor.send(s))
    for signum in compat.STOP_SIGNALS:
        signal.signal(signum, lambda s, _f: monitor.stop())
    # Started with SIGINT held (hold_sigint): the forwarder is in place, let it come. The
    # parent watch thread keeps it blocked, so SIGINT lands in this (main) thread, whose
    # wait for the child is what it must interrupt.
    parent = os.environ.get("CORRAL_PARENT_PID")
    if parent and parent.isdigit():
        with hold_sigint():
            _watch_parent(int(parent), monitor)
    release_sigint()
    return monitor.run()


if __name__ == "__main__":
    sys.exit(main())
