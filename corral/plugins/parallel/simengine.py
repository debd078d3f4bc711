"""Simulated engines: thousands of light engines per process that speak the real protocol.

Why: a real engine is a Python process of ~40 MB; this 2-core machine runs a few dozen.
To see how the *controller* behaves with 1,000 or 5,000 engines, each engine only has to
look real from the controller's side: it registers on ``registration``, echoes beats on
``hb_pong`` under its uuid, and answers what the queues send it with correctly signed
replies (canned results, no user code). Many such engines share one process, one zmq
context and one asyncio loop; every socket is a plain zmq socket whose file descriptor the
loop watches (``add_reader``), so an idle engine costs no Python at all.

What differs from :class:`~corral.plugins.parallel.engine.engine.Engine`, on purpose:

* ``apply_request`` runs nothing: the reply carries one canned result (``None`` pickled),
  whatever the request held; ``execute_request`` answers ``ok``; any other request on a
  queue answers ``{"status": "ok"}``, and ``shutdown_request`` on ``control`` stops it;
* it sends no task start notices (the scheduler then counts the oldest unanswered task as
  started, the rule for engines older than notices) and no iopub output;
* one SUB socket per *process* hears the beats, and each engine echoes them from its own
  ``hb_pong`` DEALER (the hub only sees the echoes, under each engine's uuid);
* replies to one burst of requests leave as one batch per socket, as a real engine's do;
* with ``trust=True`` (``--trust``) it does not check the signatures of what it receives
  (its replies are still signed): a benchmark then measures the controller, not the cost
  of hashing every request again in the process that hosts a thousand engines.

Run it: ``python -m corral.plugins.parallel.simengine CLUSTER_FILE -n 1000`` prints one
JSON line once every engine is registered (``{"engines": n, "seconds": t}``) and serves
until SIGTERM/SIGINT or until every engine was told to shut down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket as socket_module
import sys
import time
import uuid as uuid_module
from collections.abc import Callable
from typing import Any, cast

import zmq

from corral.core import serialize
from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches
from corral.transports.zmq.door import HUB, cluster_signer
from corral.transports.zmq.frames import send_frames
from corral.transports.zmq.gate import gate_for

from .engine._wire import Message, Replier, iso_now, recv_message, recv_messages
from .engine.engine import load_cluster_file

__all__ = ["SimCrowd", "SimEngine", "main"]

#: the queue channels a simulated engine may connect (control is answered at once)
QUEUES = ("mux_engine", "task_engine", "broadcast_engine", "control_engine")
_NOBLOCK = zmq.NOBLOCK
_POLLIN = zmq.POLLIN
_EVENTS = zmq.EVENTS
#: replies sent per batch, as a real engine holds them (see docs/parallel-protocol.md)
_BATCH = 64


class SimEngine:
    """One simulated engine: its sockets, its id once registered, its canned replies."""

    __slots__ = (
        "crowd",
        "uuid",
        "ident",
        "id",
        "registration",
        "pong",
        "queues",
        "replier",
        "registered",
        "served",
        "stopped",
        "_meta",
        "_ok_apply",
    )

    def __init__(self, crowd: SimCrowd, queues: tuple[str, ...]) -> None:
        self.crowd = crowd
        self.uuid = uuid_module.uuid4().hex
        self.ident = self.uuid.encode("ascii")
        self.id: int | None = None
        self.replier = Replier(crowd.signer, wire.new_id(), "engine")
        self.registered: asyncio.Future[int] = crowd.loop.create_future()
        self.served = 0
        self.stopped = False
        self._meta = b"{}"
        self._ok_apply = b'{"status":"ok"}'
        self.registration = crowd.dealer("registration", self.ident)
        self.pong = crowd.dealer("hb_pong", self.ident)
        self.queues: dict[str, zmq.Socket[Any]] = {
            channel: crowd.dealer(channel, self.ident) for channel in queues
        }

    def register(self) -> None:
        """Send ``registration_request`` and watch for the reply."""
        content = {
            "uuid": self.uuid,
            "hostname": socket_module.gethostname(),
            "pid": os.getpid(),
            "data_url": "",
            "local_path": None,
        }
        run = self.crowd.cluster.get("run") or None  # a registration names the run
        frames = self.replier.frames(
            (), "registration_request", b"{}", b"{}", wire.json_dumps(content), dest=HUB, run=run
        )
        self.crowd.watch(self.registration, self._on_registration)
        send_frames(self.registration, frames)

    def _on_registration(self) -> None:
        sock = self.registration
        while cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            try:
                msg = recv_message(sock, self.crowd.signer, None, _NOBLOCK)
            except zmq.Again:
                return
            except wire.WireError:
                continue
            if msg.msg_type != "registration_reply" or self.registered.done():
                continue
            if msg.content.get("status") != "ok":
                self.registered.set_exception(
                    RuntimeError(f"registration refused: {msg.content.get('evalue')}")
                )
                continue
            self._became(int(msg.content["id"]))

    def _became(self, engine_id: int) -> None:
        self.id = engine_id
        info = {"engine_id": engine_id, "engine_uuid": self.uuid}
        self._ok_apply = wire.json_dumps(
            {"status": "ok", "engine_info": {**info, "method": "apply"}}
        )
        self._meta = (
            b'{"engine_id":%d,"engine_uuid":"%s","started":"%%b","completed":"%%b",'
            b'"status":"ok","outputs":0}' % (engine_id, self.ident)
        )
        for channel, sock in self.queues.items():
            self.crowd.watch(sock, self._server(channel, sock))
        self.crowd.pongs.append(self.pong)
        self.registered.set_result(engine_id)

    def _server(self, channel: str, sock: zmq.Socket[Any]) -> Callable[[], None]:
        def serve() -> None:
            self._serve(channel, sock)

        return serve

    def _serve(self, channel: str, sock: zmq.Socket[Any]) -> None:
        """Answer every request waiting on ``sock``; replies go out batched."""
        signer = self.crowd.checker
        while cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            replies: list[list[Any]] = []
            for _ in range(256):
                try:
                    messages, _errors = recv_messages(sock, signer, None, _NOBLOCK)
                except zmq.Again:
                    break
                for msg in messages:
                    replies.append(self._reply(channel, msg))
            if not replies:
                break
            if channel == "control_engine":
                for reply in replies:
                    send_frames(sock, reply)
            else:
                for message in pack_batches((), replies, _BATCH):
                    send_frames(sock, message)
            self.served += len(replies)
        if self.stopped:
            self.crowd.stopped(self)

    def _reply(self, channel: str, msg: Message) -> list[Any]:
        now = iso_now()
        kind = msg.msg_type
        reply_type = kind.removesuffix("_request") + "_reply"
        metadata = self._meta % (now.encode(), now.encode())
        buffers: list[bytes] = []
        if kind == "apply_request":
            content = self._ok_apply
            buffers = self.crowd.result
        elif kind == "execute_request":
            content = b'{"status":"ok","execution_count":1,"user_expressions":{}}'
        else:
            content = b'{"status":"ok"}'
            if kind == "shutdown_request" and channel == "control_engine":
                self.stopped = True
        return self.replier.frames(
            msg.idents, reply_type, msg.raw_header, metadata, content, buffers, now
        )

    def close(self) -> None:
        for sock in (self.registration, self.pong, *self.queues.values()):
            self.crowd.unwatch(sock)
            sock.close(0)


class SimCrowd:
    """Many :class:`SimEngine` in one process, on one asyncio loop and one zmq context."""

    def __init__(
        self,
        cluster: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        queues: tuple[str, ...] = QUEUES,
        trust: bool = False,
    ) -> None:
        self.cluster = cluster
        self.loop = loop
        self.queues = queues
        key = cluster["key"]
        self.signer = cluster_signer(key if isinstance(key, bytes) else str(key).encode())
        #: checks what the queues send (a keyless signer checks nothing: ``trust``)
        self.checker = wire.Signer(b"") if trust else self.signer
        self.gate = gate_for(cluster)
        self.context: zmq.Context[Any] = zmq.Context()
        self.context.max_sockets = 65536
        ip = str(cluster.get("ip") or "127.0.0.1")
        self.ip = "127.0.0.1" if ip in ("0.0.0.0", "*", "") else ip
        self.transport = str(cluster.get("transport") or "tcp")
        self.result = [bytes(f) for f in serialize.serialize(None)]
        self.engines: list[SimEngine] = []
        self.pongs: list[zmq.Socket[Any]] = []
        self.beats = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self._watched: dict[int, tuple[zmq.Socket[Any], Callable[[], None]]] = {}
        self.ping = self.context.socket(zmq.SUB)
        self.gate.client(self.ping)
        self.ping.linger = 0
        self.ping.setsockopt(zmq.SUBSCRIBE, b"")
        self.ping.connect(self.url("hb_ping"))
        self.watch(self.ping, self._on_beat)

    def url(self, channel: str) -> str:
        port = int(self.cluster[channel])
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"{self.transport}://{self.ip}:{port}"

    def dealer(self, channel: str, identity: bytes) -> zmq.Socket[Any]:
        sock = self.context.socket(zmq.DEALER)
        self.gate.client(sock)
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        sock.identity = identity
        sock.connect(self.url(channel))
        return sock

    def watch(self, sock: zmq.Socket[Any], handler: Callable[[], None]) -> None:
        """Call ``handler`` whenever ``sock`` may have input. The zmq descriptor is edge
        triggered: the handler drains, and is also called once now, in case input came
        before the watch began."""
        fd = sock.fileno()  # the option zmq.FD
        self._watched[fd] = (sock, handler)
        self.loop.add_reader(fd, handler)
        self.loop.call_soon(handler)

    def unwatch(self, sock: zmq.Socket[Any]) -> None:
        fd = sock.fileno()  # the option zmq.FD
        if self._watched.pop(fd, None) is not None:
            self.loop.remove_reader(fd)

    def _on_beat(self) -> None:
        sock = self.ping
        while cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            try:
                beat = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            self.beats += 1
            for pong in self.pongs:
                pong.send(beat, _NOBLOCK)

    async def start(self, count: int, wave: int = 0) -> float:
        """Create and register ``count`` engines (``wave`` at a time; 0: all at once);
        returns the seconds from the first request to the last reply."""
        start = time.perf_counter()
        fresh = [SimEngine(self, self.queues) for _ in range(count)]
        self.engines.extend(fresh)
        step = wave or count or 1
        for first in range(0, count, step):
            group = fresh[first : first + step]
            for engine in group:
                engine.register()
            await asyncio.gather(*(engine.registered for engine in group))
        return time.perf_counter() - start

    def stopped(self, engine: SimEngine) -> None:
        if all(e.stopped for e in self.engines) and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.unwatch(self.ping)
        self.ping.close(0)
        self.context.term()


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    cluster = load_cluster_file(args.cluster_file)
    queues = tuple(q for q in QUEUES if q.split("_")[0] in args.queues.split(","))
    crowd = SimCrowd(cluster, loop, queues=queues, trust=args.trust)

    def finish() -> None:
        if not crowd.done.done():
            crowd.done.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    try:
        seconds = await asyncio.wait_for(crowd.start(args.n, args.wave), args.timeout)
        ids = sorted(e.id for e in crowd.engines if e.id is not None)
        print(json.dumps({"engines": len(ids), "seconds": seconds, "pid": os.getpid()}), flush=True)
        await crowd.done
    finally:
        crowd.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cluster_file")
    parser.add_argument("-n", type=int, default=100, help="engines in this process")
    parser.add_argument("--wave", type=int, default=0, help="register this many at a time")
    parser.add_argument(
        "--queues",
        default="mux,task,broadcast,control",
        help="queues to connect (comma-separated; none: registration and heartbeats only)",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--trust", action="store_true", help="do not check the signatures of requests"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
