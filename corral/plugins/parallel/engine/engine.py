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
3. **register** — wait for ``registration_reply`` ``{id, hb_period, hb_misses}``, then
   start loading the plugins (:mod:`.plugins`, when started with a profile) in a thread;
   a message of a type the engine does not serve waits for them.
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

Where things live: an engine is the kernel server's skeleton plus the parallel plugin's
handlers, on the cluster's sockets instead of Jupyter's. From
:mod:`corral.transports.zmq`, shared with the kernel server: the server skeleton both
derive from (:class:`~corral.transports.zmq.server.RequestServer`: the wake pipe, the
stop, SIGINT/SIGTERM, work handed to the main thread, a type nobody serves yet, the close
order), the request core (:class:`~corral.transports.zmq.requests.RequestCore`: dispatch
tables and the SIGINT guard), the cell runner (``run_execute``), the error reply, the
control thread, the answers to completion, inspection, history and is-complete
(:mod:`corral.transports.zmq.queries`), ``kernel_info``, the iopub publisher and output
relay. From this plugin, shared with any kernel that loaded it
(:mod:`..kernel_requests`): what ``apply``, ``push``, ``pull``, ``clear`` and ``abort``
do to the namespace (:mod:`.tasks`), and their handlers on this engine's wire
(:mod:`.handlers`, the counterpart of the kernel's :mod:`..kernel_requests`). This module
serves: the main loop, receiving, and the replies' fast path. The engine's own jobs have a
module each: the cluster file (:mod:`.clusterinfo`), the control channel (:mod:`.control`),
held and logged replies (:mod:`.replies`), same-host clients (:mod:`.samehost`), a lost
controller (:mod:`.recovery`), a Jupyter kernel on the same interpreter (:mod:`.bound`).

Hot path (an ``apply_request``): receive with the fixed frames as bytes and buffers as
zero-copy frames, verify, unpickle, call, pickle the result, reply with a pre-encoded
content and a header built from a counter (:mod:`._wire`, :meth:`Engine._send`). No
logging, no thread hop, no iopub message unless the task wrote output.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from zmq.backend import zmq_poll

from corral.notification.center import shared_center
from corral.transports.zmq import wire
from corral.transports.zmq.chunkstream import stall_clock
from corral.transports.zmq.door import HUB, cluster_signer, dest_of
from corral.transports.zmq.gate import REFUSED, RefusalLog, gate_for, probe
from corral.transports.zmq.iopub import IOPubPublisher
from corral.transports.zmq.relay import OutputRelay
from corral.transports.zmq.requests import unsupported_content
from corral.transports.zmq.server import RequestServer

from ..events import ENGINE_REGISTERED, TASK_FINISHED, TASK_STARTED
from . import bound
from . import data as data_path
from ._wire import (
    ROLES,
    Message,
    Replier,
    answerable,
    iso_now,
    recv_message,
    recv_messages,
    send_frames,
)
from .clusterinfo import (
    CHANNELS,
    DEFAULT_CONTROLLER_GRACE,
    REQUIRED,
    EngineError,
    EngineJoinError,
    as_dict,
    load_cluster_file,
    no_history,
)
from .clusterinfo import controller_grace as grace_period
from .control import EngineControl
from .handlers import EngineRequests
from .heartbeat import HeartbeatDevice, HubWatch
from .local import LocalConnection
from .recovery import ControllerRecovery
from .registering import await_registration
from .replies import HOLD, HOLD_MAX, ReplyHold
from .samehost import SameHostClients
from .started import StartedIds
from .taskfeed import TaskFeed
from .tasks import Tasks

__all__ = ["DEFAULT_CONTROLLER_GRACE", "Engine", "EngineJoinError", "load_cluster_file"]

#: How long a stopping engine waits for its plugins to finish loading (see close()).
PLUGINS_GRACE = 10.0

log = logging.getLogger("corral.parallel.engine")

_POLLIN = int(zmq.POLLIN)  # plain ints: enum arithmetic is slow
_NOBLOCK = int(zmq.NOBLOCK)
#: Messages served from one socket before the others (and control) get a look.
_BATCH = 32
_LINGER_MS = 1000
#: Seconds a registration goes unanswered before the engine sends it again.
_ASK_AGAIN = 5.0
#: The routing frame of a start notice to the task scheduler (see _start_group): a
#: client id never starts with a zero byte, so no reply can look like one.
_STARTED_ROUTE = b"\x00started"
_REQUESTS = ROLES["engine_requests"]
#: a socket with no binding (the registration socket: replies only)
_UNBOUND: tuple[None, None] = (None, None)


# ----------------------------------------------------------------- the engine

#: Where a request came from and its reply goes: a queue's socket or a same-host client.
Destination = zmq.Socket[Any] | LocalConnection
Handler = Callable[[Destination, Message], None]


class Engine(RequestServer):
    """One engine process's server. See the module docstring for the lifecycle.

    ``cluster`` is the cluster file's content (a dict, or what ``read_cluster_file``
    returns). ``ip`` overrides the controller address from the file. ``hub_timeout`` is
    how long without a beat means the controller is gone (default
    ``max(10 * hb_period, 1 s)``); the engine then waits ``controller_grace`` seconds
    (default: the cluster file's ``controller_grace``, else ``CORRAL_CONTROLLER_GRACE``,
    else 60) for a controller restarted on the same cluster, re-registers with it under
    the same id and keeps its namespace, and exits only if none came. ``parent_pid`` ends
    it when that process exits (default: ``CORRAL_PARENT_PID``). ``plugins`` names the
    profile whose plugins the engine loads at start (:mod:`.plugins`; the engine process
    passes ``--profile``, else its cluster file's profile); None loads none.

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
        plugins: str | None = None,
    ) -> None:
        info = as_dict(cluster)
        missing = [k for k in REQUIRED if k not in info]
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
        #: The replay guard of the queue sockets and the registration socket. Ordered: a
        #: request through a queue is ordered by its route seal's stamp (the queue's
        #: sending order, which the task scheduler holding a request back does not
        #: disturb), the hub's answers by their date (door.admit).
        self.replay = wire.ReplayGuard(ordered=True)
        #: The direct sockets' (data, same-host) guard: clients reach them in one hop, so
        #: it is ordered and what it forgot stays refused (wire.ReplayGuard). Requests
        #: are bound to one or the other by their signed destination (door.dest_of).
        self.direct_replay = wire.ReplayGuard(ordered=True)
        self.session_id = wire.new_id()
        self.replier = Replier(self.signer, self.session_id, "engine")
        self.uuid = uuid or uuid_module.uuid4().hex
        self.ident = self.uuid.encode("ascii")
        #: The signed destination of requests to this engine's own sockets (its data
        #: socket and its Unix socket; see corral.transports.zmq.door.dest_of).
        self.direct_dest = dest_of("engine", self.uuid)
        #: The run of the controller this engine is registered with (door.RUN), which its
        #: requests to the hub name, its registration included: first the cluster file's,
        #: then the registration reply's; a restarted controller refuses the old one and
        #: names its own (see registering.adopt_run).
        run = info.get("run")
        self.controller_run: str | None = run if isinstance(run, str) and run else None
        self.hub_timeout = hub_timeout
        self.controller_grace = grace_period(controller_grace, info)
        #: the msg_id of the request being served (read by the hub watch's thread)
        self._serving: str | None = None
        #: set by the hub watch when a controller comes back: the main thread catches up
        #: (a plain flag: the serving loop reads it after every message)
        self._rejoin = False
        #: what a lost controller takes to notice, to come back, to re-register
        self.recovery = ControllerRecovery(self)
        #: the cluster file this engine was started from (removed if its cluster died)
        self.cluster_file: Path | None = None
        #: refused messages, logged per cause and rate-limited as the controller's are:
        #: one line each was 100,000 lines for one broadcast naming this engine 100,000
        #: times (a flood must not fill the log)
        self.refusals = RefusalLog(log, "engine")
        #: the hub asked this engine to shut down (so it need not be told we go)
        self._hub_asked = False
        #: a shutdown_request came, and interrupts the running task: its KeyboardInterrupt
        #: says so (handlers.py), not a bare "KeyboardInterrupt" nobody typed
        self.shutdown_interrupts = False
        #: the hub's beat number when it registered us (to tell a restarted hub's beats)
        self._hub_beat: int | None = None
        self.registration_timeout = registration_timeout
        #: the profile whose plugins start() loads (None: none), and the thread that
        #: loads them (waited for by a message no handler serves yet: see .plugins)
        self.plugins_profile = plugins
        self._plugins: threading.Thread | None = None
        if parent_pid is None:
            env = os.environ.get("CORRAL_PARENT_PID", "")
            parent_pid = int(env) if env.isdigit() else None
        self.parent_pid = parent_pid
        self.context = context or zmq.Context()
        self.id: int | None = None
        self.hb_period = float(info.get("hb_period") or 1.0)
        self.hb_misses = int(info.get("hb_misses") or 2)
        self.user_ns: dict[str, Any] = {}
        #: Where this engine posts its notifications (see corral.plugins.parallel.events).
        self.center = shared_center
        #: Whether task notifications have observers (see _refresh_observed).
        self._observed = False
        #: Bridges them to the hub while some process follows tasks (see .taskfeed).
        self.task_feed = TaskFeed(self)
        #: This engine served as a Jupyter kernel too, once bound (see .bound).
        self.bound_kernel: Any = None
        #: Sockets of the bound kernel the main loop polls with its own.
        self._hosted: tuple[Any, ...] = ()
        self._poller: zmq.Poller | None = None
        self.dropped = 0
        self.interpreter: Any = None
        #: What apply, push, pull, clear and abort do to user_ns: shared with a kernel
        #: that serves them (see .tasks and corral.plugins.parallel.kernel_requests).
        self.tasks = Tasks(self.user_ns)
        # Aliases read per task (one attribute lookup on the hot path, not two).
        self._adopter = self.tasks.adopter
        self._aborted = self.tasks.aborted
        #: The request core, the kernel server's own class (transports/zmq/requests.py),
        #: with the stop, wake and signal policy of transports/zmq/server.py, as a kernel
        #: has them: the handlers of the queues (.handlers: the parallel plugin's
        #: requests on this wire, over the same Tasks a kernel's get) and of control.
        RequestServer.__init__(
            self,
            {
                "queues": EngineRequests(self).tables(),
                "control": {},  # filled by EngineControl
            },
        )
        self._handlers: dict[str, Handler] = self.core.tables["queues"]
        #: Recorded before the aborted check (see .started: moving tasks exactly once).
        self._started = StartedIds()
        self._connected = False
        #: the msg_ids of the first registration's requests, whose answers register() takes
        self.registrations_asked: set[str] = set()
        self._threads_started = False
        #: Same-host clients calling over a Unix socket (see .samehost).
        self.same_host = SameHostClients(self)
        # Requests that came in one batch and still wait their turn, in order.
        self._pending: deque[tuple[zmq.Socket[Any], Message]] = deque()
        # The lock that guards the queue sockets: the main thread holds it except while
        # user code runs, when the flusher thread may take it to send replies held too
        # long (see .replies).
        self._sock_lock = threading.Lock()
        self._unlocked = _Released(self._sock_lock)
        #: Replies held to leave in batches, zero-copy sends in flight, recent replies
        #: (kept longer than a lost controller takes to notice).
        self.replies = ReplyHold(
            self._sock_lock,
            lambda: self.guard.executing,
            3 * max(10 * float(info.get("hb_period") or 1.0), 1.0),
        )
        # Load-balanced tasks run in groups announced to the scheduler (_start_group):
        # how many of the current group are left, the size the next may have, and when
        # and how big the current one started.
        self._group_left = 0
        self._group_size = 1
        self._group_start = 0.0
        self._group_count = 0

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
        for channel in CHANNELS:
            sock = gate.client(ctx.socket(zmq.DEALER))
            sock.linger = _LINGER_MS
            sock.identity = self.ident
            sock.connect(self.url(channel))
            self.queues[channel] = sock
        self.mux = self.queues["mux_engine"]
        self.control = self.queues["control_engine"]
        self.task = self.queues["task_engine"]
        self.broadcast = self.queues["broadcast_engine"]
        #: Where each request socket sits (door.admit's ``dest``, ``sealed_to``): a
        #: request signed for another place is refused, and one that came through a
        #: queue must carry that queue's route seal for this engine.
        self.bindings: dict[Any, tuple[str, bytes | None]] = {
            self.data_socket: (self.direct_dest, None),
            self.mux: ("mux", self.ident),
            self.control: ("control", self.ident),
            self.task: ("task", self.ident),
            self.broadcast: ("broadcast", self.ident),
        }
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
            self.same_host.open(ctx, gate, self.url("monitor"), _LINGER_MS)
        self.registrations_asked = {self.send_registration({})}
        self._connected = True

    def send_registration(self, extra: dict[str, Any]) -> str:
        """Send a ``registration_request`` describing this engine (plus ``extra``);
        returns its msg_id, which the hub's reply names as its parent."""
        content = {
            "uuid": self.uuid,
            **extra,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "data_url": self.data_url,
            "local_path": self.same_host.path,
            # A monitor reports this engine's death with its cause (launchers/monitor.py).
            "monitored": os.environ.get("CORRAL_MONITORED") == "1",
        }
        restart_of = os.environ.get("CORRAL_RESTART_OF")  # launchers/monitor.py
        if restart_of:
            content["restart_of"] = restart_of
        if os.environ.get("CORRAL_ENGINE_ID_FROM_RANK") == "1":
            # An MPI rank asks for engine id == rank (granted if free; parallel/mpi.py).
            from corral.plugins.parallel.mpi import rank_from_environment

            rank = rank_from_environment()
            if rank is not None:
                content["id"] = rank
        frames = self.replier.frames(
            (),
            "registration_request",
            b"{}",
            b"{}",
            wire.json_dumps(content),
            dest=HUB,
            run=self.controller_run,
        )
        send_frames(self.registration, frames)
        return self.replier.last_msg_id

    def prepare(self) -> None:
        """Create the interpreter (the slow imports), ready for the first task."""
        if self.interpreter is not None:
            return
        from corral.core.interpreter import Interpreter
        from corral.notification.center import shared_center

        self.interpreter = Interpreter(
            shared_center, user_ns=self.user_ns, history=no_history(), sender="engine"
        )
        bound.install_connect_magics(self.interpreter)
        self.tasks.load()
        self._serialize = self.tasks.serialize

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
        msg = await_registration(
            self, self._ask_again, self.registrations_asked, end, self.replay, _ASK_AGAIN
        )
        if msg is None:
            raise EngineError(
                f"no registration reply from {self.url('registration')} within "
                f"{self.registration_timeout:g} s: the controller is not reachable at "
                f"{self.ip} from this host. Set [cluster] location (Cluster(location=...)) "
                "to an address of the controller's host that engines can reach, and "
                "[cluster] ip to an interface it binds (* for all); [engine] timeout "
                "sets how long engines wait"
            )
        content = msg.content
        if content.get("status", "ok") != "ok" or not isinstance(content.get("id"), int):
            raise EngineError(
                f"registration refused: {content.get('evalue') or content.get('status')}"
            )
        self.id = int(content["id"])
        self.learn_run(content)
        beat = content.get("beat")
        self._hub_beat = beat if type(beat) is int else None
        self.hb_period = float(content.get("hb_period") or self.hb_period)
        self.hb_misses = int(content.get("hb_misses") or self.hb_misses)
        self.task_feed.wanted = content.get("task_feed") is True
        self._after_registration()
        self.announce()
        return self.id

    def _ask_again(self) -> str:
        """Send the registration again (unanswered for :data:`_ASK_AGAIN` seconds, or
        after adopting a run): a request or reply lost on the way must not leave the
        engine waiting until its timeout. The hub answers a repeat from the same process
        with the same registration. Logged, so a slow or silent hub shows in the log."""
        log.warning(
            "registration: asking %s again (no reply yet, or a new controller run)",
            self.url("registration"),
        )
        return self.send_registration({})

    def learn_run(self, reply: dict[str, Any]) -> None:
        """Keep the controller run a registration reply names (what later requests to
        the hub must carry; None from a controller without runs)."""
        run = reply.get("run")
        self.controller_run = run if isinstance(run, str) and run else None

    def _after_registration(self) -> None:
        """Everything that needs the engine id: output, pre-encoded replies, threads."""
        assert self.id is not None
        self.iopub = IOPubPublisher(
            wire_session(self.key, self.scheme, self.session_id),
            self.iopub_socket,
            metadata={"engine_id": self.id},
        )
        self.relay = OutputRelay(self.interpreter, self.iopub)
        self._saved_streams = _install_streams(self.interpreter)
        self._identify()
        from corral import datapub

        datapub.install(self._publish_data)
        self._control = EngineControl(self)
        self.control_thread = self._control.thread
        # Any thread or signal -> main loop: a byte on a socketpair the main loop polls.
        self.open_wake()
        timeout = self.hub_timeout
        if timeout is None:
            timeout = max(10 * self.hb_period, 1.0)
        self.watch = HubWatch(
            self.context,
            self.heartbeat.capture_url,
            timeout,
            self.recovery.on_lost,
            self.parent_pid,
            notification_url=self.url("notification") if self.cluster.get("notification") else None,
            uuid=self.uuid,
            signer=cluster_signer(self.key, self.scheme),
            gate=self.gate,
            grace=self.controller_grace,
            on_silent=self.recovery.on_silent,
            on_back=self.recovery.on_back,
            beat=self._hub_beat,
            on_task_feed=self._on_task_feed,
        )

    def watch_sockets(self, sockets: tuple[Any, ...]) -> None:
        """Have the main loop poll ``sockets`` too (a bound kernel's; main thread)."""
        assert self._poller is not None, "the engine is not serving yet"
        for sock in sockets:
            self._poller.register(sock, _POLLIN)
        self._hosted = self._hosted + tuple(sockets)

    def unwatch_sockets(self, sockets: tuple[Any, ...]) -> None:
        for sock in sockets:
            if self._poller is not None:
                self._poller.unregister(sock)
        self._hosted = tuple(s for s in self._hosted if s not in sockets)

    def _on_task_feed(self, wanted: bool) -> None:
        """Hub watch's thread: the hub says whether some process follows tasks (the
        main loop opens or closes the bridge at its next wake-up)."""
        self.task_feed.wanted = wanted

    def _refresh_observed(self) -> None:
        """Whether anyone observes this engine's task notifications: asked once per
        wake-up of the main loop, not per task, so a burst of tasks nobody watches pays
        nothing for them. An observer registered during a burst (by a task) hears the
        tasks of the next one; so does the bridge to the hub (.taskfeed), which opens
        here."""
        feed = self.task_feed
        if feed.wanted is not feed.on:
            feed.sync()
        center = self.center
        self._observed = center.has_observers(TASK_STARTED) or center.has_observers(TASK_FINISHED)

    def announce(self) -> None:
        """Post ``ENGINE_REGISTERED`` in this process (after each registration)."""
        self.center.post(ENGINE_REGISTERED, self, engine_id=self.id, uuid=self.uuid)

    def _identify(self) -> None:
        """What replies and output say about this engine (again if its id changes)."""
        assert self.id is not None
        self.engine_info = {"engine_id": self.id, "engine_uuid": self.uuid}
        self.iopub.default_metadata = {"engine_id": self.id}
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
        if self.plugins_profile is not None and self._plugins is None:
            from .plugins import start_loading

            self._plugins = start_loading(self, self.plugins_profile)
            # A type no handler serves waits for them (RequestServer.late_handler).
            self.await_handlers = self._plugins.join
        if self._threads_started:
            return
        self._threads_started = True
        self._control.thread.start()
        self.watch.start()
        bound.set_current(self)
        # SIGINT interrupts a task; SIGTERM (how launchers stop engines) is a shutdown.
        if self.install_signals(sigterm=True) and hasattr(signal, "pthread_sigmask"):
            # A monitor starts its engine with SIGINT blocked (launchers.monitor's
            # hold_sigint), so that one sent during imports and registration does not
            # kill it: now the guard is the handler, let it (and any pending one) in.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

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
        wake_fd = self.wake_fd
        poller.register(wake_fd, _POLLIN)  # polled by fd: events name the int
        same_host = self.same_host
        same_host.attach(poller)
        self._poller = poller
        for sock in (self.data_socket, self.mux, self.task, self.broadcast):
            poller.register(sock, _POLLIN)
        data_socket = self.data_socket
        stall_deadline = stall_clock(data_socket)
        inbox = self.handed  # clear and shutdown, handed over by the control thread
        pending = self._pending
        serve = self._serve_one
        self._sock_lock.acquire()
        self.replies.start_flusher()
        replies = self.replies
        try:
            while self.stop_reason is None:
                if self._rejoin:  # a restarted controller: what it may have lost, again
                    self._rejoin = False
                    self.recovery.catch_up()
                    continue
                if inbox:
                    if replies.held:  # answers to earlier tasks go first
                        replies.flush()
                    inbox.popleft()()
                    continue
                if pending:
                    self._serve_pending()
                    continue
                if replies.held:
                    replies.flush()  # nothing more to run now: let them go
                due = same_host.due
                stall = stall_deadline()
                if due is None and stall is None:
                    events = poller.poll()
                else:
                    events = poller.poll(_wait_ms(due, stall))
                    now = time.monotonic()
                    if due is not None and now >= due:
                        same_host.flush()
                    if stall is not None and now >= stall:
                        serve(data_socket)  # a stream that stalled ends (chunkstream)
                self._refresh_observed()
                for sock, _ in events:
                    if self._hosted and sock in self._hosted:
                        if self.bound_kernel is not None:
                            self.bound_kernel.serve()
                        continue
                    if sock.__class__ is int:  # a plain descriptor
                        if sock == wake_fd:
                            self.drain_wake()
                        else:
                            same_host.serve(sock)
                        if inbox or self.stop_reason is not None or self._rejoin:
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
                            or self.stop_reason is not None
                            or self._rejoin
                            or not zmq_poll(items, 0)
                        ):
                            break
                    if inbox or pending or self.stop_reason is not None or self._rejoin:
                        break
        finally:
            try:
                self.close()
            finally:
                self.replies.close()  # the flusher ends
                self._sock_lock.release()
        return self.exit_code

    def _receive(
        self,
        sock: zmq.Socket[Any],
        where: str,
        answer: Callable[[Message, wire.WireError], None] | None = None,
    ) -> Message | None:
        """The next verified message on ``sock``; None if none waits or it was dropped.
        A refused request with a genuine header (:func:`._wire.answerable`) is handed to
        ``answer``: its queue counts it as owed by this engine until it is answered."""
        dest, sealed_to = self.bindings.get(sock, _UNBOUND)
        try:
            return recv_message(
                sock, self.signer, self.guard_for(dest), _NOBLOCK, ROLES[where], dest, sealed_to
            )
        except zmq.Again:
            return None
        except wire.WireError as exc:
            self.dropped += 1
            self.refusals.refused(f"{type(exc).__name__} on {where}", str(exc)[:200])
            message = answerable(exc)
            if message is not None and answer is not None:
                answer(message, exc)
            return None

    def guard_for(self, dest: str | None) -> wire.ReplayGuard:
        """The replay guard of a socket bound to ``dest``: the direct sockets' own, or
        the queues' and registration's."""
        return self.direct_replay if dest == self.direct_dest else self.replay

    def _serve_one(self, sock: zmq.Socket[Any]) -> None:
        """Serve the next zmq message on a queue socket: one request, or a batch of them
        (whose rest waits in ``_pending`` if control or a stop cuts in)."""
        # Through the door with this socket's binding (signed destination, route seal).
        dest, sealed_to = self.bindings[sock]
        try:
            messages, errors = recv_messages(
                sock, self.signer, self.guard_for(dest), _NOBLOCK, _REQUESTS, dest, sealed_to
            )
        except zmq.Again:
            return
        for exc in errors:
            self.refuse(sock, exc, "a queue")
        if len(messages) == 1:
            self._serve_message(sock, messages[0])
        elif messages:
            self._pending.extend((sock, msg) for msg in messages)
            self._serve_pending()

    def _serve_pending(self) -> None:
        pending = self._pending
        inbox = self.handed
        while pending and not inbox and self.stop_reason is None and not self._rejoin:
            sock, msg = pending.popleft()
            self._serve_message(sock, msg)

    def _serve_message(self, sock: Destination, msg: Message) -> None:
        same_host = self.same_host
        due = same_host.due
        if same_host.queue and (
            sock.__class__ is not LocalConnection or due is None or time.monotonic() >= due
        ):
            # Copies of earlier same-host calls go before a queued task runs (it may run
            # long), and before any call once their 20 ms are up.
            same_host.flush()
        if sock is self.task:
            if not self._group_left:
                self._start_group(msg)
            self._group_left -= 1
        msg_id, msg_type = msg.msg_id, msg.msg_type
        handler = self._handlers.get(msg_type)
        self._serving = msg_id
        observed = self._observed
        if observed:
            self.center.post(
                TASK_STARTED, self, msg_id=msg_id, msg_type=msg_type, engine_id=self.id
            )
        try:
            if handler is None:
                self._unknown(sock, msg)
            else:
                handler(sock, msg)
        except Exception as exc:  # a bug or bad content: answer, keep serving
            log.exception("error while handling %s", msg_type)
            self._reply_error(sock, msg, exc)
        finally:
            self._serving = None
            if observed:
                self.center.post(
                    TASK_FINISHED, self, msg_id=msg_id, msg_type=msg_type, engine_id=self.id
                )

    def _start_group(self, msg: Message) -> None:
        """Tell the task scheduler which load-balanced tasks may start from now on:
        ``msg`` and the task messages received right behind it, as many as the group
        size allows. Sent with (after) the replies held so far, before any of these
        tasks starts, so the scheduler knows that a task not yet announced has not
        started if this engine dies (docs/parallel-protocol.md, "Prefetch and start
        notices").

        Groups double while tasks are quick (less than ``HOLD`` each: their replies then
        leave in batches, and one notice serves many tasks) and fall back to one task as
        soon as tasks take longer (one notice per task costs nothing then, and a death
        costs a retry only of the task that was running).
        """
        now = time.monotonic()
        if self._group_count:
            quick = now - self._group_start < HOLD * self._group_count
            self._group_size = min(2 * self._group_size, HOLD_MAX) if quick else 1
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
        self.replies.held.append((self.task, notice))
        self.replies.flush()

    def _unknown(self, sock: Destination, msg: Message) -> None:
        handler = self.late_handler(self._handlers, msg.msg_type)
        if handler is not None:  # a plugin's, loaded meanwhile
            handler(sock, msg)
            return
        log.warning("ignoring unknown message type %r", msg.msg_type)
        if msg.msg_type.endswith("_request"):
            content = unsupported_content(msg.msg_type, "the queues")
            content["engine_info"] = {**self.engine_info, "method": "engine"}
            now = iso_now()
            metadata = self._metadata(now, now, "error", 0)
            self._send(sock, msg, wire.json_dumps(content), metadata, date=now)

    # ------------------------------------------------------------ replies

    def reply(
        self,
        sock: Destination,
        msg: Message,
        content: dict[str, Any],
        buffers: list[Any] | tuple[Any, ...] = (),
    ) -> None:
        """Answer ``msg`` with ``content`` (JSON) and ``buffers``: how a plugin's request
        handler replies (``corral_engine_request_handlers``). The metadata says this
        engine and ``content``'s status, as every reply of the engine does."""
        now = iso_now()
        status = str(content.get("status", "ok"))
        metadata = self._metadata(now, now, status, 0)
        self._send(sock, msg, wire.json_dumps(content), metadata, buffers, now)

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
        sends to finish first (:meth:`.ReplyHold.settle`).
        """
        reply_type = msg.msg_type[: -len("_request")] + "_reply"
        if len(buffers) > 1:  # out-of-band buffers: views onto user memory
            buffers = self.replies.track(buffers)
        frames = self.replier.frames(
            msg.idents, reply_type, msg.raw_header, metadata, content, buffers, date
        )
        if isinstance(sock, LocalConnection):
            self.same_host.send(sock, msg, frames)
            return
        if sock not in self._batching:
            send_frames(sock, frames)
            return
        # A reply that is all bytes cannot change: it may wait (up to HOLD) for the
        # replies to the next queued tasks and leave with them as one batch. Any other
        # frame is a view onto memory the next task may write: send now, in order.
        for frame in frames:
            if frame.__class__ is not bytes:
                self.replies.send_now(sock, frames)
                return
        self.replies.hold(sock, frames, msg.msg_id)

    def _error_content(self, exc: BaseException, method: str, func: Any = None) -> dict[str, Any]:
        content = self.tasks.error(exc, func)
        content["engine_info"] = {**self.engine_info, "method": method}
        return content

    def refuse(self, sock: Destination, exc: wire.WireError, where: str) -> None:
        """Count and log a refused message. One whose buffers were altered on the way, or
        whose content is unreadable, has a genuine header, and its queue has already
        counted it as sent to this engine: it is answered with the error
        (:func:`._wire.answerable`), so neither its client nor the hub waits forever."""
        self.dropped += 1
        self.refusals.refused(f"{type(exc).__name__} on {where}", str(exc)[:200])
        message = answerable(exc)
        if message is not None:
            self._reply_error(sock, message, exc, message.msg_type.removesuffix("_request"))

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

    # ------------------------------------------------------------ stopping

    def close(self) -> None:
        """Unregister (on a requested stop), stop the threads, close every socket (in the
        order of :meth:`.RequestServer.close`)."""
        self.refusals.flush()  # the refusals counted since the last line
        super().close()

    def stop_helpers(self) -> None:
        """Before control stops: the plugin loader, the task feed, a bound kernel, the
        streams installed for tasks and the hub watch."""
        loader = self._plugins
        if loader is not None and loader is not threading.current_thread():
            # A daemon thread still importing plugins when the interpreter finalizes
            # fails (or crashes it): a stop soon after the start waits for it, briefly.
            loader.join(PLUGINS_GRACE)
        self.task_feed.close()
        bound.close_bound(self)
        if getattr(self, "_saved_streams", None):
            sys.stdout, sys.stderr = self._saved_streams
        if self._threads_started:
            self.watch.stop()

    def close_sockets(self) -> None:
        """After control and iopub: the held replies, the unregistration (on a requested
        stop), same-host clients, then the queue sockets."""
        if not self._connected:
            return
        if self.replies.held:  # replies to tasks that ran: out before we unregister
            try:
                self.replies.flush()
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
                    dest=HUB,
                    run=self.controller_run,
                )
                send_frames(self.registration, frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        try:
            self.same_host.flush()
        except zmq.ZMQError:
            pass
        self.same_host.close()
        socks = [self.data_socket, self.mux, self.task, self.broadcast]
        socks += [self.iopub_socket, self.registration, *self.same_host.sockets()]
        if self.control_thread is None:  # registration never answered: no thread made
            socks.append(self.control)
        linger = _LINGER_MS if polite else 0
        for sock in socks:
            sock.close(linger=linger)


def _wait_ms(*deadlines: float | None) -> int:
    """Milliseconds until the earliest of ``deadlines`` (``time.monotonic()``; at least
    one is set), rounded up so that the poll never wakes just before it."""
    due = min(d for d in deadlines if d is not None)
    return max(0, int((due - time.monotonic()) * 1000) + 1)


class _Released:
    """``with`` body runs with ``lock`` released (the main thread holds it otherwise)."""

    __slots__ = ("lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.release()

    def __exit__(self, *exc: object) -> None:
        self.lock.acquire()


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


def _install_streams(interpreter: Any) -> tuple[Any, Any]:
    """Point ``sys.stdout``/``sys.stderr`` at posting streams; returns the old pair.

    Apply tasks call user functions directly, not through ``Interpreter.execute``, so no
    one swaps the streams for them: these stay for the life of the engine (the
    interpreter's own per-cell swap restores them afterwards), at no cost per task.
    """
    from corral.core.iostreams import PostingStream

    saved = sys.stdout, sys.stderr
    sys.stdout = PostingStream(interpreter.center, interpreter, "stdout")
    sys.stderr = PostingStream(interpreter.center, interpreter, "stderr")
    return saved
