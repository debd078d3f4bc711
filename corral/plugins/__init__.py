"""Plugins: pluggy hooks named ``corral_*``, installed through the ``corral`` entry points.

Re-exports the markers and the manager; the hooks are documented in
:mod:`corral.plugins.hookspecs`. Everything is imported on first use, because engines and
controller processes live under this package and must not pay for pluggy and entry-point
discovery at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

_EXPORTS = {
    "CorralPluginManager": "corral.plugins.manager",
    "PluginFailure": "corral.plugins.manager",
    "get_plugin_manager": "corral.plugins.manager",
    "reset_plugin_manager": "corral.plugins.manager",
    "hookimpl": "corral.plugins.markers",
    "hookspec": "corral.plugins.markers",
    "build_schema": "corral.plugins.runtime",
    "load_configuration": "corral.plugins.runtime",
}

if TYPE_CHECKING:  # what editors and type checkers see; nothing is imported at run time
    from corral.plugins.manager import (
        CorralPluginManager as CorralPluginManager,
    )
    from corral.plugins.manager import (
        PluginFailure as PluginFailure,
    )
    from corral.plugins.manager import (
        get_plugin_manager as get_plugin_manager,
    )
    from corral.plugins.manager import (
        reset_plugin_manager as reset_plugin_manager,
    )
    from corral.plugins.markers import (
        hookimpl as hookimpl,
    )
    from corral.plugins.markers import (
        hookspec as hookspec,
    )
    from corral.plugins.runtime import (
        build_schema as build_schema,
    )
    from corral.plugins.runtime import (
        load_configuration as load_configuration,
    )

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
