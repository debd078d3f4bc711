"""The hub: registration, engine liveness, the task database, and every query about it.

One loop serves five sockets: ``registration`` (engines and clients ask), ``hb_pong``
(heartbeat echoes), ``monitor`` (copies of every request and reply from the queues),
``iopub`` (engine output, to record stdout/stderr), and the control pipe. It publishes
beats on ``hb_ping`` and engine arrivals and deaths on ``notification``.

Engine arrivals and departures are also posted on this process's notification center
(:mod:`corral.plugins.parallel.events`, sender: the hub), where they happen; a
:class:`~corral.notification.bridge.BridgeSender` carries the hub's own posts onto the
``notification`` feed as signed ``bus_notification`` messages, which clients and any
:func:`~corral.plugins.parallel.bus.watch_cluster` re-post in their processes. The feed
socket is an XPUB, so the hub sees its subscriptions: the bridge observes the center only
while a subscription matches the feed (a post nobody reads stays free), and the hub opens
only once every queue has subscribed (see :meth:`Hub.serve`).

The hub never unpickles anything: it reads the JSON parts of messages and stores result
buffers as opaque bytes. Per task it keeps only what is outstanding (a request not yet
answered); the record of every task goes to the task database and nowhere else, so its
memory stays flat however many tasks run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from corral.core.heap import HeapTrimmer
from corral.notification import NotificationCenter, shared_center
from corral.notification.bridge import BridgeSender
from corral.transports.zmq import wire
from corral.transports.zmq.batch import BatchError, is_batch, unbatch
from corral.transports.zmq.bridge import FEED_MSG_TYPE, FEED_TOPIC, FeedPublisher
from corral.transports.zmq.door import (
    BUFFERS_COUNTED,
    BUFFERS_HASHED,
    BUFFERS_IGNORED,
    HUB,
    ROLES,
    WrongRun,
    admit,
    cluster_signer,
    deserialize,
)
from corral.transports.zmq.gate import Gate, RefusalLog
from corral.transports.zmq.session import Session

from .. import events
from ..coalesce import unpack_engines
from ..flow import MONITOR_BOUND
from .base import (
    Component,
    ControlPipe,
    drain,
    endpoint,
    loads_dict,
    make_socket,
    read_control,
    ready_topic,
)
from .heartbeat import HeartMonitor
from .taskdb import TaskDB
from .taskfeed import TaskRelay

__all__ = ["EngineRecord", "Hub"]

log = logging.getLogger("corral.plugins.parallel.controller.hub")

DELIM = wire.DELIMITER
REQUEST = b"request"
REPLY = b"reply"
#: What the hub's sockets take in (corral.transports.zmq.door.ROLES).
_REGISTRATION = ROLES["registration"]
_MONITOR_REQUESTS = ROLES["monitor_request"]
_IOPUB = ROLES["iopub"]
_MONITOR_REPLIES = ROLES["monitor_reply"]
_UNREGISTER_REASONS = ("shutdown", "heartbeat", "exited", "died")
#: Characters of a monitor's death cause passed on (it ends up in task errors).
_CAUSE_LIMIT = 500
#: How long a cluster shutdown waits for engines to acknowledge theirs.
SHUTDOWN_GRACE = 2.0
#: Messages each sender's pipe into ``monitor`` holds before libzmq stops reading it.
_MONITOR_RCVHWM = 4
#: How often (seconds) the database writer's progress is checked while reading waits.
_BACKLOG_CHECK = 0.005


class EngineRecord:
    """A registered engine, as ``connection_reply`` describes it.

    A plain class, not a dataclass: importing dataclasses (with inspect) would cost every
    controller start 7 ms.
    """

    __slots__ = ("data_url", "hostname", "id", "local_path", "pid", "uuid")

    def __init__(
        self,
        id: int,
        uuid: str,
        hostname: str = "",
        pid: int = 0,
        data_url: str = "",
        local_path: str = "",
    ) -> None:
        self.id = id
        self.uuid = uuid
        self.hostname = hostname
        self.pid = pid
        self.data_url = data_url
        self.local_path = local_path

    def __repr__(self) -> str:
        return f"EngineRecord(id={self.id!r}, uuid={self.uuid!r}, {self.public()!r})"

    def public(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "hostname": self.hostname,
            "pid": self.pid,
            "data_url": self.data_url,
            "local_path": self.local_path,
        }


def _broadcast_result(
    msg_id: str, record: dict[str, Any], parts: list[dict[str, Any]], buffers: list[Any]
) -> dict[str, Any]:
    """A result_reply entry for a broadcast (request metadata ``broadcast: true``): every
    engine's record, in target order. Any other msg_id with several rows (a task re-run
    after its engine was wrongly declared dead) keeps answering with its first row.

    Completed once every target has answered; its buffers (appended to ``buffers``) are
    sent only then, each part saying how many are its own.
    """
    parts = [dict(p) for p in parts]
    targets = (record.get("metadata") or {}).get("targets")
    rank = {eid: i for i, eid in enumerate(targets)} if isinstance(targets, list) else {}
    parts.sort(key=lambda p: (rank.get(p.get("engine_id"), len(rank)), p.get("engine_id") or 0))
    done = all(p.get("result_status") is not None for p in parts)
    for part in parts:
        bufs = part.pop("result_buffers", None) or []
        part["buffer_count"] = len(bufs) if done else 0
        if done:
            buffers.extend(bufs)
    return {
        "msg_id": msg_id,
        "status": "completed" if done else "pending",
        "submitted": record.get("submitted"),
        "parts": parts,
        # What a reader that does not know "parts" skips to find the next entry's buffers.
        "buffer_count": sum(p["buffer_count"] for p in parts),
    }


def _client_text(ident: bytes) -> str:
    """A client's routing id as text: as is when printable ASCII, else hex."""
    try:
        text = ident.decode("ascii")
    except UnicodeDecodeError:
        return ident.hex()
    return text if text.isprintable() else ident.hex()


