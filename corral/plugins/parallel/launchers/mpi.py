"""The MPI launcher: all engines as the ranks of one ``mpiexec``.

Why: on a cluster the MPI library already knows the allocation (hosts, slots, the
interconnect), and engines that are MPI ranks can use ``mpi4py`` between them. corral
runs ``mpiexec -n N [args] python -m corral.plugins.parallel.launchers.local
corral.plugins.parallel.engine --wait-file FILE -- --file FILE``: the same bootstrap as
local engines (they import while the controller starts, and end if the launching process
dies), so every rank must see the cluster file's path (a shared home directory, as MPI
itself needs for the program). One handle: ``mpiexec`` is the process to watch and
signal; it forwards SIGTERM and SIGINT to the ranks.

``[launcher:mpi]``::

    mpiexec = mpiexec        # the command (Open MPI's or MPICH's)
    args = --oversubscribe   # extra mpiexec arguments (hostfile, binding, ...)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from corral.core.config import Option
from corral.plugins.parallel.launchers.base import EngineSetLauncher, LaunchHandle

__all__ = ["OPTIONS", "MPIEngineSetLauncher", "mpi_flavour"]

OPTIONS = (
    Option("launcher:mpi", "mpiexec", "mpiexec", "The mpiexec command (Open MPI or MPICH)."),
    Option(
        "launcher:mpi",
        "id_from_rank",
        True,
        "Ask the controller for engine id == MPI rank (granted when that id is free).",
        type="bool",
    ),
    Option(
        "launcher:mpi",
        "args",
        [],
        "Extra arguments for mpiexec, e.g. --hostfile, hosts, --oversubscribe.",
        type="list",
    ),
)

#: Environment the ranks need from the launching process (parent watch, imports).
_FORWARD = ("CORRAL_PARENT_PID", "PYTHONPATH", "CORRAL_DIR", "CORRAL_ENGINE_ID_FROM_RANK")


def mpi_flavour(mpiexec: str) -> str:
    """``"openmpi"``, ``"mpich"`` or ``"unknown"``, from ``mpiexec --version``: they
    spell "pass this environment variable on" differently."""
    try:
        out = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out:
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    return "unknown"


class MPIEngineSetLauncher(EngineSetLauncher):
    """``n`` engines as the ranks of one ``mpiexec -n n``."""

    name = "mpi"
    needs_tcp = True

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(n, **kwargs)
        self.process: Any = None

    @property
    def log_file(self) -> Path:
        return self.profile_dir / "log" / f"{self.file_prefix}-mpi.log"

    def preflight(self, advertised_ip: str) -> str | None:
        mpiexec = self.options.get("mpiexec") or "mpiexec"
        if shutil.which(mpiexec) is None:
            return (
                f"[launcher:mpi] mpiexec: {mpiexec!r} is not on PATH; install Open MPI or "
                "MPICH, or set the full path"
            )
        return None

    def command(self) -> list[str]:
        """The whole ``mpiexec`` command line."""
        from corral.plugins.parallel.launchers.local import _boot_argv

        mpiexec = self.options.get("mpiexec") or "mpiexec"
        if shutil.which(mpiexec) is None:
            raise FileNotFoundError(
                f"[launcher:mpi] mpiexec: {mpiexec!r} is not on PATH; install Open MPI or "
                "MPICH, or set the full path"
            )
        flavour = mpi_flavour(mpiexec)
        forward: list[str] = []
        if flavour == "openmpi":
            for name in _FORWARD:
                forward += ["-x", name]
        elif flavour == "mpich":
            forward = ["-genvlist", ",".join(_FORWARD)]
        engine = super().command()
        boot = _boot_argv(engine[2], engine[3:], wait_file=self.cluster_file)
        args = [str(a) for a in self.options.get("args") or []]
        return [mpiexec, "-n", str(self.n), *forward, *args, *boot]

    def start(self) -> list[LaunchHandle]:
        from corral.plugins.parallel.launchers.local import LocalProcess, _child_env

        if self.process is not None:
            raise RuntimeError("this launcher has already started its engines")
        env = _child_env()
        if self.options.get("id_from_rank", True):
            env["CORRAL_ENGINE_ID_FROM_RANK"] = "1"
        for name in _FORWARD:
            env.setdefault(name, "")
        self.process = LocalProcess(
            self.command(),
            log_file=self.log_file,
            pid_file=self.profile_dir / "run" / f"{self.file_prefix}-mpi.pid",
            env=env,
            on_exit=lambda proc: self._notify_stopped(),
        )
        self.handles = [self.process.handle()]
        return self.handles

    def poll(self) -> int | None:
        if self.process is None or self.process.running:
            return None
        return self.process.exit_code

    @property
    def running_count(self) -> int:
        return self.n if self.process is not None and self.process.running else 0

    def send_signal(self, signum: int) -> None:
        # To mpiexec alone: it forwards SIGTERM/SIGINT to every rank, and a signal to the
        # whole group would race its own orderly teardown. SIGKILL cannot be forwarded,
        # so it goes to the group (the local ranks with it).
        if self.process is None:
            return
        if signum == signal.SIGKILL or not self.process.running:
            self.process.signal_group(signum)
            return
        try:
            os.kill(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def output_tail(self) -> str:
        return self.process.output_tail() if self.process else ""
