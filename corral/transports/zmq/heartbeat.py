"""The heartbeat: a ROUTER socket echoing every ping, entirely inside libzmq.

A frontend decides a kernel is dead when pings go unanswered, so the echo must not need
the GIL: user code spinning in a pure-Python loop holds it. ``zmq.proxy_steerable`` with the
socket as both ends copies each ping back to its sender in C with the GIL released, on its
own thread; a control socket stops it cleanly.

Why a ROUTER, where Jupyter's spec names REP: the proxy forwards a message frame by frame,
and a REP that has sent the first frame of its reply refuses to receive the second frame
of the request (``EFSM``), which ended the proxy. Anyone who can reach a tcp kernel's port
(no key is needed to ping) stopped its heartbeat with one two-frame ping, and the manager
then declared the kernel dead and restarted it, its state lost. A ROUTER has no such
state; to a frontend's REQ (or DEALER) it answers exactly as a REP echo does: the reply
goes back under the sender's routing id, with the REQ envelope it came with.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import zmq

__all__ = ["Heartbeat", "ProxyThread"]

log = logging.getLogger("corral.transports.zmq.heartbeat")


class ProxyThread(threading.Thread):
    """A ``zmq.proxy_steerable`` on a thread of its own, stopped through its control socket.

    Subclasses create their sockets in ``__init__`` and return them from
    :meth:`proxy_sockets`; the thread owns and closes them once it runs.
    """

    def __init__(self, context: zmq.Context[Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.context = context
        self._control_url = f"inproc://corral-proxy-control-{os.getpid()}-{id(self)}"
        self._control = context.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(self._control_url)

    def proxy_sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any], zmq.Socket[Any] | None]:
        """``(frontend, backend, capture)`` for the proxy."""
        raise NotImplementedError

    def run(self) -> None:
        frontend, backend, capture = self.proxy_sockets()
        try:
            zmq.proxy_steerable(frontend, backend, capture, self._control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # pragma: no cover - libzmq failure
            log.error("%s stopped: %s", self.name, exc)
        finally:
            for sock in (frontend, backend, capture, self._control):
                if sock is not None:
                    sock.close(linger=0)  # closing one twice (REP as both ends) is harmless

    def stop(self, timeout: float | None = 1.0) -> None:
        """End the proxy and close its sockets."""
        if not self.is_alive():
            return
        control = self.context.socket(zmq.PAIR)
        try:
            control.connect(self._control_url)
            control.send(b"TERMINATE")
            # Wait for the thread, not for the socket: a proxy that ended meanwhile never
            # reads the message, and lingering on it would only add its linger to the stop.
            self.join(timeout)
        finally:
            control.close(linger=0)


class Heartbeat(ProxyThread):
    """Echoes pings on an already bound ROUTER socket until :meth:`stop` is called.

    The socket is bound by the caller (the kernel binds every port before announcing any),
    and from then on belongs to this thread.
    """

    def __init__(self, context: zmq.Context[Any], socket: zmq.Socket[Any]) -> None:
        super().__init__(context, "corral-heartbeat")
        self.socket = socket

    def proxy_sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any], None]:
        return self.socket, self.socket, None
