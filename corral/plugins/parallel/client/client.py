"""``Client``: one connection to a cluster's controller, shared by every view.

The client reads the cluster file, connects one socket per controller interface (all
owned by the :class:`~.io.ClientIO` thread), learns the engines from the hub and keeps
that list current from the hub's notifications. Views build requests; the client signs
them, remembers which :class:`AsyncResult` each one belongs to, and the I/O thread fills
those results in as replies and output arrive. Nothing here waits per task, so thousands
of tasks can be in flight from one thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import zmq

from corral.core.fifo import trim_oldest
from corral.core.serialize import pack_apply
from corral.notification import shared_center
from corral.notification.bridge import repost
from corral.transports.zmq import wire
from corral.transports.zmq.bridge import FEED_TOPIC, feed_payload
from corral.transports.zmq.chunkstream import frame_nbytes
from corral.transports.zmq.door import BuffersAltered, cluster_signer, dest_of
from corral.transports.zmq.gate import REFUSED, RefusalLog, gate_for, probe
from corral.transports.zmq.keyfile import endpoint

from .. import events
from ..coalesce import mark_metadata
from .asyncresult import (
    AsyncMapResult,
    AsyncResult,
    BroadcastResult,
    engine_death_error,
    msg_ids_of,
    reply_outcome,
)
from .channels import dest_for, role_for
from .compat import ClientCompat, _combine_results, connection_source, forever
from .dependencies import _USED as _DEPENDENCIES_USED
from .errors import ControllerLost, DataChannelLost, RemoteError
from .funccache import FunctionCache
from .io import ClientIO
from .local import MAX_LOCAL_BUFFERS, MAX_LOCAL_REQUEST, EngineGone, LocalCalls, usable_path
from .messages import MessageBuilder, Parsed, encode_json, parse
from .stored import StoredFetches, is_stored

__all__ = ["Client", "EngineInfo"]

log = logging.getLogger("corral.plugins.parallel.client")

#: seconds the first use of an engine's data channel waits for its connection; after
#: that, requests take the queues until it is up (see Client._data_channels_for)
DATA_CONNECT_WAIT = 2.0

#: seconds close() waits for the I/O thread to flush and end (it finishes alone after)
IO_STOP_WAIT = 5.0

_REPLY_CHANNELS = frozenset(["mux", "task", "broadcast", "control"])
#: What a client hears on the hub's feed: engines coming and going, and the hub's posts.
#: The task topic (events.TASK_FEED_TOPIC) only while someone here follows tasks.
_NOTIFICATION_TOPICS = (
    b"registration_notification",
    b"unregistration_notification",
    b"shutdown_notification",
    FEED_TOPIC,
)
#: iopub messages that are not a task's output (not posted as events.OUTPUT).
_NOT_OUTPUT = frozenset(["status", "execute_input"])
#: How many finished results, still referenced by the caller, stay findable by msg_id
#: (for iopub that trails the reply, and for get_result of this client's own tasks)
#: before the oldest are forgotten.
_RECENT_LIMIT = 50_000
#: Frames below this size are copied into zmq (cheaper than tracking their lifetime).
_COPY_LIMIT = 64 * 1024
#: Seconds of connections turned away (nothing listening) after which a new client
#: concludes that the controller its cluster file names is not running.
_ABSENT_AFTER = 1.0
#: Seconds :meth:`Client.reconnect` first waits for the hub's answer before it reads the
#: cluster file again (a controller restarted elsewhere); doubled at each try.
_RECONNECT_ATTEMPT = 1.0


def _track_large(frames: list[Any], count: int, trackers: list[zmq.MessageTracker]) -> None:
    """Wrap the large ones among the last ``count`` of ``frames`` (a message's buffers,
    sent zero-copy) in tracked ``zmq.Frame`` s, adding their trackers to ``trackers``.

    libzmq reads such a buffer while it sends, after the view returned: an array changed
    before then reaches the engine altered, and is refused (``BuffersAltered``).
    :meth:`AsyncResult.wait_for_send` waits on these trackers, the point after which the
    caller may change its arrays, as ipyparallel's does. Only buffers of at least
    :data:`_COPY_LIMIT` bytes: smaller ones are copied on sending.
    """
    for index in range(len(frames) - count, len(frames)):
        buffer = frames[index]
        if frame_nbytes(buffer) >= _COPY_LIMIT:
            frame = zmq.Frame(buffer, copy=False, track=True)
            frames[index] = frame
            trackers.append(frame.tracker)


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """What the client knows about one registered engine (a dataclass: see LaunchHandle)."""

    id: int
    uuid: str
    hostname: str = ""
    pid: int | None = None
    data_url: str | None = None
    #: The engine's Unix socket, for blocking calls from a client on the same host.
    local_path: str | None = None

    @property
    def ident(self) -> bytes:
        """The engine's routing identity on the queues."""
        return self.uuid.encode("ascii")


def _find_cluster_file(profile: str, cluster_id: str | None) -> Path:
    """The cluster file of ``cluster_id``, or the newest one of ``profile``."""
    try:
        from corral.plugins.parallel.clusterfile import cluster_file_path
    except ImportError:  # pragma: no cover - the controller package is always shipped
        cluster_file_path = None  # type: ignore[assignment]  # checked for None below
    if cluster_id is not None:
        if cluster_file_path is not None:
            return Path(cluster_file_path(profile, cluster_id))
        from corral.core.profiles import profile_dir

        return profile_dir(profile) / "security" / f"cluster-{cluster_id}.json"
    from corral.core.profiles import locate_profile

    security = locate_profile(profile) / "security"
    candidates = sorted(security.glob("cluster-*.json"), key=lambda p: p.stat().st_mtime)
    if len(candidates) > 1:  # a member of an aggregate is reached through the aggregate
        from corral.plugins.parallel.aggregatefile import member_cluster_ids

        members = member_cluster_ids(security)
        candidates = [p for p in candidates if p.stem.removeprefix("cluster-") not in members]
    if not candidates:
        raise FileNotFoundError(f"no cluster file in {security}; is a controller running?")
    return candidates[-1]


#: Client's parameters, in order (for __new__, which sees them before __init__ does).
_PARAMETERS = ("profile", "cluster_id", "connection_file", "timeout", "local", "url_file")


def _is_aggregate_file(path: Path) -> bool:
    """Whether ``path`` lists several controllers (see parallel/aggregatefile.py); False
    for a file that cannot be read (``__init__`` then says why)."""
    try:
        from corral.plugins.parallel.aggregatefile import is_aggregate
    except ImportError:  # pragma: no cover
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            return is_aggregate(json.load(fh))
    except (OSError, ValueError):
        return False


def _read_cluster_file(path: Path) -> dict[str, Any]:
    try:
        from corral.plugins.parallel.clusterfile import read_cluster_file
    except ImportError:  # pragma: no cover
        with open(path, encoding="utf-8") as fh:
            return dict(json.load(fh))
    info = read_cluster_file(path)
    return info.to_dict()


def _run_of(info: dict[str, Any]) -> str:
    """The controller run a cluster file names ("" if it names none)."""
    run = info.get("run")
    return run if isinstance(run, str) else ""


def _url(info: dict[str, Any], name: str) -> str:
    return endpoint(info.get("transport", "tcp"), info.get("ip", "127.0.0.1"), int(info[name]))


