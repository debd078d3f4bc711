"""The iopub relay: engines' output to every subscriber, entirely inside libzmq.

Engines PUBlish to ``iopub_engine`` (XSUB); clients and the hub SUBscribe to ``iopub``
(XPUB). ``zmq.proxy`` forwards messages one way and subscriptions the other in C with the
GIL released: no Python runs per message, and messages pass unparsed (they are signed by
the engine and checked by whoever reads them).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from corral.transports.zmq.gate import Gate

from .base import Component, ControlPipe, make_socket, read_control

__all__ = ["IopubProxy"]

log = logging.getLogger("corral.plugins.parallel.controller.iopub")


class IopubProxy(Component):
    """XSUB ``iopub_engine`` -> XPUB ``iopub`` through ``zmq.proxy_steerable``."""

    name = "iopub"

    def __init__(
        self, *, transport: str = "tcp", ip: str = "127.0.0.1", gate: Gate | None = None
    ) -> None:
        self.transport = transport
        self.ip = ip
        self.gate = gate

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        self.ctx = ctx
        self.xsub = make_socket(ctx, zmq.XSUB, unlimited=True, gate=self.gate)
        self.xpub = make_socket(ctx, zmq.XPUB, unlimited=True, gate=self.gate)
        self._steer_url = f"inproc://corral-iopub-steer-{id(self)}"
        self._steer = make_socket(ctx, zmq.PAIR)
        self._steer.bind(self._steer_url)
        return {
            "iopub_engine": self.bind_port(self.xsub, "iopub_engine"),
            "iopub": self.bind_port(self.xpub, "iopub"),
        }

    def _proxy(self) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, self._steer)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # pragma: no cover - libzmq failure
            log.error("iopub proxy stopped: %s", exc)
        finally:
            self.xsub.close(linger=0)
            self.xpub.close(linger=0)
            self._steer.close(linger=0)

    def serve(self, control: ControlPipe) -> None:
        """Run the proxy on a thread; this one waits on the control pipe and then steers it off."""
        proxy = threading.Thread(target=self._proxy, name="corral-iopub-proxy", daemon=True)
        proxy.start()
        while True:
            control.poll(None)
            if read_control(control) is None:
                break
        # The steering socket stays open until the proxy is gone: closing it at once can
        # tear the inproc pipe down before a proxy that is only starting has read it.
        stopper = self.ctx.socket(zmq.PAIR)
        try:
            stopper.connect(self._steer_url)
            stopper.send(b"TERMINATE")
            proxy.join()
        finally:
            stopper.close(linger=0)
