"""Engine-side heartbeat: beats echoed inside libzmq, and a watch for a vanished hub.

The hub publishes a beat (its number as ASCII) on ``hb_ping`` every ``hb_period`` seconds
and expects each engine to send it back on ``hb_pong``, where the engine's DEALER identity
(its uuid) tells the hub who answered. The echo must not need the GIL, because user code
in a pure-Python loop holds it for as long as it runs and an engine doing real work must
not be declared dead: :class:`HeartbeatDevice` runs ``zmq.proxy_steerable(SUB, DEALER)``
on its own thread, which forwards every beat in C with the GIL released.

The proxy's *capture* socket (a PUB, which never blocks the proxy) hands a copy of every
beat to :class:`HubWatch`. When no beat came for ``timeout`` seconds the controller is
gone: the engine keeps running for a ``grace`` period, so that a controller restarted on
the same cluster finds it (the watch reports the silence, then the beats' return, or a
new hub's first beat, with the time of the old hub's last one), and
ends only when the grace is over (no orphans). It ends at once when the process named by
``CORRAL_PARENT_PID`` has exited. Reading copies of the beats costs no second connection
to the hub, and a watch starved of the GIL by user code still finds the beats queued
when it runs again, so a busy engine is never mistaken for an orphan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from corral.core.processes import process_alive
from corral.transports.zmq import wire
from corral.transports.zmq.door import ROLES, deserialize
from corral.transports.zmq.heartbeat import ProxyThread

from ..events import ENGINE_DROPPED, TASK_FEED_STATE

__all__ = ["HeartbeatDevice", "HubWatch", "process_alive"]

log = logging.getLogger("corral.parallel.engine")

#: Beats one hub may send between two that an engine sees; a larger jump means another
#: hub (a restart takes far more than the 10 ms that many microseconds make). A long
#: partition from the same hub may exceed it: re-registering then is harmless.
_SAME_HUB_STEPS = 10_000


class HeartbeatDevice(ProxyThread):
    """Forwards hub beats from ``ping_url`` back to ``pong_url`` as ``identity``.

    Sockets are created and connected in the constructor (so beats flow as soon as
    :meth:`start` runs) and belong to the device thread afterwards.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        ping_url: str,
        pong_url: str,
        identity: bytes,
        gate: Any = None,
    ) -> None:
        super().__init__(context, "corral-engine-heartbeat")
        self.capture_url = f"inproc://corral-hb-capture-{os.getpid()}-{id(self)}"
        # Through the cluster's gate: only a peer with the key can send beats here or
        # echo them as this engine, so heartbeats cannot be spoofed by anyone else.
        self.ping = context.socket(zmq.SUB)
        if gate is not None:
            gate.client(self.ping)
        self.ping.linger = 0
        self.ping.setsockopt(zmq.SUBSCRIBE, b"")
        self.ping.connect(ping_url)
        self.pong = context.socket(zmq.DEALER)
        if gate is not None:
            gate.client(self.pong)
        self.pong.linger = 0
        self.pong.identity = identity
        self.pong.connect(pong_url)
        self.capture = context.socket(zmq.PUB)
        self.capture.linger = 0
        self.capture.bind(self.capture_url)

    def proxy_sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any], zmq.Socket[Any]]:
        return self.ping, self.pong, self.capture


