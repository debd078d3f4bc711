"""The far end of a remote launcher: ``python -m corral.plugins.parallel.launchers.remote``.

Why it exists: an engine on another host needs the cluster file's content (ports and the
signing key), and someone there to signal and clean up after it. A remote launcher (ssh,
and anything else with a byte stream to the host) runs this module and talks to it over
its stdin, so no shared file system and no second connection are needed, and the key
never appears on a command line:

* line 1 of stdin: JSON ``{"cluster": {...cluster file...}, "count": K, "args": [...]}``;
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
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

__all__ = ["main"]

#: Seconds between SIGTERM and SIGKILL once the launcher is gone.
GRACE = 3.0


def _signal_all(procs: list[subprocess.Popen[bytes]], signum: int) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _start(request: dict[str, Any], path: str) -> list[subprocess.Popen[bytes]]:
    count = int(request.get("count", 1))
    args = [str(a) for a in request.get("args", [])]
    env = os.environ.copy()
    env["CORRAL_PARENT_PID"] = str(os.getpid())  # engines end if this process is killed
    env.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
    argv = [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", path, *args]
    return [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        for _ in range(count)
    ]


def main() -> int:
    """Serve one launcher session; see the module docstring."""
    first = sys.stdin.buffer.readline()
    try:
        request = json.loads(first)
        cluster = request["cluster"]
    except (ValueError, KeyError, TypeError) as error:
        print(f"corral-remote: bad request on stdin: {error}", flush=True)
        return 2
    # mkstemp creates the file 0600: the key stays readable by this user only.
    fd, path = tempfile.mkstemp(prefix="corral-cluster-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cluster, fh)
        procs = _start(request, path)
        print("corral-remote: started " + " ".join(str(p.pid) for p in procs), flush=True)
        done = threading.Event()

        def reap() -> None:
            for proc in procs:
                proc.wait()
            done.set()

        def listen() -> None:
            for line in sys.stdin.buffer:
                words = line.split()
                if len(words) == 2 and words[0] == b"signal" and words[1].isdigit():
                    _signal_all(procs, int(words[1]))
            # The launcher is gone: nobody else will stop these engines.
            _signal_all(procs, signal.SIGTERM)
            if not done.wait(GRACE):
                _signal_all(procs, signal.SIGKILL)

        threading.Thread(target=reap, daemon=True).start()
        threading.Thread(target=listen, daemon=True).start()
        done.wait()
    finally:
        os.unlink(path)
    codes = [p.returncode for p in procs]
    print(f"corral-remote: engines exited with {codes}", flush=True)
    return next((abs(code) for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
