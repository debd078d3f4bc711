"""What every controller component shares: socket setup and the control pipe.

A component (hub, a queue, iopub) is created, then :meth:`Component.bind` creates and
binds its sockets on a context it is given and returns their ports, then
:meth:`Component.serve` runs its loop until its control pipe says stop. The same object
runs as a forked process (its own context) or as a thread (a shared context): the
component cannot tell, which keeps both modes honest.

The control pipe is a :func:`multiprocessing.Pipe` end. Its file descriptor sits in the
component's poller next to the sockets, so stopping needs no signal handler, no timeout
polling and no extra thread; and when the supervising process dies the pipe reads EOF, so
an orphaned component stops on its own.
"""

from __future__ import annotations

import json
import logging
from multiprocessing.connection import Connection
from typing import Any

import zmq

from corral.transports.zmq.frames import NOBLOCK, recv_frames, send_frames

__all__ = [
    "NOBLOCK",
    "Component",
    "bind_random",
    "make_socket",
    "read_control",
    "recv_frames",
    "send_frames",
]

log = logging.getLogger("corral.plugins.parallel.controller")

STOP = "stop"


# The hot loops send and receive through corral.transports.zmq.frames (pyzmq's Cython
# layer, called directly): received frames are forwarded by reference, the small bytes a
# queue adds (routing ids, monitor tags) are copied.


def loads_dict(raw: bytes) -> dict[str, Any] | None:
    """A message part parsed as a JSON object, or None (garbage is dropped, not raised)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


#: Messages handled from one socket before the loop looks at the others again.
DRAIN_BATCH = 256


def drain(sock: zmq.Socket[Any], handler: Any, what: str) -> None:
    """Handle up to :data:`DRAIN_BATCH` waiting messages from ``sock``; one that raises is
    logged and dropped, because one bad message must never stop a component."""
    for _ in range(DRAIN_BATCH):
        try:
            frames = recv_frames(sock, NOBLOCK)
        except zmq.Again:
            return
        try:
            handler(frames)
        except Exception:
            log.exception("%s: error while handling a message; dropped", what)


def make_socket(ctx: zmq.Context[Any], kind: int, *, unlimited: bool = False) -> zmq.Socket[Any]:
    """A socket with linger 0; ``unlimited`` lifts the high-water marks.

    Routing sockets are unlimited: a ROUTER at its high-water mark silently drops (or,
    with ``ROUTER_MANDATORY``, blocks), and either would lose or stall tasks.
    """
    sock = ctx.socket(kind)
    sock.linger = 0
    if unlimited:
        sock.sndhwm = 0
        sock.rcvhwm = 0
    return sock


def bind_random(sock: zmq.Socket[Any], transport: str, ip: str) -> int:
    """Bind ``sock`` to a port the OS picks; returns the port."""
    if transport == "tcp":
        return sock.bind_to_random_port(f"tcp://{ip}")
    raise ValueError(f"transport {transport!r} is not supported by the controller (use tcp)")


def read_control(conn: Connection) -> list[Any] | None:
    """Messages waiting on the control pipe, or None if the component must stop."""
    out: list[Any] = []
    try:
        while conn.poll():
            msg = conn.recv()
            if msg == STOP:
                return None
            out.append(msg)
    except (EOFError, OSError):
        return None  # the supervisor is gone
    return out


class Component:
    """A controller component: bind sockets, then serve until told to stop."""

    #: the component's name, also its process title and thread name
    name = "component"

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        """Create and bind this component's sockets; ``{cluster file field: port}``."""
        raise NotImplementedError

    def serve(self, control: Connection) -> None:
        """Run until ``control`` says stop (or closes); then close every socket."""
        raise NotImplementedError

    def configure(self, message: Any) -> None:
        """Handle a non-stop message from the supervisor (the hub gets the cluster info)."""
        log.debug("%s ignores control message %r", self.name, message)
