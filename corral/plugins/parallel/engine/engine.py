"""The engine: an interpreter that serves tasks from the cluster's queues.

Lifecycle (:meth:`Engine.run`):

1. **connect** — bind the ``data`` ROUTER, connect DEALERs (identity = the engine's uuid)
   to ``mux_engine``, ``control_engine``, ``task_engine``, ``broadcast_engine``, a PUB to
   ``iopub_engine``, start the heartbeat device, and send ``registration_request``.
   Everything is connected *before* registering, so when the hub announces the engine
   and a scheduler routes the first task to its uuid, the connection is already being
   made (a ROUTER drops messages for identities it does not know yet).
2. **prepare** — import the interpreter and the serializer while the registration reply
   is on its way (imports are most of an engine's start-up time).
3. **register** — wait for ``registration_reply`` ``{id, hb_period, hb_misses}``.
4. **serve** — in the main thread, until shutdown.

Threads, and why:

* **main** runs user code and is the only thread touching the namespace (tasks, pushes,
  pulls, clears). It must be the main thread: only there does ``SIGINT`` arrive as
  ``KeyboardInterrupt`` in the running task.
* **control** owns the ``control`` socket, so ``interrupt_request`` and ``abort_request``
  are answered while a task runs. ``clear_request`` and ``shutdown_request`` need the main
  thread: they are handed over (and served before any further task); their replies come
  back to the control thread over an inproc PAIR.
* **heartbeat** echoes beats in C (:mod:`.heartbeat`); **hub watch** ends the engine if
  the controller or the launching process goes away.
* **iopub flusher** sends coalesced stream text (:class:`IOPubPublisher`).

Hot path (an ``apply_request``): receive with the fixed frames as bytes and buffers as
zero-copy frames, verify, unpickle, call, pickle the result, reply with a pre-encoded
content and a header built from a counter (:mod:`._wire`). No logging, no thread hop, no
iopub message unless the task wrote output.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq
from zmq.backend import zmq_poll

from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches
from corral.transports.zmq.door import cluster_signer
from corral.transports.zmq.gate import REFUSED, gate_for, probe

from . import data as data_path
from ._wire import (
    Message,
    Replier,
    iso_now,
    parse_message,
    recv_message,
    recv_messages,
    send_frames,
)
from .heartbeat import HeartbeatDevice, HubWatch
from .local import LocalConnection, open_endpoint
from .namespace import Adopter

__all__ = ["Engine", "EngineError", "load_cluster_file"]

log = logging.getLogger("corral.parallel.engine")

_POLLIN = int(zmq.POLLIN)  # plain ints: enum arithmetic is slow
_NOBLOCK = int(zmq.NOBLOCK)
#: Messages served from one socket before the others (and control) get a look.
_BATCH = 32
#: How long a requested shutdown may take before the process just ends.
_SHUTDOWN_GRACE = 5.0
_LINGER_MS = 1000
_CHANNELS = ("mux_engine", "control_engine", "task_engine", "broadcast_engine")
#: Monitor copies of same-host calls are sent at most this late (seconds) ...
_MONITOR_DELAY = 0.02
#: ... or once this many are waiting.
_MONITOR_BATCH = 128
#: Replies to queued tasks wait at most this long (seconds) to leave as one batch ...
_HOLD = 0.002
#: ... or until this many are waiting.
_HOLD_MAX = 64
#: The routing frame of a start notice to the task scheduler (see _start_group): a
#: client id never starts with a zero byte, so no reply can look like one.
_STARTED_ROUTE = b"\x00started"

# Where a SIGINT must not raise: it would tear a multipart send or the output lock.
_HERE = os.path.dirname(os.path.abspath(__file__))
_CORRAL = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
_NO_TEAR = (
    os.path.dirname(os.path.abspath(zmq.__file__)),
    os.path.join(_CORRAL, "transports", "zmq"),
    os.path.join(_CORRAL, "notification"),
    os.path.join(_CORRAL, "core", "iostreams.py"),
    os.path.join(_HERE, "_output.py"),
    os.path.join(_HERE, "_wire.py"),
)


class EngineError(RuntimeError):
    """The engine could not join the cluster (bad cluster file, registration refused)."""


# ----------------------------------------------------------------- cluster file


_REQUIRED = ("key", "registration", "hb_ping", "hb_pong", *_CHANNELS, "iopub_engine")


#: Seconds an engine waits for a lost controller to come back, unless configured.
DEFAULT_CONTROLLER_GRACE = 60.0
#: Replies sent this long before a dead controller's last beat are sent again: what it
#: may have received but not yet stored (its database writes batch over 50 ms).
_RESEND_MARGIN = 2.0
#: At most this many recent replies are kept for that.
_REPLY_LOG_MAX = 100_000


def _grace(given: float | None, info: dict[str, Any]) -> float:
    """The controller grace period: the argument, the cluster file, the environment."""
    if given is None:
        given = info.get("controller_grace")
    if given is None:
        env = os.environ.get("CORRAL_CONTROLLER_GRACE", "")
        given = float(env) if env else DEFAULT_CONTROLLER_GRACE
    grace = float(given)
    if not grace >= 0:
        raise EngineError(f"controller_grace must be >= 0 seconds, not {given!r}")
    return grace


def _as_dict(info: Any) -> dict[str, Any]:
    """A plain dict from whatever ``read_cluster_file`` returns (mapping, attrs, object)."""
    if isinstance(info, Mapping):
        return dict(info)
    for name in ("to_dict", "as_dict", "asdict"):
        method = getattr(info, name, None)
        if callable(method):
            return dict(method())
    try:
        import attrs

        if attrs.has(type(info)):
            return attrs.asdict(info)
    except ImportError:  # pragma: no cover - attrs is a dependency
        pass
    import dataclasses

    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        return dataclasses.asdict(info)
    return dict(vars(info))


def load_cluster_file(path: str | Path) -> dict[str, Any]:
    """The cluster file as a dict (see docs/parallel-protocol.md, "The cluster file").

    Uses the controller's ``read_cluster_file`` when it exists and gives every field the
    engine needs, else plain JSON: the file format is the contract, not the reader.
    """
    try:
        from corral.plugins.parallel.clusterfile import read_cluster_file  # type: ignore
    except ImportError:
        read_cluster_file = None
    if read_cluster_file is not None:
        try:
            info = _as_dict(read_cluster_file(path))
            if all(k in info for k in _REQUIRED):
                return info
        except Exception as exc:
            log.debug("read_cluster_file(%s) failed (%s); reading the JSON", path, exc)
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    if not isinstance(info, dict):
        raise EngineError(f"{path}: a cluster file holds a JSON object")
    return info


# ----------------------------------------------------------------- history


def _no_history() -> Any:
    """A history that keeps nothing: an engine never opens the history database."""
    from corral.core.history import HistoryManager

    class NoHistory(HistoryManager):
        def store_input(self, line: int, source: str, source_raw: str | None = None) -> None:
            pass

        def store_output(self, line: int, output: str) -> None:
            pass

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

        def new_session(self) -> int:
            return 0

        @property
        def session_id(self) -> int:
            return 0

        def resolve_session(self, session: int) -> int:
            return 0

        def _query(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

    return NoHistory(":memory:")


# ----------------------------------------------------------------- the engine

#: Where a request came from and its reply goes: a queue's socket or a same-host client.
Destination = zmq.Socket[Any] | LocalConnection
Handler = Callable[[Destination, Message], None]


class Engine:
    """One engine process's server. See the module docstring for the lifecycle.

    ``cluster`` is the cluster file's content (a dict, or what ``read_cluster_file``
    returns). ``ip`` overrides the controller address from the file. ``hub_timeout`` is
    how long without a beat means the controller is gone (default
    ``max(10 * hb_period, 1 s)``); the engine then waits ``controller_grace`` seconds
    (default: the cluster file's ``controller_grace``, else ``CORRAL_CONTROLLER_GRACE``,
    else 60) for a controller restarted on the same cluster, re-registers with it under
    the same id and keeps its namespace, and exits only if none came. ``parent_pid`` ends
    it when that process exits (default: ``CORRAL_PARENT_PID``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        cluster: Any,
        *,
        ip: str | None = None,
        context: zmq.Context[Any] | None = None,
        hub_timeout: float | None = None,
        registration_timeout: float = 30.0,
        parent_pid: int | None = None,
        uuid: str | None = None,
        controller_grace: float | None = None,
    ) -> None:
        info = _as_dict(cluster)
        missing = [k for k in _REQUIRED if k not in info]
        if missing:
            raise EngineError(f"the cluster file lacks {', '.join(missing)}")
        self.cluster = info
        host = ip or str(info.get("ip") or "127.0.0.1")
        self.ip = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
        self.transport = str(info.get("transport") or "tcp")
        key = info["key"]
        self.key = key if isinstance(key, bytes) else str(key).encode("ascii")
        scheme = str(info.get("signature_scheme") or "hmac-sha256")
        self.signer = cluster_signer(self.key, scheme)
        #: Credentials every socket presents (or, the data socket, demands): see gate.py.
        self.gate = gate_for(info)
        self.scheme = scheme
        self.replay = wire.ReplayGuard()
        self.session_id = wire.new_id()
        self.replier = Replier(self.signer, self.session_id, "engine")
        self.uuid = uuid or uuid_module.uuid4().hex
        self.ident = self.uuid.encode("ascii")
        self.hub_timeout = hub_timeout
        self.controller_grace = _grace(controller_grace, info)
        #: the main thread is to register with a restarted hub (see _on_back)
        self._register_due = False
        #: the msg_id of the request being served (read by the hub watch's thread)
        self._serving: str | None = None
        #: set by the hub watch once registered with a restarted hub: send recent replies again
        self._rejoin = False
        #: the cluster file this engine was started from (removed if its cluster died)
        self.cluster_file: Path | None = None
        #: the hub asked this engine to shut down (so it need not be told we go)
        self._hub_asked = False
        #: (monotonic time sent, socket, frames) of recent small replies on the queues
        self._reply_log: deque[tuple[float, Any, list[Any], str]] = deque()
        #: how long a reply is kept: longer than a lost controller takes to notice
        self._reply_window = 3 * max(10 * float(info.get("hb_period") or 1.0), 1.0)
        #: replies sent since then go again to a restarted controller
        self._resend_since = 0.0
        #: the hub's beat number when it registered us (to tell a restarted hub's beats)
        self._hub_beat: int | None = None
        self.registration_timeout = registration_timeout
        if parent_pid is None:
            env = os.environ.get("CORRAL_PARENT_PID", "")
            parent_pid = int(env) if env.isdigit() else None
        self.parent_pid = parent_pid
        self.context = context or zmq.Context()
        self.id: int | None = None
        self.hb_period = float(info.get("hb_period") or 1.0)
        self.hb_misses = int(info.get("hb_misses") or 2)
        self.user_ns: dict[str, Any] = {}
        self.exit_code = 0
        self.dropped = 0
        self.interpreter: Any = None
        # Binds functions shipped from a client's __main__ to user_ns (and remembers
        # which names they brought in).
        self._adopter = Adopter(self.user_ns)
        self._aborted: set[str] = set()
        self._executing = False
        self._stop_reason: str | None = None
        self._inbox: deque[Message] = deque()
        self._in_flight: list[zmq.MessageTracker] = []
        self._connected = False
        self._closed = False
        self._threads_started = False
        self.local: Any = None
        self._local_conns: dict[int, LocalConnection] = {}
        self._monitor: zmq.Socket[Any] | None = None
        # Monitor copies of same-host calls waiting for their batch, and its deadline.
        self._monitor_queue: list[list[Any]] = []
        self._monitor_due: float | None = None
        # Requests that came in one batch and still wait their turn, in order.
        self._pending: deque[tuple[zmq.Socket[Any], Message]] = deque()
        # Replies held to leave together (see _send), since when, and the lock that
        # guards the queue sockets: the main thread holds it except while user code
        # runs, when the flusher thread may take it to send replies held too long.
        self._held: list[tuple[zmq.Socket[Any], list[Any]]] = []
        self._held_since = 0.0
        self._held_event = threading.Event()
        # Load-balanced tasks run in groups announced to the scheduler (_start_group):
        # how many of the current group are left, the size the next may have, and when
        # and how big the current one started.
        self._group_left = 0
        self._group_size = 1
        self._group_start = 0.0
        self._group_count = 0
        self._sock_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Engine:
        """An engine for the cluster described by the cluster file at ``path``."""
        engine = cls(load_cluster_file(path), **kwargs)
        engine.cluster_file = Path(path)
        return engine

    def url(self, channel: str) -> str:
        """Where the controller's ``channel`` socket is."""
        port = int(self.cluster[channel])
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"{self.transport}://{self.ip}:{port}"

    # ------------------------------------------------------------ start-up

    def connect(self) -> None:
        """Bind the data socket, connect every other socket, send the registration."""
        if self._connected:
            return
        ctx = self.context
        gate = self.gate
        self.data_socket, self.data_url = data_path.bind_data_socket(
            ctx, data_path.local_ip_for(self.ip), gate
        )
        self.queues: dict[str, zmq.Socket[Any]] = {}
        for channel in _CHANNELS:
            sock = gate.client(ctx.socket(zmq.DEALER))
            sock.linger = _LINGER_MS
            sock.identity = self.ident
            sock.connect(self.url(channel))
            self.queues[channel] = sock
        self.mux = self.queues["mux_engine"]
        self.control = self.queues["control_engine"]
        self.task = self.queues["task_engine"]
        self.broadcast = self.queues["broadcast_engine"]
        #: The sockets whose replies may be held and batched: DEALERs to a queue, where
        #: a batch's first frame is the marker. (The data socket is a ROUTER: its first
        #: frame names the client, so its replies always go alone, at once.)
        self._batching = {self.mux, self.task, self.broadcast}
        self.iopub_socket = gate.client(ctx.socket(zmq.PUB))
        self.iopub_socket.linger = _LINGER_MS
        self.iopub_socket.sndhwm = 100_000
        self.iopub_socket.connect(self.url("iopub_engine"))
        self.heartbeat = HeartbeatDevice(
            ctx, self.url("hb_ping"), self.url("hb_pong"), self.ident, gate=gate
        )
        self.heartbeat.start()
        self.registration = gate.client(ctx.socket(zmq.DEALER))
        self.registration.linger = _LINGER_MS
        self.registration.identity = self.ident
        self.registration.connect(self.url("registration"))
        if self.cluster.get("monitor"):
            # Same-host clients call the engine over its Unix socket; the hub hears of
            # those tasks from the engine itself, as it hears of queued ones from a queue.
            self.local = open_endpoint(self.uuid)
            if self.local is not None:
                self._monitor = gate.client(ctx.socket(zmq.PUSH))
                self._monitor.linger = _LINGER_MS
                self._monitor.sndhwm = 0
                self._monitor.connect(self.url("monitor"))
        content = {
            "uuid": self.uuid,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "data_url": self.data_url,
            "local_path": self.local.path if self.local is not None else None,
        }
        frames = self.replier.frames(
            (), "registration_request", b"{}", b"{}", wire.json_dumps(content)
        )
        send_frames(self.registration, frames)
        self._connected = True

    def prepare(self) -> None:
        """Create the interpreter (the slow imports), ready for the first task."""
        if self.interpreter is not None:
            return
        from corral.core.interpreter import Interpreter
        from corral.core.serialize import serialize, unpack_apply
        from corral.notification.center import shared_center

        self.interpreter = Interpreter(
            shared_center, user_ns=self.user_ns, history=_no_history(), sender="engine"
        )
        self._serialize = serialize
        self._unpack_apply = unpack_apply

    def register(self) -> int:
        """Connect, prepare and wait for the hub's ``registration_reply``; returns the id.

        :raises EngineError: the hub refused, or did not answer within
            ``registration_timeout`` seconds.
        """
        import time

        url = self.url("registration")
        wait = min(self.registration_timeout, 5.0)
        if probe(self.gate, self.context, url, wait) == "refused":
            raise EngineError(REFUSED.format(url=url))
        self.connect()
        self.prepare()
        end = time.monotonic() + self.registration_timeout
        while True:
            left = int((end - time.monotonic()) * 1000)
            if left <= 0 or not self.registration.poll(left):
                raise EngineError(
                    f"no registration reply from {self.url('registration')} within "
                    f"{self.registration_timeout:g} s: the controller is not reachable at "
                    f"{self.ip} from this host. Set [cluster] location (Cluster(location=...)) "
                    "to an address of the controller's host that engines can reach, and "
                    "[cluster] ip to an interface it binds (* for all); [engine] timeout "
                    "sets how long engines wait"
                )
            try:
                msg = recv_message(self.registration, self.signer, self.replay, _NOBLOCK)
            except zmq.Again:
                continue
            except wire.WireError as exc:
                log.warning("dropped a bad message on registration: %s", exc)
                continue
            if msg.msg_type != "registration_reply":
                log.warning("ignoring %s while registering", msg.msg_type)
                continue
            content = msg.content
            if content.get("status", "ok") != "ok" or not isinstance(content.get("id"), int):
                raise EngineError(
                    f"registration refused: {content.get('evalue') or content.get('status')}"
                )
            self.id = int(content["id"])
            beat = content.get("beat")
            self._hub_beat = beat if type(beat) is int else None
            self.hb_period = float(content.get("hb_period") or self.hb_period)
            self.hb_misses = int(content.get("hb_misses") or self.hb_misses)
            break
        self._after_registration()
        return self.id

    def _after_registration(self) -> None:
        """Everything that needs the engine id: output, pre-encoded replies, threads."""
        from ._output import EngineIOPub, OutputRelay, install_streams

        assert self.id is not None
        self.iopub = EngineIOPub(
            wire_session(self.key, self.scheme, self.session_id),
            self.iopub_socket,
            {"engine_id": self.id},
        )
        self.relay = OutputRelay(self.interpreter, self.iopub)
        self._saved_streams = install_streams(self.interpreter.center, self.interpreter)
        self._identify()
        from corral import datapub

        datapub.install(self._publish_data)
        self._handlers: dict[str, Handler] = {
            "apply_request": self._apply,
            "execute_request": self._execute,
            "push_request": self._push,
            "pull_request": self._pull,
        }
        # Control thread <-> main thread.
        tag = f"{os.getpid()}-{id(self)}"
        self._ctl_url = f"inproc://corral-engine-ctl-{tag}"
        self._ctl_rx = self.context.socket(zmq.PAIR)
        self._ctl_rx.linger = _LINGER_MS
        self._ctl_rx.bind(self._ctl_url)
        self._ctl_tx = self.context.socket(zmq.PAIR)
        self._ctl_tx.linger = _LINGER_MS
        self._ctl_tx.connect(self._ctl_url)
        # Any thread or signal -> main loop: a byte on a socketpair the main loop polls.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        timeout = self.hub_timeout
        if timeout is None:
            timeout = max(10 * self.hb_period, 1.0)
        self.watch = HubWatch(
            self.context,
            self.heartbeat.capture_url,
            timeout,
            self._on_lost,
            self.parent_pid,
            notification_url=self.url("notification") if self.cluster.get("notification") else None,
            uuid=self.uuid,
            signer=cluster_signer(self.key, self.scheme),
            gate=self.gate,
            grace=self.controller_grace,
            on_silent=self._on_silent,
            on_back=self._on_back,
            beat=self._hub_beat,
        )

    def _identify(self) -> None:
        """What replies and output say about this engine (again if its id changes)."""
        assert self.id is not None
        self.engine_info = {"engine_id": self.id, "engine_uuid": self.uuid}
        self.iopub.default_metadata["engine_id"] = self.id
        self._ok_apply = wire.json_dumps(
            {"status": "ok", "engine_info": {**self.engine_info, "method": "apply"}}
        )
        self._meta_template = (
            b'{"engine_id":%d,"engine_uuid":"%s","started":"%%b","completed":"%%b",'
            b'"status":"%%b","outputs":%%d}' % (self.id, self.ident)
        )

    def start(self) -> None:
        """Register if needed, start the helper threads and install signal handlers."""
        if self.id is None:
            self.register()
        if self._threads_started:
            return
        self._threads_started = True
        self._control_thread = threading.Thread(
            target=self._control_loop, name="corral-engine-control", daemon=True
        )
        self._control_thread.start()
        self.watch.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def run(self) -> int:
        """Register, serve until shutdown, close; returns the process exit status."""
        try:
            self.start()
        except EngineError as exc:
            log.error("%s", exc)
            self.close()
            return 1
        return self.serve_forever()

    # ------------------------------------------------------------ main loop

    def serve_forever(self) -> int:
        """Serve the queues and the data socket in this (main) thread until told to stop."""
        self.start()
        poller = zmq.Poller()
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, _POLLIN)  # polled by fd: events name the int
        if self.local is not None:
            poller.register(self.local.fd, _POLLIN)
        for sock in (self.data_socket, self.mux, self.task, self.broadcast):
            poller.register(sock, _POLLIN)
        self._poller = poller
        inbox = self._inbox
        pending = self._pending
        serve = self._serve_one
        self._sock_lock.acquire()
        flusher = threading.Thread(
            target=self._flush_late, name="corral-engine-replies", daemon=True
        )
        flusher.start()
        try:
            while self._stop_reason is None:
                if self._rejoin:  # a restarted controller: what it may have lost, again
                    self._rejoin = False
                    if self._register_due:
                        self._register_due = False
                        self._register_again()
                    self._resend_replies()
                    continue
                if inbox:
                    if self._held:  # answers to earlier tasks go first
                        self._flush_held()
                    self._serve_control(inbox.popleft())
                    continue
                if pending:
                    self._serve_pending()
                    continue
                if self._held:
                    self._flush_held()  # nothing more to run now: let them go
                due = self._monitor_due
                if due is None:
                    events = poller.poll()
                else:
                    events = poller.poll(max(0, int((due - time.monotonic()) * 1000) + 1))
                    if time.monotonic() >= due:
                        self._flush_monitor()
                for sock, _ in events:
                    if sock.__class__ is int:  # a plain descriptor
                        if sock == wake_fd:
                            self._drain_wake()
                        else:
                            self._serve_local(sock)
                        if inbox or self._stop_reason is not None or self._rejoin:
                            break
                        continue
                    # Drain a busy queue without a full poll per message (zmq_poll on one
                    # socket is cheaper than getsockopt(EVENTS), which builds an enum).
                    items = [(sock, _POLLIN)]
                    n = 0
                    while True:
                        serve(sock)
                        n += 1
                        if (
                            n >= _BATCH
                            or inbox
                            or pending
                            or self._stop_reason is not None
                            or self._rejoin
                            or not zmq_poll(items, 0)
                        ):
                            break
                    if inbox or pending or self._stop_reason is not None or self._rejoin:
                        break
        finally:
            try:
                self.close()
            finally:
                self._held_event.set()  # the flusher sees _closed and ends
                self._sock_lock.release()
        return self.exit_code

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full: the main loop is awake already, or closing

    def _receive(self, sock: zmq.Socket[Any], where: str) -> Message | None:
        """The next verified message on ``sock``; None if none waits or it was dropped."""
        try:
            return recv_message(sock, self.signer, self.replay, _NOBLOCK)
        except zmq.Again:
            return None
        except wire.WireError as exc:
            self.dropped += 1
            log.warning("dropped a bad message on %s: %s", where, exc)
            return None

    def _serve_one(self, sock: zmq.Socket[Any]) -> None:
        """Serve the next zmq message on a queue socket: one request, or a batch of them
        (whose rest waits in ``_pending`` if control or a stop cuts in)."""
        try:
            messages, errors = recv_messages(sock, self.signer, self.replay, _NOBLOCK)
        except zmq.Again:
            return
        for exc in errors:
            self.dropped += 1
            log.warning("dropped a bad message on a queue: %s", exc)
        if len(messages) == 1:
            self._serve_message(sock, messages[0])
        elif messages:
            self._pending.extend((sock, msg) for msg in messages)
            self._serve_pending()

    def _serve_pending(self) -> None:
        pending = self._pending
        inbox = self._inbox
        while pending and not inbox and self._stop_reason is None and not self._rejoin:
            sock, msg = pending.popleft()
            self._serve_message(sock, msg)

    def _serve_message(self, sock: Destination, msg: Message) -> None:
        due = self._monitor_due
        if self._monitor_queue and (
            sock.__class__ is not LocalConnection or due is None or time.monotonic() >= due
        ):
            # Copies of earlier same-host calls go before a queued task runs (it may run
            # long), and before any call once their 20 ms are up.
            self._flush_monitor()
        if sock is self.task:
            if not self._group_left:
                self._start_group(msg)
            self._group_left -= 1
        handler = self._handlers.get(msg.msg_type)
        self._serving = msg.msg_id
        try:
            if handler is None:
                self._unknown(sock, msg)
            else:
                handler(sock, msg)
        except Exception as exc:  # a bug or bad content: answer, keep serving
            log.exception("error while handling %s", msg.msg_type)
            self._reply_error(sock, msg, exc)
        finally:
            self._serving = None

    # ------------------------------------------------------------ same-host clients

    def _serve_local(self, fd: int) -> None:
        """A same-host client's socket is readable, or one is waiting to be accepted."""
        local = self.local
        if fd == local.fd:
            for conn in local.accept():
                self._local_conns[conn.fd] = conn
                self._poller.register(conn.fd, _POLLIN)
            return
        conn = self._local_conns.get(fd)
        if conn is None:
            return
        try:
            messages = conn.read()
        except (OSError, ValueError, MemoryError) as exc:  # closed, reset, garbage, or a
            # size announced (up to 1 GiB, before any signature) that cannot be had
            if not isinstance(exc, ConnectionError):
                self.dropped += 1
                log.warning("closing a local connection: %s", exc)
            self._drop_local(conn)
            return
        for frames in messages:
            try:
                msg = parse_message(frames, self.signer, self.replay)
            except wire.WireError as exc:
                self.dropped += 1
                log.warning("dropped a bad message on the local socket: %s", exc)
                continue
            conn.request_frames = frames
            self._serve_message(conn, msg)
            conn.request_frames = []

    def _drop_local(self, conn: LocalConnection) -> None:
        self._local_conns.pop(conn.fd, None)
        try:
            self._poller.unregister(conn.fd)
        except KeyError:
            pass
        conn.close()

    def _send_local(self, conn: LocalConnection, msg: Message, frames: list[Any]) -> None:
        """Reply over the local socket, then copy request and reply to the hub's monitor
        (after the reply: the client is not kept waiting for the bookkeeping)."""
        try:
            conn.send(frames)
        except OSError as exc:  # the client went away (or stopped reading): its loss
            log.warning("could not reply to a local client: %s", exc)
            self._drop_local(conn)
        if self._monitor is None or not conn.request_frames:
            return
        client = str(msg.header.get("session", "")).encode("utf-8", "replace")
        queue = self._monitor_queue
        # The request's JSON parts only (as the queues send them: the hub stores no
        # request buffers), the reply whole (its buffers are the stored result).
        request, tag = conn.request_frames, self.signer.monitor_tag
        queue.append([tag(b"request", self.ident, client, request[1]), self.ident, client])
        queue[-1].extend(request[:6])
        queue.append([tag(b"reply", self.ident, client, frames[1]), self.ident, client, *frames])
        # Copies that are all bytes cannot change: they wait for the next batch (a busy
        # caller then costs the hub one wake-up per batch, not two per call). Any other
        # frame is a view onto memory the next task may write: send now.
        if len(queue) >= _MONITOR_BATCH or not all(type(f) is bytes for f in frames):
            self._flush_monitor()
        elif self._monitor_due is None:
            self._monitor_due = time.monotonic() + _MONITOR_DELAY

    def _flush_monitor(self) -> None:
        """Send the queued monitor copies of same-host calls to the hub, in batches."""
        monitor = self._monitor
        queue, self._monitor_queue = self._monitor_queue, []
        self._monitor_due = None
        if monitor is None:
            return
        for message in pack_batches((), queue, _HOLD_MAX):
            send_frames(monitor, message)

    def _start_group(self, msg: Message) -> None:
        """Tell the task scheduler which load-balanced tasks may start from now on:
        ``msg`` and the task messages received right behind it, as many as the group
        size allows. Sent with (after) the replies held so far, before any of these
        tasks starts, so the scheduler knows that a task not yet announced has not
        started if this engine dies (docs/parallel-protocol.md, "Prefetch and start
        notices").

        Groups double while tasks are quick (less than ``_HOLD`` each: their replies then
        leave in batches, and one notice serves many tasks) and fall back to one task as
        soon as tasks take longer (one notice per task costs nothing then, and a death
        costs a retry only of the task that was running).
        """
        now = time.monotonic()
        if self._group_count:
            quick = now - self._group_start < _HOLD * self._group_count
            self._group_size = min(2 * self._group_size, _HOLD_MAX) if quick else 1
        last, count = msg, 1
        for sock, queued in self._pending:
            if count >= self._group_size or sock is not self.task:
                break
            last, count = queued, count + 1
        self._group_left = self._group_count = count
        self._group_start = now
        notice = self.replier.frames(
            (_STARTED_ROUTE,),
            "task_started",
            b"{}",
            b"{}",
            wire.json_dumps({"through": last.msg_id}),
        )
        self._held.append((self.task, notice))
        self._flush_held()

    def _unknown(self, sock: Destination, msg: Message) -> None:
        log.warning("ignoring unknown message type %r", msg.msg_type)
        if msg.msg_type.endswith("_request"):
            self._reply_error(
                sock, msg, ValueError(f"unknown message type {msg.msg_type!r}"), "engine"
            )

    # ------------------------------------------------------------ replies

    def _publish_data(self, data: dict[str, Any]) -> None:
        """``corral.datapub.publish_data`` in a task: a ``data_message`` on iopub, parented
        to the task, the dict pickled into buffers (as ipyparallel sends it)."""
        self.iopub.publish("data_message", {}, self.relay.parent, buffers=self._serialize(data))

    def _metadata(self, started: str, completed: str, status: str, outputs: int) -> bytes:
        return self._meta_template % (
            started.encode(),
            completed.encode(),
            status.encode(),
            outputs,
        )

    def _send(
        self,
        sock: Destination,
        msg: Message,
        content: bytes,
        metadata: bytes = b"{}",
        buffers: list[Any] | tuple[Any, ...] = (),
        date: str | None = None,
    ) -> None:
        """Sign and send a reply to ``msg``. Big buffers go zero-copy, and are tracked.

        A zero-copy frame is a view onto the user's object; the next task could modify
        that object in place while libzmq is still sending it, so tasks wait for such
        sends to finish first (:meth:`_settle`).
        """
        reply_type = msg.msg_type[: -len("_request")] + "_reply"
        if len(buffers) > 1:  # out-of-band buffers: views onto user memory
            tracked = [buffers[0]]
            for buf in buffers[1:]:
                tracked.append(zmq.Frame(buf, track=True))
            self._in_flight.append(zmq.MessageTracker(*tracked[1:]))
            buffers = tracked
        frames = self.replier.frames(
            msg.idents, reply_type, msg.raw_header, metadata, content, buffers, date
        )
        if sock.__class__ is LocalConnection:
            self._send_local(sock, msg, frames)
            return
        if sock not in self._batching:
            send_frames(sock, frames)
            return
        # A reply that is all bytes cannot change: it may wait (up to _HOLD) for the
        # replies to the next queued tasks and leave with them as one batch. Any other
        # frame is a view onto memory the next task may write: send now, in order.
        held = self._held
        for frame in frames:
            if frame.__class__ is not bytes:
                if held:
                    self._flush_held()
                send_frames(sock, frames)
                return
        self._log_reply(sock, frames, msg.msg_id)
        now = time.monotonic()
        if not held:
            self._held_since = now
            self._held_event.set()
        held.append((sock, frames))
        if len(held) >= _HOLD_MAX or now - self._held_since >= _HOLD:
            self._flush_held()

    def _flush_held(self) -> None:
        """Send the held replies, each queue socket's as one batch (caller holds the lock)."""
        held, self._held = self._held, []
        self._held_event.clear()
        by_sock: dict[Any, list[list[Any]]] = {}
        for sock, frames in held:
            by_sock.setdefault(sock, []).append(frames)
        for sock, replies in by_sock.items():
            for message in pack_batches((), replies, _HOLD_MAX):
                send_frames(sock, message)

    def _flush_late(self) -> None:
        """The flusher thread: replies held while a long task runs go out after _HOLD.

        It can take the socket lock only while the main thread runs user code, so the
        sockets are never used by two threads at once.
        """
        event, lock = self._held_event, self._sock_lock
        while True:
            event.wait()
            if self._closed:
                return
            time.sleep(_HOLD)
            # Between tasks the main thread flushes (when due, before a long wait, and
            # before it idles): try only while user code runs, and never queue on the
            # lock (that would hand it over at every task of a burst).
            if not self._executing or not lock.acquire(blocking=False):
                continue
            try:
                if self._closed:
                    return
                if self._held and time.monotonic() - self._held_since >= _HOLD:
                    self._flush_held()
            except zmq.ZMQError as exc:
                log.warning("could not send held replies: %s", exc)
            finally:
                lock.release()

    def _settle(self) -> None:
        """Wait until earlier zero-copy replies no longer read user memory."""
        if self._held:  # this may take long: held replies must not wait for it
            self._flush_held()
        pending = [t for t in self._in_flight if not t.done]
        self._in_flight = []
        for tracker in pending:
            try:
                tracker.wait(60.0)
            except zmq.NotDone:
                log.warning("a large reply is still being sent after 60 s; going on")

    def _error_content(self, exc: BaseException, method: str) -> dict[str, Any]:
        from corral.core.tracebacks import format_exception

        try:
            evalue = str(exc)
        except Exception:
            evalue = f"<unprintable {type(exc).__name__}>"
        try:
            traceback = format_exception(exc)
        except Exception:
            traceback = [f"{type(exc).__name__}: {evalue}"]
        return {
            "status": "error",
            "ename": type(exc).__name__,
            "evalue": evalue,
            "traceback": traceback,
            "engine_info": {**self.engine_info, "method": method},
        }

    def _reply_error(
        self, sock: Destination, msg: Message, exc: BaseException, method: str = "engine"
    ) -> None:
        if not msg.msg_type.endswith("_request"):
            return
        try:
            now = iso_now()
            content = wire.json_dumps(self._error_content(exc, method))
            self._send(sock, msg, content, self._metadata(now, now, "error", 0), date=now)
        except Exception:
            log.exception("could not send an error reply to %s", msg.msg_type)

    def _reply_aborted(self, sock: Destination, msg: Message, method: str) -> None:
        self._aborted.discard(msg.msg_id)
        now = iso_now()
        content = {
            "status": "aborted",
            "ename": "TaskAborted",
            "evalue": "the task was aborted before it ran",
            "traceback": [],
            "engine_info": {**self.engine_info, "method": method},
        }
        self._send(
            sock, msg, wire.json_dumps(content), self._metadata(now, now, "aborted", 0), date=now
        )

    # ------------------------------------------------------------ tasks

    def _apply(self, sock: Destination, msg: Message) -> None:
        if self._in_flight:
            self._settle()
        if self._aborted and msg.msg_id in self._aborted:
            self._reply_aborted(sock, msg, "apply")
            return
        started = iso_now()
        self.relay.parent = msg.header
        self.relay.silent = False
        iopub = self.iopub
        sent = iopub.sent
        unmet = False
        try:
            func, args, kwargs = self._unpack_apply(msg.buffers)
            adopter = self._adopter
            func = adopter.function(func)
            args, kwargs = adopter.arguments(args, kwargs)
            lock = self._sock_lock
            try:
                # The flusher may send held replies while user code runs. _on_sigint
                # raises only while _executing, so no KeyboardInterrupt can come
                # between the release and the try, or keep the finally from the lock.
                lock.release()
                self._executing = True
                result = func(*args, **kwargs)
            finally:
                self._executing = False
                lock.acquire()
            buffers = self._serialize(result)
            content = self._ok_apply
            status = "ok"
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt is the task's
            self._executing = False
            error = self._error_content(exc, "apply")
            if "func" in locals():  # name the files of shipped __main__ functions
                error["traceback"] = _annotate(error["traceback"], func, self.user_ns)
            unmet = error["ename"] == "UnmetDependency"
            if not unmet:  # a rejected task runs elsewhere: its rejection is no output
                iopub.publish(
                    "error",
                    {k: error[k] for k in ("ename", "evalue", "traceback")},
                    msg.header,
                )
            content = wire.json_dumps(error)
            buffers = ()
            status = "error"
        if iopub._chunks:
            iopub.flush()
        outputs = iopub.sent - sent
        completed = iso_now()
        metadata = self._metadata(started, completed, status, outputs)
        if unmet:
            # @require/@depend do not hold here: the task scheduler tries another engine
            # (ipyparallel's metadata key; see controller/dependencies.py).
            metadata = metadata[:-1] + b',"dependencies_met":false}'
        self._send(sock, msg, content, metadata, buffers, completed)
        if outputs:
            iopub.publish("status", {"execution_state": "idle"}, msg.header)

    def _execute(self, sock: Destination, msg: Message) -> None:
        if self._in_flight:
            self._settle()
        if self._aborted and msg.msg_id in self._aborted:
            self._reply_aborted(sock, msg, "execute")
            return
        started = iso_now()
        c = msg.content
        code = c.get("code", "")
        if not isinstance(code, str):
            raise TypeError("execute_request 'code' must be a string")
        silent = bool(c.get("silent", False))
        store_history = bool(c.get("store_history", not silent))
        user_expressions = c.get("user_expressions") or {}
        iopub = self.iopub
        self.relay.parent = msg.header
        self.relay.silent = silent
        iopub.publish("status", {"execution_state": "busy"}, msg.header)
        sent = iopub.sent
        interp = self.interpreter
        lock = self._sock_lock
        try:
            try:
                lock.release()  # see _apply: the flusher may send held replies meanwhile
                self._executing = True
                result = interp.execute(
                    code,
                    silent=silent,
                    store_history=store_history,
                    user_expressions=(
                        user_expressions if isinstance(user_expressions, dict) else {}
                    ),
                    allow_stdin=False,
                )
            finally:
                self._executing = False
                lock.acquire()
        except KeyboardInterrupt:  # landed outside the interpreter's own handler
            reply: dict[str, Any] = {
                "status": "error",
                "execution_count": interp.execution_count,
                "ename": "KeyboardInterrupt",
                "evalue": "",
                "traceback": [],
            }
        else:
            reply = {"status": result.status, "execution_count": result.execution_count}
            if result.status == "ok":
                reply["payload"] = result.payload or []
                reply["user_expressions"] = result.user_expressions or {}
            else:
                reply["ename"] = result.ename
                reply["evalue"] = result.evalue
                reply["traceback"] = result.traceback or []
        reply["engine_info"] = {**self.engine_info, "method": "execute"}
        iopub.flush()
        outputs = iopub.sent - sent
        completed = iso_now()
        self._send(
            sock,
            msg,
            wire.json_dumps(reply),
            self._metadata(started, completed, reply["status"], outputs),
            date=completed,
        )
        iopub.publish("status", {"execution_state": "idle"}, msg.header)

    # ------------------------------------------------------------ data

    def _push(self, sock: Destination, msg: Message) -> None:
        started = iso_now()
        try:
            keys = data_path.push(self.user_ns, msg.content, msg.buffers, self._adopter.value)
        except Exception as exc:
            self._reply_error(sock, msg, exc, "push")
            return
        self._reply_data(sock, msg, "push", keys, started)

    def _pull(self, sock: Destination, msg: Message) -> None:
        started = iso_now()
        try:
            keys, buffers = data_path.pull(self.user_ns, msg.content)
        except KeyError as exc:
            self._reply_error(sock, msg, KeyError(exc.args[0]), "pull")
            return
        except Exception as exc:
            self._reply_error(sock, msg, exc, "pull")
            return
        self._reply_data(sock, msg, "pull", keys, started, buffers)

    def _reply_data(
        self,
        sock: zmq.Socket[Any],
        msg: Message,
        method: str,
        keys: Any,
        started: str,
        buffers: Any = (),
    ) -> None:
        """The ok reply of a push or pull: the names handled, and pulled values' buffers."""
        content = {
            "status": "ok",
            "keys": keys,
            "engine_info": {**self.engine_info, "method": method},
        }
        completed = iso_now()
        self._send(
            sock,
            msg,
            wire.json_dumps(content),
            self._metadata(started, completed, "ok", 0),
            buffers,
            completed,
        )

    # ------------------------------------------------------------ control

    def _control_loop(self) -> None:
        """The control thread: answers interrupt and abort now, hands the rest to main."""
        replier = Replier(self.signer, self.session_id + "c", "engine")
        control, from_main = self.control, self._ctl_rx
        poller = zmq.Poller()
        poller.register(from_main, _POLLIN)
        poller.register(control, _POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if from_main in ready:
                    frames = from_main.recv_multipart(copy=False)
                    if len(frames) == 1 and frames[0].bytes == b"STOP":
                        return
                    send_frames(control, frames)
                    continue
                if control not in ready:
                    continue
                msg = self._receive(control, "control")
                if msg is None:
                    continue
                try:
                    self._control_now(replier, msg)
                except Exception as exc:
                    log.exception("error while handling %s", msg.msg_type)
                    if msg.msg_type.endswith("_request"):
                        content = self._error_content(exc, "control")
                        self._control_reply(replier, msg, content)
        except zmq.ContextTerminated:
            return
        except Exception:  # pragma: no cover - a bug: keep the engine alive, loudly
            log.exception("control thread crashed")
        finally:
            control.close(linger=_LINGER_MS)
            from_main.close(linger=0)

    def _control_reply(self, replier: Replier, msg: Message, content: dict[str, Any]) -> None:
        reply_type = msg.msg_type.removesuffix("_request") + "_reply"
        now = iso_now()
        metadata = self._metadata(now, now, str(content.get("status", "ok")), 0)
        frames = replier.frames(
            msg.idents, reply_type, msg.raw_header, metadata, wire.json_dumps(content), (), now
        )
        send_frames(self.control, frames)

    def _control_now(self, replier: Replier, msg: Message) -> None:
        kind = msg.msg_type
        info = {**self.engine_info, "method": kind.removesuffix("_request")}
        if kind == "interrupt_request":
            self.interrupt()
            self._control_reply(replier, msg, {"status": "ok", "engine_info": info})
        elif kind == "abort_request":
            ids = msg.content.get("msg_ids") or []
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise TypeError("abort_request 'msg_ids' must be a list of message ids")
            self._aborted.update(ids)
            self._control_reply(replier, msg, {"status": "ok", "engine_info": info})
        elif kind == "signal_request":
            signum = _signal_number(msg.content.get("sig"))
            self._control_reply(replier, msg, {"status": "ok", "engine_info": info})
            if signum == signal.SIGINT:
                self.interrupt()
            elif signum == signal.SIGTERM:  # what the SIGTERM handler does, without a race
                self._stop("terminated", 0)
                self._exit_later(0)
                self.interrupt()
            else:
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
        elif kind in ("clear_request", "shutdown_request"):
            self._inbox.append(msg)
            self._wake()
            if kind == "shutdown_request":
                self.interrupt()  # a running task would keep the engine alive
                self._exit_later(0)
        else:
            log.warning("ignoring unknown control message %r", kind)
            if kind.endswith("_request"):
                raise ValueError(f"unknown control message type {kind!r}")

    def _serve_control(self, msg: Message) -> None:
        """Main thread: a clear or shutdown handed over by the control thread."""
        info = {**self.engine_info, "method": msg.msg_type.removesuffix("_request")}
        if msg.msg_type == "clear_request":
            try:
                self.interpreter.reset_namespace()
                self._adopter.injected.clear()
                content: dict[str, Any] = {"status": "ok", "engine_info": info}
            except Exception as exc:
                log.exception("clear failed")
                content = self._error_content(exc, "clear")
        else:
            content = {"status": "ok", "restart": False, "engine_info": info}
            # The hub asked (the whole cluster stops): it unregisters us itself and exits
            # once every engine has answered, so nothing more we sent would be read.
            self._hub_asked = msg.content.get("hub") is True
            self._stop("shutdown requested", 0)
        now = iso_now()
        reply_type = msg.msg_type.removesuffix("_request") + "_reply"
        frames = self.replier.frames(
            msg.idents,
            reply_type,
            msg.raw_header,
            self._metadata(now, now, str(content["status"]), 0),
            wire.json_dumps(content),
            (),
            now,
        )
        send_frames(self._ctl_tx, frames)

    # ------------------------------------------------------------ stopping

    def interrupt(self) -> None:
        """SIGINT to the main thread if a task runs (``KeyboardInterrupt`` in it).

        ``pthread_kill`` rather than ``kill``: a process-directed signal may be delivered
        to another thread, which would not wake a task blocked in a system call.
        """
        if self._executing:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def _stop(self, reason: str, code: int) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self.exit_code = code
        self._wake()

    def _exit_later(self, code: int) -> None:
        """End the process if a requested stop does not finish within the grace period."""

        def force() -> None:
            log.error("engine did not stop within %.0f s; exiting", _SHUTDOWN_GRACE)
            os._exit(code)

        timer = threading.Timer(_SHUTDOWN_GRACE, force)
        timer.daemon = True
        timer.start()

    def _on_silent(self, reason: str) -> None:
        """Hub watch: the controller went quiet. Keep running (and keep finished replies
        queued on the sockets, which reconnect by themselves) for the grace period."""
        log.warning(
            "%s; waiting up to %g s for a controller to come back (controller_grace)",
            reason,
            self.controller_grace,
        )

    def _on_back(self, last_old_beat: float) -> None:
        """Hub watch: a (new) hub beats. Register with it from the main thread, and send
        again the replies the old controller may have died with: those sent since shortly
        before its last beat."""
        self._resend_since = last_old_beat - _RESEND_MARGIN
        # The sockets belong to whoever holds _sock_lock; the main thread lets go of it
        # only while user code runs. Then (a task may run for hours, and a controller
        # must know its engines before it ends) this thread registers; otherwise the
        # main thread does, between tasks. Replies go again from the main thread.
        if self._sock_lock.acquire(timeout=0.05):
            try:
                self._register_again()
            finally:
                self._sock_lock.release()
        else:
            self._register_due = True
        self._rejoin = True
        self._wake()

    def _take_queued(self) -> None:
        """Read every request waiting on the queue sockets into ``_pending`` (in order),
        so that a registration can say which tasks this engine holds."""
        for sock in (self.mux, self.task, self.broadcast):
            while True:
                try:
                    messages, errors = recv_messages(sock, self.signer, self.replay, _NOBLOCK)
                except zmq.Again:
                    break
                for exc in errors:
                    self.dropped += 1
                    log.warning("dropped a bad message on a queue: %s", exc)
                self._pending.extend((sock, msg) for msg in messages)

    def _register_again(self) -> None:
        """Re-register with a restarted controller, asking for the same id and saying
        which tasks this engine holds (by whichever thread holds ``_sock_lock``; a replay
        guard of its own)."""
        import time

        replay = wire.ReplayGuard()
        # What this engine runs or has queued: a restarted hub records these as owed by
        # it (the dead controller may not have stored that it gave them out).
        self._take_queued()
        serving = self._serving
        holding = [] if serving is None else [serving]
        holding += [m.msg_id for _, m in list(self._pending)]
        # And what it answered since the old controller's last moments: those replies
        # go again (see _resend_replies), and may be all the new hub ever hears of them.
        since = self._resend_since
        holding += [m for sent, _, _, m in list(self._reply_log) if sent >= since]
        content = {
            "uuid": self.uuid,
            "id": self.id,
            "holding": holding,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "data_url": self.data_url,
            "local_path": self.local.path if self.local is not None else None,
        }
        frames = self.replier.frames(
            (), "registration_request", b"{}", b"{}", wire.json_dumps(content)
        )
        send_frames(self.registration, frames)
        end = time.monotonic() + self.registration_timeout
        while True:
            left = int((end - time.monotonic()) * 1000)
            if left <= 0 or not self.registration.poll(left):
                log.error("the restarted controller did not answer the registration")
                self._stop("re-registration unanswered", 1)
                return
            try:
                msg = recv_message(self.registration, self.signer, replay, _NOBLOCK)
            except zmq.Again:
                continue
            except wire.WireError as exc:
                log.warning("dropped a bad message on registration: %s", exc)
                continue
            if msg.msg_type == "registration_reply":
                break
        reply = msg.content
        if reply.get("status", "ok") != "ok" or not isinstance(reply.get("id"), int):
            log.error("the restarted controller refused this engine: %s", reply.get("evalue"))
            self._stop("re-registration refused", 1)
            return
        if reply["id"] != self.id:
            log.warning("engine %s re-registered as engine %d", self.id, reply["id"])
            self.id = int(reply["id"])
            self._identify()
        else:
            log.warning("engine %d re-registered with the restarted controller", self.id)

    def _log_reply(self, sock: zmq.Socket[Any], frames: list[Any], msg_id: str) -> None:
        """Keep a small reply for a while: a controller killed before it stored it gets
        it again from :meth:`_resend_replies` (replies are idempotent: same msg_id)."""
        log_ = self._reply_log
        now = time.monotonic()
        log_.append((now, sock, frames, msg_id))
        horizon = now - self._reply_window
        while log_ and (log_[0][0] < horizon or len(log_) > _REPLY_LOG_MAX):
            log_.popleft()

    def _resend_replies(self) -> None:
        """Send again every kept reply sent since the old controller's last moments."""
        since = self._resend_since
        again = [(sock, frames) for sent, sock, frames, _ in self._reply_log if sent >= since]
        if not again:
            return
        if self._held:
            self._flush_held()
        for sock, frames in again:
            send_frames(sock, frames)
        log.warning("sent %d recent replies again to the restarted controller", len(again))

    def _on_lost(self, reason: str) -> None:
        """Hub watch: the controller or the parent is gone; nobody will stop us."""
        log.warning("%s; the engine exits", reason)
        if self.watch.silent_since is not None:
            self._forget_dead_cluster()
        self._stop(reason, 1)
        self.interrupt()
        self._exit_later(1)

    def _forget_dead_cluster(self) -> None:
        """After the grace: remove the cluster file if its controller is dead, so no
        client finds a cluster that is gone (a restarted controller writes a new one)."""
        path = self.cluster_file
        if path is None:
            return
        from corral.core.processes import process_alive

        try:
            pid = int(load_cluster_file(path).get("controller_pid") or 0)
            if pid and not process_alive(pid) and path.exists():
                path.unlink()
                log.warning("removed %s: its controller (pid %d) is gone", path, pid)
        except (OSError, ValueError, EngineError):
            pass  # another engine removed it first, or it is not ours to read

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Interrupt the running task; between tasks, ignore (an interrupt never kills).

        A signal landing inside the transport (user code printing) is re-sent a moment
        later rather than raised there, so no multipart message is torn in half.
        """
        if not self._executing:
            return
        if frame is not None and frame.f_code.co_filename.startswith(_NO_TEAR):
            threading.Timer(0.005, self.interrupt).start()
            return
        raise KeyboardInterrupt

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """A launcher stopping the engine: finish like a shutdown request."""
        self._stop("terminated", 0)
        self._exit_later(0)
        self._on_sigint(signum, frame)

    def close(self) -> None:
        """Unregister (on a requested stop), stop the threads, close every socket."""
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_saved_streams", None):
            sys.stdout, sys.stderr = self._saved_streams
        if self._threads_started:
            try:
                self._ctl_tx.send(b"STOP")
            except zmq.ZMQError:
                pass
            self._control_thread.join(2.0)
            self.watch.stop()
            if threading.current_thread() is threading.main_thread():
                signal.set_wakeup_fd(-1)
        if hasattr(self, "iopub"):
            self.iopub.close()
        if self._connected:
            if self._held:  # replies to tasks that ran: out before we unregister
                try:
                    self._flush_held()
                except zmq.ZMQError:
                    pass
            self.heartbeat.stop()
            polite = self.exit_code == 0 and not self._hub_asked
            if self.id is not None and polite:
                try:
                    frames = self.replier.frames(
                        (),
                        "unregistration_request",
                        b"{}",
                        b"{}",
                        wire.json_dumps({"id": self.id}),
                    )
                    send_frames(self.registration, frames, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            try:
                self._flush_monitor()
            except zmq.ZMQError:
                pass
            for conn in list(self._local_conns.values()):
                conn.close()
            self._local_conns.clear()
            if self.local is not None:
                self.local.close()
            socks = [self.data_socket, self.mux, self.task, self.broadcast]
            socks += [self.iopub_socket, self.registration]
            if self._monitor is not None:
                socks.append(self._monitor)
            if not self._threads_started:
                socks.append(self.control)
            linger = _LINGER_MS if polite else 0
            for sock in socks:
                sock.close(linger=linger)
        # The control thread closes _ctl_rx itself once started.
        ctl = [getattr(self, "_ctl_tx", None)]
        if not self._threads_started:
            ctl.append(getattr(self, "_ctl_rx", None))
        for sock in ctl:
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        for name in ("_wake_r", "_wake_w"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
        self.context.term()


def wire_session(key: bytes, scheme: str, session_id: str) -> Any:
    """The :class:`Session` the iopub publisher sends with (same key and session id)."""
    from corral.transports.zmq.session import Session

    return Session(
        key,
        scheme=scheme,
        session_id=session_id,
        username="engine",
        signer=cluster_signer(key, scheme),
    )


def _signal_number(sig: Any) -> int:
    """The signal a ``signal_request`` names (a number or a name such as ``"SIGTERM"``).

    Anything else is refused with an error reply rather than guessed at.
    """
    if isinstance(sig, str):
        try:
            return int(signal.Signals[sig if sig.startswith("SIG") else "SIG" + sig])
        except KeyError:
            raise ValueError(f"unknown signal name {sig!r}") from None
    if isinstance(sig, int) and not isinstance(sig, bool):
        return int(signal.Signals(sig))
    raise TypeError(f"signal_request 'sig' must be a signal number or name, not {sig!r}")


def _annotate(traceback: list[str], func: Any, user_ns: dict[str, Any]) -> list[str]:
    """A failed task's traceback with the source of shipped functions (see .sources)."""
    try:
        from .sources import annotate

        helpers = [v for v in user_ns.values() if type(v) is types.FunctionType]
        return annotate(traceback, [func, *helpers])
    except Exception:  # never lose the error over its decoration
        return traceback