class HubWatch(threading.Thread):
    """Calls ``on_lost(reason)`` once when beats stop, the parent process is gone, or the
    hub announces that it declared this engine dead.

    ``capture_url`` is the heartbeat device's capture PUB. ``timeout`` counts from the
    last beat seen (or from :meth:`start`, so a hub that never beats is noticed too).
    With ``notification_url``, ``uuid`` and ``signer``, the watch also reads the hub's
    signed ``unregistration_notification``: an engine the hub gave up on (missed beats
    while the host was stalled, say) gets no more tasks, so it leaves instead of lingering
    as a process nobody uses or stops.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        capture_url: str,
        timeout: float,
        on_lost: Callable[[str], None],
        parent_pid: int | None = None,
        *,
        notification_url: str | None = None,
        uuid: str | None = None,
        signer: wire.Signer | None = None,
        grace: float = 0.0,
        on_silent: Callable[[str], None] | None = None,
        on_back: Callable[[float], None] | None = None,
        beat: int | None = None,
        gate: Any = None,
        on_task_feed: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(name="corral-engine-hubwatch", daemon=True)
        self.timeout = timeout
        self.on_lost = on_lost
        #: seconds to wait for a controller to come back once beats stopped
        self.grace = grace
        self.on_silent = on_silent
        self.on_back = on_back
        #: since when beats are missing (monotonic), while the controller is gone
        self.silent_since: float | None = None
        #: the number of the last beat seen (tells one hub's beats from the next's); at
        #: first the hub's beat when it registered this engine
        self.last_number: int | None = beat
        self.parent_pid = parent_pid
        self.last_beat = time.monotonic()
        self._beats = context.socket(zmq.SUB)
        self._beats.linger = 0
        self._beats.setsockopt(zmq.SUBSCRIBE, b"")
        self._beats.connect(capture_url)
        self._stop_url = f"inproc://corral-hubwatch-stop-{os.getpid()}-{id(self)}"
        self._stop_rx = context.socket(zmq.PAIR)
        self._stop_rx.linger = 0
        self._stop_rx.bind(self._stop_url)
        self._context = context
        self._uuid = uuid
        self._signer = signer
        #: called with the hub's task_feed_notification (see .taskfeed)
        self.on_task_feed = on_task_feed
        self._notices: zmq.Socket[Any] | None = None
        if notification_url and uuid and signer is not None:
            self._notices = context.socket(zmq.SUB)
            if gate is not None:
                gate.client(self._notices)
            self._notices.linger = 0
            self._notices.setsockopt(zmq.SUBSCRIBE, b"unregistration_notification")
            self._notices.setsockopt(zmq.SUBSCRIBE, ENGINE_DROPPED.encode("ascii"))
            if on_task_feed is not None:
                self._notices.setsockopt(zmq.SUBSCRIBE, TASK_FEED_STATE.encode("ascii"))
            self._notices.connect(notification_url)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._beats, zmq.POLLIN)
        poller.register(self._stop_rx, zmq.POLLIN)
        if self._notices is not None:
            poller.register(self._notices, zmq.POLLIN)
        # Wake often enough to notice the deadline promptly, rarely enough to cost nothing.
        tick_ms = int(max(0.02, min(self.timeout / 4, 1.0)) * 1000)
        try:
            while True:
                ready = dict(poller.poll(tick_ms))
                if self._stop_rx in ready:
                    return
                if self._beats in ready:
                    beat = b""
                    while self._beats.poll(0):
                        beat = self._beats.recv()
                    previous, self.last_beat = self.last_beat, time.monotonic()
                    new_hub = self._new_hub(beat)
                    if self.silent_since is not None or new_hub:
                        self.silent_since = None
                        if self.on_back is not None:
                            self.on_back(previous)
                reason = self._unregistered() if self._notices in ready else None
                reason = reason or self._check()
                if reason:
                    self.on_lost(reason)
                    return
        except zmq.ContextTerminated:
            return
        except Exception:  # pragma: no cover - a bug: the engine still runs, loudly
            log.exception("hub watch crashed")
        finally:
            self._beats.close(linger=0)
            self._stop_rx.close(linger=0)
            if self._notices is not None:
                self._notices.close(linger=0)

    def _new_hub(self, beat: bytes) -> bool:
        """Whether ``beat`` comes from another hub than the beats before it: each hub
        counts up by one from its start time in microseconds, so a restarted hub's first
        beat jumps far ahead (or, with a clock set back, behind)."""
        try:
            number = int(beat)
        except ValueError:
            return False
        previous, self.last_number = self.last_number, number
        return previous is not None and not previous < number <= previous + _SAME_HUB_STEPS

    def _unregistered(self) -> str | None:
        """The reason the hub gave for dropping this engine, if a notice names it (a
        notice of the task feed's state goes to ``on_task_feed``)."""
        assert self._notices is not None and self._signer is not None
        while self._notices.poll(0):
            frames = self._notices.recv_multipart()
            try:
                _, msg = deserialize(frames, self._signer, role=ROLES["notifications"])
            except wire.WireError as error:
                log.warning("dropped a notification that failed its checks: %s", error)
                continue
            content = msg["content"]
            if msg["msg_type"] == TASK_FEED_STATE:
                if self.on_task_feed is not None:
                    self.on_task_feed(content.get("wanted") is True)
                continue
            if msg["msg_type"] == ENGINE_DROPPED:
                # Dropped during a network outage whose notice never arrived: the hub
                # hears this engine again, so it registers again, as when beats return.
                if content.get("uuid") == self._uuid and self.on_back is not None:
                    log.warning("the controller dropped this engine during an outage")
                    self.on_back(self.last_beat)
                continue
            if content.get("uuid") == self._uuid:
                return f"the controller dropped this engine ({content.get('reason', '?')})"
        return None

    def _check(self) -> str | None:
        if self.parent_pid is not None and not process_alive(self.parent_pid):
            return f"parent process {self.parent_pid} is gone"
        now = time.monotonic()
        silent = now - self.last_beat
        if silent <= self.timeout:
            return None
        reason = f"no heartbeat from the controller for {silent:.1f} s"
        if self.grace <= 0:
            return reason
        if self.silent_since is None:
            self.silent_since = now
            if self.on_silent is not None:
                self.on_silent(reason)
        if now - self.silent_since > self.grace:
            return f"{reason}; no controller came back within the grace of {self.grace:g} s"
        return None

    def stop(self, timeout: float = 1.0) -> None:
        """End the watch (never calls ``on_lost`` afterwards)."""
        if not self.is_alive():
            return
        stop = self._context.socket(zmq.PAIR)
        try:
            stop.connect(self._stop_url)
            stop.send(b"")
        finally:
            stop.close(linger=1000)
        if threading.current_thread() is not self:
            self.join(timeout)
