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

__all__ = [
    "Component",
    "bind_random",
    "make_socket",
    "read_control",
    "recv_frames",
    "send_frames",
]

log = logging.getLogger("corral.plugins.parallel.controller")

STOP = "stop"


# The hot loops call libzmq through pyzmq's Cython layer directly. The convenience layer
# costs more than the I/O on small messages: send_multipart builds an enum flag
# (``SNDMORE | flags``) per frame and recv_multipart a getsockopt(RCVMORE) per frame, about
# 10 us per 9-frame message on the reference machine, more than HMAC and JSON together.
_raw_send = zmq.backend.Socket.send
_raw_recv = zmq.backend.Socket.recv
_MORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """One multipart message as ``zmq.Frame`` objects (no copy of the payload)."""
    frame = _raw_recv(sock, flags, False)
    frames = [frame]
    while frame.more:
        frame = _raw_recv(sock, 0, False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket[Any], frames: list[Any], flags: int = 0) -> None:
    """Send ``frames`` as one message: ``zmq.Frame`` objects by reference, bytes copied.

    A received frame is re-sent without copying its payload (libzmq shares it); the small
    bytes a queue adds (routing ids, monitor tags) are cheaper copied than wrapped.
    """
    more = flags | _MORE
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _raw_send(sock, frame, more if i < last else flags, frame.__class__ is not bytes)


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
