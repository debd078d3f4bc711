"""The far end of a remote launcher: ``python -m corral.plugins.parallel.launchers.remote``.

Why it exists: an engine on another host needs the cluster file's content (ports and the
signing key), and someone there to signal and clean up after it. A remote launcher (ssh,
and anything else with a byte stream to the host) runs this module and talks to it over
its stdin, so no shared file system and no second connection are needed, and the key
never appears on a command line:

* line 1 of stdin: JSON ``{"cluster": {...cluster file...}, "count": K, "args": [...],
  "monitor": [...monitor options...]}``; each engine runs under its monitor
  (:mod:`.monitor`), which restarts it, enforces its limits and reports its death;
* or, to run the *controller* there: ``{"role": "controller", "argv": [...], "profile":
  P, "cluster_id": ID, "monitor": [...]}``; the cluster file's content then comes back on
  stdout (``corral-remote: cluster {...}``), so the launching host writes its own copy;
* later lines: ``signal N`` sends signal N to every engine's process group;
* end of stdin (the launcher, or its ssh session, went away): SIGTERM every engine,
  SIGKILL what is left after a grace period, remove the private copy of the cluster file.

It writes ``corral-remote: started PID...`` to stdout once the engines run; their output
follows on the same stream, which the launcher logs. It exits when every engine has,
with the first non-zero exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from corral.core import compat
from corral.core.processes import child_env, start_detached

__all__ = ["main"]

MONITOR = "corral.plugins.parallel.launchers.monitor"

#: Seconds between SIGTERM and SIGKILL once the launcher is gone.
GRACE = 3.0


class _Lines:
    """Lines of a file descriptor, read with ``os.read``.

    Why not ``sys.stdin.buffer``: the listening thread stays blocked in a read until the
    launcher closes the session, and a daemon thread holding the lock of a buffered stdin
    at interpreter shutdown makes Python abort ("Fatal Python error:
    _enter_buffered_busy", status -6) every time the engines end first, as they do after
    ``stop_engines`` or a failed start. A raw read holds no lock.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""

    def readline(self) -> bytes:
        """The next line with its newline; the rest at end of input; b"" after it."""
        while b"\n" not in self.pending:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                line, self.pending = self.pending, b""
                return line
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line + b"\n"

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _signal_all(procs: list[subprocess.Popen[bytes]], signum: int) -> None:
    for proc in procs:
        compat.signal_group(proc.pid, signum)


def _start(request: dict[str, Any], path: str) -> list[subprocess.Popen[bytes]]:
    count = int(request.get("count", 1))
    args = [str(a) for a in request.get("args", [])]
    env = _env(request)
    argv = [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", path, *args]
    # Each engine under its own monitor, as local engines are (launchers/monitor.py).
    monitor = [str(a) for a in request.get("monitor") or []]
    argv = [sys.executable, "-m", MONITOR, *monitor, "--cluster-file", path, "--", *argv]
    return [start_detached(argv, env=env) for _ in range(count)]


def _env(request: dict[str, Any]) -> dict[str, str]:
    """This host's environment, the request's ``env``, and ``CORRAL_PARENT_PID``: what is
    started here ends if this process is killed."""
    extra = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
    return child_env({"CORRAL_PARENT_PID": str(os.getpid()), **extra}, importable=False)


def _serve(procs: list[subprocess.Popen[bytes]], stdin: _Lines) -> None:
    """Relay ``signal N`` lines to ``procs`` until they have all ended; end them when
    stdin does (the launcher, or its ssh session, went away)."""
    done = threading.Event()

    def reap() -> None:
        for proc in procs:
            proc.wait()
        done.set()

    def listen() -> None:
        for line in stdin:
            words = line.split()
            if len(words) == 2 and words[0] == b"signal" and words[1].isdigit():
                _signal_all(procs, int(words[1]))
        # The launcher is gone: nobody else will stop these processes.
        _signal_all(procs, compat.TERMINATE)
        if not done.wait(GRACE):
            _signal_all(procs, compat.KILL)

    threading.Thread(target=reap, daemon=True).start()
    threading.Thread(target=listen, daemon=True).start()
    done.wait()


def _controller(request: dict[str, Any], stdin: _Lines) -> int:
    """Run the controller under its monitor; print its cluster file's content once it is
    complete (``corral-remote: cluster {...}``), for the launcher to write on its side."""
    from corral.plugins.parallel.clusterfile import cluster_file_path

    path = cluster_file_path(str(request["profile"]), str(request["cluster_id"]))
    path.unlink(missing_ok=True)  # a stale file of an earlier run must not be announced
    monitor = [str(a) for a in request.get("monitor") or []]
    argv = [sys.executable, "-m", MONITOR, *monitor, "--", sys.executable]
    argv += [str(a) for a in request["argv"]]
    proc = start_detached(argv, env=_env(request))
    print(f"corral-remote: started {proc.pid}", flush=True)
    pause = 0.002
    while proc.poll() is None:
        try:
            info = json.loads(path.read_bytes())
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and info.get("registration"):
            # One line, never logged by the launcher: it holds the key.
            print("corral-remote: cluster " + json.dumps(info), flush=True)
            break
        try:
            proc.wait(pause)
        except subprocess.TimeoutExpired:
            pause = min(pause * 2, 0.05)
    _serve([proc], stdin)
    print(f"corral-remote: controller exited with {proc.returncode}", flush=True)
    return abs(proc.returncode or 0)


def main() -> int:
    """Serve one launcher session; see the module docstring."""
    stdin = _Lines(sys.stdin.fileno())
    first = stdin.readline()
    try:
        request = json.loads(first)
        if request.get("role") == "controller":
            return _controller(request, stdin)
        cluster = request["cluster"]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        print(f"corral-remote: bad request on stdin: {error!r}", flush=True)
        return 2
    # mkstemp creates the file 0600: the key stays readable by this user only.
    fd, path = tempfile.mkstemp(prefix="corral-cluster-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cluster, fh)
        procs = _start(request, path)
        print("corral-remote: started " + " ".join(str(p.pid) for p in procs), flush=True)
        _serve(procs, stdin)
    finally:
        os.unlink(path)
    codes = [p.returncode for p in procs]
    print(f"corral-remote: engines exited with {codes}", flush=True)
    return next((abs(code) for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
