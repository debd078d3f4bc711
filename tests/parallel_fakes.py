"""Fake engines and clients for controller tests: real DEALER sockets, real signing.

Nothing here is a mock: a :class:`FakeEngine` connects to a running controller exactly as
an engine does (queue sockets with the uuid as identity, connected and handshaken before
it registers; a heartbeat echo; an iopub PUB), and a :class:`FakeClient` talks to the
hub and the queues as a client does. Waiting is always a socket poll with a timeout.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import zmq
from helpers import TIMEOUT
from zmq.utils.monitor import recv_monitor_message

from corral.plugins.parallel.clusterfile import ClusterInfo
from corral.transports.zmq import wire
from corral.transports.zmq.batch import is_batch, unbatch
from corral.transports.zmq.bridge import FEED_MSG_TYPE
from corral.transports.zmq.door import HUB, cluster_signer, take_seal
from corral.transports.zmq.gate import gate_for
from corral.transports.zmq.session import Session

QUEUES = ("mux", "control", "task", "broadcast")


def _wait_handshake(sock: zmq.Socket[Any], url: str) -> None:
    """Connect ``sock`` and return once the ZMTP handshake with the peer is done."""
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(url)
    try:
        assert mon.poll(TIMEOUT * 1000), f"no handshake with {url}"
        recv_monitor_message(mon)
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


def split_batch(frames: list[bytes], at: int = 0) -> list[list[bytes]]:
    """The messages one receive delivered: a batch's (its marker at ``frames[at]``, after
    the routing a ROUTER added), or ``frames`` itself."""
    if len(frames) == at + 3 and is_batch(frames[at]):
        return unbatch(frames, at)
    return [frames]


class Peer:
    """A participant with a session and a few sockets."""

    def __init__(self, info: ClusterInfo, name: str) -> None:
        self.info = info
        self.ctx = zmq.Context.instance()
        self.session = Session(info.key, username=name, signer=cluster_signer(info.key))
        self.gate = gate_for(info)
        self.socks: dict[str, zmq.Socket[Any]] = {}
        #: Messages of a received batch not yet returned, per socket name.
        self.unread: dict[str, deque[list[bytes]]] = {}

    def dealer(self, name: str, identity: bytes | None = None, wait: bool = True) -> None:
        sock = self.gate.client(self.ctx.socket(zmq.DEALER))
        sock.linger = 0
        if identity is not None:
            sock.identity = identity
        if wait:
            _wait_handshake(sock, self.info.url(name))
        else:
            sock.connect(self.info.url(name))
        self.socks[name] = sock

    def recv(self, name: str, timeout: float = TIMEOUT) -> tuple[list[bytes], dict[str, Any]]:
        """The next message on ``name`` that verifies; fails the test after ``timeout``."""
        sock = self.socks[name]
        unread = self.unread.setdefault(name, deque())
        end = time.monotonic() + timeout
        while True:
            if not unread:
                left = end - time.monotonic()
                assert left > 0 and sock.poll(int(left * 1000) + 1), f"nothing on {name}"
                unread.extend(split_batch(sock.recv_multipart()))  # queues batch bursts
            got = self.session.parse(unread.popleft())
            if got is not None:
                return got

    def messages_of_one_recv(self, name: str) -> list[list[bytes]]:
        """The messages one receive on a ready socket ``name`` delivers: a batch's, or one."""
        return split_batch(self.socks[name].recv_multipart())

    def nothing(self, name: str, timeout: float = 0.2) -> bool:
        """Whether nothing arrives on ``name`` within ``timeout`` (for negative checks)."""
        if self.unread.get(name):
            return False
        return not self.socks[name].poll(int(timeout * 1000))

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()


