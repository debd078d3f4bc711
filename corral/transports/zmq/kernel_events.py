"""Notification types a :class:`~corral.transports.zmq.manager.KernelManager` posts.

A frontend learns about the life of its kernel process by observing these on the manager's
notification center (the shared one unless another was given); the sender is always the
manager. They are posted from the manager's watcher thread, so an observer that touches a
GUI must hand the work over to its own thread. Every type is a plain string so that the
notification bridge carries it to other processes unchanged.

======================  ===================================================================
type                    info keywords
======================  ===================================================================
``KERNEL_STARTED``      pid, connection_file
``KERNEL_DIED``         pid, exit_code (``None`` while the process is still running, e.g.
                        hung), reason (``"exited"`` or ``"heartbeat"``; ``"restart-failed"``
                        when a replacement kernel could not be started), restarting (bool:
                        whether a ``KERNEL_RESTARTED`` follows), message (one readable line)
``KERNEL_RESTARTED``    pid (of the new process), restart_count (automatic restarts so far),
                        connection_file
======================  ===================================================================

``KERNEL_DIED`` is posted once per unexpected death; deaths the manager causes itself
(``shutdown``, ``restart``) post nothing. When the restart limit is reached the one
``KERNEL_DIED`` for that death carries ``restarting=False`` and a message saying so.
"""

from __future__ import annotations

__all__ = ["KERNEL_STARTED", "KERNEL_DIED", "KERNEL_RESTARTED", "KERNEL_EVENT_TYPES"]

KERNEL_STARTED = "kernel.started"
KERNEL_DIED = "kernel.died"
KERNEL_RESTARTED = "kernel.restarted"

#: Every type a kernel manager posts, for bridges and plugins that forward them.
KERNEL_EVENT_TYPES = (KERNEL_STARTED, KERNEL_DIED, KERNEL_RESTARTED)
