"""Plugins: pluggy hooks named ``corral_*``, installed through the ``corral`` entry points.

Re-exports the markers and the manager; the hooks are documented in
:mod:`corral.plugins.hookspecs`.
"""

from corral.plugins.manager import (
    CorralPluginManager,
    PluginFailure,
    get_plugin_manager,
    reset_plugin_manager,
)
from corral.plugins.markers import hookimpl, hookspec
from corral.plugins.runtime import build_schema, load_configuration

__all__ = [
    "CorralPluginManager",
    "PluginFailure",
    "build_schema",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_configuration",
    "reset_plugin_manager",
]
