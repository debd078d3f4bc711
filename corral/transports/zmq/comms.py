"""Comms (``comm_open`` / ``comm_msg`` / ``comm_close``) through the ``comm`` package.

The ``comm`` package is how kernels other than ipykernel provide comms: a kernel replaces
``comm.create_comm`` and ``comm.get_comm_manager`` with its own, and libraries (ipywidgets
8, tqdm.notebook through it, bokeh, plotly...) only ever call those. This module does that
for the corral kernel, the moment user code imports ``comm`` (never before: importing it
at start would slow every kernel down for the few notebooks that use widgets).

Kernel-side messages go out on IOPub with the request being served as parent, so output
widgets and frontends route them; frontend messages arrive on shell and are dispatched by
the comm manager to the comm's callbacks, with output captured as the request's output.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["CommSupport"]

log = logging.getLogger("corral.transports.zmq.comms")


class CommSupport:
    """The kernel's comms: a ``comm`` manager and the comm class whose messages it sends.

    ``server`` is the :class:`~.kernel.KernelServer` (its ``iopub`` and current parent).
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.manager: Any = None
        self.comm_class: Any = None

    def install(self, comm_module: Any) -> None:
        """Replace ``comm``'s factory and manager getter with this kernel's."""
        from comm.base_comm import BaseComm, CommManager

        server = self.server

        class KernelComm(BaseComm):  # type: ignore[misc]
            """A comm whose messages the corral kernel publishes on IOPub."""

            kernel = server

            def publish_msg(
                self,
                msg_type: str,
                data: Any = None,
                metadata: Any = None,
                buffers: Any = None,
                **keys: Any,
            ) -> None:
                content = {"data": {} if data is None else data, "comm_id": self.comm_id, **keys}
                server.iopub.publish(
                    msg_type,
                    content,
                    server.current_parent(),
                    metadata=metadata or {},
                    buffers=list(buffers or ()),
                )

        self.comm_class = KernelComm
        self.manager = CommManager()

        def create_comm(*args: Any, **kwargs: Any) -> Any:
            return KernelComm(*args, **kwargs)

        def get_comm_manager() -> Any:
            return self.manager

        comm_module.create_comm = create_comm
        comm_module.get_comm_manager = get_comm_manager

    def ensure(self) -> Any:
        """The comm manager, importing ``comm`` now if user code has not yet."""
        if self.manager is None:
            import comm

            if self.manager is None:  # the import hook may not have run (imported earlier)
                self.install(comm)
        return self.manager

    # ----------------------------------------------------------- shell handlers

    def handle(self, msg_type: str, msg: dict[str, Any]) -> bool:
        """Dispatch a frontend's comm message; False when no comm machinery is loaded."""
        if self.manager is None:
            return False
        handler = {
            "comm_open": self.manager.comm_open,
            "comm_msg": self.manager.comm_msg,
            "comm_close": self.manager.comm_close,
        }[msg_type]
        handler(None, None, msg)
        return True

    def info(self, target_name: str | None) -> dict[str, dict[str, str]]:
        """``comm_info_reply`` content's ``comms``: open comms, of one target if given."""
        if self.manager is None:
            return {}
        return {
            comm_id: {"target_name": comm.target_name}
            for comm_id, comm in list(self.manager.comms.items())
            if target_name is None or comm.target_name == target_name
        }
