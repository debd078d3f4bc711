"""Replies on the way out of an engine: held to leave in batches, tracked, kept.

Three jobs, one owner of the queue sockets' outgoing side:

* **batching** — a reply made only of ``bytes`` cannot change, so it may wait up to
  ``HOLD`` seconds for the replies to the next queued tasks and leave with them as one
  batch (:mod:`corral.transports.zmq.batch`): a burst of tiny tasks then costs the
  controller one wake-up per batch, not one per task. The main thread flushes between
  tasks; while user code runs a flusher thread sends what waited too long, taking the
  socket lock only then, so two threads never use a socket at once.
* **zero-copy tracking** — a big buffer is sent as a view onto the user's object; the
  next task might modify it while libzmq still reads it, so :meth:`settle` waits first.
* **a reply log** — replies are kept for a while, so a controller that died before it
  stored them gets them again once restarted (replies are idempotent: same msg_id).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from corral.transports.zmq.batch import pack_batches

from ._wire import send_frames

__all__ = ["HOLD", "HOLD_MAX", "ReplyHold"]

log = logging.getLogger("corral.parallel.engine")

#: Replies to queued tasks wait at most this long (seconds) to leave as one batch ...
HOLD = 0.002
#: ... or until this many are waiting.
HOLD_MAX = 64
#: At most this many recent replies are kept for a restarted controller.
_LOG_MAX = 100_000


class ReplyHold:
    """Held replies of one engine. ``lock`` guards the queue sockets; ``executing`` says
    whether user code runs (only then may the flusher thread take the lock); ``window``
    is how long (seconds) a reply is kept in the log."""

    def __init__(self, lock: threading.Lock, executing: Callable[[], bool], window: float):
        self.lock = lock
        self._executing = executing
        self.window = window
        #: (socket, frames) waiting to leave, and since when the first of them waits.
        self.held: list[tuple[Any, list[Any]]] = []
        self.since = 0.0
        #: Trackers of zero-copy frames still being sent.
        self.in_flight: list[zmq.MessageTracker] = []
        #: (monotonic time sent, socket, frames, msg_id) of recent replies.
        self.log: deque[tuple[float, Any, list[Any], str]] = deque()
        self.closed = False
        self._event = threading.Event()

    def hold(self, sock: Any, frames: list[Any], msg_id: str) -> None:
        """Keep an all-bytes reply to leave with the next ones (or now, if due)."""
        held = self.held
        now = time.monotonic()
        log_ = self.log
        log_.append((now, sock, frames, msg_id))
        horizon = now - self.window
        while log_[0][0] < horizon or len(log_) > _LOG_MAX:
            log_.popleft()
        if not held:
            self.since = now
            self._event.set()
        held.append((sock, frames))
        if len(held) >= HOLD_MAX or now - self.since >= HOLD:
            self.flush()

    def send_now(self, sock: Any, frames: list[Any]) -> None:
        """Send a reply that cannot wait (a view onto user memory), after the held ones."""
        if self.held:
            self.flush()
        send_frames(sock, frames)

    def flush(self) -> None:
        """Send the held replies, each socket's as one batch (caller holds the lock)."""
        held, self.held = self.held, []
        self._event.clear()
        by_sock: dict[Any, list[list[Any]]] = {}
        for sock, frames in held:
            by_sock.setdefault(sock, []).append(frames)
        for sock, replies in by_sock.items():
            for message in pack_batches((), replies, HOLD_MAX):
                send_frames(sock, message)

    def track(self, buffers: list[Any] | tuple[Any, ...]) -> list[Any]:
        """``buffers`` (pickle data, then out-of-band buffers) with the out-of-band ones
        as tracked zero-copy frames."""
        tracked = [buffers[0]]
        for buf in buffers[1:]:
            tracked.append(zmq.Frame(buf, track=True))
        self.in_flight.append(zmq.MessageTracker(*tracked[1:]))
        return tracked

    def settle(self) -> None:
        """Wait until earlier zero-copy replies no longer read user memory."""
        if self.held:  # this may take long: held replies must not wait for it
            self.flush()
        pending = [t for t in self.in_flight if not t.done]
        self.in_flight = []
        for tracker in pending:
            try:
                tracker.wait(60.0)
            except zmq.NotDone:
                log.warning("a large reply is still being sent after 60 s; going on")

    def sent_since(self, since: float) -> list[tuple[Any, list[Any], str]]:
        """The kept replies sent at or after ``since``: (socket, frames, msg_id)."""
        return [(sock, frames, m) for sent, sock, frames, m in list(self.log) if sent >= since]

    def resend(self, since: float) -> int:
        """Send again every kept reply sent since ``since``; returns how many."""
        again = self.sent_since(since)
        if again and self.held:
            self.flush()
        for sock, frames, _ in again:
            send_frames(sock, frames)
        return len(again)

    def start_flusher(self) -> threading.Thread:
        """Start the thread that sends replies held too long while user code runs."""
        thread = threading.Thread(target=self._flush_late, name="corral-engine-replies")
        thread.daemon = True
        thread.start()
        return thread

    def close(self) -> None:
        """End the flusher thread (it sees ``closed`` when woken)."""
        self.closed = True
        self._event.set()

    def _flush_late(self) -> None:
        event, lock = self._event, self.lock
        while True:
            event.wait()
            if self.closed:
                return
            time.sleep(HOLD)
            # Between tasks the main thread flushes (when due, before a long wait, and
            # before it idles): try only while user code runs, and never queue on the
            # lock (that would hand it over at every task of a burst).
            if not self._executing() or not lock.acquire(blocking=False):
                continue
            try:
                if self.closed:
                    return
                if self.held and time.monotonic() - self.since >= HOLD:
                    self.flush()
            except zmq.ZMQError as exc:
                log.warning("could not send held replies: %s", exc)
            finally:
                lock.release()
