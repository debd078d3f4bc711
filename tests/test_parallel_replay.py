"""Cross-socket replay on a real cluster: a genuine message captured on one connection
and resent to another socket or process must be refused there.

The attacker sits on one client connection (a :class:`Relay` the client's cluster file
points at, as a network peer reading and injecting on an unencrypted link would, or
anyone who got past the gate): it forwards everything, keeps a copy, can hold replies
back and can slip messages in. What it captured is genuine, signed by the real client or
engine; the tests only resend it elsewhere. Every test here failed before requests were
bound to their destination (``door.DEST``) and before the client checked, per channel,
what its peer may send (``door.ROLES``).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq
from parallel_client_harness import LiveCluster
from relays import SubscriptionRelay

from corral.core import compat
from corral.plugins.parallel.client import Client
from corral.plugins.parallel.client.messages import MessageBuilder, parse
from corral.transports import unix
from corral.transports.zmq import wire
from corral.transports.zmq.batch import is_batch, unbatch
from corral.transports.zmq.door import cluster_signer
from corral.transports.zmq.gate import gate_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)

DEADLINE = 30.0
#: How long a refused replay is given to show an effect anyway (it shows in
#: milliseconds when it is not refused).
GRACE = 1.5


def mark(path: str) -> int:
    """Engine side: append this engine's pid to ``path`` (one line per run)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def shout(text: str) -> int:
    print(text, flush=True)
    return 7


class Relay:
    """The middle of one client connection to the controller socket at ``target``."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        self.info = info
        self.target = target
        ctx = zmq.Context.instance()
        self.gate = gate_for(info)
        self.front = self.gate.server(ctx.socket(zmq.ROUTER))
        self.front.linger = 0
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back: zmq.Socket[Any] | None = None
        self.client_id = b""
        #: requests the client sent, as sent (routing frames, delimiter, signature, ...)
        self.requests: queue.Queue[list[bytes]] = queue.Queue()
        self.hold = False
        self.held: list[list[bytes]] = []
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        try:
            while True:
                while not self._commands.empty():
                    command, arg = self._commands.get()
                    if command == "stop":
                        return
                    if command == "inject":
                        self.front.send_multipart([self.client_id, *arg])
                    elif command == "release":
                        self.hold = False
                        for frames in self.held:
                            self.front.send_multipart([self.client_id, *frames])
                        self.held.clear()
                for sock, _ in poller.poll(10):
                    frames = sock.recv_multipart()
                    if sock is self.front:
                        self._to_controller(frames, poller)
                    elif self.hold:
                        self.held.append(frames)
                    else:
                        self.front.send_multipart([self.client_id, *frames])
        finally:
            self.front.close(linger=0)
            if self.back is not None:
                self.back.close(linger=0)

    def _to_controller(self, frames: list[bytes], poller: zmq.Poller) -> None:
        self.client_id, rest = frames[0], frames[1:]
        if self.back is None:  # the controller routes replies by the client's identity
            self.back = self.gate.client(zmq.Context.instance().socket(zmq.DEALER))
            self.back.linger = 0
            self.back.identity = self.client_id
            self.back.connect(self.target)
            poller.register(self.back, zmq.POLLIN)
        batch = unbatch(rest, 0) if len(rest) == 3 and is_batch(rest[0]) else [rest]
        for message in batch:
            self.requests.put([bytes(f) for f in message])
        self.back.send_multipart(rest)

    def captured(self, msg_id: str) -> list[bytes]:
        """The request ``msg_id`` as the client sent it."""
        end = time.monotonic() + DEADLINE
        while True:
            frames = self.requests.get(timeout=max(0.01, end - time.monotonic()))
            at = frames.index(wire.DELIMITER)
            if json.loads(frames[at + 2]).get("msg_id") == msg_id:
                return frames

    def inject(self, frames: list[bytes]) -> None:
        """Send ``frames`` to the client on this connection, as if the controller had."""
        self._commands.put(("inject", frames))

    def release(self) -> None:
        """Forward the replies held back, and those to come."""
        self._commands.put(("release", None))

    def stop(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(5)


class PubRelay(SubscriptionRelay):
    """A relay of the controller's iopub that keeps back (and a copy of) the ``stream``
    messages while :attr:`withhold` is set, as a network peer on an unencrypted link can
    drop what it likes."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        self.withhold = False
        #: stream messages kept back, by the msg_id of their parent (the task)
        self.kept: queue.Queue[tuple[str, list[bytes]]] = queue.Queue()
        #: set once a stream message came through (subscriptions are in place)
        self.flowing = threading.Event()
        super().__init__(info, target)

    def down(self, frames: list[bytes]) -> bool:
        at = frames.index(wire.DELIMITER)
        if json.loads(frames[at + 2]).get("msg_type") != "stream":
            return True
        self.flowing.set()
        if not self.withhold:
            return True
        parent = json.loads(frames[at + 3]).get("msg_id")
        self.kept.put((parent, [bytes(f) for f in frames]))
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=False, profile="replay")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def info(cluster: LiveCluster) -> dict[str, Any]:
    return json.loads(Path(cluster.cluster_file).read_text())


