"""Launchers: how a cluster's controller and engines are started, watched and stopped.

:mod:`.base` defines the seam (:class:`~.base.Launcher`, :class:`~.base.ControllerLauncher`,
:class:`~.base.EngineSetLauncher`), :mod:`.registry` how launchers are found by name; :mod:`.local`
starts processes on this machine. Remote launchers (SSH, Slurm, PBS, MPI, ...) plug in
through the ``corral_launchers`` hook described in :mod:`.base`.

Nothing is imported here eagerly: ``local`` doubles as the bootstrap every engine runs
(``python -m corral.plugins.parallel.launchers.local``), and importing it from this
``__init__`` would make Python run it twice.
"""

from __future__ import annotations

from corral.plugins.parallel.launchers.base import (
    ControllerLauncher,
    EngineSetLauncher,
    Launcher,
    LaunchError,
    LaunchHandle,
)
from corral.plugins.parallel.launchers.registry import get_launchers

__all__ = [
    "ControllerLauncher",
    "EngineSetLauncher",
    "LaunchError",
    "LaunchHandle",
    "Launcher",
    "get_launchers",
]
