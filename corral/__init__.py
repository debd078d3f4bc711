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
    "ClusterManager": "corral.plugins.parallel.cluster_manager",
    "Client": "corral.plugins.parallel.client",
    "AsyncResult": "corral.plugins.parallel.client",
    "RemoteError": "corral.plugins.parallel.client",
    "CompositeError": "corral.plugins.parallel.client",
    "EngineError": "corral.plugins.parallel.client",
    "ControllerLost": "corral.plugins.parallel.client",
    "as_completed": "corral.plugins.parallel.client",
    "interactive": "corral.plugins.parallel.client",
    # ipyparallel's names, so ``import corral as ipp`` scripts run (docs/from-ipyparallel.md)
    "AsyncMapResult": "corral.plugins.parallel.client",
    "AsyncHubResult": "corral.plugins.parallel.client",
    "View": "corral.plugins.parallel.client",
    "DirectView": "corral.plugins.parallel.client",
    "LoadBalancedView": "corral.plugins.parallel.client",
    "BroadcastView": "corral.plugins.parallel.client",
    "ExecuteReply": "corral.plugins.parallel.client",
    "remote": "corral.plugins.parallel.client.remote",
    "parallel": "corral.plugins.parallel.client.remote",
    "TaskAborted": "corral.plugins.parallel.client",
    "TaskTimeout": "corral.plugins.parallel.client",
    "DependencyTimeout": "corral.plugins.parallel.client",
    "UnmetDependency": "corral.plugins.parallel.client",
    "InvalidDependency": "corral.plugins.parallel.client",
    "ImpossibleDependency": "corral.plugins.parallel.client",
    "KernelError": "corral.plugins.parallel.client",
    "TimeoutError": "corral.plugins.parallel.client",
    "FIRST_EXCEPTION": "corral.plugins.parallel.client",
    "ALL_COMPLETED": "corral.plugins.parallel.client",
    "Reference": "corral.plugins.parallel.client",
    "require": "corral.plugins.parallel.client",
    "depend": "corral.plugins.parallel.client",
    "dependent": "corral.plugins.parallel.client",
    "Dependency": "corral.plugins.parallel.client",
    "bind_kernel": "corral.plugins.parallel.client",
    "register_joblib_backend": "corral.plugins.parallel.client",
    "FIRST_COMPLETED": "corral.plugins.parallel.client",
    "NoEnginesRegistered": "corral.plugins.parallel.client",
    "TaskRejectError": "corral.plugins.parallel.client",
    "ViewExecutor": "corral.plugins.parallel.client",
    "RemoteFunction": "corral.plugins.parallel.client",
    "ParallelFunction": "corral.plugins.parallel.client",
    "use_cloudpickle": "corral.plugins.parallel.client",
    "use_pickle": "corral.plugins.parallel.client",
    "use_dill": "corral.plugins.parallel.client",
    # ipyparallel.error's extras (corral.error is also reachable as corral.error)
    "AlreadyDisplayedError": "corral.error",
    "IPythonError": "corral.error",
    "collect_exceptions": "corral.error",
    "wrap_exception": "corral.error",
    "unwrap_exception": "corral.error",
}

#: Submodules reachable as attributes without importing them first (``ipp.error``).
_SUBMODULES = frozenset({"error", "datapub"})

version_info = tuple(int(p) for p in __version__.split("."))

__all__ = ["__version__", "version_info", "error", "datapub", *_EXPORTS]


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral`` in IPython / ipykernel: the ``%px`` family of magics."""
    from corral.plugins.parallel.client.magics import load_ipython_extension as load

    load(shell)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"corral.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
