"""The SSH launcher: engines on other hosts, through the user's own ``ssh``.

Why this shape: the user's OpenSSH already knows their hosts, keys, jump hosts and
``~/.ssh/config``; corral runs ``ssh HOST python -m corral.plugins.parallel.launchers.remote``
and never handles a password or a key itself. One ssh session per host starts that host's
engines (see :mod:`.remote`); the cluster file's content travels on the session's stdin,
so the remote host needs no shared file system and the signing key never appears on a
command line. Closing the session (the cluster stopped, or this process died) stops the
engines on the far side.

``[launcher:ssh]``::

    # host[:engines]; user@host works, ~/.ssh/config applies
    hosts = node1:4, node2:8
    # the ssh command
    ssh = ssh
    # extra ssh arguments (BatchMode: fail, never prompt)
    ssh_args = -o, BatchMode=yes
    # remote interpreter; empty: this interpreter's path
    python =
    # NAME=VALUE set for the remote engines
    env = PYTHONPATH=/opt/lib
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from corral.core import compat
from corral.core.config import Option
from corral.core.processes import Spawned
from corral.plugins.parallel.launchers.base import (
    ControllerLauncher,
    EngineSetLauncher,
    LaunchHandle,
    tail,
)

__all__ = ["OPTIONS", "SSHControllerLauncher", "SSHEngineSetLauncher", "parse_hosts"]

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _is_loopback(address: str) -> bool:
    return address in _LOOPBACK or address.startswith("127.")


def parse_hosts(entries: list[str]) -> list[tuple[str, int]]:
    """``["node1:4", "me@node2"]`` -> ``[("node1", 4), ("me@node2", 1)]``.

    :raises ValueError: an entry that is not ``host`` or ``host:count`` with count >= 1.
    """
    hosts = []
    for entry in entries:
        host, sep, count = entry.strip().rpartition(":")
        if not sep or not count.isdigit():
            host, count = entry.strip(), "1"
        if not host or int(count) < 1 or not all(c.isalnum() or c in "-._@[]" for c in host):
            raise ValueError(f"{entry!r} is not host or host:engines (engines >= 1)")
        hosts.append((host, int(count)))
    return hosts


def _check_hosts(entries: list[str]) -> list[str]:
    parse_hosts(entries)
    return entries


def _check_env(entries: list[str]) -> list[str]:
    for entry in entries:
        name, sep, _ = entry.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"{entry!r} is not NAME=VALUE")
    return entries


OPTIONS = (
    Option(
        "launcher:ssh",
        "hosts",
        ["localhost"],
        "Hosts to start engines on, each host or host:engines (user@host works, and\n"
        "~/.ssh/config applies). Engines are spread over the hosts' slots in order.",
        type="list",
        check=_check_hosts,
        accepts="a comma-separated list of host or host:engines",
    ),
    Option("launcher:ssh", "ssh", "ssh", "The ssh command."),
    Option(
        "launcher:ssh",
        "ssh_args",
        ["-o", "BatchMode=yes"],
        "Extra arguments for ssh (BatchMode: fail at once rather than ask for a password).",
        type="list",
    ),
    Option(
        "launcher:ssh",
        "python",
        "",
        "The Python interpreter on the remote hosts, with corral installed;\n"
        "empty: the same path as this interpreter.",
    ),
    Option(
        "launcher:ssh",
        "controller_host",
        "localhost",
        "Host the controller runs on when [cluster] controller is ssh (user@host\n"
        "works). Set [cluster] ip and location so engines and clients reach it.",
        check=lambda value: parse_hosts([value]) and value,
        accepts="a host name (user@host works)",
    ),
    Option(
        "launcher:ssh",
        "env",
        [],
        "Environment variables for the remote engines, as NAME=VALUE.",
        type="list",
        check=_check_env,
        accepts="a comma-separated list of NAME=VALUE",
    ),
)


class _Session(Spawned):
    """One ``ssh host ...remote`` process: its stdin is the control channel."""

    def __init__(
        self,
        argv: list[str],
        log_file: Path,
        request: dict[str, Any],
        count: int,
        on_line: Any = None,
    ):
        # With on_line, output is read here (each line offered to it, the rest logged);
        # else it goes straight to the log.
        super().__init__(argv, log_file=log_file, stdin_pipe=True, capture=on_line is not None)
        self.count = count
        if on_line is not None:
            threading.Thread(
                target=self._copy_output, args=(on_line,), name="corral-ssh-out", daemon=True
            ).start()
        self._stdin_lock = threading.Lock()
        self._write((json.dumps(request) + "\n").encode())

    def _copy_output(self, on_line: Any) -> None:
        assert self.popen.stdout is not None
        with open(self.log_file, "ab") as log:
            for line in self.popen.stdout:
                if not on_line(line):
                    log.write(line)
                    log.flush()

    def _write(self, data: bytes) -> None:
        with self._stdin_lock:
            stdin = self.popen.stdin
            if stdin is None or stdin.closed:
                return
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def reaped(self) -> None:
        self.close()

    def signal(self, signum: int) -> None:
        """Relay ``signum`` to the remote engines; SIGKILL also ends the session."""
        if signum == signal.SIGKILL:
            self.close()
            compat.signal_group(self.popen.pid, compat.KILL)
            return
        self._write(f"signal {int(signum)}\n".encode())

    def close(self) -> None:
        """End the control channel: the far side stops its engines."""
        with self._stdin_lock:
            stdin = self.popen.stdin
            if stdin is not None and not stdin.closed:
                try:
                    stdin.close()
                except OSError:
                    pass


class SSHEngineSetLauncher(EngineSetLauncher):
    """Engines on the hosts of ``[launcher:ssh] hosts``, one ssh session per host."""

    name = "ssh"
    remote = True
    needs_tcp = True

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(n, **kwargs)
        self.sessions: list[_Session] = []
        self._lock = threading.Lock()
        self._started = 0

    @classmethod
    def default_n(cls, options: dict[str, Any]) -> int:
        """Engines when ``n`` is not given: every slot of every host."""
        return sum(count for _, count in parse_hosts(options.get("hosts") or ["localhost"]))

    def placement(self, n: int) -> dict[str, int]:
        """How many of ``n`` engines go to each host: slots filled in host order, then
        round again (more engines than slots oversubscribes, as mpiexec would)."""
        hosts = parse_hosts(self.options.get("hosts") or ["localhost"])
        slots = [host for host, count in hosts for _ in range(count)]
        placed: dict[str, int] = {}
        for i in range(n):
            host = slots[(self._started + i) % len(slots)]
            placed[host] = placed.get(host, 0) + 1
        return placed

    def resolved_hostname(self, host: str) -> str:
        """The address ssh will really connect to for ``host`` (``ssh -G`` applies
        ~/.ssh/config and the configured arguments: an alias may well be 127.0.0.1)."""
        args = [str(a) for a in self.options.get("ssh_args") or []]
        try:
            out = subprocess.run(
                [self.options.get("ssh") or "ssh", *args, "-G", host],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return host.rpartition("@")[2]
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key == "hostname" and value.strip():
                return value.strip()
        return host.rpartition("@")[2]

    def preflight(self, advertised_ip: str) -> str | None:
        """The ssh command must exist, and hosts that are not this one need a controller
        address other than loopback."""
        ssh = self.options.get("ssh") or "ssh"
        if shutil.which(ssh) is None:
            return f"[launcher:ssh] ssh: {ssh!r} is not on PATH (install OpenSSH's client)"
        return self.needs_reachable_controller(advertised_ip)

    def needs_reachable_controller(self, advertised: str) -> str | None:
        """Why the controller's advertised address cannot work for these hosts, or None."""
        if not (advertised.startswith("127.") or advertised in _LOOPBACK):
            return None
        hosts = [host for host, _ in parse_hosts(self.options.get("hosts") or ["localhost"])]
        remote = [h for h in hosts if not _is_loopback(self.resolved_hostname(h))]
        if remote:
            return (
                f"engines on {', '.join(remote)} cannot reach a controller at {advertised}: "
                "set [cluster] ip (e.g. * for every interface) and [cluster] location to an "
                "address of this host those hosts can reach"
            )
        return None

    def _remote_argv(self, host: str) -> list[str]:
        python = self.options.get("python") or sys.executable
        remote = f"exec {shlex.quote(python)} -m corral.plugins.parallel.launchers.remote"
        args = [str(a) for a in self.options.get("ssh_args") or []]
        return [self.options.get("ssh") or "ssh", *args, "-T", host, remote]

    @property
    def log_file(self) -> Path | None:
        return self.sessions[0].log_file if self.sessions else None

    def start(self) -> list[LaunchHandle]:
        return self.add(self.n)

    def add(self, count: int) -> list[LaunchHandle]:
        """Start ``count`` more engines, one new ssh session per host used."""
        if self.cluster_info is None:
            raise RuntimeError("the ssh launcher needs the cluster file's content first")
        from corral.plugins.parallel.launchers.monitor import Policy

        env = dict(entry.partition("=")[::2] for entry in self.options.get("env") or [])
        policy = self.policy or Policy()
        new = []
        for host, k in self.placement(count).items():
            request = {"cluster": self.cluster_info, "count": k, "args": self.extra_args}
            request["env"] = env
            request["monitor"] = policy.args()
            index = len(self.sessions)
            safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in host)
            log = self.profile_dir / "log" / f"{self.file_prefix}-ssh-{index}-{safe}.log"
            session = _Session(self._remote_argv(host), log, request, k)
            with self._lock:
                self.sessions.append(session)
            session.watch(self._on_session_exit)
            new.append(LaunchHandle(pid=session.popen.pid, pgid=session.popen.pid, log_file=log))
        with self._lock:
            self._started += count
            self.handles = [
                LaunchHandle(pid=s.popen.pid, pgid=s.popen.pid, log_file=s.log_file)
                for s in self.sessions
            ]
            self.n = self._started
        return new

    def _on_session_exit(self, session: _Session) -> None:
        with self._lock:
            done = all(not s.running for s in self.sessions)
        if done:
            self._notify_stopped()

    def poll(self) -> int | None:
        with self._lock:
            sessions = list(self.sessions)
        if not sessions or any(s.running for s in sessions):
            return None
        return next((s.exit_code for s in sessions if s.exit_code), 0)

    @property
    def running_count(self) -> int:
        with self._lock:
            return sum(s.count for s in self.sessions if s.running)

    def send_signal(self, signum: int) -> None:
        with self._lock:
            sessions = list(self.sessions)
        for session in sessions:
            if signum == signal.SIGTERM:
                session.signal(signum)
                session.close()  # the far side also stops everything when its stdin ends
            else:
                session.signal(signum)

    def output_tail(self) -> str:
        with self._lock:
            sessions = list(self.sessions)
        dead = [s for s in sessions if not s.running]
        chosen = next(iter(dead or sessions), None)
        return tail(chosen.log_file, chosen.log_offset) if chosen is not None else ""