class Client(ClientCompat):
    """A connection to a running cluster.

    ``Client()`` connects to the newest cluster of the ``default`` profile;
    ``Client(cluster_id=...)``, ``Client(profile=...)`` or ``Client(connection_file=...)``
    pick one explicitly. ``timeout`` bounds the wait for the hub's first answer.

    ``local=True`` (the default) sends blocking calls on one engine of this host
    (``rc[0].apply_sync(f)``) over that engine's Unix socket, from the calling thread: one
    round trip instead of two through the mux (see :mod:`.local`). ``local=False`` keeps
    every request on the queues.

    ``rc[:]``, ``rc[0]``, ``rc[::2]``, ``rc[[0, 1]]`` give direct views;
    :meth:`load_balanced_view`, :meth:`broadcast_view` and :meth:`executor` the others.

    .. versionadded:: 0.1
    """

    #: Set by the views' link (client.link): the "no engines yet" warning was given
    #: while there are none. Declared only; unset means not given.
    _said_no_engines: bool

    #: The ``block`` flag of views made from now on (``rc[:]``, ``load_balanced_view()``
    #: ...), as in ipyparallel: scripts set ``rc.block = True`` and expect every view to
    #: wait for its results (and raise its errors).
    block: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """An :class:`~corral.plugins.parallel.aggregate.AggregateClient` when the
        cluster file found is an aggregate's (``corral cluster start --controllers N``),
        else a client of one controller."""
        if cls is Client:
            named = dict(zip(_PARAMETERS, args, strict=False))
            named.update(kwargs)
            try:
                profile, connection_file = connection_source(
                    named.get("profile", "default"),
                    named.get("connection_file"),
                    named.get("url_file"),
                )
                path = (
                    Path(connection_file)
                    if connection_file is not None
                    else _find_cluster_file(profile, named.get("cluster_id"))
                )
            except Exception:  # no profile, no file, bad arguments: __init__ says which
                return super().__new__(cls)
            if _is_aggregate_file(path):
                from corral.plugins.parallel.aggregate import AggregateClient

                return AggregateClient.from_file(
                    path, timeout=named.get("timeout", 10.0), local=named.get("local", True)
                )
        return super().__new__(cls)

    def __init__(
        self,
        profile: str = "default",
        cluster_id: str | None = None,
        connection_file: str | Path | None = None,
        timeout: float = 10.0,
        local: bool = True,
        url_file: str | Path | None = None,
    ) -> None:
        profile, connection_file = connection_source(profile, connection_file, url_file)
        path = (
            Path(connection_file)
            if connection_file is not None
            else _find_cluster_file(profile, cluster_id)
        )
        info = _read_cluster_file(path)
        self.profile = profile
        self.connection_file = path
        self.cluster_id: str = info.get("cluster_id", cluster_id or "")
        self.cluster_info = {k: v for k, v in info.items() if k != "key"}
        key = info.get("key", b"")
        self._signer = cluster_signer(
            key if isinstance(key, bytes) else key.encode("ascii"),
            info.get("signature_scheme", "hmac-sha256"),
        )
        self.session = wire.new_id()
        self._builder = MessageBuilder(self._signer, self.session, run=_run_of(info))
        self._replay = wire.ReplayGuard()
        #: iopub's own guard, ordered: each engine's output comes in one hop through the
        #: controller's proxy, so what it forgets stays refused (the replies' guard cannot
        #: be: a reply from the hub's store comes long after newer ones)
        self._iopub_replay = wire.ReplayGuard(ordered=True)
        self.timeout = timeout

        self._engines: dict[int, EngineInfo] = {}
        self._dead: set[int] = set()
        # Engine details fetched after registration notices: one connection_request in
        # flight at a time, and one more if notices came meanwhile (a request per notice
        # made 1,000 engines cost the hub 1,000 replies of 1,000 engines each).
        self._details_pending = False
        self._details_again = False
        self._engines_changed = threading.Condition()
        # msg_id -> result waiting for replies (mux, task, broadcast, data path)
        self._pending: dict[str, AsyncResult] = {}
        # msg_id -> engine id of a direct (mux / data path) request still pending
        self._direct: dict[str, int] = {}
        # msg_id -> (data channel, msg_type) of a data-path request still pending: failed
        # when that channel's connection breaks (see _data_channel_lost)
        self._on_data: dict[str, tuple[str, str]] = {}
        # msg_id -> result, for output that trails the reply and for get_result(). Weakly:
        # a result the caller has dropped, and its value (a pulled 100 MB array, say), must
        # not be kept alive here; get_result() of a dropped one asks the hub instead.
        self._recent: weakref.WeakValueDictionary[str, AsyncResult] = weakref.WeakValueDictionary()
        # msg_id -> callback for hub and control replies
        self._callbacks: dict[str, Callable[[Parsed], None]] = {}
        # msg_ids submitted by this client, newest last (ipyparallel's ``rc.history``).
        self._history: deque[str] = deque(maxlen=_RECENT_LIMIT)
        #: data channel -> (set while its connection is up, when first use stops waiting)
        self._data_channels: dict[str, tuple[threading.Event, float]] = {}
        #: makes "first use opens the socket" one step (see _open_data_channel)
        self._data_lock = threading.Lock()
        self._functions = FunctionCache()
        self._closed = False
        self.dropped = 0
        #: refused messages, logged per cause and rate-limited (a flood must not fill logs)
        self.refusals = RefusalLog(log, "client")
        self._local = LocalCalls(self._builder, self._signer) if local else None
        # engine id -> its Unix socket if this client may use it, "" if not (checked once)
        self._local_paths: dict[int, str] = {}

        #: set when the controller is gone: pending work failed, new work refused
        self._lost: ControllerLost | None = None
        #: the I/O thread ended on an error (not the controller): see _on_io_crash
        self._io_crashed = False
        #: this client asked the hub to shut the cluster down
        self._shut_down = False
        # results fetched from the hub's database, still asking it (failed on a loss)
        self._hub_results: weakref.WeakSet[AsyncResult] = weakref.WeakSet()
        # replies that came without their buffers, fetched from the hub a few at a time
        self._stored = StoredFetches(self)
        # msg_id -> future of a hub or control request waited for by some thread
        self._waiters: dict[str, concurrent.futures.Future[Parsed]] = {}

        #: whether this client subscribes the feed's task topic (see _follow_tasks)
        self._following = False
        self._context: zmq.Context[Any] = zmq.Context()
        self._connections = 0  # I/O threads started: each connects under its own identity
        # Before the I/O thread connects: its socket monitors take a refused connection
        # for a lost controller ("pending results failed"), which a client that never
        # reached one has not lost (_check_gate says what is wrong).
        self.gate = gate_for(info)
        try:
            self._check_gate(_url(info, "registration"), timeout)
        except BaseException:
            self._closed = True
            if self._local is not None:
                self._local.close()
            self._context.term()
            raise
        self._io = self._connect(info)
        try:
            self._sync_engines(timeout, joining=True)
        except BaseException:
            self.close()
            raise
        _MADE[:] = [ref for ref in _MADE if ref() is not None]  # a script may make many
        _MADE.append(weakref.ref(self))
        _offer_px_magics()

    def _fresh_identity(self) -> bytes:
        """A routing identity no earlier connection of this client used.

        A ROUTER that still holds a connection under an identity ignores a second peer
        that claims it, and drops that peer's first message as its identity when it
        retries: after :meth:`reconnect` to the same controller (an I/O thread that
        crashed), a request made before the controller had noticed the old connection
        close was never answered. Replies are routed by the identity each request
        arrives under, so nothing else depends on it staying the same.
        """
        self._connections += 1
        return f"{self.session}.{self._connections}".encode()

    def _connect(self, info: dict[str, Any]) -> ClientIO:
        """An I/O thread with one socket per controller interface, started, behind the
        cluster's gate.

        The sockets to the controller are watched: the controller's death fails every
        pending result at once (see :meth:`_controller_lost`), not after a timeout.
        """
        self.gate = gate_for(info)
        io = ClientIO(
            self._context, self._dispatch, identity=self._fresh_identity(), secure=self.gate.client
        )
        io.on_disconnect = self._on_disconnect
        io.on_crash = self._on_io_crash
        hb_period = float(info.get("hb_period") or 1.0)
        watch_ms = max(100, int(hb_period * 1000))
        for name in ("registration", "mux", "control", "task", "broadcast"):
            io.add_socket(name, zmq.DEALER, _url(info, name), watch_ms=watch_ms)
        io.add_socket(
            "notification", zmq.SUB, _url(info, "notification"), subscribe=_NOTIFICATION_TOPICS
        )
        io.add_socket("iopub", zmq.SUB, _url(info, "iopub"), subscribe=b"")
        io.start()
        self._following = False
        self._follow_tasks(io)
        return io

    def _follow_tasks(self, io: ClientIO | None = None) -> None:
        """Subscribe the feed's task topic while a task start notification re-posted here
        (sender ``"hub"``) would reach an observer, and unsubscribe once none would: the
        hub then has the engines send theirs (see corral.plugins.parallel.events).

        Asked at connection and at each submission (two lookups): an observer registered
        now hears the tasks that start once the engines heard of it, a few milliseconds
        after the next submission."""
        center = shared_center
        wanted = center.has_observers(events.TASK_STARTED, "hub") or center.has_observers(
            events.TASK_FINISHED, "hub"
        )
        if wanted is not self._following:
            self._following = wanted
            (io or self._io).subscription("notification", events.TASK_FEED_TOPIC, wanted)

    def _check_gate(self, url: str, timeout: float | None) -> None:
        """Fail at once, saying why, if the controller's gate refuses this client's key,
        or if nothing listens where the cluster file says the controller is (ZeroMQ alone
        would retry silently until a bare timeout: 15 s by default, then "did not
        answer", for a cluster file its dead controller left behind)."""
        wait = 5.0 if timeout is None else min(timeout, 5.0)
        found = probe(self.gate, self._context, url, wait, absent_after=min(wait, _ABSENT_AFTER))
        if found == "refused":
            raise ConnectionRefusedError(REFUSED.format(url=url))
        if found == "absent":
            pid = self.cluster_info.get("controller_pid")
            raise ControllerLost(
                f"no controller of cluster {self.cluster_id!r} is running: nothing listens at "
                f"{url}{f' (the controller was pid {pid})' if pid else ''}, so "
                f"{self.connection_file} is left from a cluster that was stopped or crashed. "
                "Start the cluster again (a controller started on the same profile and "
                "cluster id takes the file over) or remove it with `corral cluster clean`."
            )

    # ------------------------------------------------------------------ engines

    @property
    def ids(self) -> list[int]:
        """Ids of the live engines, sorted (kept current from the hub's notifications)."""
        return sorted(self._engines)

    @property
    def engines(self) -> dict[int, EngineInfo]:
        """``{id: EngineInfo}`` of the live engines."""
        return dict(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def _engine(self, engine_id: int) -> EngineInfo:
        try:
            return self._engines[engine_id]
        except KeyError:
            raise IndexError(f"no engine with id {engine_id}; live engines: {self.ids}") from None

    def _sync_engines(self, timeout: float | None = None, *, joining: bool = False) -> None:
        """Ask the hub for the engine list (at start, and when notifications may be lost).

        ``joining``: the first answer since (re)connecting. The hub's notifications
        dated before it were never seen here, so the replay guard alone would take a
        copy of one (an old "engine died", which fails this client's work on a live
        engine, slipped in by a peer on the link); they are refused from then on
        (``wire.ReplayGuard.refuse_before``, the hub's own clock on both sides). The
        answer already holds what they said. Later answers only add engines, so an
        unregistration still on its way must not be refused then. The controller run
        it names is taken over then too (see :meth:`_check_run`).
        """
        reply = self._hub_request("connection_request", {}, timeout)
        if joining:
            header = reply.header
            if isinstance(header.get("session"), str):
                self._replay.refuse_before(header["session"], header.get("date"))
        self._apply_connection_reply(reply, adopt=joining)

    def _apply_connection_reply(self, reply: Parsed, adopt: bool = False) -> None:
        content = reply.content
        if not self._check_run(content.get("run"), adopt):
            return
        cluster = content.get("cluster")
        if isinstance(cluster, dict):
            self.cluster_info.update(cluster)
        engines = content.get("engines") or {}
        with self._engines_changed:
            for key, record in engines.items():
                engine_id = int(key)
                if engine_id in self._dead:
                    continue
                self._add_engine(engine_id, record)
            self._engines_changed.notify_all()

    def _check_run(self, run: Any, adopt: bool) -> bool:
        """Whether the controller still runs the run this client's requests name
        (corral.transports.zmq.door.RUN); False once it was found restarted.

        The hub's signed answer to this client's own ``connection_request`` is the
        authority: while connecting (``adopt``) its run replaces the cluster file's (a
        copied or older file names an earlier run). Later, another run means the
        controller was restarted under this client: everything pending is lost (as on a
        lost connection), and :meth:`reconnect` picks the new run up."""
        if not isinstance(run, str) or not run or run == self._builder.run:
            return True  # a controller without runs, or the same one
        if adopt:
            self._builder.set_run(run)
            return True
        self._controller_lost("it was restarted (it runs another controller run now)")
        return False

    def _add_engine(self, engine_id: int, record: dict[str, Any]) -> None:
        old = self._engines.get(engine_id)
        uuid = str(record.get("uuid", ""))
        if old is not None and old.uuid != uuid:
            old = None
        self._engines[engine_id] = EngineInfo(
            id=engine_id,
            uuid=uuid,
            hostname=str(record.get("hostname") or (old.hostname if old else "")),
            pid=record.get("pid") or (old.pid if old else None),
            data_url=record.get("data_url") or (old.data_url if old else None),
            local_path=record.get("local_path") or (old.local_path if old else None),
        )

    def wait_for_engines(
        self,
        n: int | None = None,
        timeout: float | None = None,
        block: bool = True,
        *,
        interactive: bool | None = None,
        widget: bool | None = None,
    ) -> Any:
        """Wait until at least ``n`` engines are registered; their ids.

        ``n=None`` waits for at least one engine (the cluster file does not say how many
        were launched). ``timeout`` ``None`` or ``-1`` waits forever. ``block=False`` returns a
        :class:`concurrent.futures.Future` of the ids at once.

        ``interactive=True`` shows a progress bar of registered engines while waiting (on
        stderr; ``tqdm.auto`` draws a widget in a notebook, so ``widget`` is accepted for
        ipyparallel code and changes nothing). Unlike ipyparallel, the default (None) is
        no bar, in IPython too: corral's waits print nothing unless asked.

        :raises TimeoutError: fewer than ``n`` engines after ``timeout`` seconds.
        """
        if n is None:
            n = 1
        timeout = forever(timeout)
        if interactive and block:
            return self._wait_for_engines_with_bar(n, timeout)
        if not block:
            future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()

            def waiter() -> None:
                try:
                    future.set_result(self.wait_for_engines(n, timeout))
                except BaseException as exc:
                    future.set_exception(exc)

            threading.Thread(target=waiter, name="corral-wait-for-engines", daemon=True).start()
            return future
        deadline = None if timeout is None else time.monotonic() + timeout
        resync_at = time.monotonic() + 1.0
        with self._engines_changed:
            while len(self._engines) < n:
                if self._lost is not None:
                    raise self._lost
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError(
                        f"{len(self._engines)} of {n} engines registered within {timeout} s"
                    )
                if now >= resync_at:
                    # A notification sent before our subscription took effect is lost:
                    # ask the hub directly now and then.
                    self._engines_changed.release()
                    try:
                        self._sync_engines(self.timeout)
                    finally:
                        self._engines_changed.acquire()
                    resync_at = time.monotonic() + 1.0
                    continue
                limit = resync_at - now
                if deadline is not None:
                    limit = min(limit, deadline - now)
                self._engines_changed.wait(limit)
        if any(e.pid is None for e in self._engines.values()):
            # Registered after we connected: the notification lacked details (the pid).
            self._sync_engines(self.timeout)
        return self.ids

    def _wait_for_engines_with_bar(self, n: int, timeout: float | None) -> list[int]:
        """:meth:`wait_for_engines` with a progress bar of registered engines: the wait
        itself runs as with ``block=False``, the bar follows the count meanwhile."""
        from tqdm.auto import tqdm

        future = self.wait_for_engines(n, timeout, block=False)
        with tqdm(total=n, desc="engines", unit="engine", file=sys.stderr) as bar:
            while not concurrent.futures.wait([future], 0.2).done:
                bar.update(min(len(self._engines), n) - bar.n)
            ids: list[int] = future.result()  # raises the wait's TimeoutError
            bar.update(n - bar.n)
        return ids

    # ------------------------------------------------------------------ controller loss

    def _on_disconnect(self, channel: str) -> None:
        """I/O thread: a socket to the controller, or to an engine's data socket, lost its
        connection."""
        if channel.startswith("data:"):
            self._data_channel_lost(channel)
            return
        url = self._io.urls.get(channel)
        where = f" at {url}" if url else ""
        self._controller_lost("", connection=f"{where} (its {channel} socket)")

    def _data_channel_lost(self, channel: str) -> None:
        """I/O thread: the connection of the data channel ``channel`` broke. Its requests
        still waiting may never be answered: whatever the engine sent into the old
        connection is gone, and ZeroMQ's new one carries only what is sent from now on.
        They fail (:class:`DataChannelLost`) after :meth:`_data_grace` instead of waiting
        for ever: meanwhile a reply that still comes wins, and so does the hub's notice
        of the engine's death (:meth:`_fail_engine`: an ``EngineError`` says more, and a
        killed engine's connection closes before the hub has told anyone).

        None is sent again: this side cannot tell whether the engine got it, ran it, or
        answered it, and a push run twice can land after later work that set the same
        names (the engine serves its data socket and its queues in no fixed order). The
        socket reconnects by itself; until it is up again, new requests take the queues
        (:meth:`_data_channels_for`)."""
        # list() first: user threads add entries meanwhile (one C call, under the GIL)
        lost = [msg_id for msg_id, (ch, _) in list(self._on_data.items()) if ch == channel]
        if lost:
            self._io.call_later(self._data_grace(), lambda: self._fail_on_data(channel, lost))

    def _data_grace(self) -> float:
        """Seconds a lost data connection's requests wait before they fail: as long as
        the hub takes to declare a silent engine dead (``hb_misses`` periods) and tell
        this client, plus two periods and half a second of slack (a loaded machine)."""
        info = self.cluster_info
        try:
            period = float(info.get("hb_period") or 1.0)
            misses = int(info.get("hb_misses") or 2)
        except (TypeError, ValueError):
            period, misses = 1.0, 2
        return (misses + 2) * period + 0.5

    def _fail_on_data(self, channel: str, msg_ids: list[str]) -> None:
        """I/O thread: fail ``msg_ids``, sent on ``channel`` before its connection broke,
        that are still waiting (see :meth:`_data_channel_lost`)."""
        engine_id = int(channel.split(":", 2)[1])
        url = self._io.urls.get(channel)
        where = f" at {url}" if url else ""
        for msg_id in msg_ids:
            entry = self._on_data.pop(msg_id, None)
            if entry is None:
                continue  # answered, or failed otherwise, meanwhile
            self._direct.pop(msg_id, None)
            result = self._pending.pop(msg_id, None)
            if result is None:
                continue
            index = result._slot(msg_id, engine_id)
            if index is None:
                continue
            what = entry[1].removesuffix("_request")
            error = DataChannelLost(
                "DataChannelLost",
                f"the connection to engine {engine_id}'s data socket{where} was lost while "
                f"this direct {what} waited for its reply, and the engine was not reported "
                "dead (most likely the network dropped the connection); it may or may not "
                "have run there. Not sent again: "
                f"call {what}() again (it takes the controller's queues until the data "
                "connection is back).",
                engine_id=engine_id,
                msg_id=msg_id,
            )
            log.warning("%s", error)
            result._fail_slot(index, error)

    def _on_io_crash(self, exc: BaseException) -> None:
        """I/O thread, as it ends on an unexpected error: no reply can arrive any more,
        so everything pending fails now (as for a lost controller, which
        :meth:`reconnect` recovers from) instead of waiting for ever."""
        self._io_crashed = True  # reconnect() need not wait for another controller
        self._controller_lost(
            "",
            f"this client's I/O thread stopped on an unexpected error ({type(exc).__name__}: "
            f"{exc}; logged with its traceback); pending results failed. Call "
            "Client.reconnect() to go on, and fetch finished work with get_result().",
        )

    def _controller_lost(
        self, why: str, message: str | None = None, *, connection: str | None = None
    ) -> None:
        """Fail everything that only the controller could answer, at once and loudly
        (``message``: what to say instead of "lost the controller").

        ``connection`` (where, e.g. `` at tcp://host:port (its mux socket)``): what was
        seen is only that a connection to the controller closed. That is a controller
        that died as much as a network that dropped this client's connection while the
        controller kept running (Wi-Fi, a NAT, a VPN), and the message says so rather
        than claim the controller is gone."""
        if self._closed or self._lost is not None:
            return
        # An error only if something was waiting for the controller: a client left open
        # while its cluster is stopped (a script's last line) lost nothing, and its next
        # call raises the same ControllerLost with the whole story.
        waiting = self._pending or self._hub_results or self._waiters
        report = log.error if waiting else log.info
        if message is not None:  # the client's own I/O failed: always worth an error
            error = ControllerLost(message)
            log.error("%s", error)
        elif self._shut_down:
            error = ControllerLost(f"cluster {self.cluster_id!r} was shut down")
            log.info("%s", error)
        elif connection is not None:
            error = ControllerLost(
                f"the connection to the controller of cluster {self.cluster_id!r}"
                f"{connection} was lost: the controller stopped, or the network dropped "
                "this client's connection while it kept running (this client cannot tell "
                "which). Pending results failed; their tasks may still run. Call "
                "Client.reconnect(), which connects again to this controller if it "
                "answers (else waits for one restarted on the same cluster), then fetch "
                "finished work with get_result()."
            )
            report("%s", error)
        else:
            error = ControllerLost(
                f"lost the controller of cluster {self.cluster_id!r} ({why}); pending "
                "results failed. Engines wait for a controller restarted on the same "
                "cluster; then call Client.reconnect() and fetch finished work with "
                "get_result()."
            )
            report("%s", error)
        self._lost = error
        self._io.abandon()  # nothing queued may reach a restarted controller
        self._fail_pending(error)

    def _fail_pending(self, error: ControllerLost) -> None:
        """Fail every pending result and waiting request with ``error``."""
        pending = set(self._pending.values()) | set(self._hub_results)
        for msg_id in self._pending:
            # get_result() of these asks the database (where a restarted controller
            # records what the engines finished meanwhile), not the failed result.
            self._recent.pop(msg_id, None)
        self._pending.clear()
        self._direct.clear()
        self._on_data.clear()
        for result in pending:
            result._abandon(error)
        waiters = list(self._waiters.values())
        self._waiters.clear()
        self._callbacks.clear()
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        with self._engines_changed:
            self._engines_changed.notify_all()

    @property
    def controller_lost(self) -> bool:
        """Whether the controller went away (until :meth:`reconnect` succeeds)."""
        return self._lost is not None

    def reconnect(self, timeout: float | None = None) -> None:
        """Connect to the controller again, after it was restarted on the same cluster, or
        after the connection to it broke while it kept running.

        Waits up to ``timeout`` seconds (default: the client's ``timeout``) for a
        controller named by the cluster file to answer this client's signed request for
        the engines, then uses it. Work that finished while the controller was down is in
        its database: :meth:`get_result` fetches it by msg_id.

        The evidence is the answer, not the controller's pid: this client may run on
        another host than the controller, where that pid names nothing (or some other
        process), and an answer is what a usable controller gives anyway.

        :raises TimeoutError: no controller answered within ``timeout``.
        """
        if self._closed:
            raise RuntimeError("this Client is closed")
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        old_pid = self.cluster_info.get("controller_pid")
        # As the loss left them: a failed attempt below changes them.
        lost, crashed, shut_down = self._lost, self._io_crashed, self._shut_down
        with self._engines_changed:
            known = sorted(self._engines)
        attempt = _RECONNECT_ATTEMPT
        while True:
            try:
                info = _read_cluster_file(self.connection_file)
            except (OSError, ValueError):
                info = {}
            # The same controller counts too unless it was shut down: the connection to
            # it broke on the way (a network blip, Wi-Fi), and waiting for another one
            # would wait for ever.
            again = info.get("controller_pid") != old_pid or lost is None or crashed
            left = deadline - time.monotonic()
            if info and (again or not shut_down):
                if self._connect_again(info, max(0.1, min(attempt, left))):
                    break
                attempt *= 2
            elif left > 0:
                time.sleep(0.05)  # a file another process writes: nothing to wait on
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no controller of cluster {self.cluster_id!r} answered (as named by "
                    f"{self.connection_file}) within {timeout} s"
                )
        self._await_engines_back(known, deadline)

    def _connect_again(self, info: dict[str, Any], wait: float) -> bool:
        """Connect to the controller ``info`` names, as a new client would; whether its
        hub answered the engine list within ``wait`` seconds. If not, this client is left
        lost (:class:`ControllerLost`: calls fail, nothing waits) for the next try."""
        self._io.stop()
        if self._pending or self._hub_results or self._waiters:
            # Still waiting although the client was not lost: reconnect() was called on
            # a connection that looked healthy (one gone quietly half-open, say). Their
            # replies would come to the sockets just closed: fail them, saying so,
            # rather than leave them waiting for ever.
            self._fail_pending(
                ControllerLost(
                    "Client.reconnect() replaced the connections this request was sent "
                    "through, so its reply cannot arrive; its task may still run: fetch "
                    "it with get_result() once reconnected"
                )
            )
        self._io_crashed = False
        key = info.get("key", b"")
        key = key if isinstance(key, bytes) else key.encode("ascii")
        self._signer = cluster_signer(key, info.get("signature_scheme", "hmac-sha256"))
        # the new controller's run: requests made for the old one are refused by it
        self._builder = MessageBuilder(self._signer, self.session, run=_run_of(info))
        if self._local is not None:
            self._local.close()
            self._local = LocalCalls(self._builder, self._signer)
        self._replay = wire.ReplayGuard()
        self._iopub_replay = wire.ReplayGuard(ordered=True)
        self.cluster_info = {k: v for k, v in info.items() if k != "key"}
        self._data_channels.clear()
        self._local_paths.clear()
        with self._engines_changed:
            self._engines.clear()
        self._details_pending = self._details_again = False  # that reply will not come
        self._lost = None
        self._shut_down = False  # a new controller: its going would be news again
        try:
            self._io = self._connect(info)
            self._sync_engines(wait, joining=True)
        except (TimeoutError, ControllerLost, KeyError, ValueError) as exc:
            self._io.stop()
            error = ControllerLost(
                f"no controller of cluster {self.cluster_id!r} answered at "
                f"{_url(info, 'registration') if 'registration' in info else '?'} "
                f"({type(exc).__name__}: {exc}); call Client.reconnect() again"
            )
            log.debug("%s", error)
            self._lost = error
            self._fail_pending(error)
            return False
        return True

    def _await_engines_back(self, known: list[int], deadline: float) -> None:
        """After :meth:`reconnect`: wait (until ``deadline``) for the engines this client
        knew to register with the new controller. They notice it by themselves, a
        heartbeat or so after it binds, so right after the connection a view of all
        engines was empty and its calls quietly did nothing. Engines still missing at
        the deadline are named in a warning; the rest of the cluster is usable."""
        with self._engines_changed:
            self._engines_changed.wait_for(
                lambda: self._lost is not None or set(known) <= set(self._engines),
                max(0.0, deadline - time.monotonic()),
            )
            missing = sorted(set(known) - set(self._engines))
        if missing:
            log.warning(
                "reconnected to cluster %r; engine(s) %s not back yet (they may have "
                "stopped): views of all engines use those registered now",
                self.cluster_id,
                missing,
            )

    def _on_notification(self, msg: Parsed) -> None:
        msg_type = msg.msg_type
        content = msg.content
        payload = feed_payload(msg_type, content)
        if payload is not None:  # the hub's own post (events.ENGINE_TYPES): post it here
            if msg.header.get("session") not in events.LOCAL_FEEDS:
                try:
                    repost(payload)
                except (ValueError, LookupError) as exc:
                    log.warning("dropped a hub notification: %s", exc)
            return
        if msg_type == "shutdown_notification":  # someone stopped the cluster: no loss
            self._shut_down = True
            return
        try:
            engine_id = int(content["id"])
        except (KeyError, TypeError, ValueError):
            return
        if msg_type == "registration_notification":
            with self._engines_changed:
                self._dead.discard(engine_id)
                self._add_engine(engine_id, content)
                self._engines_changed.notify_all()
            # The notification omits some details (the pid): fetch them, without waiting.
            self._fetch_details()
        elif msg_type == "unregistration_notification":
            with self._engines_changed:
                self._engines.pop(engine_id, None)
                self._dead.add(engine_id)
                self._engines_changed.notify_all()
            cause = content.get("cause")
            self._fail_engine(engine_id, cause if isinstance(cause, str) else "")
            if self._local is not None:
                self._local.engine_lost(engine_id)

    def _fetch_details(self) -> None:
        """Ask the hub for every engine's details, coalescing a burst of notices."""
        if self._closed or self._lost is not None:
            return
        if self._details_pending:
            self._details_again = True
            return
        self._details_pending = True
        self._details_again = False
        self._request("registration", "connection_request", {}, self._on_details)

    def _on_details(self, reply: Parsed) -> None:
        self._details_pending = False
        self._apply_connection_reply(reply)
        if self._details_again:
            self._fetch_details()

    def _fail_engine(self, engine_id: int, cause: str = "") -> None:
        """Fail this client's requests that only ``engine_id`` could have answered.

        The queues answer for a dead engine too; whichever comes first wins, so no
        direct request ever waits on an engine that is gone.
        """
        for msg_id, target in list(self._direct.items()):
            if target != engine_id:
                continue
            self._direct.pop(msg_id, None)
            self._on_data.pop(msg_id, None)
            result = self._pending.pop(msg_id, None)
            if result is not None:
                index = result._slot(msg_id, engine_id)
                if index is not None:
                    result._fail_slot(index, engine_death_error(engine_id, msg_id, cause))
        for msg_id, result in list(self._pending.items()):
            if isinstance(result, BroadcastResult):
                result._fail_engine(engine_id, engine_death_error(engine_id, msg_id, cause))
                if result.done():
                    self._pending.pop(msg_id, None)

    # ------------------------------------------------------------------ I/O thread

    def _dispatch(self, channel: str, frames: list[Any]) -> None:
        """Every incoming message, in the I/O thread."""
        stored = channel in _REPLY_CHANNELS and is_stored(frames)
        guard = self._iopub_replay if channel == "iopub" else self._replay
        try:
            msg = parse(frames, self._signer, guard, without_buffers=stored, role=role_for(channel))
        except wire.WireError as exc:
            self.dropped += 1
            if channel == "notification" and isinstance(exc, wire.StaleMessage):
                # Published before the hub's first answer to this client, delivered after
                # it (engines registering while it connects): that answer already said
                # it. Refused as any older notice is, but no sign of an attack.
                log.debug("refused a hub notice older than this client's connection: %s", exc)
                return
            # per cause and channel (bounded keys); the latest reason stands for the peer
            self.refusals.refused(f"{type(exc).__name__} on {channel}", str(exc)[:200])
            if isinstance(exc, BuffersAltered) and isinstance(exc.message, Parsed):
                self._fail_altered(channel, exc.message, exc)
            return
        if stored:  # its buffers wait in the task database (corral.plugins.parallel.flow)
            self._stored.add(msg, frames[2])  # [STORED, DELIM, signature, ...]
            return
        if channel == "iopub":
            self._on_iopub(msg)
        elif channel in _REPLY_CHANNELS or channel.startswith("data:"):
            self._on_reply(msg)
        elif channel == "notification":
            self._on_notification(msg)
        elif channel == "registration":
            self._on_callback(msg)

    def _fail_altered(self, channel: str, msg: Parsed, exc: BuffersAltered) -> None:
        """A reply whose buffers do not match its signed digests (a stream that stalled
        or broke on the way, or tampering) fails the request it answers: its header is
        genuine, and that reply will not come again, so waiting would be for ever."""
        msg_id = msg.parent_header.get("msg_id")
        result = self._pending.get(msg_id)  # type: ignore[arg-type]
        if result is None:
            return
        engine_id = self._direct.get(msg_id)  # type: ignore[arg-type]
        if engine_id is None:
            engine_id = msg.metadata.get("engine_id")
        index = result._slot(msg_id, engine_id)  # type: ignore[arg-type]
        if index is None:
            return
        log.error("refused the reply to %s on %s: %s", msg_id, channel, exc)
        error = RemoteError(
            "BuffersAltered",
            f"the reply's buffers were refused ({exc}); the request may have run",
            engine_id=engine_id,
            msg_id=msg_id,
        )
        result._fail_slot(index, error)
        if result.done():
            self._pending.pop(msg_id, None)  # type: ignore[arg-type]
            self._direct.pop(msg_id, None)  # type: ignore[arg-type]
            self._on_data.pop(msg_id, None)  # type: ignore[arg-type]

    def _on_reply(self, msg: Parsed) -> None:
        msg_id = msg.parent_header.get("msg_id")
        result = self._pending.get(msg_id)  # type: ignore[arg-type]
        if result is None:
            self._on_callback(msg)
            return
        target = self._direct.get(msg_id)  # type: ignore[arg-type]
        if target is not None:
            engine_id = msg.metadata.get("engine_id")
            if engine_id is not None and engine_id != target:
                # Sent to one engine, answered (signed) as another: never a result.
                self.dropped += 1
                log.warning(
                    "dropped a reply to %s from engine %s: it was sent to engine %s",
                    msg_id,
                    engine_id,
                    target,
                )
                return
        shared_center.post(
            events.TASK_COMPLETED,
            self,
            msg_id=msg_id,
            msg_type=msg.msg_type,
            engine_id=msg.metadata.get("engine_id"),
            status=msg.content.get("status"),
        )
        if result._on_reply(msg_id, msg):  # type: ignore[arg-type]
            del self._pending[msg_id]  # type: ignore[arg-type]
            self._direct.pop(msg_id, None)  # type: ignore[arg-type]
            if self._on_data:
                self._on_data.pop(msg_id, None)  # type: ignore[arg-type]

    def _on_callback(self, msg: Parsed) -> None:
        callback = self._callbacks.pop(msg.parent_header.get("msg_id"), None)  # type: ignore[arg-type]
        if callback is not None:
            callback(msg)

    def _on_iopub(self, msg: Parsed) -> None:
        msg_id = msg.parent_header.get("msg_id")
        result = self._recent.get(msg_id)  # type: ignore[arg-type]
        if result is not None:
            result._on_iopub(msg_id, msg)  # type: ignore[arg-type]
            msg_type = msg.msg_type
            if msg_type not in _NOT_OUTPUT:
                shared_center.post(
                    events.OUTPUT,
                    self,
                    msg_id=msg_id,
                    engine_id=msg.metadata.get("engine_id"),
                    msg_type=msg_type,
                    content=msg.content,
                )

    # ------------------------------------------------------------------ sending

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed")
        if self._lost is not None:
            raise self._lost

    def _remember(self, msg_id: str, result: AsyncResult) -> None:
        recent = self._recent
        recent[msg_id] = result
        trim_oldest(recent, _RECENT_LIMIT)  # in chunks: see corral.core.fifo

    def _send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | bytes | None,
        *,
        metadata: dict[str, Any] | bytes | None = None,
        buffers: Sequence[Any] = (),
        ident: bytes | None = None,
        msg_id: str | None = None,
        trackers: list[zmq.MessageTracker] | None = None,
    ) -> str:
        """Build, sign and queue one message; its msg_id. The trackers of its large
        buffers go to ``trackers`` if given (see :func:`_track_large`)."""
        msg_id, frames = self._builder.build(
            msg_type,
            content,
            metadata=metadata,
            buffers=buffers,
            identities=(ident,) if ident is not None else (),
            msg_id=msg_id,
            dest=dest_for(channel),
        )
        # Small frames are copied into zmq (cheaper than tracking their lifetime); large
        # ones are sent zero-copy, tracked for wait_for_send.
        copy = len(buffers) < 2 and (not buffers or len(buffers[0]) < _COPY_LIMIT)
        if not copy and trackers is not None:
            _track_large(frames, len(buffers), trackers)
        self._io.send(channel, frames, copy)
        return msg_id

    def _submit(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | bytes | None,
        metadata: dict[str, Any] | bytes | None,
        routes: Sequence[tuple[int | None, bytes | None, Sequence[Any]]],
        *,
        fname: str = "",
        single: bool = True,
        result_factory: Callable[..., AsyncResult] | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> AsyncResult:
        """One request per route, one result for all of them.

        A route is ``(engine id, routing identity, buffers)``: the engine id (None when a
        scheduler chooses) lets a dead engine's requests fail locally, the identity
        (None on a load-balanced or data-path socket) addresses the engine on a queue.
        The result is registered before anything is queued, so even an instant reply
        finds it; ``convert`` (applied to each value) is part of it from the start.
        """
        self._check_open()
        new_id = self._builder.new_msg_id
        msg_ids = [new_id() for _ in routes]
        factory = result_factory or AsyncResult
        result = factory(self, msg_ids, fname=fname, single=single, convert=convert)
        pending = self._pending
        direct = self._direct
        recent = self._recent
        # Encoded once for all routes.
        metadata = metadata if type(metadata) is bytes else encode_json(metadata)
        content = content if type(content) is bytes else encode_json(content)
        if channel == "mux" and len(routes) > 1:
            # One call to many engines: the mux sends its replies on together (one
            # message, one wake-up here), see corral.plugins.parallel.coalesce.
            metadata = mark_metadata(metadata, msg_ids[0], len(routes))
        build = self._builder.build
        send = self._io.send
        dest = dest_for(channel)
        on_data = self._on_data if channel.startswith("data:") else None
        self._follow_tasks()
        # Before sending: an observer hears of a task before its completion.
        shared_center.post(
            events.TASK_SUBMITTED, self, msg_ids=msg_ids, msg_type=msg_type, channel=channel
        )
        for msg_id, (engine_id, ident, buffers) in zip(msg_ids, routes, strict=True):
            pending[msg_id] = result
            recent[msg_id] = result
            if engine_id is not None:
                direct[msg_id] = engine_id
            if on_data is not None:
                on_data[msg_id] = (channel, msg_type)
            _, frames = build(
                msg_type,
                content,
                metadata=metadata,
                buffers=buffers,
                identities=(ident,) if ident is not None else (),
                msg_id=msg_id,
                dest=dest,
            )
            copy = len(buffers) < 2 and (not buffers or len(buffers[0]) < _COPY_LIMIT)
            if not copy:
                _track_large(frames, len(buffers), result._trackers)
            send(channel, frames, copy)
        trim_oldest(recent, _RECENT_LIMIT)
        self._history.extend(msg_ids)
        # What resubmit() sends again (references only: no copy, no work per task).
        result._request = (channel, msg_type, content, metadata, routes, single)
        return result

    def _resend(self, old: AsyncResult, request: tuple[Any, ...]) -> AsyncResult:
        """The request behind ``old`` sent again as new tasks (see :meth:`resubmit`)."""
        channel = request[0]
        if channel == "broadcast":
            _, msg_type, content, metadata, buffers, targets = request
            return self._broadcast(
                msg_type, content, buffers, metadata, targets, old.fname, old._convert
            )
        _, msg_type, content, metadata, routes, single = request
        for engine_id, _, _ in routes:
            if engine_id is not None:
                self._engine(engine_id)  # IndexError for an engine that is gone

        def factory(client: Client, msg_ids: list[str], **kw: Any) -> AsyncResult:
            # Built like the old result, conversion included, before anything is sent
            # (a reply may arrive before _submit returns).
            result: AsyncResult
            kw["convert"] = old._convert
            if isinstance(old, AsyncMapResult):
                result = AsyncMapResult(
                    client,
                    msg_ids,
                    ordered=old.ordered,
                    length=old._length,
                    chunk_sizes=old._chunk_sizes,
                    **kw,
                )
            else:
                result = AsyncResult(client, msg_ids, **kw)
            result._execute = old._execute
            return result

        again = self._submit(
            channel,
            msg_type,
            content,
            metadata,
            routes,
            fname=old.fname,
            single=single,
            result_factory=factory,
        )
        return again

    def _routes(
        self, targets: Sequence[int | None], buffers: Sequence[Any]
    ) -> list[tuple[int | None, bytes | None, Sequence[Any]]]:
        """Routes sending the same ``buffers`` to each target on a queue."""
        return [(t, None if t is None else self._engine(t).ident, buffers) for t in targets]

    def _apply(
        self,
        channel: str,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        metadata: dict[str, Any] | bytes,
        targets: Sequence[int | None],
        *,
        single: bool = True,
        result_factory: Callable[..., AsyncResult] | None = None,
        packed: list[Any] | None = None,
    ) -> AsyncResult:
        """Submit ``func(*args, **kwargs)``; raises SerializationError before sending.
        ``packed`` is the request body if the caller has already made it."""
        if _DEPENDENCIES_USED[0] and packed is None:  # References, require, depend
            func, args, kwargs = _with_dependencies(func, args, kwargs)
        fname = getattr(func, "__name__", "") or ""
        buffers = packed or pack_apply(self._functions.lookup(func), args, kwargs)
        return self._submit(
            channel,
            "apply_request",
            None,
            metadata,
            self._routes(targets, buffers),
            fname=fname,
            single=single,
            result_factory=result_factory,
        )

    def _apply_wait(
        self,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        metadata: bytes,
        engine_id: int,
    ) -> Any:
        """``func(*args, **kwargs)`` on one engine, waited for: over its Unix socket when
        :meth:`_call_local` can, else through the mux (packed once either way)."""
        if _DEPENDENCIES_USED[0]:  # References, require, depend
            func, args, kwargs = _with_dependencies(func, args, kwargs)
        buffers = pack_apply(self._functions.lookup(func), args, kwargs)
        done, value = self._call_local(engine_id, "apply_request", None, metadata, buffers)
        if done:
            return value
        return self._apply("mux", func, args, kwargs, metadata, [engine_id], packed=buffers).get()

    def _local_path(self, engine_id: int) -> str:
        """The Unix socket of ``engine_id`` if it runs on this host, else ""."""
        path = self._local_paths.get(engine_id)
        if path is None:
            engine = self._engines.get(engine_id)
            if engine is None:
                return ""
            path = engine.local_path if usable_path(engine.local_path) else ""
            self._local_paths[engine_id] = path or ""
        return path

    def _call_local(
        self,
        engine_id: int,
        msg_type: str,
        content: dict[str, Any] | bytes | None,
        metadata: bytes,
        buffers: Sequence[Any],
    ) -> tuple[bool, Any]:
        """A blocking request to one engine over its Unix socket: ``(True, value)``.

        ``(False, None)`` when the path does not apply and nothing was sent: no local
        socket, a request too big for it, or requests of this client still pending on a
        queue (a call here could overtake them). Raises what the task raised, and
        :class:`EngineError` if the engine dies meanwhile.
        """
        local = self._local
        if local is None or self._direct or self._closed or engine_id in self._dead:
            return False, None
        path = self._local_path(engine_id)
        engine = self._engines.get(engine_id)
        if not path or engine is None:
            return False, None
        if len(buffers) > MAX_LOCAL_BUFFERS:
            return False, None
        if buffers and sum(memoryview(b).nbytes for b in buffers) > MAX_LOCAL_REQUEST:
            return False, None
        try:
            answered = local.call(
                engine_id,
                path,
                msg_type,
                content,
                metadata,
                buffers,
                dest_of("engine", engine.uuid),
            )
        except EngineGone:
            raise engine_death_error(engine_id) from None
        if answered is None:  # unreachable just now: the queues will do
            return False, None
        msg_id, reply = answered
        value, error = reply_outcome(reply.content, reply.buffers, engine_id, msg_id)
        if error is not None:
            raise error
        return True, value

    def _data_channels_for(self, engine_ids: Sequence[int]) -> list[str | None]:
        """Each engine's direct data-path socket if its connection is up, else None (the
        caller takes the queues instead).

        A socket is opened on first use, which waits up to :data:`DATA_CONNECT_WAIT` for
        the connection; all of them open before any waits, so engines out of reach cost
        one wait, not one each. An engine's data port can be out of this client's reach
        while the engine serves the queues (a firewall or NAT between hosts lets the
        controller's ports through, not the engine's): a request queued on a socket that
        never connects would wait for ever, so none is sent until it is up.
        """
        opened = [self._open_data_channel(engine_id) for engine_id in engine_ids]
        channels: list[str | None] = []
        for entry in opened:
            if entry is None:
                channels.append(None)
                continue
            channel, (up, wait_until) = entry
            if not up.is_set():
                up.wait(max(0.0, wait_until - time.monotonic()))
            channels.append(channel if up.is_set() else None)
        return channels

    def _open_data_channel(
        self, engine_id: int
    ) -> tuple[str, tuple[threading.Event, float]] | None:
        engine = self._engine(engine_id)
        if not engine.data_url:
            return None
        channel = f"data:{engine_id}:{engine.uuid}"
        state = self._data_channels.get(channel)
        if state is not None:
            return channel, state
        # A second thread that saw the name in the table before the socket's creation
        # was queued would queue its request ahead of it, and the I/O thread would drop
        # it ("no socket"), its caller then waiting for ever: name and creation go
        # together.
        with self._data_lock:
            state = self._data_channels.get(channel)
            if state is None:
                state = (threading.Event(), time.monotonic() + DATA_CONNECT_WAIT)
                self._io.add_socket(
                    channel, zmq.DEALER, engine.data_url, copy=False, stream=True, up=state[0]
                )
                self._data_channels[channel] = state
        return channel, state

    def _broadcast(
        self,
        msg_type: str,
        content: dict[str, Any] | None,
        buffers: Sequence[Any],
        metadata: dict[str, Any] | bytes,
        targets: list[int],
        fname: str = "",
        convert: Callable[[Any], Any] | None = None,
    ) -> AsyncResult:
        """One request on the broadcast scheduler, answered by every target; ``convert``
        applies to each value (set before sending: replies can arrive at once)."""
        self._check_open()
        msg_id = self._builder.new_msg_id()
        result = BroadcastResult(self, msg_id, targets, fname=fname, convert=convert)
        if not targets:
            return result
        self._pending[msg_id] = result
        self._remember(msg_id, result)
        self._history.append(msg_id)
        result._request = ("broadcast", msg_type, content, metadata, buffers, targets)
        self._follow_tasks()
        shared_center.post(
            events.TASK_SUBMITTED, self, msg_ids=[msg_id], msg_type=msg_type, channel="broadcast"
        )
        self._send(
            "broadcast",
            msg_type,
            content,
            metadata=metadata,
            buffers=buffers,
            msg_id=msg_id,
            trackers=result._trackers,
        )
        return result

    def _request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        callback: Callable[[Parsed], None],
        *,
        ident: bytes | None = None,
        buffers: Sequence[Any] = (),
    ) -> str:
        """Send a request whose reply goes to ``callback`` (in the I/O thread)."""
        self._check_open()
        msg_id = self._builder.new_msg_id()
        self._callbacks[msg_id] = callback
        self._send(channel, msg_type, content, buffers=buffers, ident=ident, msg_id=msg_id)
        return msg_id

    def _hub_request(
        self, msg_type: str, content: dict[str, Any], timeout: float | None = None
    ) -> Parsed:
        """A request to the hub, waited for; the reply message."""
        future: concurrent.futures.Future[Parsed] = concurrent.futures.Future()
        msg_id = self._request("registration", msg_type, content, future.set_result)
        self._waiters[msg_id] = future
        timeout = self.timeout if timeout is None else timeout
        try:
            reply = future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._callbacks.pop(msg_id, None)
            raise TimeoutError(
                f"the hub of cluster {self.cluster_id!r} did not answer {msg_type} within "
                f"{timeout} s ({self.connection_file})"
            ) from None
        finally:
            self._waiters.pop(msg_id, None)
        if reply.content.get("status") == "error":
            raise RemoteError(
                str(reply.content.get("ename") or "HubError"),
                str(reply.content.get("evalue") or ""),
                reply.content.get("traceback") or "",
            )
        return reply

    def _control(
        self, msg_type: str, content: dict[str, Any], targets: Iterable[int]
    ) -> list[concurrent.futures.Future[Parsed]]:
        """Send a control request to each of ``targets``; futures of their replies."""
        futures = []
        for target in targets:
            engine = self._engines.get(target)
            if engine is None:
                continue
            future: concurrent.futures.Future[Parsed] = concurrent.futures.Future()
            msg_id = self._request(
                "control", msg_type, content, future.set_result, ident=engine.ident
            )
            self._waiters[msg_id] = future

            def forget(_: object, m: str = msg_id) -> None:
                self._waiters.pop(m, None)

            future.add_done_callback(forget)
            futures.append(future)
        return futures

    def _abort(
        self, result: AsyncResult, wait: bool = True, only: set[int] | None = None
    ) -> list[concurrent.futures.Future[Parsed]]:
        """Send ``abort_request`` for the result's unfinished tasks to the engines that
        may hold them (``only``: to those of them among these engine ids, as
        ipyparallel's ``abort(targets=...)`` leaves the other engines' queues alone);
        with ``wait``, return once they have acknowledged it (so a task released
        afterwards cannot slip through). The futures of the acknowledgements."""
        msg_ids = result._pending_msg_ids()
        if not msg_ids:
            return []
        targets = set(result._targets or [])
        direct = {self._direct[m] for m in msg_ids if m in self._direct}
        engines = direct or targets or set(self._engines)
        if only is not None:
            engines &= only
        futures = self._control("abort_request", {"msg_ids": msg_ids}, sorted(engines))
        if wait and threading.current_thread() is not self._io._thread:
            concurrent.futures.wait(futures, self.timeout)
        return futures

    def _interrupt(self, result: AsyncResult) -> None:
        """SIGINT the engines running the result's unfinished tasks.

        Direct tasks name their engine; for load-balanced ones the engine is known from
        their output, else asked of the hub's database (which records where the
        scheduler sent each task). Engines running none of them are left alone.
        """
        if result.done():
            return
        pending = result._pending_msg_ids()
        engines = {self._direct[m] for m in pending if m in self._direct}
        engines |= result._running_engines()
        unknown = [m for m in pending if m not in self._direct]
        if unknown and not engines and threading.current_thread() is not self._io._thread:
            engines |= self._engines_of(unknown)
        self._control("interrupt_request", {}, sorted(engines))

    def _engines_of(self, msg_ids: list[str]) -> set[int]:
        """Engines the hub's database says the tasks ``msg_ids`` were sent to."""
        try:
            records = self.db_query(
                {"msg_id": {"$in": msg_ids}}, ["msg_id", "engine_uuid", "engine_id"]
            )
        except (RemoteError, TimeoutError):
            return set()
        by_uuid = {e.uuid: e.id for e in self._engines.values()}
        found = set()
        for record in records:
            engine_id = record.get("engine_id")
            if engine_id is None:
                engine_id = by_uuid.get(record.get("engine_uuid") or "")
            if engine_id is not None:
                found.add(int(engine_id))
        return found

    # ------------------------------------------------------------------ views

    def _resolve_targets(self, targets: Any) -> list[int] | int:
        """Engine ids from an int, slice, list or ``"all"``/None (every live engine)."""
        if targets is None or targets == "all":
            return self.ids
        if isinstance(targets, int):
            self._engine(targets)
            return targets
        if isinstance(targets, slice):
            return self.ids[targets]
        ids = [int(t) for t in targets]
        for engine_id in ids:
            self._engine(engine_id)
        return ids

    def __getitem__(self, key: int | slice | Sequence[int]) -> Any:
        from .views import DirectView

        if key is None or isinstance(key, (str, bool)):
            raise TypeError(f"engines are picked by int, slice or list of ints, not {key!r}")
        if isinstance(key, int):
            if key < 0:  # rc[-1]: the last engine, as for a list
                ids = self.ids
                if -key > len(ids):
                    raise IndexError(f"engine index {key} out of range for {len(ids)} engines")
                key = ids[key]
            self._engine(key)
            return DirectView(self, targets=key)
        return DirectView(self, targets=self._resolve_targets(key))

    def direct_view(self, targets: Any = "all", **flags: Any) -> Any:
        """A :class:`DirectView`; ``"all"`` follows the engines as they come and go.
        ``flags`` set the view's flags (``block=``, ``timeout=``, ...), as ipyparallel's
        keyword arguments do."""
        from .views import DirectView

        return DirectView(self, targets=targets, **flags)

    def load_balanced_view(self, targets: Any = None, **flags: Any) -> Any:
        """A :class:`LoadBalancedView` over ``targets`` (None: every engine), with
        ``flags`` (``block=``, ``retries=``, ``after=``, ...)."""
        from .views import LoadBalancedView

        if isinstance(targets, int) and not isinstance(targets, bool) and targets < 0:
            targets = self.ids[targets]  # -1: the last engine, as for rc[-1]
        return LoadBalancedView(self, targets=targets, **flags)

    def broadcast_view(self, targets: Any = None, **flags: Any) -> Any:
        """A :class:`BroadcastView`: one message, every target engine runs it."""
        from .views import BroadcastView

        return BroadcastView(self, targets=targets, **flags)

    def executor(self, targets: Any = None, **flags: Any) -> Any:
        """A :class:`concurrent.futures.Executor` running on a load-balanced view."""
        from .executor import ClusterExecutor

        view = self.load_balanced_view(targets)
        view.set_flags(**flags)
        return ClusterExecutor(view)

    # ------------------------------------------------------------------ hub

    def get_result(
        self,
        jobs: Any,
        timeout: float | None = None,
        block: bool | None = None,
        owner: bool = False,
    ) -> AsyncResult:
        """A result by msg_id (or index into :attr:`history`): this client's own, or
        fetched from the hub's database.

        Works for tasks submitted by any client, also one that has since gone away.
        ``block=True`` waits for it to finish (and still returns the result object, as
        ipyparallel does). ``owner`` is accepted for ipyparallel code and changes
        nothing: the hub keeps records until :meth:`purge_results` either way.
        """
        from .hubresult import AsyncHubResult

        listed = isinstance(jobs, (list, tuple))  # a list of values, even of one
        if isinstance(jobs, int) and not isinstance(jobs, bool):
            jobs = self.history[jobs]
        elif isinstance(jobs, (list, tuple)):
            history = None
            resolved = []
            for job in jobs:
                if isinstance(job, int) and not isinstance(job, bool):
                    history = self.history if history is None else history
                    job = history[job]
                resolved.append(job)
            jobs = resolved
        result = self._get_result(jobs, AsyncHubResult)
        if listed and result._single:  # ipyparallel: get_result([msg_id]) gives [value]
            result = _combine_results(self, [result], result.fname)
        if block:
            result.wait(forever(timeout))
        return result

    def _get_result(self, jobs: Any, hub_result: Any) -> AsyncResult:
        msg_ids = msg_ids_of(jobs)
        if not msg_ids:
            raise ValueError("get_result needs at least one msg_id")
        local = [self._recent.get(m) for m in msg_ids]
        if len(msg_ids) == 1 and local[0] is not None:
            return local[0]._part_of(msg_ids[0])  # one task of a result: its split() part
        return hub_result(self, msg_ids)  # type: ignore[no-any-return]

    def result_status(
        self, msg_ids: Any, status_only: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """The hub's ``result_reply`` content for ``msg_ids`` (without buffers), with the
        ``"pending"`` and ``"completed"`` lists of msg_ids ipyparallel's callers read.

        ``"results"`` maps each msg_id to the hub's record (``"status"``: ``"pending"``
        or ``"completed"``). ``status_only=False`` (ipyparallel's second parameter) also
        maps each completed msg_id to its value, or to its :class:`RemoteError` when it
        failed, and raises that error when only one task was asked for.

        :raises RemoteError: (``ename`` ``"KeyError"``, as ipyparallel's hub answers) for
            a msg_id neither the hub nor this client knows; one this client still holds
            but the hub does not (not recorded yet, or purged there) is reported from
            the client's own result.
        """
        ids = msg_ids_of(msg_ids)
        reply = self._hub_request("result_request", {"msg_ids": ids}, timeout)
        content = dict(reply.content)
        results: dict[str, Any] = dict(content.get("results") or {})
        for msg_id, record in results.items():
            if record.get("status") == "unknown":
                results[msg_id] = self._local_status(msg_id)
        content["results"] = results
        for state in ("pending", "completed"):
            content[state] = [m for m, r in results.items() if r.get("status") == state]
        if status_only:
            return content
        failures = []
        for msg_id in content["completed"]:
            try:
                content[msg_id] = self.get_result(msg_id).get(forever(timeout))
            except RemoteError as error:
                content[msg_id] = error
                failures.append(error)
        if len(ids) == 1 and failures:
            raise failures[0]
        return content

    def _local_status(self, msg_id: str) -> dict[str, str]:
        """The status of a task the hub does not know, from this client's own result;
        an unknown msg_id raises (:meth:`result_status`)."""
        from .hubresult import _unknown

        local = self._pending.get(msg_id)
        if local is None:  # (not `or`: a result of no elements is falsy)
            local = self._recent.get(msg_id)
        if local is None:
            raise _unknown(msg_id)
        return {"status": "completed" if local._part_of(msg_id).done() else "pending"}

    def db_query(
        self, query: dict[str, Any], keys: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Task records matching ``query``: ``{field: value | {operator: x}}``, with
        ipyparallel's operators (``$in``, ``$nin``, ``$lt``, ``$gt``, ``$lte``, ``$gte``,
        ``$eq``, ``$ne``, ``$glob``, ``$exists``); ``{"label": "x"}`` finds labelled tasks.

        ``keys`` limits the fields returned (``msg_id`` is always included).
        """
        content: dict[str, Any] = {"query": query}
        if keys is not None:
            content["keys"] = list(keys)
        reply = self._hub_request("db_request", content, timeout)
        return list(reply.content.get("records") or [])

    def purge_results(
        self, jobs: Any = None, targets: Any = None, timeout: float | None = None
    ) -> int:
        """Forget finished tasks in the hub's database: ``jobs`` (``"all"`` or
        msg_ids/results) and, as in ipyparallel, every task that ran on ``targets``
        (engine ids). With neither, everything.

        Returns how many records were purged.
        """
        if jobs is None:
            jobs = "all" if targets is None else []
        msg_ids: Any = "all" if jobs == "all" else msg_ids_of(jobs)
        if targets is not None and msg_ids != "all":
            msg_ids = [*msg_ids, *self._msg_ids_ran_on(targets, timeout)]
        reply = self._hub_request("purge_request", {"msg_ids": msg_ids}, timeout)
        if msg_ids == "all":
            self._recent.clear()
        else:
            for msg_id in msg_ids:
                self._recent.pop(msg_id, None)
        return int(reply.content.get("purged", 0))

    def _msg_ids_ran_on(self, targets: Any, timeout: float | None) -> list[str]:
        """The msg_ids of the hub's records of tasks that ran on ``targets``: the hub
        purges by msg_id only, so ``purge_results(targets=...)`` asks it first."""
        wanted = self._resolve_targets(targets)
        ids = [wanted] if isinstance(wanted, int) else list(wanted)
        records = self.db_query({"engine_id": {"$in": ids}}, keys=["msg_id"], timeout=timeout)
        return [r["msg_id"] for r in records]

    def queue_status(
        self, targets: Any = None, verbose: bool = False, timeout: float | None = None
    ) -> dict[Any, Any]:
        """The hub's counts, shaped as ipyparallel's.

        ``{engine id: {"queue", "completed", "tasks"}, "unassigned": n}``: ``queue`` is
        every task sent to the engine and not finished (corral's engines have one queue,
        so load-balanced tasks are counted here too and ``tasks`` is always 0),
        ``completed`` the tasks it finished, ``unassigned`` the load-balanced tasks not
        yet given to an engine. ``queued``/``running`` split ``queue``. With one int
        target, just that engine's dict. ``verbose`` is accepted and changes nothing.
        """
        wanted = None if targets is None else self._resolve_targets(targets)
        one = isinstance(wanted, int)
        if isinstance(wanted, int):
            wanted = [wanted]
        reply = self._hub_request("queue_request", {"targets": wanted}, timeout)
        out: dict[Any, Any] = {}
        for key, value in reply.content.items():
            if key == "unassigned":
                out["unassigned"] = int(value)
                continue
            try:
                engine_id = int(key)
            except ValueError:
                continue
            queued, running = int(value.get("queued", 0)), int(value.get("running", 0))
            out[engine_id] = {
                "queue": queued + running,
                "completed": int(value.get("completed", 0)),
                "tasks": 0,
                "queued": queued,
                "running": running,
            }
        out.setdefault("unassigned", 0)
        if one and wanted and wanted[0] in out:
            return out[wanted[0]]  # type: ignore[no-any-return]
        return out

    def shutdown(
        self,
        targets: Any = None,
        restart: bool = False,
        hub: bool | None = None,
        block: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Stop engines: the whole cluster (``hub=True``) or just ``targets``.

        With ``hub=True`` the hub asks every engine to shut down and the controller exits.
        ``hub=None`` (the default) means ``True`` when no ``targets`` are named: an
        ipyparallel ``rc.shutdown()`` that left the controller running with no engines
        is rarely what anyone wants, and ``rc.shutdown(targets=[0])`` stops engine 0
        only. ``restart=True`` is refused: corral engines are restarted by their
        launcher, not by themselves. ``block=False`` returns a future at once.
        """
        if restart:
            raise ValueError("corral engines do not restart themselves; start new ones")
        if hub is None:
            hub = targets is None
        if hub:
            self._shut_down = True  # the controller's going is no accident now
            if block is False:
                future: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._request(
                    "registration", "shutdown_request", {}, lambda _: future.set_result(None)
                )
                return future
            self._hub_request("shutdown_request", {}, timeout)
            return None
        resolved = self._resolve_targets(targets)
        ids = [resolved] if isinstance(resolved, int) else resolved
        futures = self._control("shutdown_request", {"restart": False}, ids)
        return self._finish_control(futures, block, timeout)

    def clear(
        self, targets: Any = None, block: bool | None = None, timeout: float | None = None
    ) -> Any:
        """Reset the namespace of ``targets`` (all engines by default); waits for the
        engines unless ``block=False`` (then a future)."""
        resolved = self._resolve_targets(targets)
        ids = [resolved] if isinstance(resolved, int) else resolved
        futures = self._control("clear_request", {}, ids)
        return self._finish_control(futures, block, timeout)

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def usable(self) -> bool:
        """Neither closed nor cut off from its controller (a shut-down cluster, a lost
        controller not yet reconnected): work sent through it can run."""
        return not self._closed and self._lost is None

    def close(self, linger: int | None = None) -> None:
        """Disconnect (the cluster keeps running). Results still pending fail with
        ``ConnectionAbortedError``. Safe to call twice.

        ``linger`` (milliseconds, ipyparallel's parameter): how long closing waits for
        libzmq to deliver messages still queued to the controller; None or 0 discards
        them at once (corral's default: a closing client does not wait on a
        controller that may be gone).
        """
        if self._closed:
            return
        self._closed = True
        if linger:
            self._io.close_linger = int(linger)
        if self._local is not None:
            self._local.close()
        self._io.stop(IO_STOP_WAIT)
        pending = set(self._pending.values())
        self._pending.clear()
        for result in pending:
            if not result.done():
                try:
                    result.set_exception(
                        ConnectionAbortedError("the client was closed before the reply arrived")
                    )
                except concurrent.futures.InvalidStateError:
                    pass
        if self._io.finish_with(self._context.term):
            # Still running after stop()'s wait: it closes its own sockets and ends the
            # context when it gets there (destroy() from here would close them under it).
            log.warning("client I/O thread still busy after close(); it finishes alone")
        else:
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._engines)} engines"
        return f"<Client cluster {self.cluster_id!r}: {state}>"