class FakeEngine(Peer):
    """An engine that registers, echoes heartbeats, and answers what the tests tell it."""

    def __init__(self, info: ClusterInfo, uuid: str | None = None, *, heart: bool = True) -> None:
        super().__init__(info, "engine")
        self.uuid = uuid or wire.new_id()
        self.ident = self.uuid.encode()
        for q in QUEUES:
            self.dealer(f"{q}_engine", self.ident)
        self.dealer("registration", self.ident)
        pub = self.gate.client(self.ctx.socket(zmq.PUB))
        pub.linger = 0
        pub.connect(info.url("iopub_engine"))
        self.socks["iopub_engine"] = pub
        self.id: int | None = None
        self._heart_stop = threading.Event()
        self._heart: threading.Thread | None = None
        if heart:
            ready = threading.Event()
            self._heart = threading.Thread(target=self._beat, args=(ready,), daemon=True)
            self._heart.start()
            assert ready.wait(TIMEOUT)

    def _beat(self, ready: threading.Event) -> None:
        sub = self.gate.client(self.ctx.socket(zmq.SUB))
        sub.linger = 0
        sub.subscribe(b"")
        dealer = self.gate.client(self.ctx.socket(zmq.DEALER))
        dealer.linger = 0
        dealer.identity = self.ident
        _wait_handshake(sub, self.info.url("hb_ping"))
        _wait_handshake(dealer, self.info.url("hb_pong"))
        ready.set()
        try:
            while not self._heart_stop.is_set():
                if sub.poll(20):
                    dealer.send(sub.recv())
        finally:
            sub.close(linger=0)
            dealer.close(linger=0)

    def stop_heart(self) -> None:
        """Stop echoing beats: the hub must declare this engine dead."""
        self._heart_stop.set()
        if self._heart is not None:
            self._heart.join(TIMEOUT)

    def register(self) -> int:
        self.session.send(
            self.socks["registration"],
            "registration_request",
            {"uuid": self.uuid, "hostname": "fakehost", "pid": 1, "data_url": "tcp://x:1"},
            dest=HUB,
            run=self.info.run or None,  # a registration names the run, as an engine's does
        )
        _, reply = self.recv("registration")
        assert reply["content"]["status"] == "ok", reply["content"]
        self.id = reply["content"]["id"]
        #: what its later requests to the hub name (door.RUN), as a real engine learns it
        self.run = reply["content"].get("run")
        return self.id

    def next_request(
        self, queue: str = "task", timeout: float = TIMEOUT
    ) -> tuple[list[bytes], dict[str, Any]]:
        idents, msg = self.recv(f"{queue}_engine", timeout)
        take_seal(idents)  # the queue's route seal (a real engine checks it; door.admit)
        return idents, msg

    def reply(
        self,
        queue: str,
        idents: list[bytes],
        request: dict[str, Any],
        *,
        status: str = "ok",
        buffers: list[Any] | None = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        idents = list(idents)
        take_seal(idents)  # a reply never echoes the queue's route seal
        msg_type = request["msg_type"].replace("_request", "_reply")
        now = wire.make_header("x", "x")["date"]
        content = {
            "status": status,
            "engine_info": {"engine_id": self.id, "engine_uuid": self.uuid, "method": "apply"},
        }
        if status == "error":
            content.update(ename="ValueError", evalue="boom", traceback=[])
        metadata = {
            "engine_id": self.id,
            "engine_uuid": self.uuid,
            "started": now,
            "completed": now,
            "status": status,
            **(extra_metadata or {}),
        }
        return self.session.send(
            self.socks[f"{queue}_engine"],
            msg_type,
            content,
            request,
            identities=idents,
            metadata=metadata,
            buffers=buffers or [],
        )

    def answer(self, queue: str = "task", **kw: Any) -> dict[str, Any]:
        """Take the next request on ``queue`` and reply to it; returns the request."""
        idents, msg = self.next_request(queue)
        self.reply(queue, idents, msg, **kw)
        return msg

    def publish_stream(self, parent: dict[str, Any], name: str, text: str) -> None:
        self.session.send(
            self.socks["iopub_engine"],
            "stream",
            {"name": name, "text": text},
            parent,
            identities=[b"engine.stream"],
            metadata={"engine_id": self.id},
        )

    def close(self) -> None:
        self.stop_heart()
        super().close()


class FakeClient(Peer):
    """A client: DEALERs to the hub and the queues, SUBs to notifications and iopub."""

    def __init__(self, info: ClusterInfo) -> None:
        super().__init__(info, "client")
        for name in ("registration", *QUEUES):
            self.dealer(name)
        for name in ("notification", "iopub"):
            sub = self.gate.client(self.ctx.socket(zmq.SUB))
            sub.linger = 0
            sub.subscribe(b"")
            _wait_handshake(sub, info.url(name))
            self.socks[name] = sub

    def send(
        self,
        queue: str,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        engine: FakeEngine | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> dict[str, Any]:
        idents = [engine.ident] if engine is not None else []
        return self.session.send(
            self.socks[queue],
            msg_type,
            content or {},
            identities=idents,
            metadata=metadata,
            buffers=buffers or [],
            dest=HUB if queue == "registration" else queue,
            run=self.info.run or None,  # a genuine client's requests name the run
        )

    def apply(self, queue: str = "task", **kw: Any) -> dict[str, Any]:
        md = {"targets": None, "after": [], "follow": [], "retries": 0, "timeout": None}
        md.update(kw.pop("metadata", {}))
        return self.send(queue, "apply_request", metadata=md, **kw)

    def reply(self, queue: str = "task", timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.recv(queue, timeout)[1]

    def ask(self, msg_type: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request to the hub and its reply."""
        sent = self.send("registration", msg_type, content)
        _, reply = self.recv("registration")
        assert reply["parent_header"]["msg_id"] == sent["msg_id"]
        return reply

    def notification(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next registration or unregistration notification (the hub's bridged
        notifications on the same feed, ``bus_notification``, are passed over)."""
        while True:
            msg = self.recv("notification", timeout)[1]
            if msg["msg_type"] != FEED_MSG_TYPE:
                return msg
