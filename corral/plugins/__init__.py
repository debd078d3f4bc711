"""Plugins: pluggy hooks named ``corral_*``, installed through the ``corral`` entry points.

Re-exports the markers and the manager; the hooks are documented in
:mod:`corral.plugins.hookspecs`. Everything is imported on first use, because engines and
controller processes live under this package and must not pay for pluggy and entry-point
discovery at startup.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
