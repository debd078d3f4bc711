"""The cluster client: connect to a controller, send work to engines, collect results.

::

    from corral.plugins.parallel.client import Client

    rc = Client()                       # the newest cluster of the default profile
    view = rc.load_balanced_view()
    print(view.map_sync(pow, range(10), range(10)))

Names are imported on first use, so engines that unpickle a helper from this package
do not pay for the client machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": ".client",
    "EngineInfo": ".client",
    "AsyncResult": ".asyncresult",
    "AsyncMapResult": ".asyncresult",
    "as_completed": ".asyncresult",
    "AsyncHubResult": ".hubresult",
    "View": ".views",
    "DirectView": ".views",
    "LoadBalancedView": ".views",
    "BroadcastView": ".views",
    "RemoteFunction": ".remote",
    "ParallelFunction": ".remote",
    "remote": ".remote",
    "parallel": ".remote",
    "interactive": ".remote",
    "ClusterExecutor": ".executor",
    "RemoteError": ".errors",
    "EngineError": ".errors",
    "CompositeError": ".errors",
    "TaskAborted": ".errors",
    "ControllerLost": ".errors",
    "DependencyTimeout": ".errors",
    "UnmetDependency": ".errors",
    "TimeoutError": ".errors",
    "TaskTimeout": ".errors",
    "InvalidDependency": ".errors",
    "ImpossibleDependency": ".errors",
    "KernelError": ".errors",
    "ExecuteReply": ".asyncresult",
    "FIRST_EXCEPTION": ".asyncresult",
    "ALL_COMPLETED": ".asyncresult",
    "FIRST_COMPLETED": ".asyncresult",
    "NoEnginesRegistered": ".errors",
    "TaskRejectError": ".errors",
    "ViewExecutor": ".executor",
    "use_cloudpickle": ".dependencies",
    "use_pickle": ".dependencies",
    "use_dill": ".dependencies",
    "Reference": ".dependencies",
    "require": ".dependencies",
    "depend": ".dependencies",
    "dependent": ".dependencies",
    "Dependency": ".dependencies",
    "bind_kernel": ".dependencies",
    "register_joblib_backend": ".joblib_backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
