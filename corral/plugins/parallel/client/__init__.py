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

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

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
    "DataChannelLost": ".errors",
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
    "register_joblib_backend": ".defaults",
}

if TYPE_CHECKING:  # what editors and type checkers see; nothing is imported at run time
    from .asyncresult import (
        ALL_COMPLETED as ALL_COMPLETED,
    )
    from .asyncresult import (
        FIRST_COMPLETED as FIRST_COMPLETED,
    )
    from .asyncresult import (
        FIRST_EXCEPTION as FIRST_EXCEPTION,
    )
    from .asyncresult import (
        AsyncMapResult as AsyncMapResult,
    )
    from .asyncresult import (
        AsyncResult as AsyncResult,
    )
    from .asyncresult import (
        ExecuteReply as ExecuteReply,
    )
    from .asyncresult import (
        as_completed as as_completed,
    )
    from .client import (
        Client as Client,
    )
    from .client import (
        EngineInfo as EngineInfo,
    )
    from .defaults import (
        register_joblib_backend as register_joblib_backend,
    )
    from .dependencies import (
        Dependency as Dependency,
    )
    from .dependencies import (
        Reference as Reference,
    )
    from .dependencies import (
        bind_kernel as bind_kernel,
    )
    from .dependencies import (
        depend as depend,
    )
    from .dependencies import (
        dependent as dependent,
    )
    from .dependencies import (
        require as require,
    )
    from .dependencies import (
        use_cloudpickle as use_cloudpickle,
    )
    from .dependencies import (
        use_dill as use_dill,
    )
    from .dependencies import (
        use_pickle as use_pickle,
    )
    from .errors import (
        CompositeError as CompositeError,
    )
    from .errors import (
        ControllerLost as ControllerLost,
    )
    from .errors import (
        DataChannelLost as DataChannelLost,
    )
    from .errors import (
        DependencyTimeout as DependencyTimeout,
    )
    from .errors import (
        EngineError as EngineError,
    )
    from .errors import (
        ImpossibleDependency as ImpossibleDependency,
    )
    from .errors import (
        InvalidDependency as InvalidDependency,
    )
    from .errors import (
        KernelError as KernelError,
    )
    from .errors import (
        NoEnginesRegistered as NoEnginesRegistered,
    )
    from .errors import (
        RemoteError as RemoteError,
    )
    from .errors import (
        TaskAborted as TaskAborted,
    )
    from .errors import (
        TaskRejectError as TaskRejectError,
    )
    from .errors import (
        TaskTimeout as TaskTimeout,
    )
    from .errors import (
        TimeoutError as TimeoutError,
    )
    from .errors import (
        UnmetDependency as UnmetDependency,
    )
    from .executor import (
        ClusterExecutor as ClusterExecutor,
    )
    from .executor import (
        ViewExecutor as ViewExecutor,
    )
    from .hubresult import (
        AsyncHubResult as AsyncHubResult,
    )
    from .remote import (
        ParallelFunction as ParallelFunction,
    )
    from .remote import (
        RemoteFunction as RemoteFunction,
    )
    from .remote import (
        interactive as interactive,
    )
    from .remote import (
        parallel as parallel,
    )
    from .remote import (
        remote as remote,
    )
    from .views import (
        BroadcastView as BroadcastView,
    )
    from .views import (
        DirectView as DirectView,
    )
    from .views import (
        LoadBalancedView as LoadBalancedView,
    )
    from .views import (
        View as View,
    )

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
