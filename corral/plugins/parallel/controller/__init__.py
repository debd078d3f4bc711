"""The cluster controller: hub, queues, schedulers and iopub relay (``docs/parallel-protocol.md``).

:func:`start_controller` starts one (as processes or threads) and returns a
:class:`ControllerHandle`; ``python -m corral.plugins.parallel.controller`` runs one in
the foreground.
"""

from .main import ControllerConfig, ControllerHandle, start_controller

__all__ = ["ControllerConfig", "ControllerHandle", "start_controller"]
