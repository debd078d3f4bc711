"""The client's one I/O thread: it alone touches the client's sockets.

ZeroMQ sockets are not thread-safe, and a client is used from many threads (the user's,
executor callers, asyncio loops). So every socket lives in this thread. Other threads
hand it work through a deque and wake it with one byte on an inproc socket, and only when
it may be asleep: while it is busy, a thousand submissions cost a thousand deque appends
and no system call. Incoming messages are drained in batches (``NOBLOCK`` until a socket
is empty) and handed, still as frames, to the client's handler, which parses them and
resolves results in this same thread.

Requests queued back to back for one queue (``mux``, ``task``, ``broadcast``) leave as
one batch (:mod:`corral.transports.zmq.batch`), and batches of replies are unpacked
here, so a burst costs one zmq message per batch, not per task.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from corral.transports.zmq.batch import BatchError, is_batch, pack_batches, unbatch
from corral.transports.zmq.chunkstream import stall_clock, stream_large_frames
from corral.transports.zmq.frames import NOBLOCK, recv_frames, send_frames

__all__ = ["ClientIO", "recv_frames", "send_frames"]

log = logging.getLogger("corral.plugins.parallel.client.io")

#: How many messages one socket may deliver before the others (and the outbox) get a turn.
_BATCH = 2048
#: Queued messages beyond which a submitting thread waits for the I/O thread to send.
OUTBOX_HIGH_WATER = 256
#: Channels whose far end (a controller queue) reads batches.
BATCH_CHANNELS = frozenset(["mux", "task", "broadcast"])
#: At most this many requests go out as one batch.
SEND_BATCH = 64

Handler = Callable[[str, list[Any]], None]


class ClientIO:
    """Owns the sockets; sends what other threads queue, feeds replies to ``handler``.

    ``handler(channel, frames)`` runs in the I/O thread for every incoming message; it
    must not block. Sockets are added with :meth:`add_socket` (thread-safe: it runs the
    creation in the I/O thread once that is running).
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        handler: Handler,
        identity: bytes,
        secure: Callable[[zmq.Socket[Any]], Any] | None = None,
    ) -> None:
        self.context = context
        self.handler = handler
        self.identity = identity
        #: Applied to every socket before it connects (the cluster gate's credentials).
        self.secure = secure
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._channel_of: dict[zmq.Socket[Any], str] = {}
        #: channel -> the address its socket connects to (for messages about it)
        self.urls: dict[str, str] = {}
        #: sockets whose large frames come as streams (data channels): see _stalled_wait
        self._streamed: dict[zmq.Socket[Any], tuple[str, Callable[[], float | None]]] = {}
        #: monitor PAIR socket -> the channel whose disconnections it reports
        self._monitors: dict[zmq.Socket[Any], str] = {}
        #: channels whose disconnection goes to on_disconnect (watch_ms > 0)
        self._watched: set[str] = set()
        #: monitor -> the event that is set while its socket has a connection up
        self._up: dict[zmq.Socket[Any], threading.Event] = {}
        #: called in this thread with a channel's name when its connection went away: a
        #: watched channel's, or one with an ``up`` event (an engine's data channel,
        #: whose requests in flight then have no way to be answered)
        self.on_disconnect: Callable[[str], None] | None = None
        #: called in this thread with the exception that is ending it: every reply would
        #: come through here, so whoever waits for one must be told instead
        self.on_crash: Callable[[BaseException], None] | None = None
        #: LINGER (ms) the sockets are closed with: 0 drops unsent messages at once;
        #: ``Client.close(linger=...)`` sets it, as ipyparallel's does
        self.close_linger = 0
        #: the sockets were closed by abandon(): sends are dropped quietly
        self._abandoned = False
        self._poller = zmq.Poller()
        self._outbox: deque[tuple[str | None, Any, bool]] = deque()
        self._nocopy: set[str] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._idle = False
        self._wake_lock = threading.Lock()
        endpoint = f"inproc://corral-client-wake-{id(self):x}-{time.monotonic_ns():x}"
        self._wake_rx = context.socket(zmq.PAIR)
        self._wake_rx.bind(endpoint)
        self._wake_tx = context.socket(zmq.PAIR)
        self._wake_tx.connect(endpoint)
        self._poller.register(self._wake_rx, zmq.POLLIN)
        self._drained = threading.Event()
        self._running = False
        #: run in this thread after it closed its sockets (see :meth:`finish_with`)
        self._at_exit: Callable[[], None] | None = None
        self._ended = False
        self._exit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="corral-client-io", daemon=True)
        self.sent = 0
        self.received = 0

    # --------------------------------------------------------- any thread

    def start(self) -> None:
        self._running = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def send(self, channel: str, frames: list[Any], copy: bool = True) -> None:
        """Queue ``frames`` for the socket ``channel``.

        Returns at once, unless :data:`OUTBOX_HIGH_WATER` messages are already waiting:
        then the caller pauses until the I/O thread has sent them. A thread submitting
        in a tight loop would otherwise keep the GIL from the I/O thread (which gives it
        up at every zmq call), so the engines would get no work until submission ended.
        """
        outbox = self._outbox
        outbox.append((channel, frames, copy))
        if self._idle:
            self._wake()
        elif len(outbox) >= OUTBOX_HIGH_WATER and self._running:
            drained = self._drained
            drained.clear()
            if len(outbox) >= OUTBOX_HIGH_WATER and threading.current_thread() is not self._thread:
                drained.wait(0.5)

    def call_soon(self, func: Callable[[], None]) -> None:
        """Run ``func()`` in the I/O thread (after what is already queued)."""
        self._outbox.append((None, func, True))
        if self._idle:
            self._wake()

    def call_later(self, delay: float, func: Callable[[], None]) -> None:
        """Run ``func()`` in the I/O thread after ``delay`` seconds."""
        when = time.monotonic() + delay
        self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._timer_seq), func)))

    def add_socket(
        self,
        channel: str,
        kind: int,
        url: str,
        subscribe: bytes | tuple[bytes, ...] | None = None,
        copy: bool = True,
        watch_ms: int = 0,
        stream: bool = False,
        up: threading.Event | None = None,
    ) -> None:
        """Create and connect a socket named ``channel`` (in the I/O thread if running).

        ``subscribe``: the topic (or topics) a SUB socket subscribes.

        ``copy=False`` receives zmq frames instead of bytes: for the direct data path,
        where a 50 MB buffer should become an array without another copy.

        ``stream=True`` (an engine's data channel: one peer) sends and receives large
        frames on Curve as streams of chunks (corral.transports.zmq.chunkstream).

        ``watch_ms`` > 0 reports the peer's loss to :attr:`on_disconnect`: at once when
        its process dies (the connection closes), and after ``2 * watch_ms`` of silence
        when its host does (libzmq's own ZMTP heartbeats, answered without Python).

        ``up`` is set once a connection has completed its handshake, and cleared while
        it is down: whoever may route around this socket (an engine's data channel,
        which a firewall or NAT can keep from ever connecting while the engine serves
        the queues) sees whether a message sent now would go anywhere. Its losses go to
        :attr:`on_disconnect` too (without heartbeats: only a connection that closes).
        """
        if not copy:
            self._nocopy.add(channel)
        if self._running and threading.current_thread() is not self._thread:
            self.call_soon(
                lambda: self._add_socket(channel, kind, url, subscribe, watch_ms, stream, up)
            )
        else:
            self._add_socket(channel, kind, url, subscribe, watch_ms, stream, up)

    def subscription(self, channel: str, topic: bytes, on: bool) -> None:
        """Subscribe the SUB socket ``channel`` to ``topic``, or unsubscribe it (in the
        I/O thread, after what is already queued)."""

        def apply() -> None:
            sock = self._sockets.get(channel)
            if sock is not None:
                sock.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, topic)

        self.call_soon(apply)

    def has_socket(self, channel: str) -> bool:
        return channel in self._sockets

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued, stop the thread and close every socket."""
        if not self._running:
            self._close_sockets()
            return
        self._running = False
        self._wake(force=True)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def finish_with(self, func: Callable[[], None]) -> bool:
        """Have this thread call ``func()`` once it has closed its sockets.

        For :meth:`stop` that timed out (a callback that blocks, or a machine too busy to
        schedule the thread): closing the sockets from another thread while this one
        polls them can crash the process inside libzmq, so the thread that owns them
        finishes the job. False if the thread has already ended: the caller runs
        ``func`` itself.
        """
        with self._exit_lock:
            if self._ended or not self._thread.is_alive():  # ended, or never started
                return False
            self._at_exit = func
            return True

    def _wake(self, force: bool = False) -> None:
        with self._wake_lock:
            if self._idle or force:
                self._idle = False
                try:
                    self._wake_tx.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:  # closed, or the pipe is full: the thread is awake
                    pass

    # --------------------------------------------------------- I/O thread

    def _add_socket(
        self,
        channel: str,
        kind: int,
        url: str,
        subscribe: bytes | tuple[bytes, ...] | None,
        watch_ms: int = 0,
        stream: bool = False,
        up: threading.Event | None = None,
    ) -> None:
        if channel in self._sockets:
            return
        sock = self.context.socket(kind)
        if stream:
            stream_large_frames(sock)
        if self.secure is not None:
            self.secure(sock)
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        if kind == zmq.DEALER:
            sock.identity = self.identity
        for topic in (subscribe,) if isinstance(subscribe, bytes) else subscribe or ():
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if watch_ms > 0:
            sock.heartbeat_ivl = watch_ms
            sock.heartbeat_timeout = 2 * watch_ms
            self._watched.add(channel)
        if watch_ms > 0 or up is not None:
            events = zmq.EVENT_DISCONNECTED
            if up is not None:
                events |= zmq.EVENT_HANDSHAKE_SUCCEEDED
            monitor = sock.get_monitor_socket(events)
            self._monitors[monitor] = channel
            if up is not None:
                self._up[monitor] = up
            self._poller.register(monitor, zmq.POLLIN)
        sock.connect(url)
        self._sockets[channel] = sock
        self.urls[channel] = url
        self._channel_of[sock] = channel
        if stream:
            self._streamed[sock] = (channel, stall_clock(sock))
        self._poller.register(sock, zmq.POLLIN)

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        while outbox:
            channel, payload, copy = outbox.popleft()
            if channel is None:
                try:
                    payload()
                except Exception:
                    log.exception("client I/O callback failed")
                continue
            if channel in BATCH_CHANNELS and outbox:
                batch = [payload]
                while outbox and len(batch) < SEND_BATCH:
                    following = outbox[0]
                    if following[0] != channel or following[2] != copy:
                        break
                    batch.append(following[1])
                    outbox.popleft()
                if len(batch) > 1:
                    for message in pack_batches((), batch, SEND_BATCH):
                        # A batch's body is fresh bytes under 64 KiB: copied, never
                        # tracked; a large message on its own keeps the run's flag.
                        self._send_now(channel, message, copy or is_batch(message[0]))
                    continue
            self._send_now(channel, payload, copy)
        if not self._drained.is_set():
            self._drained.set()

    def _send_now(self, channel: str, frames: list[Any], copy: bool) -> None:
        sock = self._sockets.get(channel)
        if sock is None:
            if not self._abandoned:
                log.error("no socket %r; dropped a message", channel)
            return
        try:
            send_frames(sock, frames, copy=copy)
            self.sent += 1
        except zmq.ZMQError as exc:
            log.error("send on %s failed: %s", channel, exc)

    def _run_timers(self) -> int | None:
        """Run due timers; whole milliseconds until the next one (None: no timers).

        Whole, because that is what zmq's poll takes (it truncated a float the same way).
        """
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, func = heapq.heappop(timers)
            try:
                func()
            except Exception:
                log.exception("client timer failed")
        if not timers:
            return None
        return int(max(0.0, (timers[0][0] - time.monotonic()) * 1000))

    def _stall_wait(self, wait_ms: int | None) -> tuple[int | None, float | None]:
        """``wait_ms`` shortened to the earliest stall deadline of a stream in progress
        (chunkstream), and that deadline: a stream that stops must end in an error, and
        only a receive once its deadline has passed ends it (no message will wake us)."""
        stall = None
        for _, stall_deadline in self._streamed.values():
            deadline = stall_deadline()
            if deadline is not None and (stall is None or deadline < stall):
                stall = deadline
        if stall is None:
            return wait_ms, None
        until = max(0, int((stall - time.monotonic()) * 1000) + 1)
        return (until if wait_ms is None else min(wait_ms, until)), stall

    def _end_stalled(self) -> None:
        """Receive on every stream socket whose stall deadline has passed: the stalled
        stream comes out cut short and fails its request (Client._dispatch)."""
        now = time.monotonic()
        for sock, (channel, stall_deadline) in list(self._streamed.items()):
            deadline = stall_deadline()
            if deadline is not None and deadline <= now and sock in self._channel_of:
                self._drain(sock, channel)

    def _drain(self, sock: zmq.Socket[Any], channel: str) -> None:
        """Receive everything waiting on ``sock``, then handle it.

        Receiving first and handling after matters under load: every zmq call releases
        the GIL, and a user thread woken by a result just set would grab it and make this
        thread wait for it again, message after message. Handling a whole batch while
        holding the GIL lets that thread wake once and find many results ready.
        """
        copy = channel not in self._nocopy
        batch: list[list[Any]] = []
        for _ in range(_BATCH):
            try:
                frames = recv_frames(sock, NOBLOCK, copy)
            except zmq.Again:
                break
            if len(frames) == 3 and is_batch(frames[0]):
                try:
                    batch += unbatch(frames, 0)
                except BatchError as exc:
                    log.warning("dropped a message on %s: %s", channel, exc)
                continue
            batch.append(frames)
        self.received += len(batch)
        handler = self.handler
        for frames in batch:
            try:
                handler(channel, frames)
            except Exception:
                log.exception("client failed to handle a message on %s", channel)

    def _run(self) -> None:
        wake_rx = self._wake_rx
        poll = self._poller.poll
        try:
            while self._running:
                self._flush_outbox()
                wait_ms = self._run_timers()
                self._idle = True
                if self._outbox or not self._running:
                    self._idle = False
                    continue
                wait_ms, stall = self._stall_wait(wait_ms) if self._streamed else (wait_ms, None)
                events = poll(wait_ms)
                self._idle = False
                if stall is not None and time.monotonic() >= stall:
                    self._end_stalled()
                for sock, _ in events:
                    if sock is wake_rx:
                        try:
                            while True:
                                wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                    elif sock in self._monitors:
                        self._on_monitor(sock)
                    else:
                        channel = self._channel_of.get(sock)
                        if channel is not None:  # None: closed by abandon() just now
                            self._drain(sock, channel)
            self._flush_outbox()
        except Exception as exc:
            log.exception("client I/O thread crashed")
            if self.on_crash is not None:
                try:
                    self.on_crash(exc)
                except Exception:
                    log.exception("client I/O crash handler failed")
        finally:
            self._close_sockets()
            with self._exit_lock:
                self._ended = True
                at_exit, self._at_exit = self._at_exit, None
            if at_exit is not None:
                at_exit()

    def _on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        """Events of a monitored socket: a completed handshake sets its ``up`` event, a
        disconnection clears it and goes to :attr:`on_disconnect` (watched or not)."""
        channel = self._monitors[monitor]
        up = self._up.get(monitor)
        lost = False
        try:
            while True:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
                event = int.from_bytes(frames[0][:2], "little")
                if event == zmq.EVENT_DISCONNECTED:
                    lost = True
                    if up is not None:
                        up.clear()
                elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and up is not None:
                    up.set()
        except zmq.Again:
            pass
        if lost and (channel in self._watched or up is not None) and self.on_disconnect:
            try:
                self.on_disconnect(channel)
            except Exception:
                log.exception("client disconnect handler failed")

    def abandon(self) -> None:
        """In this thread: close every socket at once, dropping whatever they still hold.

        For a lost controller: a request still queued in a socket would otherwise reach a
        controller restarted on the same ports (the sockets reconnect by themselves) and
        run, while its result has already failed and the caller submits it again.
        """
        for monitor in list(self._monitors):
            self._poller.unregister(monitor)
        for sock in self._sockets.values():
            self._poller.unregister(sock)
        self._close_sockets(wake=False)
        self._channel_of.clear()
        self._abandoned = True
        kept = [entry for entry in self._outbox if entry[0] is None]  # callbacks stay
        self._outbox.clear()
        self._outbox.extend(kept)

    def _close_sockets(self, wake: bool = True) -> None:
        monitored = set(self._monitors.values())
        for channel, sock in self._sockets.items():
            if channel in monitored:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
        for monitor in list(self._monitors):
            monitor.close(linger=0)
        self._monitors.clear()
        for up in self._up.values():
            up.clear()
        self._up.clear()
        self._watched.clear()
        for sock in list(self._sockets.values()):
            sock.close(linger=self.close_linger)
        self._sockets.clear()
        self._streamed.clear()
        if not wake:
            return
        self._wake_rx.close(linger=0)
        with self._wake_lock:
            self._wake_tx.close(linger=0)
