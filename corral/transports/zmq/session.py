"""A session: one peer's identity on the wire, and the thin I/O shell around :mod:`wire`.

The pure functions in :mod:`corral.transports.zmq.wire` build, sign and check frames; a
:class:`Session` binds them to sockets with one signer, one replay guard and one session
id, and turns every bad incoming message into a logged drop instead of an exception, so a
server loop stays a plain ``msg = session.recv(sock)`` / ``if msg is None: continue``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import zmq

from . import wire
from .door import DEST, RUN, Role, deserialize

__all__ = ["Session"]

log = logging.getLogger("corral.transports.zmq.session")

#: Above this many bytes of buffers, frames are handed to zmq without a copy.
_ZERO_COPY_THRESHOLD = 64 * 1024


class Session:
    """Signs and sends, receives and verifies messages for one participant.

    ``max_size`` bounds what :meth:`recv` parses (None: unbounded). ``replay`` is shared by
    every channel of the participant; it is only consulted when signing is enabled.
    """

    def __init__(
        self,
        key: bytes,
        *,
        scheme: str = "hmac-sha256",
        session_id: str | None = None,
        username: str = "corral",
        max_size: int | None = None,
        replay: wire.ReplayGuard | None = None,
        signer: wire.Signer | None = None,
    ) -> None:
        self.signer = signer if signer is not None else wire.Signer(key, scheme)
        self.session_id = session_id or wire.new_id()
        self.username = username
        self.max_size = max_size
        self.replay = replay if replay is not None else wire.ReplayGuard()
        self.dropped = 0

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        dest: str | None = None,
        run: str | None = None,
    ) -> dict[str, Any]:
        """A message from this session (not sent); ``dest``: where a cluster request may
        be admitted, signed in its header (corral.transports.zmq.door.dest_of); ``run``:
        the controller run a request to the hub or a queue is for (door.RUN)."""
        msg = wire.make_message(
            msg_type,
            content,
            session=self.session_id,
            parent=parent,
            metadata=metadata,
            buffers=buffers,
            username=self.username,
        )
        if dest is not None:
            msg["header"][DEST] = dest
        if run is not None:
            msg["header"][RUN] = run
        return msg

    def send(
        self,
        socket: zmq.Socket[Any],
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        *,
        identities: Sequence[bytes] = (),
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        dest: str | None = None,
        run: str | None = None,
    ) -> dict[str, Any]:
        """Build, sign and send a message; returns it (for its ``msg_id``)."""
        msg = self.msg(msg_type, content, parent, metadata, buffers, dest, run)
        self.send_msg(socket, msg, identities)
        return msg

    def send_msg(
        self, socket: zmq.Socket[Any], msg: dict[str, Any], identities: Sequence[bytes] = ()
    ) -> None:
        """Sign and send an already built message."""
        frames = wire.serialize(msg, self.signer, identities)
        buffers = msg.get("buffers") or ()
        big = sum(memoryview(b).nbytes for b in buffers) > _ZERO_COPY_THRESHOLD
        socket.send_multipart(frames, copy=not big)

    def recv(
        self, socket: zmq.Socket[Any], flags: int = 0
    ) -> tuple[list[bytes], dict[str, Any]] | None:
        """``(identities, msg)`` of the next message, or None if it was bad and dropped.

        Raises ``zmq.Again`` with ``flags=zmq.NOBLOCK`` when nothing is waiting.
        """
        frames = socket.recv_multipart(flags)
        return self.parse(frames)

    def parse(
        self, frames: Sequence[bytes], role: Role | None = None, dest: str | None = None
    ) -> tuple[list[bytes], dict[str, Any]] | None:
        """Verify and decode received frames through the door (``role``: what the
        receiving socket accepts; ``dest``: its signed destination); a bad message is
        logged and gives None."""
        try:
            return deserialize(frames, self.signer, self.replay, self.max_size, role, dest)
        except wire.WireError as exc:
            self.dropped += 1
            log.warning("dropped a message of %d frames: %s", len(frames), exc)
            return None