#: How long a restarted controller waits for the engines of the dead one before failing
#: the tasks they owe: an engine's default grace (60 s) and its time to notice (10 s).
ORPHAN_WAIT = 75.0
#: How long a restarted controller waits for engines to claim the tasks a dead one had
#: recorded without an engine, before answering them with ControllerLost.
UNASSIGNED_WAIT = 3.0
#: How many departed engines the hub remembers, for restarted ones to name.
_GONE_KEPT = 10_000
#: Seconds (at least; three beats if longer) a dropped engine's echoes keep coming without
#: a registration before the hub tells it to register again (see _stray_pong).
_STRAY_GRACE = 5.0
#: At most this many task ids of one re-registering engine are recorded.
_MAX_HOLDING = 100_000
#: How long the hub waits for the queues' subscriptions (see serve) before it opens
#: anyway, saying which queue is late: a cluster that starts is better than none.
READY_TIMEOUT = 10.0
#: A subscription message on an XPUB socket: this byte, then the topic.
_SUBSCRIBE = 1


class Hub(Component):
    """The controller's core; see the module docstring."""

    name = "hub"
    #: How the hub's notifications name their sender in other processes.
    notification_name = "hub"

    def __init__(
        self,
        *,
        key: bytes,
        db: TaskDB,
        scheme: str = "hmac-sha256",
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        hb_period: float = 1.0,
        hb_misses: int = 2,
        gate: Gate | None = None,
        flow_bound: int = MONITOR_BOUND,
        center: NotificationCenter = shared_center,
        queues: tuple[str, ...] = (),
        run: str = "",
    ) -> None:
        self.gate = gate
        #: this start of the controller (door.RUN): requests must name it, the replies
        #: to registrations and connections tell it ("" only for a hub made by hand,
        #: which then admits requests of any run)
        self.run = run
        #: the marker subscriptions (base.ready_topic) of queues not yet subscribed to
        #: ``notification``: until they are in, no engine is registered (see serve)
        self.awaited = {ready_topic(name): name for name in queues}
        #: where engine arrivals and departures are posted (see the module docstring)
        self.center = center
        #: carries engine notifications onto the feed while anyone subscribes (_feed)
        self._bus: BridgeSender | None = None
        #: topics with at least one subscriber on ``notification`` (on_subscription)
        self._topics: set[bytes] = set()
        #: relays engines' task start notifications while a process follows them
        self.task_relay = TaskRelay(self)
        #: result bytes waiting for the database writer beyond which copies stay unread
        self.flow_bound = flow_bound
        signer = cluster_signer(key, scheme)
        # Ordered replay guards (wire.ReplayGuard): clients and engines reach the
        # registration socket, and engines the iopub relay, in one hop each.
        self.session = Session(
            key,
            scheme=scheme,
            username="corral-hub",
            signer=signer,
            replay=wire.ReplayGuard(ordered=True),
        )
        #: the session's signer, kept as the cluster signer it is (it opens monitor tags)
        self.signer = signer
        self.monitor_replay = wire.ReplayGuard()
        #: iopub output is stored: a captured stream message published again (anyone past
        #: the gate may publish on iopub_engine) must not be stored twice
        self.iopub_replay = wire.ReplayGuard(ordered=True)
        self.db = db
        self.transport = transport
        self.ip = ip
        self.heart = HeartMonitor(hb_period, hb_misses)
        self.engines: dict[int, EngineRecord] = {}
        self.by_uuid: dict[bytes, int] = {}
        self.next_id = 0
        #: ids of engines gone in this controller's life: never given out again
        self.retired: set[int] = set()
        #: the latest engines gone, uuid -> id: a restarted engine names the one it replaces
        self._gone: dict[str, int] = {}
        #: dropped engines' uuids -> when their echoes were first seen since (or when the
        #: hub last told them they were dropped): see _stray_pong
        self._strays: dict[bytes, float] = {}
        #: engines a dead controller of this cluster left owing replies (see serve)
        self._orphans: set[str] = set()
        self._orphans_at = 0.0
        self._unassigned = False
        self._unassigned_at = 0.0
        #: (msg_id, engine uuid or b"") of requests not yet answered
        self.pending: dict[tuple[str, bytes], None] = {}
        self.completed: dict[bytes, int] = {}
        self.cluster: dict[str, Any] = {}
        self.dropped = 0
        self.refusals = RefusalLog(log, "hub")
        self._control: zmq.Socket[Any] | None = None
        self._iopub: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._stopping = False

    # -- sockets --------------------------------------------------------------------------

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        self.ctx = ctx
        gate = self.gate
        self.registration = make_socket(ctx, zmq.ROUTER, unlimited=True, gate=gate)
        # An engine re-registers after its network came back, under its uuid, on a new
        # connection while the old one may still be held here half-open: without
        # handover that identity is refused for good and the engine, unanswered, exits.
        self.registration.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Beats go only to, and echoes come only from, peers that passed the gate: a
        # process without the key cannot keep a dead engine alive or answer for it.
        self.hb_ping = make_socket(ctx, zmq.PUB, gate=gate)
        self.hb_pong = make_socket(ctx, zmq.ROUTER, gate=gate)
        # An engine's heartbeat DEALER that reconnects (a handshake timed out while
        # thousands of engines connected at once) keeps its identity; without handover
        # the ROUTER refuses the new pipe as a duplicate while the old one lingers, and
        # the engine's echoes are dropped until it is declared dead.
        self.hb_pong.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # XPUB: publishes as a PUB does, and shows the hub who subscribed (serve).
        self.notification = make_socket(ctx, zmq.XPUB, unlimited=True, gate=gate)
        self.monitor = make_socket(ctx, zmq.PULL, unlimited=True, gate=gate)
        # A bounded pipe per sender: while the database writer lags, copies (results with
        # their buffers) wait in the queues, which then leave them with the engines
        # (corral.plugins.parallel.flow), instead of piling up here.
        self.monitor.rcvhwm = _MONITOR_RCVHWM
        events.LOCAL_FEEDS.add(self.session.session_id)
        bind = self.bind_port
        return {
            "registration": bind(self.registration, "registration"),
            "hb_ping": bind(self.hb_ping, "hb_ping"),
            "hb_pong": bind(self.hb_pong, "hb_pong"),
            "notification": bind(self.notification, "notification"),
            "monitor": bind(self.monitor, "monitor"),
        }

    def configure(self, message: Any) -> None:
        """``("cluster", info)``: the whole cluster file, once every component is bound."""
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "cluster"):
            log.warning("hub: unexpected control message %r", message)
            return
        info = dict(message[1])
        info.pop("key", None)
        self.cluster = info
        transport, ip = info["transport"], info["ip"]
        if self._iopub is None and info.get("iopub"):
            self._iopub = make_socket(
                self.ctx, zmq.SUB, unlimited=True, gate=self.gate, connects=True
            )
            self._iopub.subscribe(b"")
            self._iopub.connect(endpoint(transport, ip, info["iopub"]))
            self._poller.register(self._iopub, zmq.POLLIN)
        if self._control is None and info.get("control"):
            self._control = make_socket(self.ctx, zmq.DEALER, gate=self.gate, connects=True)
            self._control.connect(endpoint(transport, ip, info["control"]))

    def close(self) -> None:
        self._feed(False)
        self.task_relay.close()
        events.LOCAL_FEEDS.discard(self.session.session_id)
        socks = [self.registration, self.hb_ping, self.hb_pong, self.notification, self.monitor]
        for sock in (*socks, self._control, self._iopub):
            if sock is not None:
                sock.close(linger=0)
        self.db.close()

    # -- the loop -------------------------------------------------------------------------

    def _inherit_records(self) -> None:
        """At start: settle what a dead controller of this cluster left unanswered.

        Tasks it never gave to an engine died with its scheduler: they are answered now
        with ``ControllerLost`` (a client waiting in ``get_result`` learns to submit them
        again instead of waiting forever). Tasks given to an engine are waited for: the
        engine outlives the controller and re-registers; those of engines that have not
        come back after :data:`ORPHAN_WAIT` seconds are answered with ``EngineError``.
        """
        owing = self.db.unanswered_engines()
        self._unassigned = "" in owing
        now = time.monotonic()
        # Engines re-register within a beat or two of a new hub (also mid-task) and
        # claim what they hold; what nobody claimed by then never left the scheduler.
        self._unassigned_at = now + max(UNASSIGNED_WAIT, 5 * self.heart.period)
        self._orphans = owing - {""}
        self._orphans_at = now + ORPHAN_WAIT

    def _settle_unassigned(self) -> None:
        """Tasks a dead controller recorded and no engine claimed: they died with its
        scheduler's backlog."""
        self._unassigned = False
        count = self.db.fail_unanswered(
            "",
            "ControllerLost",
            "the controller died before any engine was given this task; submit it again",
        )
        if count:
            log.warning("hub: %d task(s) of a dead controller never reached an engine", count)

    def _settle_orphans(self) -> None:
        """The engines a dead controller left owing replies that did not come back."""
        for uuid in self._orphans:
            if uuid.encode("utf-8") not in self.by_uuid:
                count = self.db.fail_unanswered(
                    uuid, "EngineError", "its engine did not come back after a controller restart"
                )
                log.warning("hub: engine %s did not come back; %d task(s) failed", uuid, count)
        self._orphans = set()

    def _open(self) -> None:
        """Start beating and registering engines (see serve)."""
        if self.awaited:
            log.error(
                "hub: no subscription from the %s queue(s) after %g s; registering engines "
                "anyway (those queues may not know them)",
                ", ".join(sorted(self.awaited.values())),
                READY_TIMEOUT,
            )
            self.awaited.clear()
        self._inherit_records()
        self._poller.register(self.registration, zmq.POLLIN)
        self.heart.next_at = time.monotonic()

    def on_subscription(self, frames: list[zmq.Frame]) -> None:
        """A topic's first subscription or its last unsubscription on ``notification``
        (what an XPUB passes on): a queue's marker counts it in, and the bus feed and
        the task relay (:mod:`.taskfeed`) run only while a subscription matches them."""
        raw = frames[0].bytes
        if not raw:
            return
        topic = raw[1:]
        if raw[0] == _SUBSCRIBE:
            self.awaited.pop(topic, None)
            self._topics.add(topic)
        else:
            self._topics.discard(topic)
        self._feed(any(FEED_TOPIC.startswith(t) for t in self._topics))
        # Followed only when asked by name: a subscription to everything (b"", a raw
        # monitor) does not make every engine send two messages per task.
        self.task_relay.want(events.TASK_FEED_TOPIC in self._topics)

    def _feed(self, wanted: bool) -> None:
        """Carry this hub's engine notifications onto the feed, or stop: a bridge that
        observes the center makes every post pay for encoding and signing, and with
        nobody subscribed (no client connected) the PUB socket would drop it anyway.
        A client learns of engines registered before its subscription took effect by
        asking the hub (as it must anyway: a PUB drops what it sends before then)."""
        if wanted and self._bus is None:
            # Only what this hub posts, from its own thread (the socket's owner), goes out.
            self._bus = BridgeSender(
                FeedPublisher(self.notification, self.session),
                self.center,
                events.ENGINE_TYPES,
                sender=self,
            )
        elif not wanted and self._bus is not None:
            self._bus.close()
            self._bus = None

    def serve(self, control: ControlPipe) -> None:
        """The loop. It opens (beats, reads registrations) only once every queue has
        subscribed to ``notification``: a restarted controller's hub is found by the
        old engines within milliseconds of binding, before the queues even exist, and
        an engine registered then would be announced to no queue."""
        poller = self._poller
        for sock in (self.hb_pong, self.monitor, self.notification):
            poller.register(sock, zmq.POLLIN)
        control_fd = control.fileno()
        poller.register(control_fd, zmq.POLLIN)
        heart = self.heart
        open_by: float | None = time.monotonic() + READY_TIMEOUT
        if not self.awaited:
            self._open()
            open_by = None
        trimmer = HeapTrimmer()  # due within a heartbeat: the beats wake this loop anyway
        reading_copies = True
        try:
            db = self.db
            while not self._stopping:
                now = time.monotonic()
                wait = heart.timeout(now) if open_by is None else max(0.0, open_by - now)
                db_wait = db.hand_over_in(now)
                if db_wait is not None and (wait is None or db_wait < wait):
                    wait = db_wait
                behind = db.backlog_bytes > self.flow_bound  # results not written out yet
                if behind == reading_copies:
                    reading_copies = not behind
                    poller.modify(self.monitor, zmq.POLLIN if reading_copies else 0)
                if behind:
                    db.hand_over(now, force=True)
                    wait = _BACKLOG_CHECK if wait is None else min(wait, _BACKLOG_CHECK)
                events = dict(poller.poll(int(wait * 1000) + 1 if wait else 0))
                if control_fd in events:
                    messages = read_control(control)
                    if messages is None:
                        return
                    for message in messages:
                        self.configure(message)
                if self.notification in events:
                    self._drain(self.notification, self.on_subscription)
                if self.registration in events:
                    self._drain(self.registration, self.on_registration)
                if self.monitor in events:
                    self._drain_copies()
                if self._iopub is not None and self._iopub in events:
                    self._drain(self._iopub, self.on_iopub)
                self._drain(self.hb_pong, self.on_pong)
                now = time.monotonic()
                db.hand_over(now)
                if self.monitor in events or self.registration in events:
                    trimmer.busy(now)
                else:
                    trimmer.idle(now)  # a wake-up with nothing to record: work is over
                trimmer.tick(now)
                if self._unassigned and now >= self._unassigned_at:
                    self._settle_unassigned()
                if self._orphans and now >= self._orphans_at:
                    self._settle_orphans()
                if open_by is not None:
                    if self.awaited and now < open_by:
                        continue
                    self._open()
                    open_by = None
                if now >= heart.next_at:
                    beat, dead = heart.tick(now)
                    self.hb_ping.send(beat)
                    self.task_relay.beat()
                    for uuid in dead:
                        self.unregister(uuid, "heartbeat")
        finally:
            self.close()

    @staticmethod
    def _drain(
        sock: zmq.Socket[Any],
        handler: Any,
        enough: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        drain(sock, handler, "hub", enough)

    def _drain_copies(self) -> None:
        """:func:`drain` for monitor copies, stopping once the results waiting for the
        database writer reach the flow bound."""
        db = self.db
        self._drain(
            self.monitor,
            self.on_monitor,
            lambda frames: len(frames) > 9 and db.backlog_bytes > self.flow_bound,
        )

    def _drop(self, why: str, nframes: int) -> None:
        """Count and log a refused message, rate-limited per cause."""
        self.dropped += 1
        self.refusals.refused(why, f"a message of {nframes} frames")

    # -- heartbeat and engines ----------------------------------------------------------

    def on_pong(self, frames: list[zmq.Frame]) -> None:
        echo = [f.bytes for f in frames]
        if not self.heart.pong(echo) and len(echo) == 2:
            self._stray_pong(echo[0])

    def _stray_pong(self, uuid: bytes) -> None:
        """An echo from an engine this hub dropped: tell it to register again, once its
        echoes have kept coming for a while without a registration.

        A network outage longer than ``hb_misses`` beats gets an engine dropped. If it
        also outlasted the engine's own silence timeout, the engine registers again
        when the beats return. If not, the engine never knew: the notice that dropped
        it went into a connection that broke, and it would linger for ever, beating,
        registered nowhere. The wait leaves time to an engine that did notice.
        """
        try:
            eid = self._gone.get(uuid.decode("utf-8"))
        except UnicodeDecodeError:
            return
        if eid is None:
            return
        now = time.monotonic()
        first = self._strays.setdefault(uuid, now)
        if now - first < max(_STRAY_GRACE, 3 * self.heart.period):
            return
        self._strays[uuid] = now  # again after another wait, should this one be lost too
        if len(self._strays) > _GONE_KEPT:
            del self._strays[next(iter(self._strays))]
        log.warning("engine %d, dropped, still beats: telling it to register again", eid)
        self.publish(
            events.ENGINE_DROPPED,
            {"id": eid, "uuid": uuid.decode("utf-8"), "reason": "its beats came back too late"},
        )

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.session.send(
            self.notification, msg_type, content, identities=[msg_type.encode("ascii")]
        )

    def register(self, content: dict[str, Any]) -> dict[str, Any]:
        uuid = content.get("uuid")
        if not isinstance(uuid, str) or not 0 < len(uuid) <= 255:
            return {"status": "error", "evalue": "registration needs a uuid string"}
        key = uuid.encode("utf-8")
        self._strays.pop(key, None)
        known = self.by_uuid.get(key)
        if known is not None:
            if content.get("id") == known:  # asked again (it thought we were gone): same
                self._record_holding(self.engines[known], content.get("holding"))
                return self._registered(self.engines[known])
            if _same_process(self.engines[known], content):
                # Its first request asked again (an engine re-sends an unanswered one: a
                # reply it never got must not leave it waiting): the same answer.
                return self._registered(self.engines[known])
            return {"status": "error", "evalue": f"engine uuid {uuid} is already registered"}
        pid = content.get("pid")
        engine_id = self._new_engine_id(content.get("id"))
        record = EngineRecord(
            id=engine_id,
            uuid=uuid,
            hostname=str(content.get("hostname") or ""),
            pid=pid if isinstance(pid, int) else 0,
            data_url=str(content.get("data_url") or ""),
            local_path=str(content.get("local_path") or ""),
        )
        self.engines[record.id] = record
        self.by_uuid[key] = record.id
        self.completed.setdefault(key, 0)
        self.heart.add(key)
        self.publish(
            "registration_notification",
            {
                "id": record.id,
                "uuid": uuid,
                "hostname": record.hostname,
                "data_url": record.data_url,
                "local_path": record.local_path,
                "holding": _held_ids(content.get("holding")),
                "monitored": content.get("monitored") is True,
            },
        )
        log.info("engine %d registered (%s on %s)", record.id, uuid, record.hostname)
        self.center.post(events.ENGINE_REGISTERED, self, engine_id=record.id, uuid=uuid)
        previous = content.get("restart_of")
        if isinstance(previous, str) and previous in self._gone:
            self.center.post(
                events.ENGINE_RESTARTED,
                self,
                engine_id=record.id,
                uuid=uuid,
                previous_engine_id=self._gone.pop(previous),
                previous_uuid=previous,
            )
        self._record_holding(record, content.get("holding"))
        return self._registered(record)

    def _record_holding(self, record: EngineRecord, holding: Any) -> None:
        """An engine re-registering after a controller died says which tasks it runs or
        has queued: record them as owed by it, in case the dead controller had not
        stored them yet (a duplicate of a stored request changes nothing)."""
        for msg_id in _held_ids(holding):
            self.pending[(msg_id, record.uuid.encode("utf-8"))] = None
            self.db.add_held(msg_id, record.uuid, record.id)

    def _registered(self, record: EngineRecord) -> dict[str, Any]:
        """The registration reply for ``record``."""
        return {
            "status": "ok",
            "id": record.id,
            # what this engine's later requests to the hub (unregistration) must name
            "run": self.run,
            "hb_period": self.heart.period,
            "hb_misses": self.heart.misses,
            "beat": self.heart.beat,
            # whether to bridge its task start notifications to the hub (.taskfeed)
            "task_feed": self.task_relay.wanted,
        }

    def _new_engine_id(self, wanted: Any) -> int:
        """The id for a registering engine: the one it asks for if that is free (an engine
        that outlived its controller keeps its id with the next), else the next unused."""
        if (
            type(wanted) is int
            and 0 <= wanted < 2**31
            and wanted not in self.engines
            and wanted not in self.retired
        ):
            self.next_id = max(self.next_id, wanted + 1)
            return wanted
        while self.next_id in self.engines or self.next_id in self.retired:
            self.next_id += 1
        engine_id = self.next_id
        self.next_id += 1
        return engine_id

    def unregister(self, uuid: bytes, reason: str, cause: str = "") -> None:
        eid = self.by_uuid.pop(uuid, None)
        if eid is None:
            return
        record = self.engines.pop(eid)
        self.retired.add(eid)
        self._gone[record.uuid] = eid
        if len(self._gone) > _GONE_KEPT:
            del self._gone[next(iter(self._gone))]
        self.heart.remove(uuid)
        self.completed.pop(uuid, None)
        # What the engine owed is answered by the queues (an EngineError) or by another
        # engine (a retry): either way no longer by this one.
        owed = [key for key in self.pending if key[1] == uuid]
        for msg_id, _ in owed:
            del self.pending[(msg_id, uuid)]
            self.pending[(msg_id, b"")] = None
        self.db.engine_lost(record.uuid)
        log.warning("engine %d unregistered: %s%s", eid, reason, f" ({cause})" if cause else "")
        notice = {"id": eid, "uuid": record.uuid, "reason": reason}
        if cause:
            notice["cause"] = cause
        self.publish("unregistration_notification", notice)
        events.post_unregistration(self.center, self, eid, notice)

    # -- monitor: every request and reply, into the database -------------------------------

    def on_monitor(self, frames: list[zmq.Frame]) -> None:
        """``[request|reply, engine_uuid, client_id, DELIM, sig, h, p, md, content, bufs...]``,
        or a batch of such copies (``[BATCH, index, ...]``)."""
        if len(frames) == 3 and is_batch(frames[0]):
            try:
                copies = unbatch(frames, 0)
            except BatchError as exc:
                self._drop(f"monitor batch: {exc}", len(frames))
                return
            for copy in copies:
                self.isolated(self._monitor_copy, copy)
            return
        # The routing, signature and JSON parts as bytes; result buffers as received.
        self._monitor_copy([f.bytes for f in frames[:9]] + frames[9:])

    def _monitor_copy(self, frames: list[Any]) -> None:
        if len(frames) < 9 or frames[3] != DELIM:
            self._drop("malformed monitor message", len(frames))
            return
        tag, engine, client = frames[0], frames[1], frames[2]
        signature = frames[4]
        parts = frames[5:9]
        try:
            # Only a queue or an engine of this cluster seals a copy's envelope (kind,
            # engine, client, inner signature): nothing signed for another socket (an
            # iopub message, say) passes as a copy. Replies are stored, so their buffers
            # are hashed against the signed digests; request copies carry no buffers.
            tag = self.signer.open_monitor_tag(tag, engine, client, signature)
            if tag not in (REQUEST, REPLY):
                raise wire.MalformedMessage("unknown monitor tag")
            admit(
                self.signer,
                self.monitor_replay,
                parts,
                signature,
                frames[9:],
                how=BUFFERS_HASHED if tag == REPLY else BUFFERS_IGNORED,
                role=_MONITOR_REPLIES if tag == REPLY else _MONITOR_REQUESTS,
                seen=frames[0].partition(b":")[2],  # the envelope: one per queue's copy
            )
        except wire.WireError as exc:
            self._drop(f"monitor copies refused ({type(exc).__name__})", len(frames))
            return
        engine_id = self.by_uuid.get(engine)
        engine_text = engine.decode("utf-8", "replace")
        if tag == REQUEST:
            header = loads_dict(parts[0])
            if header is None or not isinstance(header.get("msg_id"), str):
                self._drop("monitor request without msg_id", len(frames))
                return
            if not str(header.get("msg_type", "")).endswith("_request"):
                self._drop("monitor: a request copy that is not a request", len(frames))
                return
            msg_id = header["msg_id"]
            date = header.get("date")
            # A broadcast's copy stands for all its engines (sealed in the envelope).
            engines = None
            if engine[:1] == b"\x00":
                engines = unpack_engines(engine)
                if engines is None:
                    self._drop("monitor: a request copy naming no engine", len(frames))
                    return
            client_text = _client_text(client)
            msg_type = str(header.get("msg_type", ""))
            header_text = parts[0].decode("utf-8", "replace")
            metadata_text = parts[2].decode("utf-8", "replace")
            for one in engines or (engine,):
                self.pending[(msg_id, one)] = None
                self.db.add_request(
                    msg_id,
                    client_text,
                    one.decode("utf-8", "replace") if engines else engine_text,
                    self.by_uuid.get(one) if engines else engine_id,
                    msg_type,
                    header_text,
                    metadata_text,
                    date if isinstance(date, str) else None,
                )
            return
        parent = loads_dict(parts[1])
        metadata = loads_dict(parts[2])
        if parent is None or metadata is None or not isinstance(parent.get("msg_id"), str):
            self._drop("monitor reply without parent msg_id", len(frames))
            return
        header = loads_dict(parts[0]) or {}
        if not str(header.get("msg_type", "")).endswith("_reply"):
            self._drop("monitor: a reply copy that is not a reply", len(frames))
            return
        msg_id = parent["msg_id"]
        pending = self.pending
        if (msg_id, engine) in pending:
            del pending[(msg_id, engine)]
            recorded = engine_text  # the row its request made (a hint: see add_reply)
        elif (msg_id, b"") in pending:  # engine chosen later, or the task outlived it
            del pending[(msg_id, b"")]
            recorded = ""
        else:
            # Only the engine a task was assigned to answers it, once: a stored result
            # is never replaced by a later message.
            self._drop("monitor replies from an engine that owes none", len(frames))
            return
        if engine in self.completed:
            self.completed[engine] += 1
        status = metadata.get("status")
        if not isinstance(status, str):
            content = loads_dict(parts[3]) or {}
            status = str(content.get("status", "unknown"))
        started, completed = metadata.get("started"), metadata.get("completed")
        self.db.add_reply(
            msg_id,
            _client_text(client),
            engine_text,
            engine_id if engine_id is not None else _int_or_none(metadata.get("engine_id")),
            started if isinstance(started, str) else None,
            completed if isinstance(completed, str) else None,
            status,
            parts[0].decode("utf-8", "replace"),
            parts[2].decode("utf-8", "replace"),
            parts[3].decode("utf-8", "replace"),
            [memoryview(f) for f in frames[9:]],
            recorded=recorded,
        )

    def on_iopub(self, frames: list[zmq.Frame]) -> None:
        """Record ``stream`` output under the task that printed it."""
        raw = [f.bytes for f in frames]
        try:
            at = raw.index(DELIM, 0, 4)
        except ValueError:
            return
        if len(raw) < at + 6:
            return
        parts = raw[at + 2 : at + 6]
        try:
            header = admit(
                self.signer,
                self.iopub_replay,
                parts,
                raw[at + 1],
                raw[at + 6 :],
                how=BUFFERS_COUNTED,
                role=_IOPUB,
            )
        except wire.WireError as exc:
            self._drop(f"iopub messages refused ({type(exc).__name__})", len(raw))
            return
        if header.get("msg_type") != "stream":
            return
        parent = loads_dict(parts[1]) or {}
        content = loads_dict(parts[3]) or {}
        metadata = loads_dict(parts[2]) or {}
        msg_id, name, text = parent.get("msg_id"), content.get("name"), content.get("text")
        if isinstance(msg_id, str) and name in ("stdout", "stderr") and isinstance(text, str):
            self.db.append_output(msg_id, name, text, _int_or_none(metadata.get("engine_id")))

    # -- registration socket: engines and clients ask ------------------------------------

    def on_registration(self, frames: list[zmq.Frame]) -> None:
        parsed = self._admit_request([f.bytes for f in frames])
        if parsed is None:
            return
        idents, msg = parsed
        if not idents:
            return
        msg_type = msg["msg_type"]
        content = msg["content"]
        if msg_type == FEED_MSG_TYPE:  # an engine's task notification: no reply
            self.task_relay.receive(idents[0], content)
            return
        handler = self._HANDLERS.get(msg_type)
        buffers: list[Any] = []
        if handler is None:
            reply = {"status": "error", "ename": "UnknownRequest", "evalue": msg_type}
        else:
            try:
                reply, buffers = handler(self, idents[0], content)
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"status": "error", "ename": type(exc).__name__, "evalue": str(exc)}
        reply_type = msg_type.removesuffix("_request") + "_reply"
        self.session.send(
            self.registration, reply_type, reply, parent=msg, identities=idents, buffers=buffers
        )
        if msg_type == "shutdown_request" and handler is not None:
            # Every client hears that the controller's going is an orderly stop, not a
            # loss, before its connections close (only the asking one knew).
            self.publish("shutdown_notification", {})
            self.shutdown_engines()

    def _admit_request(self, raw: list[bytes]) -> tuple[list[bytes], dict[str, Any]] | None:
        """A request on the registration socket through the door (this hub's role, its
        destination and its run), or None once refused, counted and logged."""
        try:
            return deserialize(
                raw, self.signer, self.session.replay, None, _REGISTRATION, HUB, self.run or None
            )
        except WrongRun as exc:
            self._drop("requests made for another controller run (WrongRun)", len(raw))
            self._answer_wrong_run(raw, exc)
        except wire.WireError as exc:
            self._drop(f"registration requests refused ({type(exc).__name__})", len(raw))
        return None

    def _answer_wrong_run(self, raw: list[bytes], exc: WrongRun) -> None:
        """Tell the sender of a request of another run why it is refused: a client that
        missed a restart, or older than the controller, then fails at once and clearly.
        The request is not served, so answering a replayed one repeats nothing.

        The answer names this controller's run: an engine that outlived its controller
        registers again under it (only a key holder can make that registration; a
        registration captured before the restart stays refused)."""
        msg_type = None if exc.header is None else exc.header.get("msg_type")
        if not isinstance(msg_type, str) or not msg_type.endswith("_request"):
            return  # an engine's bus_notification expects no answer
        idents = raw[: raw.index(DELIM)]
        if not idents:
            return
        reply_type = msg_type.removesuffix("_request") + "_reply"
        content = {"status": "error", "ename": "WrongRun", "evalue": str(exc), "run": self.run}
        self.session.send(
            self.registration, reply_type, content, parent={"header": exc.header},
            identities=idents,
        )  # fmt: skip

    def _h_registration(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        return self.register(content), []

    def _h_unregistration(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        eid = content.get("id")
        uuid = content.get("uuid")
        if eid is None and isinstance(uuid, str):  # an engine's monitor knows only its uuid
            eid = self.by_uuid.get(uuid.encode("utf-8"))
        record = self.engines.get(eid) if isinstance(eid, int) else None
        if record is None:
            return {"status": "error", "evalue": f"no engine {eid!r}"}, []
        reason = content.get("reason", "shutdown")
        if reason not in _UNREGISTER_REASONS:
            reason = "shutdown"
        cause = content.get("cause")
        cause = cause[:_CAUSE_LIMIT] if isinstance(cause, str) else ""
        self.unregister(record.uuid.encode("utf-8"), reason, cause)
        return {"status": "ok"}, []

    def _h_connection(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        engines = {str(eid): rec.public() for eid, rec in self.engines.items()}
        # "run": what the asker's other requests must name (a client whose cluster file
        # is older than this controller learns it here: door.RUN_ANY)
        return {"status": "ok", "engines": engines, "cluster": self.cluster, "run": self.run}, []

    def _h_queue(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        targets = content.get("targets")
        ids = list(self.engines) if targets is None else [t for t in targets if t in self.engines]
        outstanding: dict[bytes, int] = {}
        for _, engine in self.pending:
            outstanding[engine] = outstanding.get(engine, 0) + 1
        # Tasks whose engine the scheduler has not chosen yet (ipyparallel's "unassigned").
        out: dict[str, Any] = {"unassigned": outstanding.get(b"", 0)}
        for eid in ids:
            uuid = self.engines[eid].uuid.encode("utf-8")
            n = outstanding.get(uuid, 0)
            running = min(n, 1)
            out[str(eid)] = {
                "queued": n - running,
                "running": running,
                "completed": self.completed.get(uuid, 0),
            }
        return out, []

    def _h_result(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        msg_ids = content.get("msg_ids")
        if not isinstance(msg_ids, list):
            raise ValueError("msg_ids must be a list")
        ids = list(dict.fromkeys(m for m in msg_ids if isinstance(m, str)))
        records = self.db.get(ids)
        results: dict[str, Any] = {}
        buffers: list[bytes] = []
        for msg_id in ids:
            record = records.get(msg_id)
            if record is None:
                results[msg_id] = {"status": "unknown"}
                continue
            parts = record.pop("parts", None)
            if (record.get("metadata") or {}).get("broadcast") is True:
                results[msg_id] = _broadcast_result(msg_id, record, parts or [record], buffers)
                continue
            bufs = record.pop("result_buffers", None) or []
            record["buffer_count"] = len(bufs)
            done = record.get("result_status") is not None
            results[msg_id] = {**record, "status": "completed" if done else "pending"}
            buffers.extend(bufs)
        return {"status": "ok", "results": results}, buffers

    def _h_db(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        query = content.get("query") or {}
        keys = content.get("keys")
        records = self.db.find(query, keys)
        buffers: list[bytes] = []
        for record in records:
            if "result_buffers" in record:
                bufs = record.pop("result_buffers") or []
                record["buffer_count"] = len(bufs)
                buffers.extend(bufs)
        return {"status": "ok", "records": records}, buffers

    def _h_purge(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        msg_ids = content.get("msg_ids")
        if msg_ids != "all" and not isinstance(msg_ids, list):
            raise ValueError('msg_ids must be a list or "all"')
        return {"status": "ok", "purged": self.db.purge(msg_ids)}, []

    def _h_shutdown(self, ident: bytes, content: dict[str, Any]) -> tuple[dict, list]:
        return {"status": "ok"}, []

    _HANDLERS = {
        "registration_request": _h_registration,
        "unregistration_request": _h_unregistration,
        "connection_request": _h_connection,
        "queue_request": _h_queue,
        "result_request": _h_result,
        "db_request": _h_db,
        "purge_request": _h_purge,
        "shutdown_request": _h_shutdown,
    }

    # -- shutdown ------------------------------------------------------------------------

    def shutdown_engines(self) -> None:
        """Ask every engine to shut down through the control queue, then stop the hub.

        Waits (at most :data:`SHUTDOWN_GRACE` seconds) for the engines' replies, which also
        proves the control queue forwarded every request before it is stopped.
        """
        self._stopping = True
        sock = self._control
        if sock is None or not self.engines:
            return
        owed = set()
        for record in self.engines.values():
            msg = self.session.send(
                sock,
                "shutdown_request",
                {"restart": False, "hub": True},
                identities=[record.uuid.encode()],
                dest="control",
                run=self.run or None,
            )
            owed.add(msg["msg_id"])
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while owed:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                log.warning("hub: %d engine(s) did not acknowledge shutdown", len(owed))
                return
            frames = sock.recv_multipart()
            messages = [frames]
            if len(frames) == 3 and is_batch(frames[0]):
                # The control queue sends replies that arrive together as one batch.
                try:
                    messages = unbatch(frames, 0)
                except BatchError as exc:
                    self._drop(f"control batch: {exc}", len(frames))
                    continue
            for message in messages:
                parsed = self.session.parse(message, ROLES["replies"])
                if parsed is not None:
                    owed.discard(parsed[1]["parent_header"].get("msg_id"))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _same_process(record: EngineRecord, content: dict[str, Any]) -> bool:
    """Whether a registration of ``record``'s uuid comes from the process that registered
    it (same pid on the same host, both given): a repeat, not a second engine."""
    pid = content.get("pid")
    return (
        isinstance(pid, int)
        and pid > 0
        and pid == record.pid
        and str(content.get("hostname") or "") == record.hostname
    )


def _held_ids(holding: Any) -> list[str]:
    """The task ids a re-registering engine claims, checked and capped."""
    if not isinstance(holding, list):
        return []
    return [m for m in holding[:_MAX_HOLDING] if isinstance(m, str) and 0 < len(m) <= 255]
