"""The IOPub publisher: one PUB socket shared by every thread, with stream coalescing.

Who publishes: the shell thread (status, execute_input, results, errors), the control
thread (status around its requests), and any thread of user code that prints. ZeroMQ
sockets are not thread-safe, so every send happens under one lock. That is cheaper than a
hand-off to a publisher thread (no wake-up per message, no queue) and keeps a simple
guarantee: messages leave in the order their ``publish`` calls took the lock.

Stream text is coalesced: ``write`` only appends to a buffer; the buffer becomes one
``stream`` message when it grows past ``max_chunk`` bytes, when a small flusher thread
finds it older than ``interval`` seconds, before any other message is published (so
output never overtakes the text printed before it), and on an explicit :meth:`flush`
(the kernel flushes before every ``status: idle``). 100k ``print`` calls therefore cost
100k list appends and a few dozen messages, and never block on the network: PUB sends
only enqueue.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from .session import Session

__all__ = ["IOPubPublisher"]

log = logging.getLogger("corral.transports.zmq.iopub")


class IOPubPublisher:
    """Publishes kernel output on ``socket`` (a bound PUB) through ``session``.

    ``metadata`` is sent with every message that names none, stream text included (an
    engine stamps its id on all its output). :attr:`sent` counts the messages sent, so a
    server can tell whether a request produced output at all.
    """

    def __init__(
        self,
        session: Session,
        socket: zmq.Socket[Any],
        *,
        interval: float = 0.05,
        max_chunk: int = 64 * 1024,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.session = session
        self.default_metadata = metadata
        self.sent = 0
        self.socket = socket
        self.interval = interval
        self.max_chunk = max_chunk
        self._lock = threading.RLock()
        # The pending stream: (name, parent) and its text pieces.
        self._stream_key: tuple[str, dict[str, Any] | None] | None = None
        self._chunks: list[str] = []
        self._size = 0
        self._pending = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_loop, name="corral-iopub", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ public

    def publish(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> None:
        """Send one message, after any stream text written before it."""
        with self._lock:
            if self._chunks:
                self._flush_locked()
            if buffers:  # only comms send buffers; subclasses may not take the argument
                self._send_locked(msg_type, content, parent, metadata, buffers=buffers)
            else:
                self._send_locked(msg_type, content, parent, metadata)

    def write(self, name: str, text: str, parent: dict[str, Any] | None) -> None:
        """Queue stream text; it is sent soon, in order, merged with its neighbours."""
        with self._lock:
            key = (name, parent)
            if self._stream_key is not None and (
                self._stream_key[0] != name or self._stream_key[1] is not parent
            ):
                self._flush_locked()
            self._stream_key = key
            self._chunks.append(text)
            self._size += len(text)
            if self._size >= self.max_chunk:
                self._flush_locked()
                return
        if not self._pending.is_set():
            self._pending.set()

    def flush(self) -> None:
        """Send any buffered stream text now."""
        if self._chunks:
            with self._lock:
                self._flush_locked()

    def close(self) -> None:
        """Flush and stop the flusher thread (the socket is closed by its owner)."""
        self.flush()
        self._closed = True
        self._pending.set()
        self._flusher.join(1.0)

    # --------------------------------------------------------------- internals

    def _send_locked(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> None:
        if self._closed:
            return
        self.sent += 1
        if metadata is None:
            metadata = self.default_metadata
        try:
            self.session.send(
                self.socket, msg_type, content, parent, metadata=metadata, buffers=buffers or ()
            )
        except zmq.ZMQError as exc:
            log.error("could not publish %s: %s", msg_type, exc)

    def _flush_locked(self) -> None:
        if not self._chunks or self._stream_key is None:
            return
        name, parent = self._stream_key
        text = "".join(self._chunks)
        self._chunks = []
        self._size = 0
        self._stream_key = None
        self._send_locked("stream", {"name": name, "text": text}, parent)

    def _flush_loop(self) -> None:
        # Wake when text is waiting, give it `interval` to accumulate, send it.
        while not self._closed:
            self._pending.wait()
            if self._closed:
                return
            time.sleep(self.interval)
            self._pending.clear()
            self.flush()
