"""The heartbeat: a REP socket echoing every ping, entirely inside libzmq.

A frontend decides a kernel is dead when pings go unanswered, so the echo must not need
the GIL: user code spinning in a pure-Python loop holds it. ``zmq.proxy_steerable`` with the
REP socket as both ends copies each request back as its reply in C with the GIL released,
on its own thread; a control socket stops it cleanly.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

__all__ = ["Heartbeat"]

log = logging.getLogger("corral.transports.zmq.heartbeat")


class Heartbeat(threading.Thread):
    """Echoes pings on an already bound REP socket until :meth:`stop` is called.

    The socket is bound by the caller (the kernel binds every port before announcing any),
    and from then on belongs to this thread.
    """

    def __init__(self, context: zmq.Context[Any], socket: zmq.Socket[Any]) -> None:
        super().__init__(name="corral-heartbeat", daemon=True)
        self.context = context
        self.socket = socket
        self._control_url = f"inproc://corral-hb-control-{id(self)}"
        self._control_in = context.socket(zmq.PAIR)
        self._control_in.bind(self._control_url)

    def run(self) -> None:
        try:
            zmq.proxy_steerable(self.socket, self.socket, None, self._control_in)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # pragma: no cover - libzmq failure
            log.error("heartbeat stopped: %s", exc)
        finally:
            self.socket.close(linger=0)
            self._control_in.close(linger=0)

    def stop(self, timeout: float | None = 1.0) -> None:
        """End the echo loop and close the socket."""
        if not self.is_alive():
            return
        control = self.context.socket(zmq.PAIR)
        try:
            control.connect(self._control_url)
            control.send(b"TERMINATE")
        finally:
            control.close(linger=1000)
        self.join(timeout)