#: What the far side prints before the cluster file's JSON (launchers/remote.py).
_CLUSTER_LINE = b"corral-remote: cluster "


class SSHControllerLauncher(ControllerLauncher):
    """The controller on ``[launcher:ssh] controller_host``, through one ssh session.

    The far side (:mod:`.remote`) runs the controller under its monitor and sends the
    cluster file's content back on the session's stdout once it is complete; this
    launcher writes it to the local cluster file (owner-only), so local engines and
    clients connect as usual and no shared file system is needed. The line with the key
    is never written to the log. Ending the session (stop, or this process dying) stops
    the controller on the far side.
    """

    name = "ssh"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session: _Session | None = None

    @property
    def host(self) -> str:
        return str(self.options.get("controller_host") or "localhost")

    @property
    def log_file(self) -> Path:
        return self.profile_dir / "log" / f"controller-{self.cluster_id}-ssh.log"

    def _remote_argv(self) -> list[str]:
        python = self.options.get("python") or sys.executable
        remote = f"exec {shlex.quote(python)} -m corral.plugins.parallel.launchers.remote"
        args = [str(a) for a in self.options.get("ssh_args") or []]
        return [self.options.get("ssh") or "ssh", *args, "-T", self.host, remote]

    def start(self) -> list[LaunchHandle]:
        from corral.plugins.parallel.launchers.monitor import Policy

        if self.session is not None:
            raise RuntimeError("this launcher has already started its controller")
        env = dict(entry.partition("=")[::2] for entry in self.options.get("env") or [])
        request = {
            "role": "controller",
            "argv": self.command()[1:],  # the far side's own interpreter runs it
            "profile": self.profile,
            "cluster_id": self.cluster_id,
            "monitor": Policy(role="controller").args(),
            "env": env,
        }
        self.session = _Session(
            self._remote_argv(), self.log_file, request, 1, on_line=self._on_line
        )
        self.session.watch(lambda session: self._notify_stopped())
        self.handles = [
            LaunchHandle(
                pid=self.session.popen.pid, pgid=self.session.popen.pid, log_file=self.log_file
            )
        ]
        return self.handles

    def _on_line(self, line: bytes) -> bool:
        """Write the announced cluster file here; True: the line is not to be logged."""
        if not line.startswith(_CLUSTER_LINE):
            return False
        from corral.core.private import private_dir, write_private

        try:
            info = json.loads(line[len(_CLUSTER_LINE) :])
        except ValueError:
            return True
        private_dir(self.cluster_file.parent)
        part = self.cluster_file.with_suffix(".part")
        write_private(part, json.dumps(info))
        os.replace(part, self.cluster_file)  # whole, or not at all
        return True

    def poll(self) -> int | None:
        if self.session is None or self.session.running:
            return None
        return self.session.exit_code

    def send_signal(self, signum: int) -> None:
        if self.session is None:
            return
        self.session.signal(signum)
        if signum == signal.SIGTERM:
            self.session.close()

    def output_tail(self) -> str:
        return tail(self.log_file, self.session.log_offset) if self.session else ""

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the session to end (a pause that wakes at death)."""
        return self.session.exited.wait(timeout) if self.session else True
