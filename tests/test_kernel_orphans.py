"""A kernel whose frontend dies without shutting it down exits by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    connection_file = Path(sys.argv[1])
    kernel = subprocess.Popen(
        [sys.executable, "-m", "corral.transports.zmq.kernel_main", "-f", str(connection_file)],
        env={**os.environ, "JPY_PARENT_PID": str(os.getpid())},
        start_new_session=True,
    )
    while not connection_file.exists():   # serving: the file is written after binding
        if kernel.poll() is not None:
            sys.exit("kernel died at startup")
        time.sleep(0.01)
    print(kernel.pid, flush=True)
    os._exit(0)                           # the frontend dies without a shutdown request
    """
)


def test_orphaned_kernel_exits(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_DIR": str(tmp_path / "corral")}
    launcher = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "kernel.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert launcher.returncode == 0, launcher.stderr
    kernel = psutil.Process(int(launcher.stdout.strip()))
    try:
        # The watch polls once a second; allow generously for a loaded machine. (The
        # kernel is not our child, so psutil cannot tell its exit code.)
        kernel.wait(timeout=30)
        assert not kernel.is_running()
    finally:
        if kernel.is_running():
            kernel.kill()
