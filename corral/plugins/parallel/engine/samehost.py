"""Same-host clients: calls over the engine's Unix socket, copied to the hub's monitor.

A client on the engine's host may skip the controller and call the engine over a Unix
stream socket (:mod:`.local`); the reply goes straight back. The hub still keeps every
task's record, so the engine sends it a copy of each request's JSON parts and of each
reply on a PUSH socket. The copies wait (up to ``_MONITOR_DELAY``, or ``_MONITOR_BATCH``
of them) to leave in batches: a busy caller then costs the hub one wake-up per batch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import zmq

from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches

from ._wire import ROLES, Message, parse_message, send_frames
from .local import LocalConnection, open_endpoint
from .replies import HOLD_MAX

_REQUESTS = ROLES["engine_requests"]

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["SameHostClients"]

log = logging.getLogger("corral.parallel.engine")

_POLLIN = int(zmq.POLLIN)
#: Monitor copies of same-host calls are sent at most this late (seconds) ...
_MONITOR_DELAY = 0.02
#: ... or once this many are waiting.
_MONITOR_BATCH = 128


class SameHostClients:
    """``engine``'s Unix endpoint, its connections and the monitor copies of their calls."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.endpoint: Any = None
        self.conns: dict[int, LocalConnection] = {}
        self.monitor: zmq.Socket[Any] | None = None
        #: Monitor copies waiting for their batch, and when that batch is due.
        self.queue: list[list[Any]] = []
        self.due: float | None = None
        self._poller: zmq.Poller | None = None

    @property
    def path(self) -> str | None:
        """Where same-host clients connect (None: no endpoint)."""
        return self.endpoint.path if self.endpoint is not None else None

    def open(self, context: zmq.Context[Any], gate: Any, monitor_url: str, linger: int) -> None:
        """Open the endpoint and, if that worked, the monitor socket to the hub."""
        self.endpoint = open_endpoint(self.engine.uuid)
        if self.endpoint is None:
            return
        self.monitor = gate.client(context.socket(zmq.PUSH))
        self.monitor.linger = linger
        self.monitor.sndhwm = 0
        self.monitor.connect(monitor_url)

    def attach(self, poller: zmq.Poller) -> None:
        """Have the main loop's ``poller`` watch the endpoint (and later, connections)."""
        self._poller = poller
        if self.endpoint is not None:
            poller.register(self.endpoint.fd, _POLLIN)

    def serve(self, fd: int) -> None:
        """A connection is readable, or one is waiting to be accepted."""
        engine = self.engine
        if fd == self.endpoint.fd:
            for conn in self.endpoint.accept():
                self.conns[conn.fd] = conn
                if self._poller is not None:
                    self._poller.register(conn.fd, _POLLIN)
            return
        conn = self.conns.get(fd)
        if conn is None:
            return
        try:
            messages = conn.read()
        except (OSError, ValueError, MemoryError) as exc:  # closed, reset, garbage, or a
            # size announced (up to 1 GiB, before any signature) that cannot be had
            if not isinstance(exc, ConnectionError):
                engine.dropped += 1
                log.warning("closing a local connection: %s", exc)
            self.drop(conn)
            return
        for frames in messages:
            try:
                msg = parse_message(
                    frames, engine.signer, engine.direct_replay, _REQUESTS, engine.direct_dest
                )
            except wire.WireError as exc:
                engine.refuse(conn, exc, "the local socket")
                continue
            conn.request_frames = frames
            engine._serve_message(conn, msg)
            conn.request_frames = []

    def drop(self, conn: LocalConnection) -> None:
        self.conns.pop(conn.fd, None)
        if self._poller is not None:
            try:
                self._poller.unregister(conn.fd)
            except KeyError:
                pass
        conn.close()

    def send(self, conn: LocalConnection, msg: Message, frames: list[Any]) -> None:
        """Reply over the local socket, then copy request and reply to the hub's monitor
        (after the reply: the client is not kept waiting for the bookkeeping)."""
        try:
            conn.send(frames)
        except OSError as exc:  # the client went away (or stopped reading): its loss
            log.warning("could not reply to a local client: %s", exc)
            self.drop(conn)
        if self.monitor is None or not conn.request_frames:
            return
        ident = self.engine.ident
        client = str(msg.header.get("session", "")).encode("utf-8", "replace")
        queue = self.queue
        # The request's JSON parts only (as the queues send them: the hub stores no
        # request buffers), the reply whole (its buffers are the stored result).
        request, tag = conn.request_frames, self.engine.signer.monitor_tag
        queue.append([tag(b"request", ident, client, request[1]), ident, client])
        queue[-1].extend(request[:6])
        queue.append([tag(b"reply", ident, client, frames[1]), ident, client, *frames])
        # Copies that are all bytes cannot change: they wait for the next batch. Any
        # other frame is a view onto memory the next task may write: send now.
        if len(queue) >= _MONITOR_BATCH or not all(type(f) is bytes for f in frames):
            self.flush()
        elif self.due is None:
            self.due = time.monotonic() + _MONITOR_DELAY

    def flush(self) -> None:
        """Send the queued monitor copies to the hub, in batches."""
        queue, self.queue = self.queue, []
        self.due = None
        if self.monitor is None:
            return
        for message in pack_batches((), queue, HOLD_MAX):
            send_frames(self.monitor, message)

    def close(self) -> None:
        """Close every connection and the endpoint (the monitor socket: :meth:`sockets`)."""
        for conn in list(self.conns.values()):
            conn.close()
        self.conns.clear()
        if self.endpoint is not None:
            self.endpoint.close()

    def sockets(self) -> list[zmq.Socket[Any]]:
        """The zmq sockets the engine closes with its own."""
        return [self.monitor] if self.monitor is not None else []
