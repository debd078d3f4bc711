"""The kernel manager users get as ``corral.KernelManager``: the transport's, plus the
profile check only the plugins layer can make.

:class:`corral.transports.zmq.manager.KernelManager` starts and follows a kernel process
and knows nothing of configuration, because every option is declared by a plugin and the
transports do not import plugins. This subclass checks the profile's ``corral.ini`` first,
so a broken file fails here, naming file, line and key, instead of in a kernel that starts
on a configuration the CLI refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.transports.zmq.manager import KernelManager as _TransportKernelManager

__all__ = ["KernelManager"]


class KernelManager(_TransportKernelManager):
    """:class:`corral.transports.zmq.manager.KernelManager` that refuses a broken profile.

    .. versionadded:: 0.1
    """

    def check_profile(self, directory: Path) -> Any:
        """Load the configuration with every plugin's options when a ``corral.ini`` exists
        (the profile's or the system's); plugins load lazily here, as in the kernel."""
        from corral.core.config import system_config_path

        if not (directory / "corral.ini").is_file() and not system_config_path().is_file():
            return None
        from corral.plugins.manager import get_plugin_manager
        from corral.plugins.runtime import load_configuration

        return load_configuration(
            get_plugin_manager(), profile=None, profile_file=directory / "corral.ini"
        )