#: every Client this process connected, oldest first, held weakly: see first_usable_client
_MADE: list[weakref.ref[Client]] = []


def first_usable_client() -> Client | None:
    """The oldest Client this process made that is still usable, or None.

    The %px magics run on it until a view is activated, as ipyparallel activates the
    first Client made in IPython: a notebook that started its own cluster
    (``Cluster(...).start_and_connect_sync()``) must not send its cells to the newest
    cluster of the profile, which may be another notebook's.
    """
    _MADE[:] = [ref for ref in _MADE if ref() is not None]
    for ref in _MADE:
        client = ref()
        if client is not None and client.usable:
            return client
    return None


def _offer_px_magics() -> None:
    """In IPython (ipykernel in a notebook, the terminal) a client brings the %px magics
    when nothing has yet, as ipyparallel's first ``Client`` does: a notebook ported with
    ``import corral as ipp`` needs no ``%load_ext corral``. The magics run on the first
    usable client (:func:`first_usable_client`). IPython loads the extension by name."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    if shell is None:
        return
    try:
        if "px" not in shell.magics_manager.magics["line"]:
            shell.extension_manager.load_extension("corral")
    except Exception:  # a shell without IPython's managers: %load_ext corral still works
        log.debug("could not offer the %%px magics to %r", shell, exc_info=True)


def _with_dependencies(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any] | None
) -> tuple[Callable[..., Any], Sequence[Any], dict[str, Any] | None]:
    """The call rewritten so the engine checks require/depend and resolves References."""
    from .dependencies import dependent, with_references

    func, args, kwargs = with_references(func, args, kwargs)
    if isinstance(func, dependent):
        func, args = func._shipped(args, kwargs)
        kwargs = None
    return func, args, kwargs
