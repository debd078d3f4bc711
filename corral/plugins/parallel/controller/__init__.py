"""The cluster controller: hub, queues, schedulers and iopub relay (``docs/parallel-protocol.md``).

:func:`start_controller` starts one (as processes or threads) and returns a
:class:`ControllerHandle`; ``python -m corral.plugins.parallel.controller`` runs one in
the foreground.

The names are imported on first use (:func:`corral._lazy.lazy_exports`): a process that
needs only a leaf of this package (every process loading the plugins imports
:mod:`.policies`, for ``corral_schedulers``; engines do at start) must not pay for the
hub, the queues and the task database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

_EXPORTS = {
    "ControllerConfig": ".main",
    "ControllerHandle": ".main",
    "start_controller": ".main",
}

if TYPE_CHECKING:  # what editors and type checkers see; nothing is imported at run time
    from .main import ControllerConfig as ControllerConfig
    from .main import ControllerHandle as ControllerHandle
    from .main import start_controller as start_controller

__all__ = ["ControllerConfig", "ControllerHandle", "start_controller"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
