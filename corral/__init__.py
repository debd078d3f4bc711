"""corral: interactive and parallel computing in Python.

The public API is re-exported here and imported lazily, so ``import corral`` stays cheap
for processes (kernels, engines) that only need part of it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "NotificationCenter": "corral.notification.center",
    "shared_center": "corral.notification.center",
    "get_plugin_manager": "corral.plugins.manager",
    "load_config": "corral.core.config",
    "KernelManager": "corral.transports.zmq.manager",
    "Interpreter": "corral.core.interpreter",
    "Cluster": "corral.plugins.parallel.cluster",
    "Client": "corral.plugins.parallel.client",
    "AsyncResult": "corral.plugins.parallel.client",
    "RemoteError": "corral.plugins.parallel.client",
    "CompositeError": "corral.plugins.parallel.client",
    "EngineError": "corral.plugins.parallel.client",
    "ControllerLost": "corral.plugins.parallel.client",
    "as_completed": "corral.plugins.parallel.client",
    "interactive": "corral.plugins.parallel.client",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
