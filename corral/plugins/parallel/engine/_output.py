"""Engine output: the interpreter's notifications turned into iopub messages.

The engine observes its interpreter with the same :class:`OutputRelay` as the kernel
server (:mod:`corral.transports.zmq.relay`), parented to the task being served. Two
things differ, hence this adapter:

* every engine message carries ``{"engine_id": id}`` as metadata, stream text included.
  :class:`~corral.transports.zmq.iopub.IOPubPublisher` sends coalesced stream text with
  empty metadata and has no option for it, so :class:`EngineIOPub` overrides its one send
  method. (A ``default_metadata`` argument on ``IOPubPublisher`` would be the cleaner hook.)
* apply tasks call user functions directly, not through ``Interpreter.execute``, so no one
  swaps ``sys.stdout``/``sys.stderr`` for them. :func:`install_streams` installs posting
  streams once, for the life of the engine (the interpreter's own per-cell swap restores
  them afterwards), which costs nothing per task.

This file is listed among the places a SIGINT must not tear (see the engine's handler).
"""

from __future__ import annotations

import sys
from typing import Any

import zmq

from corral.core.iostreams import PostingStream
from corral.transports.zmq.iopub import IOPubPublisher
from corral.transports.zmq.relay import OutputRelay
from corral.transports.zmq.session import Session

__all__ = ["EngineIOPub", "OutputRelay", "install_streams"]


class EngineIOPub(IOPubPublisher):
    """An IOPub publisher that stamps every message with the engine's metadata.

    ``sent`` counts published messages, so the engine can tell whether a task produced
    output at all (and only then announce ``status: idle`` for it).
    """

    def __init__(self, session: Session, socket: zmq.Socket[Any], metadata: dict[str, Any]) -> None:
        self.default_metadata = metadata
        self.sent = 0
        super().__init__(session, socket)

    def _send_locked(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> None:
        self.sent += 1
        super()._send_locked(
            msg_type,
            content,
            parent,
            self.default_metadata if metadata is None else metadata,
            buffers,
        )


def install_streams(center: Any, sender: Any) -> tuple[Any, Any]:
    """Point ``sys.stdout``/``sys.stderr`` at posting streams; returns the old pair."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PostingStream(center, sender, "stdout")
    sys.stderr = PostingStream(center, sender, "stderr")
    return saved
