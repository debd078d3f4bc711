"""The cluster engine: an interpreter serving tasks from the controller's queues.

``python -m corral.plugins.parallel.engine --file CLUSTER_FILE`` runs one engine until the
controller shuts it down (see :mod:`.engine` for the lifecycle and
``docs/parallel-protocol.md`` for the messages). Importing this package is cheap: the
interpreter and the serializer are imported while the engine waits for its registration.
:func:`bind_kernel` (run on an engine) serves it as a Jupyter kernel too.
"""

from __future__ import annotations

from .bound import bind_kernel
from .engine import Engine, EngineJoinError, load_cluster_file

__all__ = ["Engine", "EngineJoinError", "bind_kernel", "load_cluster_file"]
