"""The queues: mux and control (direct), the load-balancing task scheduler, broadcast.

All four are one routing loop (:class:`RoutingQueue`) with a different target policy:

* :class:`DirectQueue` (``mux``, ``control``): the client names the engine.
* :class:`TaskScheduler` (``task``): the scheduler picks the live engine with the fewest
  outstanding tasks (ties round-robin), honouring ``targets``, ``after``, ``follow``,
  ``timeout`` and ``retries`` from the request metadata.
* :class:`BroadcastScheduler` (``broadcast``): the same frames go to every target.

The hot loop is lean by construction: frames are received with ``copy=False`` and
forwarded as the same ``zmq.Frame`` objects (libzmq shares their memory, so a large
buffer is never copied); only the four small JSON parts are turned into bytes to check
the HMAC (constant time) and the replay guard, and only the header (plus metadata for the
schedulers that need it, plus the parent header of replies) is parsed. Content and
buffers are never looked at.

State is kept for *outstanding* requests only: a reply removes its request. The task
scheduler also remembers how the most recent tasks ended (a bounded LRU) to resolve
``after``/``follow``; an id it has forgotten or never saw (say, a task sent through the
mux, or one finished long ago) counts as a met dependency, the database being the record
of older tasks.

When the hub announces an engine's death, every request outstanding on it is answered
by the queue itself with a signed ``EngineError`` reply (or, for the task scheduler,
resubmitted while its ``retries`` allow), so no client waits forever.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import zmq

from corral.core.heap import HeapTrimmer
from corral.transports.zmq import wire
from corral.transports.zmq.batch import (
    BATCH,
    BatchError,
    is_batch,
    pack_batches,
    pack_batches_counted,
    unbatch,
)
from corral.transports.zmq.door import BUFFERS_COUNTED, cluster_signer
from corral.transports.zmq.gate import Gate, RefusalLog, peer_name
from corral.transports.zmq.session import Session

from .base import (
    NOBLOCK,
    Component,
    ControlPipe,
    bind_random,
    drain,
    loads_dict,
    make_socket,
    read_control,
    send_frames,
)

__all__ = [
    "BroadcastScheduler",
    "DirectQueue",
    "Pending",
    "RoutingQueue",
    "TaskScheduler",
    "make_queue",
]

log = logging.getLogger("corral.plugins.parallel.controller.queues")

DELIM = wire.DELIMITER
REQUEST = b"request"
REPLY = b"reply"
_NOTIFY_TOPICS = (b"registration_notification", b"unregistration_notification")
#: At most this many messages are taken from one socket before the others get a turn.
#: How many finished task outcomes the task scheduler remembers for dependencies.
RESULTS_LRU = 65536
_FAILED = False  # a remembered dependency outcome: the task failed
#: How long a registered engine's queue connection may take to come up (EHOSTUNREACH).
CONNECT_GRACE = 5.0
#: How often messages held for a still-connecting engine are retried.
_RETRY_INTERVAL = 0.005
#: At most this many messages for one peer go out as one batch.
SEND_BATCH = 64


class Pending:
    """An outstanding request: who asked, and its header (the parent of any reply we make)."""

    __slots__ = ("client", "header")

    def __init__(self, client: bytes, header: dict[str, Any]) -> None:
        self.client = client
        self.header = header


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _reply_type(msg_type: str) -> str:
    if msg_type.endswith("_request"):
        return msg_type[: -len("_request")] + "_reply"
    return msg_type + "_reply"


class RoutingQueue(Component):
    """The routing loop shared by every queue; subclasses supply the target policy.

    ``client_routing`` is how many routing frames precede the delimiter on the client
    side (2 for direct queues: client id + engine uuid; 1 otherwise).
    """

    client_routing = 1
    #: whether the policy needs the request's metadata parsed
    wants_metadata = False

    def __init__(
        self,
        name: str,
        *,
        key: bytes,
        scheme: str = "hmac-sha256",
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        monitor_url: str,
        notification_url: str,
        gate: Gate | None = None,
    ) -> None:
        self.name = name
        self.gate = gate
        self.session = Session(
            key, scheme=scheme, username=f"corral-{name}", signer=cluster_signer(key, scheme)
        )
        self.signer = self.session.signer
        self.replay = self.session.replay
        self.transport = transport
        self.ip = ip
        self.monitor_url = monitor_url
        self.notification_url = notification_url
        #: live engines: uuid -> id, in registration order
        self.engines: dict[bytes, int] = {}
        #: messages for a registered engine whose connection is not up yet, in order
        self.backlog: dict[bytes, deque[list[Any]]] = {}
        self._backlog_deadline: dict[bytes, float] = {}
        self.dropped = 0
        self.refusals = RefusalLog(log, name)
        self.monitor_dropped = 0
        #: Whether engines get batches: the control queue's engine end reads one message
        #: at a time, on the engine's control thread.
        self.batch_engines = name != "control"
        # What handling a burst produced, sent by flush() once the burst is handled: per
        # client id, per engine uuid (each message behind that peer's routing id), and
        # the hub's copies, in order.
        self._to_clients: dict[bytes, list[list[Any]]] = {}
        self._to_engines: dict[bytes, list[list[Any]]] = {}
        self._to_monitor: list[list[Any]] = []

    # -- sockets ----------------------------------------------------------------------

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        gate = self.gate
        self.client_sock = make_socket(ctx, zmq.ROUTER, unlimited=True, gate=gate)
        self.client_sock.router_mandatory = 1
        self.engine_sock = make_socket(ctx, zmq.ROUTER, unlimited=True, gate=gate)
        self.engine_sock.router_mandatory = 1
        self.engine_sock.router_handover = 1
        self.monitor_sock = make_socket(ctx, zmq.PUSH, gate=gate, connects=True)
        self.monitor_sock.sndhwm = 100_000
        self.monitor_sock.connect(self.monitor_url)
        self.notify_sock = make_socket(ctx, zmq.SUB, gate=gate, connects=True)
        for topic in _NOTIFY_TOPICS:
            self.notify_sock.subscribe(topic)
        self.notify_sock.connect(self.notification_url)
        return {
            self.name: bind_random(self.client_sock, self.transport, self.ip),
            f"{self.name}_engine": bind_random(self.engine_sock, self.transport, self.ip),
        }

    def close(self) -> None:
        for sock in (self.client_sock, self.engine_sock, self.monitor_sock, self.notify_sock):
            sock.close(linger=0)

    # -- the loop ---------------------------------------------------------------------

    def serve(self, control: ControlPipe) -> None:
        poller = zmq.Poller()
        client, engine, notify = self.client_sock, self.engine_sock, self.notify_sock
        for sock in (client, engine, notify):
            poller.register(sock, zmq.POLLIN)
        control_fd = control.fileno()
        poller.register(control_fd, zmq.POLLIN)
        on_request, on_reply = self.on_client_frames, self.on_engine_frames
        trimmer = HeapTrimmer()
        try:
            while True:
                timer_wait = self.next_timeout()
                wait = timer_wait
                trim_wait = trimmer.timeout(time.monotonic())
                if trim_wait is not None and (wait is None or trim_wait < wait):
                    wait = trim_wait
                events = dict(poller.poll(None if wait is None else max(0, int(wait * 1000) + 1)))
                if control_fd in events:
                    messages = read_control(control)
                    if messages is None:
                        return
                    for message in messages:
                        self.configure(message)
                if notify in events:
                    self._drain(notify, self.on_notification)
                if engine in events:
                    self._drain(engine, on_reply)
                if client in events:
                    self._drain(client, on_request)
                now = time.monotonic()
                if timer_wait is not None:  # only when a timer asked: on_timer may scan
                    if self.backlog:
                        self._retry_backlog(now)
                    self.on_timer(now)
                self.flush()
                if events:
                    outstanding = self.outstanding_count()
                    trimmer.busy(now, outstanding)
                    if not outstanding:
                        trimmer.idle(now)  # a burst is over: give its memory back
                if trim_wait is not None:
                    trimmer.tick(now)
        finally:
            self.close()

    def _drain(self, sock: zmq.Socket[Any], handler: Any) -> None:
        drain(sock, handler, self.name)

    def next_timeout(self) -> float | None:
        """Seconds until :meth:`on_timer` must run, or None."""
        return _RETRY_INTERVAL if self.backlog else None

    def on_timer(self, now: float) -> None:
        """Expire whatever is due (dependency timeouts)."""

    # -- checking -----------------------------------------------------------------------

    def _drop(self, why: str, nframes: int, peer: bytes | None = None) -> None:
        """Count and log (rate-limited, per cause, naming the peer) a refused message:
        a flood of forgeries must not fill the disk."""
        self.dropped += 1
        who = peer_name(peer) if peer is not None else f"a message of {nframes} frames"
        self.refusals.refused(why, who)

    def _verify(self, frames: Sequence[Any], at: int) -> list[bytes] | None:
        """The four JSON parts if ``frames[at]`` is the delimiter and the HMAC checks out."""
        peer = frames[0] if frames else b""
        if len(frames) < at + 6 or frames[at] != DELIM:
            self._drop("malformed messages", len(frames), peer)
            return None
        signature = frames[at + 1]
        parts = frames[at + 2 : at + 6]
        if self.signer.enabled:
            # A forwarder: the HMAC, and one signed digest per buffer frame; the engine
            # or client that unpickles the buffers hashes them (corral.transports.zmq.door).
            try:
                self.signer.check(parts, signature, frames[at + 6 :], BUFFERS_COUNTED)
                self.replay.check(signature)
            except wire.BadSignature:
                self._drop("unsigned or forged messages (wrong key?)", len(frames), peer)
                return None
            except wire.ReplayedMessage:
                self._drop("replayed messages", len(frames), peer)
                return None
        return parts

    def _messages(self, frames: list[zmq.Frame], head: int) -> list[list[Any]]:
        """The messages in what a socket delivered (one, or a batch ``[peer, BATCH, index,
        body]``), their first ``head`` frames (routing, delimiter, signature and the four
        JSON parts) as bytes, the buffers after them as received (zero-copy)."""
        if len(frames) == 4 and is_batch(frames[1]):
            try:
                return unbatch([frames[0].bytes, *frames[1:]], 1)
            except BatchError as exc:
                self._drop(str(exc), len(frames))
                return []
        return [[f.bytes for f in frames[:head]] + frames[head:]]

    def on_client_frames(self, frames: list[zmq.Frame]) -> None:
        """A request: ``[client_id, (engine_uuid,) DELIM, sig, header, parent, md, ...]``,
        or a batch of them, ``[client_id, BATCH, index, body]``."""
        for message in self._messages(frames, self.client_routing + 6):
            self.isolated(self._client_request, message)

    def _client_request(self, frames: list[Any]) -> None:
        if frames[0] == BATCH:  # would read as a batch when forwarded to an engine
            self._drop("a client id may not be the batch marker", len(frames))
            return
        parts = self._verify(frames, self.client_routing)
        if parts is None:
            return
        header = loads_dict(parts[0])
        if header is None or not isinstance(header.get("msg_id"), str):
            self._drop("header is not a JSON object with a msg_id", len(frames))
            return
        if not isinstance(header.get("msg_type"), str):
            header["msg_type"] = "unknown_request"
        metadata: dict[str, Any] | None = {}
        if self.wants_metadata:
            metadata = loads_dict(parts[2])
            if metadata is None:
                self._drop("metadata is not a JSON object", len(frames))
                return
        self.route_request(frames, header, metadata)

    def on_engine_frames(self, frames: list[zmq.Frame]) -> None:
        """A reply: ``[engine_uuid, client_id, DELIM, sig, header, parent, md, content, ...]``,
        or a batch of them, ``[engine_uuid, BATCH, index, body]``."""
        for message in self._messages(frames, 8):
            self.isolated(self._engine_reply, message)

    def _engine_reply(self, frames: list[Any]) -> None:
        parts = self._verify(frames, 2)
        if parts is None:
            return
        parent = loads_dict(parts[1])
        if parent is None or not isinstance(parent.get("msg_id"), str):
            self._drop("reply without a parent msg_id", len(frames))
            return
        engine = frames[0]
        if not self.owes(engine, parent["msg_id"]):
            # Only the engine a request went to may answer it, and only once.
            self._drop("a reply to a request this engine does not owe", len(frames))
            return
        self.monitor([REPLY, *frames])
        self.send_client(frames[1:])
        self.record_reply(engine, parent["msg_id"], parts)

    def on_notification(self, frames: list[zmq.Frame]) -> None:
        parsed = self.session.parse([f.bytes for f in frames])
        if parsed is None:
            return
        msg = parsed[1]
        content = msg["content"]
        uuid, eid = content.get("uuid"), content.get("id")
        if not isinstance(uuid, str) or not isinstance(eid, int):
            return
        engine = uuid.encode("utf-8")
        if msg["msg_type"] == "registration_notification":
            self.engines[engine] = eid
            self.engine_added(engine, eid)
        elif msg["msg_type"] == "unregistration_notification" and engine in self.engines:
            self.drop_backlog(engine)
            self.engine_removed(engine, eid)
            del self.engines[engine]

    # -- sending ------------------------------------------------------------------------

    def monitor(self, frames: list[Any]) -> None:
        """A copy for the hub, sent with the burst's others by :meth:`flush`:
        ``[kind, engine, client, DELIM, signature, ...]``; ``kind`` is sealed into an
        envelope that proves the copy comes from this cluster's queues.

        Request copies stop after the content frame: the database keeps result buffers,
        not arguments, and every frame costs the hub a receive.
        """
        frames[0] = self.signer.monitor_tag(frames[0], frames[1], frames[2], frames[4])
        self._to_monitor.append(frames)

    def send_client(self, frames: list[Any]) -> None:
        """``[client_id, DELIM, ...]`` to a client, sent by :meth:`flush`."""
        client = frames[0]
        queued = self._to_clients.get(client)
        if queued is None:
            self._to_clients[client] = [frames[1:]]
        else:
            queued.append(frames[1:])

    def send_engine(self, engine: bytes, client: Any, rest: Sequence[Any]) -> None:
        """``[engine, client, DELIM, ...]`` to a registered engine, sent by :meth:`flush`.

        An engine connects its queue sockets before it registers, but the connection may
        still be completing when its first task comes (EHOSTUNREACH): such messages are
        held, in order, and retried until :data:`CONNECT_GRACE` runs out.
        """
        held = self.backlog.get(engine)
        if held is not None:
            held.append([engine, client, *rest])
            return
        queued = self._to_engines.get(engine)
        if queued is None:
            self._to_engines[engine] = [[client, *rest]]
        else:
            queued.append([client, *rest])

    def flush(self) -> None:
        """Send what handling the last burst produced: the hub's copies first (so a
        client that asks the hub about a reply it just got finds it recorded), then
        replies, then requests; several messages for one peer go as one batch."""
        if self._to_monitor:
            copies, self._to_monitor = self._to_monitor, []
            for message in pack_batches((), copies, SEND_BATCH):
                try:
                    send_frames(self.monitor_sock, message, NOBLOCK)
                except zmq.Again:  # never block the queue for the record: count the loss
                    self.monitor_dropped += 1
        if self._to_clients:
            replies, self._to_clients = self._to_clients, {}
            for client, messages in replies.items():
                self._send_batches(self.client_sock, client, messages, self._client_gone)
        if self._to_engines:
            requests, self._to_engines = self._to_engines, {}
            for engine, messages in requests.items():
                self._send_batches(self.engine_sock, engine, messages, self._not_connected)

    def _send_batches(
        self,
        sock: zmq.Socket[Any],
        peer: bytes,
        messages: list[list[Any]],
        unreachable: Callable[[bytes, list[list[Any]]], None],
    ) -> None:
        step = SEND_BATCH if self.batch_engines or sock is self.client_sock else 1
        sent = 0
        for message, count in pack_batches_counted((peer,), messages, step):
            try:
                send_frames(sock, message)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                unreachable(peer, messages[sent:])  # only what did not go out
                return
            sent += count

    def _client_gone(self, client: bytes, messages: list[list[Any]]) -> None:
        # The client is gone; its results are in the task database.
        log.info("%s: client %r gone, %d replies not delivered", self.name, client, len(messages))

    def _not_connected(self, engine: bytes, messages: list[list[Any]]) -> None:
        self.backlog[engine] = deque([engine, *m] for m in messages)
        self._backlog_deadline[engine] = time.monotonic() + CONNECT_GRACE

    def _retry_backlog(self, now: float) -> None:
        for engine, held in list(self.backlog.items()):
            while held:
                try:
                    send_frames(self.engine_sock, held[0])
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    break
                held.popleft()
            if not held or now > self._backlog_deadline[engine]:
                del self.backlog[engine]
                del self._backlog_deadline[engine]
                for frames in held:
                    header = loads_dict(bytes(frames[4])) or {}
                    log.warning("%s: engine %r never connected", self.name, engine)
                    self.undeliverable(engine, str(header.get("msg_id")))

    def drop_backlog(self, engine: bytes) -> None:
        """Forget held messages of an engine that left (its requests are answered anyway)."""
        self.backlog.pop(engine, None)
        self._backlog_deadline.pop(engine, None)

    def error_reply(
        self, client: bytes, header: dict[str, Any], engine: bytes, ename: str, evalue: str
    ) -> None:
        """Answer a request ourselves, signed, as if the engine had failed it."""
        engine_id = self.engines.get(engine)
        engine_uuid = engine.decode("utf-8", "replace")
        msg_type = str(header.get("msg_type", "unknown_request"))
        content = {
            "status": "error",
            "ename": ename,
            "evalue": evalue,
            "traceback": [f"{ename}: {evalue}"],
            "engine_info": {
                "engine_id": engine_id,
                "engine_uuid": engine_uuid,
                "method": msg_type.removesuffix("_request"),
            },
        }
        metadata = {
            "engine_id": engine_id,
            "engine_uuid": engine_uuid,
            "started": None,
            "completed": _now_iso(),
            "status": "error",
        }
        msg = self.session.msg(_reply_type(msg_type), content, parent=header, metadata=metadata)
        frames = wire.serialize(msg, self.signer, [client])
        self.monitor([REPLY, engine, *frames])
        self.send_client(frames)

    # -- the policy -----------------------------------------------------------------------

    def route_request(
        self, frames: list[Any], header: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        """Forget the request ``msg_id`` answered by ``engine``."""
        raise NotImplementedError

    def engine_added(self, engine: bytes, eid: int) -> None:
        """A new engine registered."""

    def engine_removed(self, engine: bytes, eid: int) -> None:
        """An engine died or left: answer what it still owed."""
        raise NotImplementedError

    def undeliverable(self, engine: bytes, msg_id: str) -> None:
        """The request ``msg_id`` could not reach ``engine``: answer it with an error."""
        raise NotImplementedError

    def outstanding_count(self) -> int:
        """How many requests await a reply (0 once everything is answered)."""
        raise NotImplementedError

    def owes(self, engine: bytes, msg_id: str) -> bool:
        """Whether ``engine`` was sent the request ``msg_id`` and has not answered it."""
        raise NotImplementedError


class PerEngineQueue(RoutingQueue):
    """A queue that sends each request to named engines and answers for them if they die:
    it keeps, per engine, the requests still awaiting a reply."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.outstanding: dict[bytes, dict[str, Pending]] = {}

    def engine_removed(self, engine: bytes, eid: int) -> None:
        for pending in self.outstanding.pop(engine, {}).values():
            self.error_reply(
                pending.client, pending.header, engine, "EngineError", f"engine {eid} died"
            )

    def undeliverable(self, engine: bytes, msg_id: str) -> None:
        pending = self.outstanding.get(engine, {}).pop(msg_id, None)
        if pending is not None:
            self.error_reply(
                pending.client, pending.header, engine, "EngineError", "engine not connected"
            )

    def outstanding_count(self) -> int:
        return sum(len(t) for t in self.outstanding.values())

    def owes(self, engine: bytes, msg_id: str) -> bool:
        table = self.outstanding.get(engine)
        return table is not None and msg_id in table


