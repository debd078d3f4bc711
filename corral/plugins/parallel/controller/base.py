"""What every controller component shares: socket setup and the control pipe.

A component (hub, a queue, iopub) is created, then :meth:`Component.bind` creates and
binds its sockets on a context it is given and returns their ports, then
:meth:`Component.serve` runs its loop until its control pipe says stop. The same object
runs as a forked process (its own context) or as a thread (a shared context): the
component cannot tell, which keeps both modes honest.

The control pipe is one end of a :func:`control_pipe`. Its file descriptor sits in the
component's poller next to the sockets, so stopping needs no signal handler, no timeout
polling and no extra thread; and when the supervising process dies the pipe reads EOF, so
an orphaned component stops on its own. It is two OS pipes carrying length-prefixed
pickles, with the few methods of a :func:`multiprocessing.Pipe` end the controller uses:
importing :mod:`multiprocessing` cost every cluster start about 10 ms.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import select
from collections.abc import Callable
from typing import Any

import zmq

from corral.transports.zmq.frames import NOBLOCK, recv_frames, send_frames
from corral.transports.zmq.gate import Gate
from corral.transports.zmq.ipc import Claims
from corral.transports.zmq.keyfile import endpoint

__all__ = [
    "NOBLOCK",
    "Component",
    "ControlPipe",
    "bind_random",
    "control_pipe",
    "endpoint",
    "make_socket",
    "read_control",
    "ready_topic",
    "recv_frames",
    "send_frames",
    "wait_readable",
]

log = logging.getLogger("corral.plugins.parallel.controller")

STOP = "stop"


# The hot loops send and receive through corral.transports.zmq.frames (pyzmq's Cython
# layer, called directly): received frames are forwarded by reference, the small bytes a
# queue adds (routing ids, monitor tags) are copied.


_decode = json.JSONDecoder().decode  # json.loads minus its wrapper and encoding sniffing


def loads_dict(raw: bytes) -> dict[str, Any] | None:
    """A message part (UTF-8 JSON, as the protocol says) parsed as a JSON object, or None
    (garbage is dropped, not raised)."""
    try:
        value = _decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if value.__class__ is dict else None


#: Messages handled from one socket before the loop looks at the others again.
DRAIN_BATCH = 256


def drain(
    sock: zmq.Socket[Any],
    handler: Any,
    what: str,
    enough: Callable[[list[Any]], bool] | None = None,
) -> None:
    """Handle up to :data:`DRAIN_BATCH` waiting messages from ``sock``; one that raises is
    logged and dropped, because one bad message must never stop a component.
    ``enough(frames)``, asked after each message, ends the pass early when true (flow
    control: one pass must not pull a gigabyte of results in)."""
    for _ in range(DRAIN_BATCH):
        try:
            frames = recv_frames(sock, NOBLOCK)
        except zmq.Again:
            return
        try:
            handler(frames)
        except Exception:
            log.exception("%s: error while handling a message; dropped", what)
        if enough is not None and enough(frames):
            return


def ready_topic(queue: str) -> bytes:
    """The subscription a queue adds to the hub's ``notification`` feed after its real
    ones, to tell the hub they are in force.

    The hub holds registrations and beats back until every queue's marker has arrived:
    an engine that registers before a queue subscribed would be announced to nobody,
    and that queue would refuse its tasks as "no such engine" for good. That happens
    when a controller is restarted, because the engines of the dead one reconnect (and
    re-register) as soon as the new hub binds. Subscriptions on one connection arrive
    in order, so the marker proves the topics before it. No published message starts
    with a NUL byte: the marker matches nothing.
    """
    return b"\x00corral-queue-subscribed:" + queue.encode("ascii")


def make_socket(
    ctx: zmq.Context[Any],
    kind: int,
    *,
    unlimited: bool = False,
    gate: Gate | None = None,
    connects: bool = False,
) -> zmq.Socket[Any]:
    """A socket with linger 0; ``unlimited`` lifts the high-water marks.

    Routing sockets are unlimited: a ROUTER at its high-water mark silently drops (or,
    with ``ROUTER_MANDATORY``, blocks), and either would lose or stall tasks. With a
    ``gate`` the socket admits (or, ``connects``, presents) the cluster's credentials,
    so no peer without the key completes a handshake (corral.transports.zmq.gate).
    """
    sock = ctx.socket(kind)
    sock.linger = 0
    if gate is not None:
        if connects:
            gate.client(sock)
        else:
            gate.server(sock)
    if unlimited:
        sock.sndhwm = 0
        sock.rcvhwm = 0
    return sock


def bind_random(
    sock: zmq.Socket[Any],
    transport: str,
    ip: str,
    preferred: int = 0,
    claims: Claims | None = None,
) -> int:
    """Bind ``sock`` to a port the OS picks (tcp), or to the first ``<ip>-<n>`` Unix
    socket path this process can claim (ipc: ``ip`` is a path prefix in an owner-only
    directory; claims in ``claims``, see corral.transports.zmq.ipc); returns the port or
    ``n``.

    ``preferred`` is bound if free: a controller restarted on a cluster whose engines
    outlived it takes the old ports (or paths), so the engines' sockets reconnect by
    themselves and the replies they held meanwhile go out on their own.
    """
    if transport == "ipc":
        n = (claims if claims is not None else Claims()).bind(sock, ip, preferred)
        if preferred and n != preferred:
            log.warning(
                "endpoint %d of the previous controller is taken; engines that outlived "
                "it cannot reconnect to this socket",
                preferred,
            )
        return n
    if transport != "tcp":
        raise ValueError(f"transport {transport!r} is not supported by the controller (tcp, ipc)")
    if preferred:
        try:
            sock.bind(endpoint(transport, ip, preferred))
            return preferred
        except zmq.ZMQError as exc:
            log.warning(
                "endpoint %d of the previous controller is taken (%s); engines that outlived "
                "it cannot reconnect to this socket",
                preferred,
                exc,
            )
    return sock.bind_to_random_port(f"tcp://{ip}")


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` readable (or at EOF) within ``timeout`` seconds (None: no limit).

    ``poll``, not ``select``: a controller in threads mode lives in someone else's process,
    where descriptors may be numbered past select's limit of 1024. Windows has no
    ``poll`` on pipes: there (and in ``CORRAL_PLATFORM_COMPAT=windows`` mode) it is
    :func:`multiprocessing.connection.wait`, which takes sockets, handles and
    connections.
    """
    from corral.core import compat

    if compat.WINDOWS_MODE:
        from multiprocessing.connection import wait

        return list(wait(fds, timeout))  # type: ignore[arg-type]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _ in poller.poll(ms)]


