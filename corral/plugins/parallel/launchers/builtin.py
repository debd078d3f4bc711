"""The built-in launchers' plugin: it registers ``local``, ``ssh``, ``mpi``, ``slurm``,
``pbs``, ``sge``, ``lsf``, ``htcondor`` and ``windows_hpc`` through the ``corral_launchers``
hook and declares the cluster's and the launchers' options, exactly as a third-party launcher
distribution would.

Each launcher module declares its ``[launcher:NAME]`` options next to its code
(``OPTIONS``); this module only gathers them.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.core.config import Schema
from corral.plugins.markers import hookimpl
from corral.plugins.parallel.launchers import batch, htcondor, lsf, mpi, ssh, windows_hpc

__all__ = ["BUILTIN_NAMES", "LAUNCHER_OPTIONS", "corral_add_options", "corral_launchers"]

#: Names of the launchers this plugin registers.
BUILTIN_NAMES = (
    "local",
    "ssh",
    "mpi",
    "slurm",
    "pbs",
    "sge",
    "lsf",
    "htcondor",
    "windows_hpc",
)

#: Options of every built-in launcher, ``[launcher:NAME]`` sections.
LAUNCHER_OPTIONS = (
    *ssh.OPTIONS,
    *mpi.OPTIONS,
    *batch.OPTIONS,
    *lsf.OPTIONS,
    *htcondor.OPTIONS,
    *windows_hpc.OPTIONS,
)


@hookimpl
def corral_add_options(schema: Schema) -> None:
    from corral.plugins.parallel.settings import declare

    declare(schema)


@hookimpl
def corral_launchers() -> Mapping[str, tuple[type, type]]:
    from corral.plugins.parallel.launchers.local import (
        LocalControllerLauncher,
        LocalEngineSetLauncher,
    )

    return {
        "local": (LocalControllerLauncher, LocalEngineSetLauncher),
        "ssh": (ssh.SSHControllerLauncher, ssh.SSHEngineSetLauncher),
        "mpi": (LocalControllerLauncher, mpi.MPIEngineSetLauncher),
        "slurm": (LocalControllerLauncher, batch.SlurmEngineSetLauncher),
        "pbs": (LocalControllerLauncher, batch.PBSEngineSetLauncher),
        "sge": (LocalControllerLauncher, batch.SGEEngineSetLauncher),
        "lsf": (LocalControllerLauncher, lsf.LSFEngineSetLauncher),
        "htcondor": (LocalControllerLauncher, htcondor.HTCondorEngineSetLauncher),
        "windows_hpc": (LocalControllerLauncher, windows_hpc.WindowsHPCEngineSetLauncher),
    }