class DirectQueue(PerEngineQueue):
    """mux and control: the client names the engine in its first routing frame."""

    client_routing = 2

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.dead: set[bytes] = set()

    def route_request(
        self, frames: list[Any], header: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client, engine = frames[0], frames[1]
        msg_id = header["msg_id"]
        self.monitor([REQUEST, engine, client, *frames[2:8]])
        if engine in self.engines:
            self.outstanding[engine][msg_id] = Pending(client, header)
            self.send_engine(engine, client, frames[2:])
            return
        if engine not in self.dead:
            # Not announced to us yet, but an engine connects before it registers: if the
            # uuid is connected, the hub's notification is merely still on its way.
            try:
                send_frames(self.engine_sock, [engine, client, *frames[2:]])
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
            else:
                self.outstanding.setdefault(engine, {})[msg_id] = Pending(client, header)
                return
        self.error_reply(client, header, engine, "EngineError", "no such engine")

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        table = self.outstanding.get(engine)
        if table is not None:
            table.pop(msg_id, None)

    def engine_added(self, engine: bytes, eid: int) -> None:
        self.outstanding.setdefault(engine, {})
        self.dead.discard(engine)

    def engine_removed(self, engine: bytes, eid: int) -> None:
        self.dead.add(engine)
        super().engine_removed(engine, eid)


class BroadcastScheduler(PerEngineQueue):
    """One request, many engines: the same frames (zero-copy) to each target."""

    wants_metadata = True

    def __init__(self, name: str = "broadcast", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    def route_request(
        self, frames: list[Any], header: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client = client_id = frames[0]
        rest = frames[1:]
        targets = metadata.get("targets")
        by_id = {eid: uuid for uuid, eid in self.engines.items()}
        if targets is None:
            chosen: list[tuple[int, bytes | None]] = [(e, u) for u, e in self.engines.items()]
        elif isinstance(targets, list):
            chosen = [(t, by_id.get(t)) for t in targets if isinstance(t, int)]
        else:
            chosen = []
        if not chosen:
            self.monitor([REQUEST, b"", client, *rest[:6]])
            self.error_reply(client_id, header, b"", "EngineError", "no target engines")
            return
        msg_id = header["msg_id"]
        for eid, engine in chosen:
            if engine is None:
                self.monitor([REQUEST, b"", client, *rest[:6]])
                self.error_reply(client_id, header, b"", "EngineError", f"no engine {eid}")
                continue
            self.monitor([REQUEST, engine, client, *rest[:6]])
            self.outstanding.setdefault(engine, {})[msg_id] = Pending(client_id, header)
            self.send_engine(engine, client, rest)

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        table = self.outstanding.get(engine)
        if table is not None:
            table.pop(msg_id, None)
            if not table:
                del self.outstanding[engine]


# ------------------------------------------------------------------ load balancing

_WAITING, _HELD, _RUNNING, _DONE = range(4)


class Job:
    """A load-balanced task the scheduler still owes an answer for."""

    __slots__ = (
        "msg_id",
        "client",
        "header",
        "frames",
        "targets",
        "after",
        "follow",
        "retries",
        "deadline",
        "engine",
        "unmet",
        "state",
    )

    def __init__(
        self,
        msg_id: str,
        client: bytes,
        header: dict[str, Any],
        frames: list[zmq.Frame],
        targets: frozenset[int] | None,
        after: list[str],
        follow: list[str],
        retries: int,
        deadline: float | None,
    ) -> None:
        self.msg_id = msg_id
        self.client = client
        self.header = header
        self.frames = frames  # [client, DELIM, ...]: kept for dispatch and resubmission
        self.targets = targets
        self.after = after
        self.follow = follow
        self.retries = retries
        self.deadline = deadline
        self.engine: bytes | None = None
        self.unmet = 0
        self.state = _WAITING


def _id_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class TaskScheduler(RoutingQueue):
    """Load balancing: least outstanding tasks among eligible live engines, ties round-robin.

    A task waits (``_WAITING``) until its ``after``/``follow`` dependencies are met, then is
    dispatched, or held (``_HELD``) while no eligible engine is alive. ``timeout`` bounds
    both waits.
    """

    wants_metadata = True

    def __init__(self, name: str = "task", *, results_lru: int = RESULTS_LRU, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.order: list[bytes] = []  # live engines, registration order
        self.load: dict[bytes, int] = {}
        self.jobs: dict[str, Job] = {}  # every task not yet answered, in any state
        self.blocked: dict[str, list[Job]] = {}  # dependency msg_id -> jobs waiting on it
        self.held: deque[Job] = deque()
        # Recent outcomes, oldest first: the engine (b"" if none) for a success, _FAILED for
        # a failure. A plain dict with one small value each: this holds RESULTS_LRU entries
        # on a busy cluster, and an OrderedDict of tuples took twice the memory.
        #: hash(msg_id) -> the engine it ran on (the scheduler's own bytes object for it),
        #: or _FAILED. Integer keys and shared engine ids take half the memory of msg_id
        #: strings and per-reply bytes; str hashes are keyed per process (SipHash), so a
        #: client cannot make two of its ids collide on purpose.
        self.results: dict[int, bytes | bool] = {}
        self.results_lru = results_lru
        self.dead_ids: set[int] = set()
        self._timers: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._rr = 0

    # -- arrival -----------------------------------------------------------------------

    def route_request(
        self, frames: list[Any], header: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client = client_id = frames[0]
        msg_id = header["msg_id"]
        if msg_id in self.jobs:
            self.error_reply(client_id, header, b"", "ValueError", "duplicate msg_id")
            return
        targets_md = metadata.get("targets")
        targets = (
            frozenset(t for t in targets_md if isinstance(t, int))
            if isinstance(targets_md, list)
            else None
        )
        retries = metadata.get("retries") or 0
        timeout = metadata.get("timeout")
        deadline = None
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout >= 0:
            try:  # an int too large for a float, or inf, means no deadline
                deadline = time.monotonic() + float(timeout)
            except OverflowError:
                pass
            if deadline is not None and not math.isfinite(deadline):
                deadline = None
        job = Job(
            msg_id,
            client_id,
            header,
            frames,
            targets,
            _id_list(metadata.get("after")),
            _id_list(metadata.get("follow")),
            retries if isinstance(retries, int) and retries > 0 else 0,
            deadline,
        )
        self.jobs[msg_id] = job
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._seq), job))
        # Fast path: no dependencies, an engine to run it: straight through.
        if not job.after and not job.follow:
            engine = self._choose(job)
            if engine is not None:
                self.monitor([REQUEST, engine, client, *frames[1:7]])
                self._dispatch(job, engine)
                return
        self.monitor([REQUEST, b"", client, *frames[1:7]])
        failed = self._dependency_failure(job)
        if failed:
            self._fail(job, "UnmetDependency", failed)
            return
        for dep in (*job.after, *job.follow):
            other = self.jobs.get(dep)
            if other is not None and other is not job:
                self.blocked.setdefault(dep, []).append(job)
                job.unmet += 1
        if job.unmet == 0:
            self._ready(job)

    def _dependency_failure(self, job: Job) -> str | None:
        """Why ``job`` can never run, judging by the outcomes already known; else None."""
        for dep in (*job.after, *job.follow):
            if self.results.get(hash(dep)) is _FAILED:
                return f"dependency {dep} failed"
        if job.targets is not None and job.targets and job.targets <= self.dead_ids:
            return "every target engine is dead"
        return None

    def _location(self, job: Job) -> tuple[bool, bytes | None]:
        """``(possible, engine)``: where ``follow`` pins the job (None: anywhere)."""
        where: bytes | None = None
        for dep in job.follow:
            outcome = self.results.get(hash(dep))
            if not outcome:
                continue  # forgotten, never seen, failed or ran nowhere: no constraint
            if where is not None and outcome != where:
                return False, None
            where = outcome  # type: ignore[assignment]
        if where is not None and where not in self.load:
            return False, None
        return True, where

    # -- dispatch ----------------------------------------------------------------------

    def _choose(self, job: Job, pinned: bytes | None = None) -> bytes | None:
        order = self.order
        n = len(order)
        if pinned is not None:
            if job.targets is not None and self.engines.get(pinned) not in job.targets:
                return None
            return pinned
        if not n:
            return None
        best: bytes | None = None
        best_load = -1
        best_index = 0
        start = self._rr % n
        targets = job.targets
        load = self.load
        for i in range(n):
            index = (start + i) % n
            engine = order[index]
            if targets is not None and self.engines[engine] not in targets:
                continue
            current = load[engine]
            if best is None or current < best_load:
                best, best_load, best_index = engine, current, index
                if current == 0:
                    break
        if best is not None:
            self._rr = best_index + 1
        return best

    def _dispatch(self, job: Job, engine: bytes) -> None:
        job.engine = engine
        job.state = _RUNNING
        self.load[engine] += 1
        frames = job.frames
        self.send_engine(engine, frames[0], frames[1:])

    def undeliverable(self, engine: bytes, msg_id: str) -> None:
        job = self.jobs.get(msg_id)
        if job is not None and job.state == _RUNNING and job.engine == engine:
            self.load[engine] -= 1
            self._fail(job, "EngineError", "engine not connected", engine)

    def _ready(self, job: Job) -> None:
        """Dependencies met: dispatch now, or hold until an eligible engine is alive."""
        possible, pinned = self._location(job)
        if not possible:
            self._fail(job, "UnmetDependency", "follow dependencies cannot be met")
            return
        engine = self._choose(job, pinned)
        if engine is None:
            job.state = _HELD
            self.held.append(job)
            return
        self._dispatch(job, engine)

    # -- completion ----------------------------------------------------------------------

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        job = self.jobs.get(msg_id)
        if job is None or job.engine != engine:
            return
        metadata = loads_dict(parts[2]) or {}
        ok = metadata.get("status", "ok") == "ok"
        self.load[engine] -= 1
        self._finish(job, ok, job.engine)  # the scheduler's copy: one per engine, kept

    def _finish(self, job: Job, ok: bool, engine: bytes | None) -> None:
        """Forget ``job``, remember its outcome, and wake (or fail) what waited on it."""
        work = [(job, ok, engine)]
        while work:
            done, success, where = work.pop()
            done.state = _DONE
            self.jobs.pop(done.msg_id, None)
            done.frames = []
            self._remember(done.msg_id, success, where)
            for waiter in self.blocked.pop(done.msg_id, ()):
                if waiter.state != _WAITING:
                    continue
                if not success:
                    self._error(waiter, "UnmetDependency", f"dependency {done.msg_id} failed")
                    work.append((waiter, False, None))
                    continue
                waiter.unmet -= 1
                if waiter.unmet == 0:
                    self._ready(waiter)

    def _remember(self, msg_id: str, ok: bool, engine: bytes | None) -> None:
        results = self.results
        key = hash(msg_id)
        results.pop(key, None)  # re-insert at the young end
        results[key] = (engine or b"") if ok else _FAILED
        if len(results) > self.results_lru:
            del results[next(iter(results))]

    def _error(self, job: Job, ename: str, evalue: str, engine: bytes | None = None) -> None:
        self.error_reply(job.client, job.header, engine or b"", ename, evalue)

    def _fail(self, job: Job, ename: str, evalue: str, engine: bytes | None = None) -> None:
        self._error(job, ename, evalue, engine)
        self._finish(job, False, None)

    # -- engines and time ----------------------------------------------------------------

    def engine_added(self, engine: bytes, eid: int) -> None:
        if engine not in self.load:
            self.order.append(engine)
            self.load[engine] = 0
        self.dead_ids.discard(eid)
        held, self.held = self.held, deque()
        for job in held:
            if job.state == _HELD:
                job.state = _WAITING
                self._ready(job)

    def engine_removed(self, engine: bytes, eid: int) -> None:
        if engine in self.load:
            self.order.remove(engine)
            del self.load[engine]
        self.dead_ids.add(eid)
        for job in [j for j in self.jobs.values() if j.state == _RUNNING and j.engine == engine]:
            if job.retries > 0:
                job.retries -= 1
                job.engine = None
                job.state = _WAITING
                log.info("task %s resubmitted after engine %d died", job.msg_id, eid)
                self._ready(job)
            else:
                self._fail(job, "EngineError", f"engine {eid} died", engine)
        for job in list(self.held):
            if job.state == _HELD and self._dependency_failure(job):
                self._fail(job, "EngineError", "every target engine is dead")
        self.held = deque(j for j in self.held if j.state == _HELD)

    def next_timeout(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].state in (_RUNNING, _DONE):
            heapq.heappop(timers)
        retry = super().next_timeout()
        if not timers:
            return retry
        due = max(0.0, timers[0][0] - time.monotonic())
        return due if retry is None else min(due, retry)

    def on_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, job = heapq.heappop(timers)
            if job.state in (_WAITING, _HELD):
                self._fail(job, "DependencyTimeout", "dependencies not met in time")
        if self.held and any(j.state != _HELD for j in self.held):
            self.held = deque(j for j in self.held if j.state == _HELD)

    def outstanding_count(self) -> int:
        return len(self.jobs)

    def owes(self, engine: bytes, msg_id: str) -> bool:
        job = self.jobs.get(msg_id)
        return job is not None and job.state == _RUNNING and job.engine == engine


def make_queue(name: str, **kwargs: Any) -> RoutingQueue:
    """The queue component named ``name``: mux, control, task or broadcast."""
    if name in ("mux", "control"):
        return DirectQueue(name, **kwargs)
    if name == "task":
        return TaskScheduler(**kwargs)
    if name == "broadcast":
        return BroadcastScheduler(**kwargs)
    raise ValueError(f"no queue named {name!r}")