class ControlPipe:
    """One end of a two-way control pipe between a supervisor and a component.

    Each message is a 4-byte length and a pickle, written whole and read exactly, so
    nothing is ever buffered here: the descriptor's readiness (what :meth:`fileno` gives a
    poller) is the whole truth about what is waiting. The messages are a few small Python
    values (ports, the cluster description, :data:`STOP`) between processes of one
    controller, so pickle is safe, and it is imported by pyzmq anyway.
    """

    __slots__ = ("_rfd", "_wfd")

    def __init__(self, rfd: int, wfd: int) -> None:
        self._rfd = rfd
        self._wfd = wfd

    def fds(self) -> tuple[int, int]:
        """Both descriptors: a forked sibling must close them, or it holds the pipe open."""
        return self._rfd, self._wfd

    def fileno(self) -> int:
        """The descriptor to poll: readable when a message (or EOF) waits."""
        if self._rfd < 0:
            raise OSError("the control pipe is closed")
        return self._rfd

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(4, "big") + data)
        while view:
            view = view[os.write(self._wfd, view) :]

    def recv(self) -> Any:
        """The next message; blocks until it is there. ``EOFError`` once the other end is
        closed (as with multiprocessing)."""
        return pickle.loads(self._read(int.from_bytes(self._read(4), "big")))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.fileno(), size)
            if not chunk:
                raise EOFError("the control pipe was closed at the other end")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or EOF) waits, after up to ``timeout`` seconds (None: no limit)."""
        return bool(wait_readable([self.fileno()], timeout))

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1


def control_pipe() -> tuple[ControlPipe, ControlPipe]:
    """Two connected ends: what one sends the other receives."""
    a_reads, b_writes = os.pipe()
    b_reads, a_writes = os.pipe()
    return ControlPipe(a_reads, a_writes), ControlPipe(b_reads, b_writes)


def read_control(conn: ControlPipe) -> list[Any] | None:
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
    #: messages dropped (malformed, forged, or failing their handler)
    dropped = 0
    #: where the component binds
    transport = "tcp"
    ip = "127.0.0.1"
    #: ``{cluster file field: port}`` to bind again (a restart of a crashed controller)
    preferred: dict[str, int] = {}  # noqa: RUF012 - replaced, never mutated

    #: the ipc paths this component claimed (released by :meth:`release`)
    claims: Claims | None = None

    def bind_port(self, sock: zmq.Socket[Any], field: str) -> int:
        """Bind ``sock`` for the cluster file field ``field``; the port."""
        if self.claims is None:
            self.claims = Claims()
        return bind_random(sock, self.transport, self.ip, self.preferred.get(field, 0), self.claims)

    def release(self) -> None:
        """Give up the ipc paths this component claimed (its sockets are closed)."""
        if self.claims is not None:
            self.claims.release()

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        """Create and bind this component's sockets; ``{cluster file field: port}``."""
        raise NotImplementedError

    def serve(self, control: ControlPipe) -> None:
        """Run until ``control`` says stop (or closes); then close every socket."""
        raise NotImplementedError

    def configure(self, message: Any) -> None:
        """Handle a non-stop message from the supervisor (the hub gets the cluster info)."""
        log.debug("%s ignores control message %r", self.name, message)

    def isolated(self, handler: Callable[[Any], None], message: Any) -> None:
        """``handler(message)`` for one message of a batch: one that raises is logged and
        dropped alone, not with the rest of its batch (:func:`drain` guards whole zmq
        messages the same way)."""
        try:
            handler(message)
        except Exception:
            self.dropped += 1
            log.exception("%s: error while handling a message; dropped", self.name)
