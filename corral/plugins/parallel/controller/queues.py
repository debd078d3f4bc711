"""The queues: mux and control (direct), the load-balancing task scheduler, broadcast.

All four are one routing loop (:class:`RoutingQueue`) with a different target policy:

* :class:`DirectQueue` (``mux``, ``control``): the client names the engine.
* :class:`TaskScheduler` (``task``): late assignment: each engine holds at most ``hwm``
  tasks (running plus prefetched); the rest wait in the scheduler's backlog and go to
  whichever engine makes room first. Among engines with room a policy picks
  (:mod:`.policies`; by default the fewest outstanding tasks, ties round-robin). It
  honours ``targets``, ``after``, ``follow``, ``timeout`` and ``retries`` from the
  request metadata; a retry is spent only by a task that may have run.
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
resubmitted while its ``retries`` allow, or put back in the backlog if it never
started), so no client waits forever.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import zmq

from corral.core.fifo import trim_oldest
from corral.core.heap import HeapTrimmer
from corral.transports.zmq import wire
from corral.transports.zmq.batch import (
    BATCH,
    MAX_BATCH_MESSAGES,
    BatchError,
    is_batch,
    pack_batches,
    pack_batches_counted,
    unbatch,
)
from corral.transports.zmq.door import (
    BUFFERS_COUNTED,
    ROLES,
    Misdirected,
    Role,
    RoleRefused,
    WrongRun,
    admit,
    cluster_signer,
)
from corral.transports.zmq.gate import Gate, RefusalLog, peer_name
from corral.transports.zmq.session import Session

from ..coalesce import GAP, Coalescer, Group, pack_engines, read_mark
from ..flow import (
    CLIENT_BOUND,
    STORED,
    InFlight,
    large_bytes,
    tracked,
)
from .base import (
    NOBLOCK,
    Component,
    ControlPipe,
    drain,
    loads_dict,
    make_socket,
    read_control,
    ready_topic,
    recv_frames,
    send_frames,
)
from .dependencies import FlaggedDependencies
from .dependencies import parse as parse_dependency
from .liveness import DisconnectWatch, local_engine_dead
from .loadindex import LoadIndex
from .policies import Policy, get_policy

__all__ = [
    "BroadcastScheduler",
    "DirectQueue",
    "DEFAULT_HWM",
    "DIRECT_FEED",
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
#: How long a queue still takes the replies of an engine that left politely (asked to shut
#: down) before it answers what that engine still owes: see PerEngineQueue.engine_leaving.
LEAVE_GRACE = 2.0
#: How often messages held for a still-connecting engine are retried.
_RETRY_INTERVAL = 0.005
#: Messages an engine's pipe into a queue holds before libzmq stops reading from that
#: engine (its replies wait on the engine). Replies are batched, so a few suffice.
_ENGINE_RCVHWM = 4
#: How often unsent large messages are checked for (seconds) while any are in flight.
_FLOW_CHECK = 0.005
#: At most this many messages for one peer go out as one batch.
SEND_BATCH = 64
#: The routing frame of an engine's start notice to the task scheduler (engine.py's
#: ``_STARTED_ROUTE``): ZeroMQ never gives a client an id like it.
STARTED = b"\x00started"
#: The body of one coalesced message (the replies of one call) stays under this.
COALESCED_BYTES = 4 * 1024 * 1024
#: The port the task scheduler binds for the *direct feed*, among the ports its ``bind``
#: returns: not a cluster file field (the supervisor takes it out and hands its endpoint
#: to the mux and broadcast queues, see :meth:`PerEngineQueue.configure`).
DIRECT_FEED = "direct_feed"


class Pending:
    """An outstanding request: who asked, its header (the parent of any reply we make),
    and the multi-engine call it belongs to when its reply is coalesced (.coalesce)."""

    __slots__ = ("client", "header", "group")

    def __init__(self, client: bytes, header: dict[str, Any], group: Group | None = None) -> None:
        self.client = client
        self.header = header
        self.group = group


#: What a queue's two sides take in (corral.transports.zmq.door.ROLES).
_FROM_CLIENTS = ROLES["queue_client"]
_FROM_ENGINES = ROLES["queue_engine"]


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
        results_on_disk: bool = False,
        flow_bound: int = CLIENT_BOUND,
        run: str = "",
    ) -> None:
        self.name = name
        self.gate = gate
        #: this start of the controller (door.RUN), which every request must name: one
        #: captured before a restart is not forwarded to an engine again after it ("":
        #: a queue made by hand, which checks no run)
        self.run = run or None
        signer = cluster_signer(key, scheme)
        # An ordered replay guard (wire.ReplayGuard): clients and engines reach a queue
        # in one hop, so what it has forgotten stays refused.
        self.session = Session(
            key,
            scheme=scheme,
            username=f"corral-{name}",
            signer=signer,
            replay=wire.ReplayGuard(ordered=True),
        )
        #: the session's signer, kept as the cluster signer it is (monitor tags, route seals)
        self.signer = signer
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
        #: replies of multi-engine calls held until the call is answered (coalesce.py);
        #: None for queues that do not coalesce
        self.coalescer: Coalescer | None = None
        #: clients getting released coalesced replies in this flush (packed as one)
        self._coalesced: set[bytes] = set()
        #: same-host engines: uuid -> their Unix socket, to tell quickly that one died
        self.local_paths: dict[bytes, str] = {}
        #: engine -> why it died, while its owed requests are being answered
        self.death_causes: dict[bytes, str] = {}
        #: engine -> msg_ids it claimed on re-registering after a controller restart
        self.inherited: dict[bytes, set[str]] = {}
        #: engine not registered yet -> its verified replies (frames, parts, msg_id),
        #: judged once it registers
        self.parked: dict[bytes, list[tuple[list[Any], Any, str]]] = {}
        self._host = socket.gethostname()
        # Flow control of large results (corral.plugins.parallel.flow): bytes libzmq has
        # not sent yet, per client and to the hub; whether a reply may go out stored (its
        # buffers fetched from the task database later), and how many did.
        self.client_flight: dict[bytes, InFlight] = {}
        self.monitor_flight = InFlight()
        self.may_store = results_on_disk and name in ("mux", "task")
        self.stored = 0
        #: bytes (per client unsent, or of copies unsent to the hub) beyond which large
        #: replies go out stored, or reading from engines pauses
        self.flow_bound = flow_bound

    # -- sockets ----------------------------------------------------------------------

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        gate = self.gate
        self.client_sock = make_socket(ctx, zmq.ROUTER, unlimited=True, gate=gate)
        self.client_sock.router_mandatory = 1
        self.engine_sock = make_socket(ctx, zmq.ROUTER, unlimited=True, gate=gate)
        # Receiving has no reason to be unlimited: a full pipe only stops reading from
        # that engine (nothing is dropped), so engines producing large results faster
        # than they can be passed on keep them instead of this process (see flow.py).
        self.engine_sock.rcvhwm = _ENGINE_RCVHWM
        self.engine_sock.router_mandatory = 1
        self.engine_sock.router_handover = 1
        self.disconnects = DisconnectWatch(self.engine_sock)
        self.monitor_sock = make_socket(ctx, zmq.PUSH, gate=gate, connects=True)
        self.monitor_sock.sndhwm = 100_000
        self.monitor_sock.connect(self.monitor_url)
        self.notify_sock = make_socket(ctx, zmq.SUB, gate=gate, connects=True)
        for topic in _NOTIFY_TOPICS:
            self.notify_sock.subscribe(topic)
        self.notify_sock.subscribe(ready_topic(self.name))  # last: see ready_topic
        self.notify_sock.connect(self.notification_url)
        return {
            self.name: self.bind_port(self.client_sock, self.name),
            f"{self.name}_engine": self.bind_port(self.engine_sock, f"{self.name}_engine"),
        }

    def close(self) -> None:
        self.disconnects.close()
        for sock in (self.client_sock, self.engine_sock, self.monitor_sock, self.notify_sock):
            sock.close(linger=0)

    # -- the loop ---------------------------------------------------------------------

    def serve(self, control: ControlPipe) -> None:
        poller = zmq.Poller()
        client, engine, notify = self.client_sock, self.engine_sock, self.notify_sock
        disconnects = self.disconnects.socket
        for sock in (client, engine, notify, disconnects):
            poller.register(sock, zmq.POLLIN)
        extras = self.extra_inputs()
        for sock, _ in extras:
            poller.register(sock, zmq.POLLIN)
        control_fd = control.fileno()
        poller.register(control_fd, zmq.POLLIN)
        on_request, on_reply = self.on_client_frames, self.on_engine_frames
        trimmer = HeapTrimmer()
        reading_engines = True
        try:
            while True:
                timer_wait = self.next_timeout()
                wait = timer_wait
                if self.monitor_flight:
                    # Copies for the hub unsent: above the bound, leave engine replies
                    # with the engines until libzmq has passed enough on.
                    held_back = self.monitor_flight.bytes > self.flow_bound
                    if held_back == reading_engines:
                        reading_engines = not held_back
                        poller.modify(engine, zmq.POLLIN if reading_engines else 0)
                    if self.monitor_flight:  # held back or not, check again soon
                        wait = _FLOW_CHECK if wait is None else min(wait, _FLOW_CHECK)
                elif not reading_engines:
                    reading_engines = True
                    poller.modify(engine, zmq.POLLIN)
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
                    self._drain_engines(on_reply)
                if disconnects in events and self.disconnects.drain():
                    self.on_engine_disconnect()
                for sock, handler in extras:
                    if sock in events:
                        self._drain(sock, handler)
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

    def extra_inputs(self) -> list[tuple[zmq.Socket[Any], Callable[[list[Any]], None]]]:
        """Sockets of a subclass the loop reads too, each with its handler (after the
        engines' replies, before the clients' requests)."""
        return []

    def _drain(
        self,
        sock: zmq.Socket[Any],
        handler: Any,
        enough: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        drain(sock, handler, self.name, enough)

    def _drain_engines(self, handler: Any) -> None:
        """:meth:`_drain` for engine replies, stopping early once the large buffers read
        reach the flow bound: one pass must not pull a gigabyte of results in."""
        taken = 0

        def enough(frames: list[Any]) -> bool:
            nonlocal taken
            if len(frames) > 8:
                taken += large_bytes(frames, 8)
            return taken > self.flow_bound

        self._drain(self.engine_sock, handler, enough)

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

    def _verify(
        self, frames: Sequence[Any], at: int, role: Role, dest: str | None = None
    ) -> tuple[Sequence[Any], dict[str, Any]] | None:
        """The four JSON parts and the header, if ``frames[at]`` is the delimiter and the
        message passes the door (corral.transports.zmq.door.admit) for ``role`` (and,
        for requests, names this queue as its signed ``dest`` and this controller's
        run)."""
        peer = frames[0] if frames else b""
        if len(frames) < at + 6 or frames[at] != DELIM:
            self._drop("malformed messages", len(frames), peer)
            return None
        signature = frames[at + 1]
        parts = frames[at + 2 : at + 6]
        try:
            # A forwarder: the HMAC, and one signed digest per buffer frame; the engine
            # or client that unpickles the buffers hashes them.
            header = admit(
                self.signer, self.replay, parts, signature, frames[at + 6 :],
                how=BUFFERS_COUNTED, role=role, dest=dest,
                run=self.run if dest is not None else None,
            )  # fmt: skip
        except wire.BadSignature:
            self._drop("unsigned or forged messages (wrong key?)", len(frames), peer)
            return None
        except wire.ReplayedMessage:
            # An engine that re-registers after a controller restart sends its last
            # replies again, some of which its socket had already delivered: say so,
            # since that is what a log reader sees after every restart.
            why = (
                "replayed messages (or replies an engine sent again after a restart)"
                if role is _FROM_ENGINES
                else "replayed messages"
            )
            self._drop(why, len(frames), peer)
            return None
        except WrongRun:
            self._drop(
                "requests made for another controller run (from before a restart?)",
                len(frames),
                peer,
            )
            return None
        except Misdirected:
            self._drop(f"messages signed for another destination ({self.name})", len(frames), peer)
            return None
        except RoleRefused:
            self._drop(f"messages this socket does not take ({role.name})", len(frames), peer)
            return None
        except wire.WireError:
            self._drop("header is not a JSON object with a msg_id", len(frames), peer)
            return None
        return parts, header

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
        verified = self._verify(frames, self.client_routing, _FROM_CLIENTS, self.name)
        if verified is None:
            return
        parts, header = verified
        metadata: dict[str, Any] = {}
        if self.wants_metadata:
            loaded = loads_dict(parts[2])
            if loaded is None:
                self._drop("metadata is not a JSON object", len(frames))
                return
            metadata = loaded
        self.route_request(frames, header, metadata)

    def on_engine_frames(self, frames: list[zmq.Frame]) -> None:
        """A reply: ``[engine_uuid, client_id, DELIM, sig, header, parent, md, content, ...]``,
        or a batch of them, ``[engine_uuid, BATCH, index, body]``."""
        for message in self._messages(frames, 8):
            self.isolated(self._engine_reply, message)

    def _engine_reply(self, frames: list[Any]) -> None:
        verified = self._verify(frames, 2, _FROM_ENGINES)
        if verified is None:
            return
        parts = verified[0]
        parent = loads_dict(parts[1])
        if parent is None or not isinstance(parent.get("msg_id"), str):
            self._drop("reply without a parent msg_id", len(frames))
            return
        engine = frames[0]
        if engine not in self.engines and self._park(engine, (frames, parts, parent["msg_id"])):
            return  # an engine that outlived a controller, not registered again yet
        self._accept_reply((frames, parts, parent["msg_id"]))

    def _accept_reply(self, reply: tuple[list[Any], Any, str]) -> None:
        """A verified reply: forwarded if its engine owes it, else dropped."""
        frames, parts, msg_id = reply
        engine = frames[0]
        if not self.owes(engine, msg_id) and not self._inherited(engine, msg_id):
            # Only the engine a request went to may answer it, and only once.
            self._drop("a reply to a request this engine does not owe", len(frames))
            return
        self.reply_out(engine, [REPLY, *frames], frames[1:], self.group_of(engine, msg_id))
        self.record_reply(engine, msg_id, parts)

    def on_notification(self, frames: list[zmq.Frame]) -> None:
        parsed = self.session.parse([f.bytes for f in frames], ROLES["notifications"])
        if parsed is None:
            return
        msg = parsed[1]
        content = msg["content"]
        uuid, eid = content.get("uuid"), content.get("id")
        if not isinstance(uuid, str) or not isinstance(eid, int):
            return
        engine = uuid.encode("utf-8")
        if msg["msg_type"] == "registration_notification":
            holding = content.get("holding")
            if isinstance(holding, list) and holding:
                # Re-registered after a controller restart: the tasks it holds were sent
                # by the dead controller's queues; only this engine may answer them.
                self.inherited[engine] = {m for m in holding if isinstance(m, str)}
            path = content.get("local_path")
            # A monitored engine's death is reported by its monitor, with the cause: no
            # guessing from a closed connection first (launchers/monitor.py).
            monitored = content.get("monitored") is True
            if (
                isinstance(path, str)
                and path
                and content.get("hostname") == self._host
                and not monitored
            ):
                self.local_paths[engine] = path
            self.engines[engine] = eid
            self.engine_added(engine, eid)
            for parked in self.parked.pop(engine, ()):
                self.isolated(self._accept_reply, parked)
        elif msg["msg_type"] == "unregistration_notification" and engine in self.engines:
            if content.get("reason") == "shutdown" and self.engine_leaving(engine, eid):
                return
            cause = content.get("cause")
            if isinstance(cause, str) and cause:
                self.death_causes[engine] = cause
            try:
                self._forget_engine(engine, eid)
            finally:
                self.death_causes.pop(engine, None)

    def _park(self, engine: bytes, reply: tuple[list[Any], Any, str]) -> bool:
        """Keep a reply from an engine not registered (yet): after a controller restart
        its sockets reconnect, and send what they held, before it registers again and
        says which tasks it holds. Bounded; False when full (the reply is judged now)."""
        parked = self.parked.setdefault(engine, [])
        if len(parked) >= _PARK_LIMIT:
            return False
        parked.append(reply)
        return True

    def _inherited(self, engine: bytes, msg_id: str) -> bool:
        """Whether ``engine`` answers a task it claimed when it re-registered (once)."""
        held = self.inherited.get(engine)
        if not held or msg_id not in held:
            return False
        held.discard(msg_id)
        return True

    def _forget_engine(self, engine: bytes, eid: int) -> None:
        self.inherited.pop(engine, None)
        self.parked.pop(engine, None)
        self.drop_backlog(engine)
        self.local_paths.pop(engine, None)
        self.engine_removed(engine, eid)
        del self.engines[engine]

    def died(self, engine: bytes, eid: int) -> str:
        """The error text for a request ``engine`` owed when it died (with its monitor's
        cause when one was reported)."""
        cause = self.death_causes.get(engine)
        return f"engine {eid} died: {cause}" if cause else f"engine {eid} died"

    def on_engine_disconnect(self) -> None:
        """An engine connection dropped: any same-host engine whose process is gone is
        treated as dead now, without waiting for the hub's heartbeat verdict (see
        :mod:`.liveness`). Its replies sent before it died are handled first."""
        while True:  # what the dead engine sent before its connection closed
            try:
                frames = recv_frames(self.engine_sock, NOBLOCK)
            except zmq.Again:
                break
            try:
                self.on_engine_frames(frames)
            except Exception:
                log.exception("%s: error while handling a message; dropped", self.name)
        for engine, path in list(self.local_paths.items()):
            eid = self.engines.get(engine)
            if eid is not None and local_engine_dead(path):
                log.info("%s: engine %d is gone (connection closed, no process)", self.name, eid)
                self._forget_engine(engine, eid)

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

    def reply_out(
        self, engine: bytes, copy: list[Any], message: list[Any], group: Group | None
    ) -> None:
        """A verified reply of ``engine`` (or one of our own): its hub ``copy``
        (``[REPLY, engine, client, DELIM, ...]``) and its ``message`` for the client
        (``[client, DELIM, ...]``), sent with the burst, or held with the other replies of
        its multi-engine call (``group``) until that call is answered."""
        coalescer = self.coalescer
        if coalescer is not None:
            client = message[0]
            if group is not None and len(message) > 7 and large_bytes(message, 7):
                # Large results are never held here (flow.py: they stay with the engines
                # while the client is slow); nor may they pass the call's earlier ones.
                coalescer.answered(group)
                self.release_group(group)
                group = None
            if coalescer.holding:
                for earlier in coalescer.blocking(client, engine, group):
                    self.release_group(earlier)  # an engine's replies reach a client in order
            if group is not None and group.client == client:
                coalescer.hold(group, engine, copy, message, time.monotonic())
                if group.complete:
                    self.release_group(group)
                return
        self.monitor(copy)
        self.send_client(message)

    def release_group(self, group: Group) -> None:
        """Send what ``group`` holds with this burst: its hub copies as one batch, its
        replies to the client as one message (see :meth:`flush`)."""
        assert self.coalescer is not None
        held = self.coalescer.take(group)
        if not held:
            return
        for copy, message in held:
            self.monitor(copy)
            self.send_client(message)
        self._coalesced.add(group.client)

    def group_of(self, engine: bytes, msg_id: str) -> Group | None:
        """The multi-engine call whose replies are coalesced that ``msg_id`` belongs to."""
        return None

    def send_engine(self, engine: bytes, client: Any, rest: Sequence[Any]) -> None:
        """``[engine, client, seal, DELIM, ...]`` to a registered engine, sent by
        :meth:`flush`. The seal (corral.transports.zmq.door.ClusterSigner.route_seal)
        binds the request to this queue and this engine: a copy captured on its way to
        one engine is refused by any other.

        An engine connects its queue sockets before it registers, but the connection may
        still be completing when its first task comes (EHOSTUNREACH): such messages are
        held, in order, and retried until :data:`CONNECT_GRACE` runs out.
        """
        message = [client, self.signer.route_seal(self.name, engine, rest[1]), *rest]
        held = self.backlog.get(engine)
        if held is not None:
            held.append([engine, *message])
            return
        queued = self._to_engines.get(engine)
        if queued is None:
            self._to_engines[engine] = [message]
        else:
            queued.append(message)

    def flush(self) -> None:
        """Send what handling the last burst produced: the hub's copies first (so a
        client that asks the hub about a reply it just got finds it recorded), then
        replies, then requests; several messages for one peer go as one batch."""
        coalesced = self._coalesced
        if self._to_monitor:
            copies, self._to_monitor = self._to_monitor, []
            if coalesced:  # a call's records in one batch
                batches = [
                    m
                    for m, _ in pack_batches_counted(
                        (), copies, MAX_BATCH_MESSAGES, COALESCED_BYTES
                    )
                ]
            else:
                batches = pack_batches((), copies, SEND_BATCH)
            for message in batches:
                nbytes = large_bytes(message, 9) if len(message) > 9 else 0
                if nbytes:
                    message, trackers = tracked(message, 9)
                try:
                    send_frames(self.monitor_sock, message, NOBLOCK)
                except zmq.Again:  # never block the queue for the record: count the loss
                    self.monitor_dropped += 1
                    continue
                if nbytes:
                    self.monitor_flight.add(trackers, nbytes)
                del message  # a tracked frame kept alive here would never count as sent
        if self._to_clients:
            replies, self._to_clients = self._to_clients, {}
            for client, messages in replies.items():
                self._send_batches(
                    self.client_sock,
                    client,
                    self._bounded(client, messages),
                    self._client_gone,
                    client in coalesced,
                )
            if coalesced:
                self._coalesced = set()
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
        coalesced: bool = False,
    ) -> None:
        step = SEND_BATCH if self.batch_engines or sock is self.client_sock else 1
        packed = (
            pack_batches_counted((peer,), messages, MAX_BATCH_MESSAGES, COALESCED_BYTES)
            if coalesced  # the replies of a call as one message
            else pack_batches_counted((peer,), messages, step)
        )
        sent = 0
        for message, count in packed:
            try:
                send_frames(sock, message)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                unreachable(peer, messages[sent:])  # only what did not go out
                return
            sent += count

    def _bounded(self, client: bytes, messages: list[list[Any]]) -> list[list[Any]]:
        """``messages`` for ``client`` (``[DELIM, sig, h, p, md, content, *buffers]``),
        large ones tracked, or stored (buffers left out, :data:`STORED` in front) while
        ``client`` has :attr:`flow_bound` bytes unsent: see corral.plugins.parallel.flow.
        """
        flight = None
        for index, message in enumerate(messages):
            if len(message) <= 6 or not large_bytes(message, 6):
                continue
            if flight is None:
                flight = self.client_flight.get(client)
                if flight is None:
                    flight = self.client_flight[client] = InFlight()
            if self.may_store and flight.bytes >= self.flow_bound:
                messages[index] = [STORED, *message[:6]]
                self.stored += 1
                continue
            messages[index], trackers = tracked(message, 6)
            flight.add(trackers, large_bytes(message, 6))
        if flight is None:
            flight = self.client_flight.get(client)
        if flight is not None and not flight:
            del self.client_flight[client]
        return messages

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
                    header = loads_dict(bytes(frames[5])) or {}  # engine, client, seal, DELIM, sig
                    log.warning("%s: engine %r never connected", self.name, engine)
                    self.undeliverable(engine, str(header.get("msg_id")))

    def drop_backlog(self, engine: bytes) -> None:
        """Forget held messages of an engine that left (its requests are answered anyway)."""
        self.backlog.pop(engine, None)
        self._backlog_deadline.pop(engine, None)

    def error_reply(
        self,
        client: bytes,
        header: dict[str, Any],
        engine: bytes,
        ename: str,
        evalue: str,
        group: Group | None = None,
    ) -> None:
        """Answer a request ourselves, signed, as if the engine had failed it (held with
        the other replies of its call, ``group``, when they are coalesced)."""
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
        self.reply_out(engine, [REPLY, engine, *frames], frames, group)

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

    def engine_leaving(self, engine: bytes, eid: int) -> bool:
        """An engine unregistered politely: True if this queue forgets it later (once it
        has answered, or after a grace), False to forget it now."""
        return False

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
    it keeps, per engine, the requests still awaiting a reply.

    **The direct feed.** An engine runs its requests one at a time, whichever queue they
    came through, so a load-balanced task sent to an engine busy with direct work waits
    behind it (and a task that waits for load-balanced subtasks deadlocks if one is
    queued behind it). The task scheduler cannot see this queue's requests, so a queue
    that ``reports_busy`` (mux, broadcast) tells it: once the supervisor hands it the
    endpoint the scheduler bound (a ``(DIRECT_FEED, url)`` control message), it sends,
    after each burst, the engines that began or ceased to owe it replies, as
    ``[queue name, engine, b"1" or b"", engine, ...]`` (and, on connecting, every
    engine that owes it one). The scheduler sets those engines aside (see
    :class:`TaskScheduler`).
    """

    #: whether this queue tells the task scheduler which engines owe it replies
    reports_busy = False

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.outstanding: dict[bytes, dict[str, Pending]] = {}
        self.coalescer = Coalescer() if GAP > 0 else None
        #: engines that left politely and still owe replies: uuid -> (id, deadline)
        self.leaving: dict[bytes, tuple[int, float]] = {}
        #: the direct feed to the task scheduler (None: not connected, or not reporting)
        self.feed_sock: zmq.Socket[Any] | None = None
        self._ctx: zmq.Context[Any] | None = None
        #: engines whose outstanding requests changed since the feed was last sent
        self.touched: set[bytes] = set()
        #: engines the task scheduler was told owe this queue replies
        self.told_busy: set[bytes] = set()

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        self._ctx = ctx
        return super().bind(ctx)

    def configure(self, message: Any) -> None:
        if isinstance(message, tuple) and len(message) == 2 and message[0] == DIRECT_FEED:
            if self.reports_busy and self.feed_sock is None and self._ctx is not None:
                sock = make_socket(
                    self._ctx, zmq.PUSH, unlimited=True, gate=self.gate, connects=True
                )
                sock.connect(message[1])
                self.feed_sock = sock
                # what was outstanding before: the scheduler hears it all now
                self.touched.update(e for e, table in self.outstanding.items() if table)
                self._send_feed()
            return
        super().configure(message)

    def close(self) -> None:
        if self.feed_sock is not None:
            self.feed_sock.close(linger=0)
        super().close()

    def _send_feed(self) -> None:
        """Tell the task scheduler which touched engines began or ceased to owe replies."""
        sock = self.feed_sock
        if sock is None:
            return  # not connected yet: kept in ``touched`` until it is
        touched, self.touched = self.touched, set()
        told, outstanding = self.told_busy, self.outstanding
        frames: list[bytes] = [self.name.encode("ascii")]
        for engine in touched:
            busy = bool(outstanding.get(engine))
            if busy != (engine in told):
                if busy:
                    told.add(engine)
                else:
                    told.discard(engine)
                frames += (engine, b"1" if busy else b"")
        if len(frames) > 1:
            send_frames(sock, frames)  # unlimited: never blocks, never drops

    def flush(self) -> None:
        if self.touched:
            self._send_feed()  # before the requests: the scheduler hears of them first
        super().flush()

    def engine_leaving(self, engine: bytes, eid: int) -> bool:
        """An engine asked to shut down answers its last requests (the shutdown itself,
        tasks it finished) on its queue connections, and then unregisters on another: the
        hub's notice can overtake those replies, and answering for the engine at once
        reported "engine died" for work it had done. So it is forgotten once it owes
        nothing, or after :data:`LEAVE_GRACE` seconds."""
        if not self.outstanding.get(engine):
            return False
        self.leaving[engine] = (eid, time.monotonic() + LEAVE_GRACE)
        return True

    def _done_leaving(self, engine: bytes) -> None:
        eid, _ = self.leaving.pop(engine)
        if engine in self.engines:
            self._forget_engine(engine, eid)

    def _expire_leaving(self, now: float) -> None:
        for engine, (_, deadline) in list(self.leaving.items()):
            if now >= deadline or not self.outstanding.get(engine):
                self._done_leaving(engine)

    def engine_added(self, engine: bytes, eid: int) -> None:
        self.leaving.pop(engine, None)  # the same engine back (a controller restart)
        self.outstanding.setdefault(engine, {})

    def engine_removed(self, engine: bytes, eid: int) -> None:
        if self.reports_busy:
            self.touched.add(engine)
        for pending in self.outstanding.pop(engine, {}).values():
            self.error_reply(
                pending.client,
                pending.header,
                engine,
                "EngineError",
                self.died(engine, eid),
                pending.group,
            )

    def undeliverable(self, engine: bytes, msg_id: str) -> None:
        pending = self.outstanding.get(engine, {}).pop(msg_id, None)
        if pending is not None:
            if self.reports_busy:
                self.touched.add(engine)
            self.error_reply(
                pending.client,
                pending.header,
                engine,
                "EngineError",
                "engine not connected",
                pending.group,
            )

    def group_of(self, engine: bytes, msg_id: str) -> Group | None:
        table = self.outstanding.get(engine)
        pending = table.get(msg_id) if table is not None else None
        return pending.group if pending is not None else None

    def next_timeout(self) -> float | None:
        wait = super().next_timeout()
        coalescer = self.coalescer
        if coalescer is not None and coalescer.holding:
            due = coalescer.next_due()
            if due is not None:
                until = max(0.0, due - time.monotonic())
                wait = until if wait is None else min(wait, until)
        if self.leaving:
            until = max(0.0, min(d for _, d in self.leaving.values()) - time.monotonic())
            wait = until if wait is None else min(wait, until)
        return wait

    def on_timer(self, now: float) -> None:
        if self.leaving:
            self._expire_leaving(now)
        coalescer = self.coalescer
        if coalescer is not None and coalescer.holding:
            for group in coalescer.due(now):
                self.release_group(group)

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
        # control requests run on an engine thread of their own: they never hold a task
        self.reports_busy = name == "mux"

    def route_request(
        self, frames: list[Any], header: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client, engine = frames[0], frames[1]
        msg_id = header["msg_id"]
        self.monitor([REQUEST, engine, client, *frames[2:8]])
        group = None
        coalescer = self.coalescer
        if coalescer is not None:
            # one request of a multi-engine call: its replies leave together
            mark = read_mark(frames[6])
            if mark is not None:
                group = coalescer.join(client, *mark)
        if engine in self.engines:
            self.outstanding[engine][msg_id] = Pending(client, header, group)
            if self.reports_busy:
                self.touched.add(engine)
            self.send_engine(engine, client, frames[2:])
            return
        if engine not in self.dead:
            # Not announced to us yet, but an engine connects before it registers: if the
            # uuid is connected, the hub's notification is merely still on its way.
            try:
                seal = self.signer.route_seal(self.name, engine, frames[3])
                send_frames(self.engine_sock, [engine, client, seal, *frames[2:]])
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
            else:
                self.outstanding.setdefault(engine, {})[msg_id] = Pending(client, header, group)
                if self.reports_busy:
                    self.touched.add(engine)
                return
        self.error_reply(client, header, engine, "EngineError", "no such engine", group)

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        table = self.outstanding.get(engine)
        if table is not None:
            table.pop(msg_id, None)
            if self.reports_busy and not table:
                self.touched.add(engine)

    def engine_added(self, engine: bytes, eid: int) -> None:
        super().engine_added(engine, eid)
        self.dead.discard(engine)

    def engine_removed(self, engine: bytes, eid: int) -> None:
        self.dead.add(engine)
        super().engine_removed(engine, eid)


class BroadcastScheduler(PerEngineQueue):
    """One request, many engines: the same frames (zero-copy) to each target."""

    wants_metadata = True
    reports_busy = True

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
            # Each engine once, in the order named: an engine admits one request once (a
            # second copy is a replay to it), so a repeated target was waited for ever,
            # and 100,000 of them held ~12 GB here.
            ids = dict.fromkeys(t for t in targets if isinstance(t, int))
            chosen = [(t, by_id.get(t)) for t in ids]
        else:
            chosen = []
        if not chosen:
            self.monitor([REQUEST, b"", client, *rest[:6]])
            self.error_reply(client_id, header, b"", "EngineError", "no target engines")
            return
        msg_id = header["msg_id"]
        coalescer = self.coalescer if len(chosen) > 1 else None
        sent: list[bytes] = []
        for eid, engine in chosen:
            # the replies of all targets leave together
            group = coalescer.join(client_id, msg_id, len(chosen)) if coalescer else None
            if engine is None:
                self.monitor([REQUEST, b"", client, *rest[:6]])
                self.error_reply(client_id, header, b"", "EngineError", f"no engine {eid}", group)
                continue
            sent.append(engine)
            self.outstanding.setdefault(engine, {})[msg_id] = Pending(client_id, header, group)
            self.touched.add(engine)
            self.send_engine(engine, client, rest)
        if len(sent) > 1:  # one copy for the hub, naming every engine (coalesce.py)
            self.monitor([REQUEST, pack_engines(sent), client, *rest[:6]])
        elif sent:
            self.monitor([REQUEST, sent[0], client, *rest[:6]])

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        table = self.outstanding.get(engine)
        if table is not None:
            table.pop(msg_id, None)
            if not table:
                del self.outstanding[engine]
                self.touched.add(engine)


# ------------------------------------------------------------------ load balancing

# Job states. _HELD: ready to run, in the scheduler's backlog (no eligible engine has room
# in its prefetch window, or none is alive). _RUNNING: sent to ``job.engine``, not answered.
_WAITING, _HELD, _RUNNING, _DONE = range(4)

#: How many load-balanced tasks one engine holds at most by default (the one it runs and
#: those prefetched behind it); ``hwm=0`` lifts the bound. Large enough that an engine
#: never idles waiting for its next task while the scheduler has work (one reply batch of
#: the engine is 64), small enough that a new engine soon gets its share.
DEFAULT_HWM = 128


class Job:
    """A load-balanced task the scheduler still owes an answer for."""

    __slots__ = (
        "msg_id",
        "client",
        "header",
        "frames",
        "targets",
        "avoid",
        "after",
        "follow",
        "retries",
        "deadline",
        "engine",
        "pinned",
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
        #: engine ids it goes to only if no other may run it (the one that submitted it)
        self.avoid: frozenset[int] | None = None
        self.after = after
        self.follow = follow
        self.retries = retries
        self.deadline = deadline
        self.engine: bytes | None = None
        self.pinned: bytes | None = None  # where ``follow`` pins it, once it is ready
        self.unmet = 0
        self.state = _WAITING


class TaskScheduler(RoutingQueue):
    """Load balancing with late assignment and a bounded prefetch per engine.

    A task waits (``_WAITING``) until its ``after``/``follow`` dependencies are met. Then
    it is sent to an eligible live engine that holds fewer than ``hwm`` of this
    scheduler's tasks, chosen by the ``policy`` (see :mod:`.policies`; ``leastload`` by
    default, inlined here because it runs once per task); if there is none it waits in
    the backlog (``_HELD``), first come first served, until a reply or a new engine makes
    room. ``timeout`` bounds the wait for dependencies, and the wait in the backlog while
    no eligible engine is alive (not the wait for room on a live one).

    **Which tasks a dead engine may have started.** An engine runs the tasks of this
    queue one at a time in the order they were sent (one connection, FIFO). Before it
    starts a task it has not announced yet, it sends a *start notice* naming the last
    task it may now start (a group: one task while tasks take more than 2 ms, up to 64
    quick ones), behind the replies it holds (see ``Engine._start_group``). So when an
    engine dies, a task it was sent and did not answer may have started exactly when
    it is announced by the last notice received from that engine (it, or a task sent
    after it): those spend a retry each (or fail with ``EngineError`` when they have
    none left); every other one goes back to the front of the backlog, in order, with
    its retries intact. The rule trusts that what the engine handed to its socket before
    dying arrives; a notice or reply lost inside the dying process (not yet written to
    the connection, a window of microseconds) would let a task that started run again
    without spending a retry. An engine that never sent a notice (older than this
    protocol) has its oldest unanswered task counted as started.

    **Engines busy with direct work.** An engine runs requests one at a time, whatever
    queue they came through, so a task sent to an engine that owes the mux (or the
    broadcast queue) replies waits behind that work, and a task that waits for
    load-balanced subtasks deadlocks if one of them is queued behind it. Those queues tell
    the scheduler which engines owe them replies (the *direct feed*, see
    :class:`PerEngineQueue`), and such an engine is *set aside*: a task goes to it only if
    no live engine it may run on is free of direct work (then as before, so a task
    restricted to busy engines still runs); otherwise it goes to a free one, or waits in
    the backlog for one to make room, or for the busy one to finish its direct work.
    Tasks already sent to an engine stay there.
    """

    wants_metadata = True

    def __init__(
        self,
        name: str = "task",
        *,
        results_lru: int = RESULTS_LRU,
        hwm: int = DEFAULT_HWM,
        policy: str = "leastload",
        seed: int | None = None,
        **kw: Any,
    ) -> None:
        if not isinstance(hwm, int) or isinstance(hwm, bool) or hwm < 0:
            raise ValueError(f"hwm must be an integer >= 0 (0: no bound), not {hwm!r}")
        self.policy: Policy = get_policy(policy)
        super().__init__(name, **kw)
        self.hwm = hwm
        self.policy_name = policy
        self._inline = policy == "leastload"  # the hot path's own copy of least_load
        self.rng = random.Random(seed)
        self.order: list[bytes] = []  # live engines, registration order
        self.load = LoadIndex()  # engine -> outstanding tasks, bucketed (see loadindex.py)
        #: per live engine, the tasks sent to it and not answered, oldest first
        self.sent: dict[bytes, dict[str, Job]] = {}
        #: per engine, the last task its latest start notice announced
        self.started_through: dict[bytes, str] = {}
        self.last_used: dict[bytes, int] = {}  # for the lru scheme
        self._uses = itertools.count()
        self.jobs: dict[str, Job] = {}  # every task not yet answered, in any state
        self.blocked: dict[str, list[Job]] = {}  # dependency msg_id -> jobs waiting on it
        #: the backlog: ready tasks any engine may run, and those with targets or pinned
        #: by ``follow``; both oldest first (jobs answered meanwhile are skipped lazily)
        self.pool: deque[Job] = deque()
        self.pool_special: deque[Job] = deque()
        self._said_no_engines = False
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
        #: flagged dependencies and engine rejections (see :mod:`.dependencies`)
        self.flagged = FlaggedDependencies(self, _WAITING)
        #: engine -> the queues (mux, broadcast) it owes replies, by the direct feed
        self.direct: dict[bytes, set[bytes]] = {}
        self.feed_sock: zmq.Socket[Any] | None = None

    # -- the direct feed ---------------------------------------------------------------

    def bind(self, ctx: zmq.Context[Any]) -> dict[str, int]:
        ports = super().bind(ctx)
        self.feed_sock = make_socket(ctx, zmq.PULL, unlimited=True, gate=self.gate)
        ports[DIRECT_FEED] = self.bind_port(self.feed_sock, DIRECT_FEED)
        return ports

    def close(self) -> None:
        if self.feed_sock is not None:
            self.feed_sock.close(linger=0)
        super().close()

    def extra_inputs(self) -> list[tuple[zmq.Socket[Any], Callable[[list[Any]], None]]]:
        return [] if self.feed_sock is None else [(self.feed_sock, self.on_direct_feed)]

    def on_direct_feed(self, frames: list[Any]) -> None:
        """``[queue, engine, busy, ...]`` from the mux or broadcast queue."""
        parts = [f.bytes if isinstance(f, zmq.Frame) else bytes(f) for f in frames]
        if len(parts) % 2 != 1:
            self.dropped += 1
            return
        source = parts[0]
        for index in range(1, len(parts), 2):
            self.direct_busy(parts[index], source, bool(parts[index + 1]))

    def direct_busy(self, engine: bytes, source: bytes, busy: bool) -> None:
        """The queue ``source`` says ``engine`` owes it replies (``busy``) or no longer:
        set the engine aside while any such queue does (see the class docstring)."""
        direct = self.direct
        sources = direct.get(engine)
        was = sources is not None
        if busy:
            if sources is None:
                direct[engine] = {source}
            else:
                sources.add(source)
        elif sources is not None:
            sources.discard(source)
            if not sources:
                del direct[engine]
        now = engine in direct
        if now == was or engine not in self.load:
            return
        self.load.set_aside(engine, now)
        if not now and (self.pool or self.pool_special):
            self._fill(engine)

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
        after = parse_dependency(metadata.get("after"))
        follow = parse_dependency(metadata.get("follow"))
        plain = after.plain and follow.plain
        job = Job(
            msg_id,
            client_id,
            header,
            frames,
            targets,
            list(after.ids) if plain else [],
            list(follow.ids) if plain else [],
            retries if isinstance(retries, int) and retries > 0 else 0,
            deadline,
        )
        avoid_md = metadata.get("avoid")
        if isinstance(avoid_md, list) and avoid_md:
            job.avoid = frozenset(t for t in avoid_md if isinstance(t, int)) or None
        self.jobs[msg_id] = job
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._seq), job))
        if not plain:
            self.monitor([REQUEST, b"", client, *frames[1:7]])
            self.flagged.admit(job, after, follow)
            return
        # Fast path: no dependencies, an engine with room: straight through.
        if not job.after and not job.follow:
            engine = self._choose(job)
            if engine is not None:
                self.monitor([REQUEST, engine, client, *frames[1:7]])
                self._dispatch(job, engine)
                return
        self.monitor([REQUEST, b"", client, *frames[1:7]])
        failed = self._dependency_failure(job)
        if failed:
            self._fail(job, "ImpossibleDependency", failed)
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
        """An eligible live engine with room for ``job`` (None if there is none)."""
        hwm = self.hwm
        if pinned is not None:
            if job.targets is not None and self.engines.get(pinned) not in job.targets:
                return None
            if hwm and self.load.get(pinned, hwm) >= hwm:
                return None
            return pinned
        if not self._inline:
            return self._choose_by_policy(job)
        if job.avoid is not None:
            return self._choose_around_busy(job)
        if job.targets is None:  # least load in O(1), whatever the number of engines
            return self.load.least(hwm)
        order = self.order
        n = len(order)
        if not n:
            return None
        if self.load.aside:
            return self._choose_around_busy(job)
        # policies.least_load, inlined: this runs once per task.
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
            if hwm and current >= hwm:
                continue
            if best is None or current < best_load:
                best, best_load, best_index = engine, current, index
                if current == 0:
                    break
        if best is not None:
            self._rr = best_index + 1
        return best

    def _eligible(self, job: Job) -> list[bytes]:
        """The live engines ``job`` may run on, room or not: those it avoids only if no
        other may, and those busy with direct work only if every one left is (see the
        class docstring)."""
        targets = job.targets
        engines = self.engines
        eligible = [e for e in self.order if targets is None or engines[e] in targets]
        avoid = job.avoid
        if avoid is not None:
            others = [e for e in eligible if engines[e] not in avoid]
            if others:
                eligible = others
        load = self.load
        if load.aside:
            free = [e for e in eligible if not load.is_aside(e)]
            if free:
                return free
        return eligible

    def _choose_around_busy(self, job: Job) -> bytes | None:
        """``leastload`` among :meth:`_eligible` with room (some engine is set aside, or
        the job avoids one)."""
        hwm, load = self.hwm, self.load
        eligible = self._eligible(job)
        n = len(eligible)
        start = self._rr % n if n else 0
        self._rr += 1  # ties round-robin, as in the scan of _choose
        best: bytes | None = None
        best_load = 0
        for i in range(n):
            engine = eligible[(start + i) % n]
            current = load[engine]
            if hwm and current >= hwm:
                continue
            if best is None or current < best_load:
                best, best_load = engine, current
        return best

    def _choose_by_policy(self, job: Job) -> bytes | None:
        hwm, load = self.hwm, self.load
        candidates = [e for e in self._eligible(job) if not (hwm and load[e] >= hwm)]
        if not candidates:
            return None
        n = len(candidates)
        index = self.policy(
            [load[e] for e in candidates],
            [self.last_used.get(e, -1) for e in candidates],
            self.rng,
            self._rr % n,
        )
        self._rr = index + 1
        return candidates[index]

    def _dispatch(self, job: Job, engine: bytes) -> None:
        job.engine = engine
        job.state = _RUNNING
        self.load[engine] += 1
        self.sent[engine][job.msg_id] = job
        if not self._inline:
            self.last_used[engine] = next(self._uses)
        frames = job.frames
        self.send_engine(engine, frames[0], frames[1:])

    def undeliverable(self, engine: bytes, msg_id: str) -> None:
        job = self.jobs.get(msg_id)
        if job is not None and job.state == _RUNNING and job.engine == engine:
            self.load[engine] -= 1
            self.sent[engine].pop(msg_id, None)
            self._fail(job, "EngineError", "engine not connected", engine)

    def _ready(self, job: Job) -> None:
        """Dependencies met: dispatch now, or hold in the backlog until there is room."""
        possible, pinned = self._location(job)
        if not possible:
            self._fail(job, "ImpossibleDependency", "follow dependencies cannot be met")
            return
        job.pinned = pinned
        engine = self._choose(job, pinned)
        if engine is None:
            self._hold(job)
            return
        self._dispatch(job, engine)

    def _hold(self, job: Job, front: bool = False) -> None:
        """Put ``job`` in the backlog (at its front: a task sent before everything there)."""
        job.state = _HELD
        job.engine = None
        special = job.targets is not None or job.pinned is not None or job.avoid is not None
        pool = self.pool_special if special else self.pool
        if front:
            pool.appendleft(job)
        else:
            pool.append(job)
        if not self.engines and not self._said_no_engines:
            self._said_no_engines = True
            log.warning(
                "%s: load-balanced task %s waits: no engines registered "
                "(tasks wait until one registers, or until their timeout)",
                self.name,
                job.msg_id,
            )

    def _take_for(self, engine: bytes) -> Job | None:
        """The oldest backlog task ``engine`` may run, removed from the backlog. An engine
        busy with direct work takes only tasks no engine free of it may run."""
        pool = self.pool
        while pool and pool[0].state != _HELD:
            pool.popleft()  # answered while it waited (timeout, dead targets)
        load = self.load
        busy = load.aside and load.is_aside(engine)
        special = self.pool_special
        if special:
            eid = self.engines.get(engine)
            for index, job in enumerate(special):
                if job.state != _HELD:
                    continue
                if (
                    (job.pinned is None or job.pinned == engine)
                    and (job.targets is None or eid in job.targets)
                    and not (
                        (busy or job.avoid is not None)
                        and job.pinned is None
                        and engine not in self._eligible(job)
                    )
                ):
                    del special[index]
                    return job
        if busy and load.others:
            return None  # the free engines take the rest
        return pool.popleft() if pool else None

    def _fill(self, engine: bytes) -> None:
        """``engine`` has room: give it backlog tasks until it is full or none fits."""
        hwm, load = self.hwm, self.load
        while not hwm or load[engine] < hwm:
            job = self._take_for(engine)
            if job is None:
                return
            self._dispatch(job, engine)

    def _drain_backlog(self) -> None:
        """Dispatch what the backlog can: after engines came, left, or tasks came back."""
        special = self.pool_special
        if special:
            keep: deque[Job] = deque()
            for job in special:
                if job.state != _HELD:
                    continue
                engine = self._choose(job, job.pinned)
                if engine is None:
                    keep.append(job)
                else:
                    self._dispatch(job, engine)
            self.pool_special = keep
        pool = self.pool
        while pool:
            job = pool[0]
            if job.state != _HELD:
                pool.popleft()
                continue
            engine = self._choose(job)
            if engine is None:
                break
            pool.popleft()
            self._dispatch(job, engine)

    def _eligible_alive(self, job: Job) -> bool:
        """Whether some live engine could run ``job`` (room or not)."""
        if job.pinned is not None:
            return job.pinned in self.load
        if job.targets is None:
            return bool(self.order)
        return any(self.engines[e] in job.targets for e in self.order)

    # -- completion ----------------------------------------------------------------------

    def _engine_reply(self, frames: list[Any]) -> None:
        if frames[1] != STARTED:
            super()._engine_reply(frames)
            return
        verified = self._verify(frames, 2, _FROM_ENGINES)  # a start notice: ours alone
        if verified is None:
            return
        parts = verified[0]
        content = loads_dict(parts[3]) or {}
        engine, through = frames[0], content.get("through")
        sent = self.sent.get(engine)
        if sent is not None and isinstance(through, str) and through in sent:
            self.started_through[engine] = through

    def _accept_reply(self, reply: tuple[list[Any], Any, str]) -> None:
        frames, parts, msg_id = reply
        # An engine where a task's @require/@depend conditions fail says so in the reply
        # metadata: the task then goes to another engine (see .dependencies).
        if b"dependencies_met" in parts[2] and self.flagged.rejected(frames[0], msg_id, parts[2]):
            return
        job = self.jobs.get(msg_id)
        if job is not None and job.retries > 0 and self._retry_failed(job, frames[0], parts[2]):
            return
        super()._accept_reply(reply)

    def _others_for(self, job: Job, engine: bytes) -> frozenset[int]:
        """The ids of the live engines ``job`` may go to, ``engine`` excepted."""
        live = {self.engines[e] for e in self.order}
        eligible = live if job.targets is None else job.targets & live
        return frozenset(eligible - {self.engines[engine]})

    def _take_back(self, job: Job, engine: bytes) -> None:
        """``engine``'s reply to ``job`` is withheld: the engine holds the task no more."""
        self.load[engine] -= 1
        del self.sent[engine][job.msg_id]
        job.engine = None

    def _retry_failed(self, job: Job, engine: bytes, metadata: bytes) -> bool:
        """Whether ``engine``'s reply to ``job`` is a failure to try again (as ipyparallel's
        ``retries``: the task raised): then the reply is withheld, a retry spent, and the
        task goes back to the front of the backlog for an engine that has not run it. An
        engine refuses a request it has seen (its replay guard), so when every eligible
        engine has failed it, or ``follow`` pins it to one, the error is the answer."""
        if job.engine != engine or job.pinned is not None or b'"error"' not in metadata:
            return False
        md = loads_dict(metadata) or {}
        if md.get("status") != "error":
            return False
        others = self._others_for(job, engine)
        if not others:
            return False
        job.retries -= 1
        self._take_back(job, engine)
        job.targets = others
        eid = self.engines[engine]
        log.info(
            "task %s failed on engine %d; tried again (%d retries left)",
            job.msg_id,
            eid,
            job.retries,
        )
        self._hold(job, front=True)
        self._drain_backlog()
        if self.pool or self.pool_special:
            self._fill(engine)
        return True

    def record_reply(self, engine: bytes, msg_id: str, parts: list[bytes]) -> None:
        job = self.jobs.get(msg_id)
        if job is None or job.engine != engine:
            return
        metadata = loads_dict(parts[2]) or {}
        ok = metadata.get("status", "ok") == "ok"
        self.load[engine] -= 1
        del self.sent[engine][msg_id]
        self._finish(job, ok, job.engine)  # the scheduler's copy: one per engine, kept
        if self.pool or self.pool_special:
            self._fill(engine)

    def _finish(self, job: Job, ok: bool, engine: bytes | None) -> None:
        """Forget ``job``, remember its outcome, and wake (or fail) what waited on it."""
        work = [(job, ok, engine)]
        while work:
            done, success, where = work.pop()
            done.state = _DONE
            self.jobs.pop(done.msg_id, None)
            done.frames = []
            self._remember(done.msg_id, success, where)
            if self.flagged.waiting or self.flagged.specs:
                self.flagged.finished(done.msg_id)
            for waiter in self.blocked.pop(done.msg_id, ()):
                if waiter.state != _WAITING:
                    continue
                if not success:
                    why = f"dependency {done.msg_id} failed"
                    self._error(waiter, "ImpossibleDependency", why)
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
        trim_oldest(results, self.results_lru)  # in chunks: see corral.core.fifo

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
            self.sent[engine] = {}
            if engine in self.direct:  # the direct feed told of it first
                self.load.set_aside(engine, True)
        self.dead_ids.discard(eid)
        self._said_no_engines = False
        self._drain_backlog()

    def engine_removed(self, engine: bytes, eid: int) -> None:
        """``engine`` died: the tasks it announced and did not answer may have run (a
        retry each, or an ``EngineError``); the others never started and go back to the
        backlog as they were (see the class docstring)."""
        if engine in self.load:
            self.order.remove(engine)
            del self.load[engine]
        sent = self.sent.pop(engine, {})
        self.last_used.pop(engine, None)
        self.dead_ids.add(eid)
        noticed = engine in self.started_through
        through = self.started_through.pop(engine, None)
        # Announced tasks are a prefix of ``sent`` (replies and notices come in order).
        started = through in sent if noticed else bool(sent)
        again: list[Job] = []
        for job in sent.values():
            if job.state != _RUNNING or job.engine != engine:
                continue
            job.engine = None
            if not started:
                again.append(job)  # never started: no retry spent
            elif job.retries > 0:
                job.retries -= 1
                log.info("task %s resubmitted after engine %d died", job.msg_id, eid)
                again.append(job)
            else:
                self._fail(job, "EngineError", self.died(engine, eid), engine)
            if started and (job.msg_id == through or not noticed):
                started = False
        if len(again) > 1:
            log.info("%d task(s) queued on engine %d go back to the backlog", len(again), eid)
        for job in reversed(again):  # to the backlog's front, in the order they were sent
            possible, pinned = self._location(job)
            if not possible:
                why = f"follow dependencies died with engine {eid}"
                self._fail(job, "ImpossibleDependency", why)
                continue
            job.pinned = pinned
            self._hold(job, front=True)
        if self.pool_special:
            for job in self.pool_special:
                if job.state != _HELD:
                    continue
                if job.pinned == engine:
                    why = f"follow dependencies died with engine {eid}"
                    self._fail(job, "ImpossibleDependency", why)
                elif self._dependency_failure(job):
                    self._fail(job, "EngineError", "every target engine is dead")
        self._drain_backlog()

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
            if job.state == _WAITING:
                self._fail(job, "DependencyTimeout", "dependencies not met in time")
            elif job.state == _HELD and not self._eligible_alive(job):
                if not self.engines:
                    why = "no engines registered"
                elif job.pinned is not None:
                    why = "the engine its follow dependencies ran on is gone"
                else:
                    why = f"no live engine among its targets {sorted(job.targets or ())}"
                self._fail(job, "DependencyTimeout", f"task {job.msg_id} timed out waiting: {why}")

    def outstanding_count(self) -> int:
        return len(self.jobs)

    def owes(self, engine: bytes, msg_id: str) -> bool:
        job = self.jobs.get(msg_id)
        return job is not None and job.state == _RUNNING and job.engine == engine


#: Replies kept per engine that has not registered (yet): see RoutingQueue._park.
_PARK_LIMIT = 4096


def make_queue(
    name: str, *, hwm: int = DEFAULT_HWM, policy: str = "leastload", **kwargs: Any
) -> RoutingQueue:
    """The queue component named ``name``: mux, control, task or broadcast. ``hwm`` and
    ``policy`` configure the task scheduler (see :class:`TaskScheduler`)."""
    if name in ("mux", "control"):
        return DirectQueue(name, **kwargs)
    if name == "task":
        return TaskScheduler(hwm=hwm, policy=policy, **kwargs)
    if name == "broadcast":
        return BroadcastScheduler(**kwargs)
    raise ValueError(f"no queue named {name!r}")