def url(info: dict[str, Any], name: str) -> str:
    return f"{info['transport']}://{info['ip']}:{info[name]}"


@pytest.fixture
def relayed(
    cluster: LiveCluster, info: dict[str, Any], tmp_path: Path
) -> Iterator[Callable[..., tuple[Client, dict[str, Any]]]]:
    """``relayed(*channels)``: a new client whose ``channels`` run through relays (a
    :class:`PubRelay` for ``iopub``, else a :class:`Relay`), with the relays by channel;
    its other channels go straight to the controller."""
    made: list[tuple[Client, dict[str, Any]]] = []

    def make(*channels: str) -> tuple[Client, dict[str, Any]]:
        relays: dict[str, Any] = {
            ch: (PubRelay if ch == "iopub" else Relay)(info, url(info, ch)) for ch in channels
        }
        path = tmp_path / f"relayed-{'-'.join(channels)}.json"
        path.write_text(json.dumps({**info, **{ch: r.port for ch, r in relays.items()}}))
        path.chmod(0o600)
        client = Client(connection_file=path, local=False)
        made.append((client, relays))
        client.wait_for_engines(2, timeout=60)
        return client, relays

    yield make
    for client, relays in made:
        client.close()
        for relay in relays.values():
            relay.stop()


def attacker(info: dict[str, Any], address: str) -> zmq.Socket[Any]:
    """A connection past the gate, sending what was captured."""
    sock = gate_for(info).client(zmq.Context.instance().socket(zmq.DEALER))
    sock.linger = 0
    sock.connect(address)
    return sock


def answered(sock: zmq.Socket[Any], signer: Any, msg_id: str, wait: float) -> bool:
    """Whether a reply to ``msg_id`` arrives on ``sock`` within ``wait`` seconds."""
    end = time.monotonic() + wait
    while True:
        left = end - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000) + 1):
            return False
        frames = sock.recv_multipart()
        messages = unbatch(frames, 0) if is_batch(frames[0]) else [frames]
        for message in messages:
            try:
                if parse(message, signer).parent_id == msg_id:
                    return True
            except wire.WireError:
                continue


def body(frames: list[bytes]) -> list[bytes]:
    """A captured message from its delimiter on (its routing frames dropped)."""
    return frames[frames.index(wire.DELIMITER) :]


def stored_stdout(rc: Client, msg_id: str) -> str:
    """The output the hub's database holds for ``msg_id``."""
    (record,) = rc.db_query({"msg_id": msg_id}, keys=["stdout"])
    return str(record.get("stdout") or "")


def runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_mux_request_replayed_elsewhere_never_runs_again(
    relayed: Callable[..., tuple[Client, dict[str, Any]]], info: dict[str, Any], tmp_path: Path
) -> None:
    """Captured on its way to the mux (for engine 0), resent to engine 1's data socket,
    to the task scheduler and to the mux for engine 1: it ran once, on engine 0."""
    rc, relays = relayed("mux")
    relay = relays["mux"]
    signer = cluster_signer(info["key"])
    first, second = (rc.engines[i] for i in sorted(rc.engines)[:2])
    path = tmp_path / "mux-runs"
    ar = rc[first.id].apply_async(mark, str(path))
    ran_on = ar.get(timeout=DEADLINE)
    captured = relay.captured(ar.msg_ids[0])
    msg_id = ar.msg_ids[0]
    routes = [
        (second.data_url, body(captured)),
        (url(info, "task"), body(captured)),
        (url(info, "mux"), [second.uuid.encode(), *body(captured)]),
    ]
    socks = []
    try:
        for address, frames in routes:
            sock = attacker(info, address)
            socks.append(sock)
            sock.send_multipart(frames)
        for sock, (address, _) in zip(socks, routes, strict=True):
            assert not answered(sock, signer, msg_id, GRACE), f"the replay to {address} ran"
    finally:
        for sock in socks:
            sock.close()
    assert runs(path) == [str(ran_on)]


