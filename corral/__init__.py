"""corral: interactive and parallel computing in Python.

The public API is re-exported here and imported lazily, so ``import corral`` stays cheap
for processes (kernels, engines) that only need part of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from corral._lazy import lazy_exports
from corral._version import __version__

_EXPORTS = {
    "CorralError": "corral.errors",
    "NotificationCenter": "corral.notification.center",
    "shared_center": "corral.notification.center",
    "get_plugin_manager": "corral.plugins.manager",
    "load_config": "corral.core.config",
    "KernelManager": "corral.plugins.kernels",
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

if TYPE_CHECKING:  # what editors and type checkers see; nothing is imported at run time
    from corral import error as error
    from corral import serialize as serialize
    from corral import util as util
    from corral.core.config import (
        load_config as load_config,
    )
    from corral.core.interpreter import (
        Interpreter as Interpreter,
    )
    from corral.error import (
        AlreadyDisplayedError as AlreadyDisplayedError,
    )
    from corral.error import (
        IPythonError as IPythonError,
    )
    from corral.error import (
        collect_exceptions as collect_exceptions,
    )
    from corral.error import (
        unwrap_exception as unwrap_exception,
    )
    from corral.error import (
        wrap_exception as wrap_exception,
    )
    from corral.errors import CorralError as CorralError
    from corral.notification.center import (
        NotificationCenter as NotificationCenter,
    )
    from corral.notification.center import (
        shared_center as shared_center,
    )
    from corral.plugins.kernels import (
        KernelManager as KernelManager,
    )
    from corral.plugins.manager import (
        get_plugin_manager as get_plugin_manager,
    )
    from corral.plugins.parallel.client import (
        ALL_COMPLETED as ALL_COMPLETED,
    )
    from corral.plugins.parallel.client import (
        FIRST_COMPLETED as FIRST_COMPLETED,
    )
    from corral.plugins.parallel.client import (
        FIRST_EXCEPTION as FIRST_EXCEPTION,
    )
    from corral.plugins.parallel.client import (
        AsyncHubResult as AsyncHubResult,
    )
    from corral.plugins.parallel.client import (
        AsyncMapResult as AsyncMapResult,
    )
    from corral.plugins.parallel.client import (
        AsyncResult as AsyncResult,
    )
    from corral.plugins.parallel.client import (
        BroadcastView as BroadcastView,
    )
    from corral.plugins.parallel.client import (
        Client as Client,
    )
    from corral.plugins.parallel.client import (
        CompositeError as CompositeError,
    )
    from corral.plugins.parallel.client import (
        ControllerLost as ControllerLost,
    )
    from corral.plugins.parallel.client import (
        Dependency as Dependency,
    )
    from corral.plugins.parallel.client import (
        DependencyTimeout as DependencyTimeout,
    )
    from corral.plugins.parallel.client import (
        DirectView as DirectView,
    )
    from corral.plugins.parallel.client import (
        EngineError as EngineError,
    )
    from corral.plugins.parallel.client import (
        ExecuteReply as ExecuteReply,
    )
    from corral.plugins.parallel.client import (
        ImpossibleDependency as ImpossibleDependency,
    )
    from corral.plugins.parallel.client import (
        InvalidDependency as InvalidDependency,
    )
    from corral.plugins.parallel.client import (
        KernelError as KernelError,
    )
    from corral.plugins.parallel.client import (
        LoadBalancedView as LoadBalancedView,
    )
    from corral.plugins.parallel.client import (
        NoEnginesRegistered as NoEnginesRegistered,
    )
    from corral.plugins.parallel.client import (
        ParallelFunction as ParallelFunction,
    )
    from corral.plugins.parallel.client import (
        Reference as Reference,
    )
    from corral.plugins.parallel.client import (
        RemoteError as RemoteError,
    )
    from corral.plugins.parallel.client import (
        RemoteFunction as RemoteFunction,
    )
    from corral.plugins.parallel.client import (
        TaskAborted as TaskAborted,
    )
    from corral.plugins.parallel.client import (
        TaskRejectError as TaskRejectError,
    )
    from corral.plugins.parallel.client import (
        TaskTimeout as TaskTimeout,
    )
    from corral.plugins.parallel.client import (
        TimeoutError as TimeoutError,
    )
    from corral.plugins.parallel.client import (
        UnmetDependency as UnmetDependency,
    )
    from corral.plugins.parallel.client import (
        View as View,
    )
    from corral.plugins.parallel.client import (
        ViewExecutor as ViewExecutor,
    )
    from corral.plugins.parallel.client import (
        as_completed as as_completed,
    )
    from corral.plugins.parallel.client import (
        bind_kernel as bind_kernel,
    )
    from corral.plugins.parallel.client import (
        depend as depend,
    )
    from corral.plugins.parallel.client import (
        dependent as dependent,
    )
    from corral.plugins.parallel.client import (
        interactive as interactive,
    )
    from corral.plugins.parallel.client import (
        register_joblib_backend as register_joblib_backend,
    )
    from corral.plugins.parallel.client import (
        require as require,
    )
    from corral.plugins.parallel.client import (
        use_cloudpickle as use_cloudpickle,
    )
    from corral.plugins.parallel.client import (
        use_dill as use_dill,
    )
    from corral.plugins.parallel.client import (
        use_pickle as use_pickle,
    )
    from corral.plugins.parallel.client.remote import (
        parallel as parallel,
    )
    from corral.plugins.parallel.client.remote import (
        remote as remote,
    )
    from corral.plugins.parallel.cluster import (
        Cluster as Cluster,
    )
    from corral.plugins.parallel.cluster_manager import (
        ClusterManager as ClusterManager,
    )

#: Submodules reachable as attributes without importing them first (``ipp.error``).
_SUBMODULES = frozenset({"error", "datapub", "serialize", "util"})

version_info = tuple(int(p) for p in __version__.split("."))

__all__ = ["__version__", "version_info", "error", "datapub", "serialize", "util", *_EXPORTS]


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral`` in IPython / ipykernel: the ``%px`` family of magics."""
    from corral.plugins.parallel.client.defaults import load_ipython_extension as load

    load(shell)


_lazy_getattr, __dir__ = lazy_exports(
    __name__, _EXPORTS, also=("__version__", "version_info", *_SUBMODULES)
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"corral.{name}")
    return _lazy_getattr(name)
