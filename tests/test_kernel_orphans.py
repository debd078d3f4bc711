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
        [sys.executable, "-m", "corral.plugins.kernel_main", "-f", str(connection_file)],
        env={**os.environ, "JPY_PARENT_PID": str(os.getpid())},
        start_new_session=True,
        stdout=subprocess.DEVNULL,  # the test reads only the launcher's own output
        stderr=subprocess.DEVNULL,
    )
    while not connection_file.exists():   # serving: the file is written after binding
        if kernel.poll() is not None:
            sys.exit("kernel died at startup")
        time.sleep(0.01)
    print(kernel.pid, flush=True)
    os._exit(0)                           # the frontend dies without a shutdown request
    """
)


def test_orphaned_kernel_exits_even_while_its_parent_is_an_unreaped_zombie(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_DIR": str(tmp_path / "corral")}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "kernel.json")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    kernel = None
    try:
        assert launcher.stdout is not None
        kernel = psutil.Process(int(launcher.stdout.readline()))
        # The launcher has exited but is not reaped yet: to os.kill(pid, 0) it still exists.
        # The watch polls once a second; allow generously for a loaded machine. (The
        # kernel is not our child, so psutil cannot tell its exit code.)
        kernel.wait(timeout=30)
        assert not kernel.is_running()
    finally:
        assert launcher.wait(timeout=30) == 0
        if kernel is not None and kernel.is_running():
            kernel.kill()