def test_a_load_balanced_request_replayed_to_another_engine_never_runs(
    relayed: Callable[..., tuple[Client, dict[str, Any]]], info: dict[str, Any], tmp_path: Path
) -> None:
    """Captured on its way to the task scheduler, which gave it to one engine; resent to
    the other engine through its data socket, its Unix socket and the mux."""
    rc, relays = relayed("task")
    relay = relays["task"]
    signer = cluster_signer(info["key"])
    path = tmp_path / "task-runs"
    ar = rc.load_balanced_view().apply_async(mark, str(path))
    ran_on = ar.get(timeout=DEADLINE)
    msg_id = ar.msg_ids[0]
    captured = relay.captured(msg_id)
    reply_engine = ar.engine_id if isinstance(ar.engine_id, int) else None
    assert reply_engine is not None
    other = next(e for e in rc.engines.values() if e.id != reply_engine)
    routes = [
        (other.data_url, body(captured)),
        (url(info, "mux"), [other.uuid.encode(), *body(captured)]),
    ]
    socks = []
    try:
        for address, frames in routes:
            sock = attacker(info, address)
            socks.append(sock)
            sock.send_multipart(frames)
        if compat.HAS_UNIX_SOCKETS and other.local_path:
            conn = unix.connect(other.local_path, timeout=DEADLINE)
            try:
                unix.send_message(conn, body(captured), timeout=DEADLINE)
                conn.settimeout(GRACE)
                reader = unix.FrameReader(conn)
                try:
                    replies = reader.read()
                except TimeoutError:
                    replies = []
                assert not any(parse(m, signer).parent_id == msg_id for m in replies), (
                    "the replay to the Unix socket ran"
                )
            finally:
                conn.close()
        for sock, (address, _) in zip(socks, routes, strict=True):
            assert not answered(sock, signer, msg_id, GRACE), f"the replay to {address} ran"
    finally:
        for sock in socks:
            sock.close()
    assert runs(path) == [str(ran_on)]


def test_an_iopub_message_slipped_into_a_queue_connection_is_not_a_reply(
    relayed: Callable[..., tuple[Client, dict[str, Any]]],
) -> None:
    """A task's own output, parented to the task's request just as its reply is, kept
    from the client's iopub connection and slipped into its task connection before the
    reply: the client must not take it for the reply."""
    rc, relays = relayed("task", "iopub")
    task, iopub = relays["task"], relays["iopub"]
    view = rc.load_balanced_view()
    # Subscriptions propagate asynchronously: print until output comes through.
    end = time.monotonic() + DEADLINE
    while not iopub.flowing.is_set():
        assert time.monotonic() < end, "no output ever came through the relay"
        assert view.apply_async(shout, "hello").get(timeout=DEADLINE) == 7
        iopub.flowing.wait(0.2)
    iopub.withhold = True
    task.hold = True  # replies wait in the relay
    try:
        ar = view.apply_async(shout, "victim")
        task.captured(ar.msg_ids[0])
        end = time.monotonic() + DEADLINE
        while True:
            parent, stream = iopub.kept.get(timeout=max(0.01, end - time.monotonic()))
            if parent == ar.msg_ids[0]:
                break
        dropped = rc.dropped
        task.inject(body(stream))
        while not ar.ready() and rc.dropped == dropped:
            assert time.monotonic() < end, "the injected message was neither taken nor refused"
            time.sleep(0.01)
        assert not ar.ready(), "an iopub message was taken for the task's reply"
    finally:
        iopub.withhold = False
        task.release()
    assert ar.get(timeout=DEADLINE) == 7


def test_output_published_again_is_not_stored_twice(
    cluster: LiveCluster, info: dict[str, Any]
) -> None:
    """A task's ``stream`` message, captured on iopub and published again by a peer on
    ``iopub_engine``: the hub records a task's output once."""
    rc = cluster.client
    sub = gate_for(info).client(zmq.Context.instance().socket(zmq.SUB))
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(url(info, "iopub"))
    pub = gate_for(info).client(zmq.Context.instance().socket(zmq.XPUB))
    pub.linger = 0
    pub.connect(url(info, "iopub_engine"))
    try:
        # Subscriptions propagate asynchronously: print until the subscriber hears.
        stream = None
        end = time.monotonic() + DEADLINE
        while stream is None:
            assert time.monotonic() < end, "never captured an iopub message"
            ar = rc[0].apply_async(shout, "once only")
            assert ar.get(timeout=DEADLINE) == 7
            while stream is None and sub.poll(200):
                frames = sub.recv_multipart()
                at = frames.index(wire.DELIMITER)
                header = json.loads(frames[at + 2])
                parent = json.loads(frames[at + 3])
                if header.get("msg_type") == "stream" and parent.get("msg_id") == ar.msg_ids[0]:
                    stream = frames
        victim = ar.msg_ids[0]
        # The forwarder subscribes to every publisher: wait for it before publishing.
        assert pub.poll(int(DEADLINE * 1000)), "the forwarder never subscribed"
        pub.recv_multipart()
        pub.send_multipart(stream)
        # Then, on the same connection (so after it), genuine output of another task:
        # once that is stored, the replay has been handled.
        sync = rc[1].apply_async(shout, "sync")
        assert sync.get(timeout=DEADLINE) == 7
        signer = cluster_signer(info["key"])
        _, marker = MessageBuilder(signer, "engine-like").build(
            "stream",
            {"name": "stdout", "text": "marker\n"},
            parent={"msg_id": sync.msg_ids[0], "msg_type": "apply_request"},
        )
        pub.send_multipart([b"engine.1.stream", *marker])
        end = time.monotonic() + DEADLINE
        while "marker" not in stored_stdout(rc, sync.msg_ids[0]):
            assert time.monotonic() < end, "the marker output was never stored"
            time.sleep(0.05)
        assert stored_stdout(rc, victim).count("once only") == 1
    finally:
        sub.close()
        pub.close()
