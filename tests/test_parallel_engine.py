"""The engine, as a real process, against a fake controller made of real sockets.

The fake controller binds the hub's and the queues' engine-side sockets on 127.0.0.1,
signs with the cluster key through a real :class:`Session`, and writes a real cluster
file; each test starts ``python -m corral.plugins.parallel.engine --file ...`` and talks
to it exactly as the controller would (queues address the engine by its uuid). Nothing
of the engine is mocked, and nothing waits on a clock where an event can be awaited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import TIMEOUT
from parallel_fakes import split_batch

from corral.core.serialize import deserialize, pack_apply, serialize
from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches
from corral.transports.zmq.door import cluster_signer, dest_of
from corral.transports.zmq.gate import Gate
from corral.transports.zmq.session import Session

ROOT = Path(__file__).resolve().parents[1]
KEY = "a" * 64

CHANNELS = ("mux_engine", "control_engine", "task_engine", "broadcast_engine")


class FakeController:
    """Hub + queues, engine side only, as small as the tests need."""

    def __init__(self, tmp: Path, *, hb_period: float = 0.1, beat: bool = True) -> None:
        self.ctx = zmq.Context()
        self.session = Session(
            KEY.encode(), username="controller", signer=cluster_signer(KEY.encode())
        )
        self.hb_period = hb_period
        self.socks: dict[str, zmq.Socket[Any]] = {}
        #: Messages of a received batch not yet returned, per socket name.
        self.unread: dict[str, deque[list[bytes]]] = {}
        ports: dict[str, int] = {}
        kinds = {
            "registration": zmq.ROUTER,
            "hb_ping": zmq.PUB,
            "hb_pong": zmq.ROUTER,
            "iopub_engine": zmq.SUB,
            **{ch: zmq.ROUTER for ch in CHANNELS},
        }
        gate = Gate(KEY.encode())
        for name, kind in kinds.items():
            sock = gate.server(self.ctx.socket(kind))
            sock.linger = 0
            if kind == zmq.ROUTER:
                # A queue must not silently drop a message for an engine whose connection
                # is still being set up: EHOSTUNREACH tells it to try again.
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            ports[name] = sock.bind_to_random_port("tcp://127.0.0.1")
            self.socks[name] = sock
        self.file = tmp / "cluster-test.json"
        self.file.write_text(
            json.dumps(
                {
                    "cluster_id": "test",
                    "key": KEY,
                    "signature_scheme": "hmac-sha256",
                    "transport": "tcp",
                    "ip": "127.0.0.1",
                    **ports,
                    "notification": 0,
                    "monitor": 0,
                    "mux": 0,
                    "control": 0,
                    "task": 0,
                    "broadcast": 0,
                    "iopub": 0,
                    "hb_period": hb_period,
                    "hb_misses": 2,
                    "controller_pid": os.getpid(),
                }
            )
        )
        # Beats run in their own thread with their own sockets (zmq sockets are per-thread).
        self.pongs: list[tuple[bytes, bytes]] = []
        self.pong_arrived = threading.Condition()
        self.beating = threading.Event()
        #: the last beat sent; a restarted hub is simulated by a jump
        self.beat_number = 0
        if beat:
            self.beating.set()
        self._stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.engines: dict[int, dict[str, Any]] = {}

    # -- heartbeat ---------------------------------------------------------------

    def _beat_loop(self, ping: zmq.Socket[Any], pong: zmq.Socket[Any]) -> None:
        while not self._stop.is_set():
            if self.beating.is_set():
                self.beat_number += 1
                ping.send(str(self.beat_number).encode())
            deadline = time.monotonic() + self.hb_period
            while (left := deadline - time.monotonic()) > 0:
                if pong.poll(int(left * 1000) + 1):
                    ident, beat = pong.recv_multipart()
                    with self.pong_arrived:
                        self.pongs.append((ident, beat))
                        self.pong_arrived.notify_all()
        ping.close(0)
        pong.close(0)

    def pongs_from(self, ident: bytes) -> int:
        return sum(1 for who, _ in list(self.pongs) if who == ident)

    def wait_pongs(self, ident: bytes, count: int) -> None:
        """Block until ``count`` beats in all were echoed by the engine ``ident``."""
        with self.pong_arrived:
            ok = self.pong_arrived.wait_for(lambda: self.pongs_from(ident) >= count, TIMEOUT)
        assert ok, f"fewer than {count} beats echoed within {TIMEOUT} s"

    # -- processes -----------------------------------------------------------

    def start_engine(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(self.file)]
            + list(extra),
            env=full_env,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def register(self, engine_id: int = 0) -> dict[str, Any]:
        """Answer the next registration_request; returns its content (+ routing ident)."""
        idents, msg = self.recv("registration")
        assert msg["msg_type"] == "registration_request"
        content = msg["content"]
        self.session.send(
            self.socks["registration"],
            "registration_reply",
            {
                "status": "ok",
                "id": engine_id,
                "hb_period": self.hb_period,
                "hb_misses": 2,
                "beat": self.beat_number,
            },
            msg,
            identities=idents,
        )
        content["ident"] = idents[0]
        self.engines[engine_id] = content
        return content

    # -- messaging -----------------------------------------------------------

    def recv(self, name: str, timeout: float = TIMEOUT) -> tuple[list[bytes], dict[str, Any]]:
        sock = self.socks[name]
        unread = self.unread.setdefault(name, deque())
        end = time.monotonic() + timeout
        while True:
            if not unread:
                left = end - time.monotonic()
                assert left > 0, f"nothing on {name} within {timeout} s"
                if not sock.poll(int(left * 1000)):
                    continue
                # The engine batches replies (behind the engine's id this ROUTER adds).
                unread.extend(split_batch(sock.recv_multipart(), at=1))
            got = self.session.parse(unread.popleft())
            if got is not None and got[0][1:2] != [b"\x00started"]:  # start notices aside
                return got

    def reply(self, channel: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next reply from an engine on ``channel`` (routing: engine uuid, client)."""
        idents, msg = self.recv(channel, timeout)
        assert idents[1] == b"client-1", idents
        return msg

    def send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        engine: int = 0,
        buffers: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A request routed as the queues route it: [engine uuid, client id, seal, DELIM,
        ...], signed for the queue of ``channel``."""
        msg = self.msg(channel, msg_type, content or {}, metadata=metadata, buffers=buffers)
        self.send_raw(channel, self.routed(channel, msg, engine))
        return msg

    def msg(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        buffers: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A request signed for the queue of ``channel`` (its signed destination)."""
        return self.session.msg(
            msg_type,
            content or {},
            metadata=metadata,
            buffers=buffers or [],
            dest=channel.removesuffix("_engine"),
        )

    def routed(self, channel: str, msg: dict[str, Any], engine: int = 0) -> list[Any]:
        """``msg`` as the queue of ``channel`` forwards it to ``engine``: its uuid, the
        client's id, the queue's route seal (door.ClusterSigner.route_seal), the message."""
        ident = self.engines[engine]["ident"]
        return [ident, *self._sealed(channel, msg, ident)]

    def _sealed(self, channel: str, msg: dict[str, Any], ident: bytes) -> list[Any]:
        frames = wire.serialize(msg, self.session.signer, [])
        queue = channel.removesuffix("_engine")
        seal = self.session.signer.route_seal(queue, ident, frames[1])
        return [b"client-1", seal, *frames]

    def send_raw(self, channel: str, frames: list[Any]) -> None:
        sock = self.socks[channel]
        end = time.monotonic() + TIMEOUT
        while True:
            try:
                sock.send_multipart(frames)
                return
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the engine is still connecting
                if exc.errno != zmq.EHOSTUNREACH or time.monotonic() > end:
                    raise
                time.sleep(0.005)

    def send_batch(
        self, channel: str, messages: list[dict[str, Any]], *, corrupt: int | None = None
    ) -> None:
        """``messages`` (from ``session.msg``) as one batch, as a queue sends a burst; the
        message at ``corrupt`` gets a wrong signature."""
        routed = []
        ident = self.engines[0]["ident"]
        for index, msg in enumerate(messages):
            frames = self._sealed(channel, msg, ident)
            if index == corrupt:
                frames[3] = b"0" * len(frames[3])
            routed.append(frames)
        (batch,) = pack_batches((), routed)
        self.send_raw(channel, [self.engines[0]["ident"], *batch])

    def apply(
        self, func: Any, *args: Any, channel: str = "task_engine", engine: int = 0, **kwargs: Any
    ) -> Any:
        buffers = pack_apply(func, args, kwargs)
        return self.send(channel, "apply_request", engine=engine, buffers=buffers)

    def iopub(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.recv("iopub_engine", timeout)[1]

    def iopub_until(self, pred: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            msg = self.iopub(max(0.01, end - time.monotonic()))
            if pred(msg):
                return msg

    def start_beating(self) -> None:
        # The hb sockets move to the beat thread (thread start is the memory barrier).
        ping, pong = self.socks.pop("hb_ping"), self.socks.pop("hb_pong")
        self._beat_thread = threading.Thread(target=self._beat_loop, args=(ping, pong))
        self._beat_thread.start()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join()
        for sock in self.socks.values():
            sock.close(0)
        self.ctx.term()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[FakeController]:
    ctrl = FakeController(tmp_path)
    yield ctrl
    ctrl.close()


@pytest.fixture
def engine(controller: FakeController) -> Iterator[FakeController]:
    """A registered engine (id 0) with beats flowing."""
    controller.start_beating()
    controller.start_engine()
    controller.register(0)
    yield controller


def wait_exit(proc: subprocess.Popen, timeout: float = TIMEOUT) -> int:
    return proc.wait(timeout)


# --------------------------------------------------------------------------- tests


def test_registration(controller: FakeController) -> None:
    controller.start_beating()
    proc = controller.start_engine()
    reg = controller.register(3)
    assert reg["pid"] == proc.pid
    assert reg["ident"] == reg["uuid"].encode()
    assert reg["data_url"].startswith("tcp://127.0.0.1:")
    assert reg["hostname"]
    # Registered: it serves, and its replies carry the id the hub gave it.
    controller.send("task_engine", "apply_request", engine=3, buffers=pack_apply(int, ("42",)))
    reply = controller.reply("task_engine")
    assert reply["msg_type"] == "apply_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["engine_info"] == {
        "engine_id": 3,
        "engine_uuid": reg["uuid"],
        "method": "apply",
    }
    md = reply["metadata"]
    assert md["engine_id"] == 3 and md["engine_uuid"] == reg["uuid"]
    assert md["status"] == "ok" and md["started"] <= md["completed"]
    assert deserialize(reply["buffers"]) == 42


def main_func(src: str, name: str, **globs: Any) -> Any:
    """A function as if defined interactively on a client (``__module__ == "__main__"``)."""
    ns: dict[str, Any] = {"__name__": "__main__", **globs}
    exec(compile(textwrap.dedent(src), "<client>", "exec"), ns)
    return ns[name]


def test_apply_function_lambda_closure_numpy(engine: FakeController) -> None:
    def make_scaler(k: float) -> Any:
        def scale(a: np.ndarray) -> np.ndarray:
            return a * k

        return scale

    big = np.arange(200_000, dtype=np.float64)  # 1.6 MB: travels out of band both ways
    engine.apply(make_scaler(2.0), big)
    reply = engine.reply("task_engine")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert len(reply["buffers"]) == 2  # pickle + the array as its own (zero-copy) frame
    assert np.array_equal(deserialize(reply["buffers"]), big * 2.0)

    engine.apply(lambda a, b=1: (a.sum(), b), np.ones(10), b=5, channel="mux_engine")
    reply = engine.reply("mux_engine")
    assert deserialize(reply["buffers"]) == (10.0, 5)

    # Importable functions by reference; results of any picklable type.
    engine.apply(divmod, 17, 5, channel="broadcast_engine")
    assert deserialize(engine.reply("broadcast_engine")["buffers"]) == (3, 2)


def test_main_functions_see_the_engine_namespace(engine: FakeController) -> None:
    _sync_iopub(engine)
    engine.send("mux_engine", "execute_request", {"code": "a = 10", "silent": True})
    assert engine.reply("mux_engine")["content"]["status"] == "ok"
    # `a` exists on the engine: the engine's value wins over the client's. `helper` does
    # not: the shipped one is used. `global` assigns engine variables.
    f = main_func(
        """
        def f(x):
            global b
            b = helper(x) + a
            return b
        """,
        "f",
        a=1,
        helper=lambda x: x * 100,
    )
    engine.apply(f, 2)
    reply = engine.reply("task_engine")
    assert deserialize(reply["buffers"]) == 210, reply["content"]
    fact = main_func("def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n", "fact")
    engine.apply(fact, 5)
    assert deserialize(engine.reply("task_engine")["buffers"]) == 120
    engine.send("mux_engine", "execute_request", {"code": "b, helper(1)"})
    reply = engine.reply("mux_engine")
    assert reply["content"]["status"] == "ok", reply["content"]
    result = engine.iopub_until(lambda m: m["msg_type"] == "execute_result")
    assert result["content"]["data"]["text/plain"] == "(210, 100)"


def test_apply_exception(engine: FakeController) -> None:
    boom = main_func(
        """
        def inner(x):
            raise ValueError(f"bad value {x}")

        def boom(x):
            return inner(x)
        """,
        "boom",
    )
    msg = engine.apply(boom, 7)
    reply = engine.reply("task_engine")
    content = reply["content"]
    assert reply["parent_header"]["msg_id"] == msg["msg_id"]
    assert content["status"] == "error"
    assert content["ename"] == "ValueError"
    assert content["evalue"] == "bad value 7"
    text = "\n".join(content["traceback"])
    assert "boom" in text and "inner" in text and "ValueError: bad value 7" in text
    assert "engine.py" not in text  # the engine's own frames are not the user's business
    assert content["engine_info"]["engine_id"] == 0
    assert reply["metadata"]["status"] == "error"
    assert reply["buffers"] == []
    # Still serving.
    engine.apply(abs, -3)
    assert deserialize(engine.reply("task_engine")["buffers"]) == 3


def _sync_iopub(engine: FakeController) -> None:
    """Wait until the engine's PUB has our subscription (output before it is dropped)."""
    while True:
        engine.apply(print, "sync")
        engine.reply("task_engine")
        try:
            engine.iopub_until(lambda m: m["msg_type"] == "stream", timeout=0.5)
            break
        except AssertionError:
            continue
    while engine.socks["iopub_engine"].poll(200):  # the rest of the sync output
        engine.iopub(1)


def test_stdout_and_stderr_on_iopub(engine: FakeController) -> None:
    _sync_iopub(engine)
    talk = main_func(
        """
        import sys
        def talk(n):
            for i in range(n):
                print("line", i)
            print("oops", file=sys.stderr)
            return n
        """,
        "talk",
    )
    msg = engine.apply(talk, 3)
    reply = engine.reply("task_engine")
    assert reply["metadata"]["outputs"] >= 2
    streams: dict[str, str] = {"stdout": "", "stderr": ""}
    while True:
        out = engine.iopub()
        assert out["parent_header"]["msg_id"] == msg["msg_id"]
        assert out["metadata"] == {"engine_id": 0}
        if out["msg_type"] == "status":
            assert out["content"]["execution_state"] == "idle"
            break
        assert out["msg_type"] == "stream"
        streams[out["content"]["name"]] += out["content"]["text"]
    assert streams == {"stdout": "line 0\nline 1\nline 2\n", "stderr": "oops\n"}
    # A task without output publishes nothing at all.
    engine.apply(abs, 1)
    assert engine.reply("task_engine")["metadata"]["outputs"] == 0
    msg = engine.apply(print, "after")
    engine.reply("task_engine")
    out = engine.iopub()
    assert out["parent_header"]["msg_id"] == msg["msg_id"]
    assert out["content"]["text"] == "after\n"


def test_execute_request(engine: FakeController) -> None:
    _sync_iopub(engine)
    msg = engine.send("mux_engine", "execute_request", {"code": "x = 6\nprint('hi')\nx * 7"})
    reply = engine.reply("mux_engine")
    assert reply["msg_type"] == "execute_reply"
    assert reply["parent_header"]["msg_id"] == msg["msg_id"]
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["execution_count"] == 1
    assert content["engine_info"]["method"] == "execute"
    seen = []
    while True:
        out = engine.iopub()
        assert out["parent_header"]["msg_id"] == msg["msg_id"]
        assert out["metadata"] == {"engine_id": 0}
        seen.append((out["msg_type"], out["content"]))
        if out["msg_type"] == "status" and out["content"]["execution_state"] == "idle":
            break
    kinds = [k for k, _ in seen]
    assert kinds == ["status", "execute_input", "stream", "execute_result", "status"]
    assert seen[2][1]["text"] == "hi\n"
    assert seen[3][1]["data"]["text/plain"] == "42"

    engine.send("broadcast_engine", "execute_request", {"code": "1/0"})
    content = engine.reply("broadcast_engine")["content"]
    assert content["status"] == "error" and content["ename"] == "ZeroDivisionError"
    error = engine.iopub_until(lambda m: m["msg_type"] == "error")
    assert error["content"]["ename"] == "ZeroDivisionError"


def test_the_interpreter_requests_a_kernel_answers(engine: FakeController) -> None:
    """An engine answers what a kernel answers from its interpreter (completion,
    inspection, is-complete, history, kernel_info), with the kernel's own functions."""

    def ask(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        msg = engine.send("mux_engine", msg_type, content)
        reply = engine.reply("mux_engine")
        assert reply["msg_type"] == msg_type.replace("_request", "_reply")
        assert reply["parent_header"]["msg_id"] == msg["msg_id"]
        assert reply["content"]["engine_info"]["engine_id"] == 0
        return reply["content"]

    engine.send("mux_engine", "execute_request", {"code": "import os\nanswer = 42"})
    assert engine.reply("mux_engine")["content"]["status"] == "ok"
    complete = ask("complete_request", {"code": "ans", "cursor_pos": 3})
    assert complete["status"] == "ok" and "answer" in complete["matches"]
    assert complete["cursor_start"] == 0 and complete["cursor_end"] == 3
    inspect = ask("inspect_request", {"code": "os.getpid", "cursor_pos": 9})
    assert inspect["status"] == "ok" and inspect["found"] is True
    assert ask("is_complete_request", {"code": "for i in x:"})["status"] == "incomplete"
    assert ask("is_complete_request", {"code": "x = 1"})["status"] == "complete"
    assert ask("history_request", {"hist_access_type": "tail", "n": 5})["status"] == "ok"
    info = ask("kernel_info_request", {})
    assert info["implementation"] == "corral" and info["language_info"]["name"] == "python"


def _data_client(engine: FakeController, ctx: zmq.Context[Any]) -> zmq.Socket[Any]:
    sock = Gate(KEY.encode()).client(ctx.socket(zmq.DEALER))
    sock.linger = 0
    sock.connect(engine.engines[0]["data_url"])
    return sock


def _data_dest(engine: FakeController) -> str:
    """What a request to engine 0's data socket is signed for (door.dest_of)."""
    return dest_of("engine", engine.engines[0]["uuid"])


def _data_request(
    engine: FakeController, sock: zmq.Socket[Any], msg_type: str, content: dict, buffers=()
) -> dict[str, Any]:
    engine.session.send(sock, msg_type, content, buffers=list(buffers), dest=_data_dest(engine))
    assert sock.poll(int(TIMEOUT * 1000))
    got = engine.session.parse(sock.recv_multipart(copy=False))
    assert got is not None
    return got[1]


def test_pipelined_small_requests_on_the_data_path_each_get_a_reply(
    engine: FakeController,
) -> None:
    """The data socket is a ROUTER: its replies must never be held for a batch (a batch's
    first frame would be taken for the client's id and the replies lost)."""
    ctx = zmq.Context.instance()
    sock = _data_client(engine, ctx)
    try:
        sent = []
        for i in range(5):
            msg = engine.session.send(
                sock,
                "push_request",
                {"keys": [f"v{i}"]},
                buffers=serialize({f"v{i}": i}),
                dest=_data_dest(engine),
            )
            sent.append(msg["msg_id"])
        got = []
        for _ in sent:
            assert sock.poll(int(TIMEOUT * 1000)), f"only {len(got)} of {len(sent)} replies"
            parsed = engine.session.parse(sock.recv_multipart(copy=False))
            assert parsed is not None
            got.append(parsed[1]["parent_header"]["msg_id"])
        assert got == sent
    finally:
        sock.close(linger=0)


def test_push_pull_data_path(engine: FakeController) -> None:
    ctx = zmq.Context.instance()
    sock = _data_client(engine, ctx)
    try:
        rng = np.random.default_rng(0)
        big = rng.integers(0, 2**63, size=50 * 1024 * 1024 // 8, dtype=np.int64)  # 50 MB
        frames = serialize({"big": big, "small": [1, 2, 3]})
        assert len(frames) == 2  # the array is out of band: sent without a copy
        reply = _data_request(engine, sock, "push_request", {"keys": ["big", "small"]}, frames)
        assert reply["msg_type"] == "push_reply"
        assert reply["content"]["status"] == "ok", reply["content"]
        assert sorted(reply["content"]["keys"]) == ["big", "small"]
        # The engine sees it (and can change it: the received buffer is writable).
        engine.send("mux_engine", "execute_request", {"code": "big[0] = -1; small.append(4)"})
        assert engine.reply("mux_engine")["content"]["status"] == "ok"
        reply = _data_request(engine, sock, "pull_request", {"keys": ["big", "small"]})
        assert reply["content"]["status"] == "ok", reply["content"]
        assert len(reply["buffers"]) == 2
        got_big, got_small = deserialize(reply["buffers"])
        expected = big.copy()
        expected[0] = -1
        assert got_big.tobytes() == expected.tobytes()
        assert got_small == [1, 2, 3, 4]

        reply = _data_request(engine, sock, "pull_request", {"keys": ["small", "nope"]})
        content = reply["content"]
        assert content["status"] == "error" and content["ename"] == "KeyError"
        assert "nope" in content["evalue"]
        assert reply["buffers"] == []
        # Garbage buffers: an error reply, and the data path still serves.
        reply = _data_request(engine, sock, "push_request", {"keys": ["x"]}, [b"garbage"])
        assert reply["content"]["status"] == "error"
        reply = _data_request(engine, sock, "pull_request", {"keys": ["small"]})
        assert deserialize(reply["buffers"]) == ([1, 2, 3, 4],)
    finally:
        sock.close(0)
    # Small pushes and pulls also work through the mux.
    engine.send("mux_engine", "push_request", {"keys": ["y"]}, buffers=serialize({"y": 5}))
    assert engine.reply("mux_engine")["content"]["status"] == "ok"
    engine.send("mux_engine", "pull_request", {"keys": ["y"]})
    assert deserialize(engine.reply("mux_engine")["buffers"]) == (5,)


def _gate(tmp: Path) -> tuple[Any, Path]:
    """A task that blocks until the test creates a file (engine-side polling)."""
    flag = tmp / "go"
    wait = main_func(
        """
        import os, time
        def wait(path):
            print("waiting")
            while not os.path.exists(path):
                time.sleep(0.005)
            return "released"
        """,
        "wait",
    )
    return wait, flag


def _apply_msg(engine: FakeController, func: Any, *args: Any) -> dict[str, Any]:
    return engine.msg("task_engine", "apply_request", buffers=pack_apply(func, args, {}))


def test_a_batch_of_requests_is_served_in_order(engine: FakeController) -> None:
    messages = [_apply_msg(engine, abs, -i) for i in range(40)]
    engine.send_batch("task_engine", messages)
    replies = [engine.reply("task_engine") for _ in messages]
    assert [r["parent_header"]["msg_id"] for r in replies] == [m["msg_id"] for m in messages]
    assert [deserialize(r["buffers"]) for r in replies] == list(range(40))


def test_a_bad_message_in_a_batch_costs_only_itself(engine: FakeController) -> None:
    messages = [_apply_msg(engine, abs, -i) for i in range(3)]
    engine.send_batch("task_engine", messages, corrupt=1)
    first, third = engine.reply("task_engine"), engine.reply("task_engine")
    assert first["parent_header"]["msg_id"] == messages[0]["msg_id"]
    assert third["parent_header"]["msg_id"] == messages[2]["msg_id"]
    after = engine.apply(abs, -7)  # the forged one got no reply: this one's comes next
    assert engine.reply("task_engine")["parent_header"]["msg_id"] == after["msg_id"]


def test_a_reply_held_for_a_batch_is_not_kept_behind_a_long_task(
    engine: FakeController, tmp_path: Path
) -> None:
    """A quick task's reply may wait to leave with the next ones, but a long task after
    it must not hold it back: it goes out while the long task still runs."""
    wait, flag = _gate(tmp_path)
    quick, slow = _apply_msg(engine, abs, -5), _apply_msg(engine, wait, str(flag))
    engine.send_batch("task_engine", [quick, slow])
    try:
        reply = engine.reply("task_engine", timeout=30.0)  # the slow task waits forever
        assert reply["parent_header"]["msg_id"] == quick["msg_id"]
        assert not flag.exists()  # the slow task is still running
    finally:
        flag.touch()
    assert engine.reply("task_engine")["parent_header"]["msg_id"] == slow["msg_id"]


def test_abort_queued_tasks(engine: FakeController, tmp_path: Path) -> None:
    _sync_iopub(engine)
    wait, flag = _gate(tmp_path)
    first = engine.apply(wait, str(flag))
    engine.iopub_until(lambda m: m["parent_header"].get("msg_id") == first["msg_id"])
    second = engine.apply(abs, -2)
    third = engine.apply(abs, -3)
    engine.send("control_engine", "abort_request", {"msg_ids": [second["msg_id"]]})
    reply = engine.reply("control_engine")
    assert reply["msg_type"] == "abort_reply" and reply["content"]["status"] == "ok"
    flag.touch()
    replies = {}
    for _ in range(3):
        r = engine.reply("task_engine")
        replies[r["parent_header"]["msg_id"]] = r
    assert deserialize(replies[first["msg_id"]]["buffers"]) == "released"
    aborted = replies[second["msg_id"]]
    assert aborted["content"]["status"] == "aborted"
    assert aborted["metadata"]["status"] == "aborted"
    assert aborted["content"]["engine_info"]["engine_id"] == 0
    assert deserialize(replies[third["msg_id"]]["buffers"]) == 3


def test_clear(engine: FakeController) -> None:
    engine.send("mux_engine", "execute_request", {"code": "secret = 1", "silent": True})
    engine.reply("mux_engine")
    engine.send("control_engine", "clear_request")
    reply = engine.reply("control_engine")
    assert reply["msg_type"] == "clear_reply" and reply["content"]["status"] == "ok"
    engine.send("mux_engine", "pull_request", {"keys": ["secret"]})
    content = engine.reply("mux_engine")["content"]
    assert content["status"] == "error" and content["ename"] == "KeyError"


def test_interrupt(engine: FakeController) -> None:
    _sync_iopub(engine)
    spin = main_func(
        """
        def spin():
            print("spinning")
            while True:
                pass
        """,
        "spin",
    )
    import time as time_module

    def nap() -> None:
        print("napping")
        time_module.sleep(1000)

    for task in (spin, nap):  # pure Python, and blocked in a C call
        msg = engine.apply(task)
        msg_id = msg["msg_id"]
        engine.iopub_until(lambda m, i=msg_id: m["parent_header"].get("msg_id") == i)
        engine.send("control_engine", "interrupt_request")
        assert engine.reply("control_engine")["content"]["status"] == "ok"
        reply = engine.reply("task_engine")
        assert reply["parent_header"]["msg_id"] == msg["msg_id"]
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    engine.apply(abs, -9)
    assert deserialize(engine.reply("task_engine")["buffers"]) == 9


def test_interrupt_when_idle_is_harmless(engine: FakeController) -> None:
    """An interrupt of an idle engine is answered and harmless."""
    engine.send("control_engine", "interrupt_request")
    assert engine.reply("control_engine")["content"]["status"] == "ok"
    engine.apply(abs, -1)
    assert deserialize(engine.reply("task_engine")["buffers"]) == 1


def test_shutdown(engine: FakeController) -> None:
    proc = engine.procs[0]
    engine.send("control_engine", "shutdown_request")
    reply = engine.reply("control_engine")
    assert reply["msg_type"] == "shutdown_reply" and reply["content"]["status"] == "ok"
    _, unreg = engine.recv("registration")
    assert unreg["msg_type"] == "unregistration_request"
    assert unreg["content"] == {"id": 0}
    assert wait_exit(proc) == 0


def test_shutdown_by_the_hub_needs_no_unregistration(engine: FakeController) -> None:
    proc = engine.procs[0]
    engine.send("control_engine", "shutdown_request", {"restart": False, "hub": True})
    reply = engine.reply("control_engine")
    assert reply["msg_type"] == "shutdown_reply" and reply["content"]["status"] == "ok"
    assert wait_exit(proc) == 0
    assert engine.socks["registration"].poll(0) == 0, "the hub asked: nothing more to say"


def test_sigterm_exits_cleanly(engine: FakeController) -> None:
    proc = engine.procs[0]
    engine.apply(abs, 1)
    engine.reply("task_engine")
    proc.send_signal(signal.SIGTERM)
    _, unreg = engine.recv("registration")
    assert unreg["msg_type"] == "unregistration_request"
    assert wait_exit(proc) == 0


def test_heartbeat_while_user_code_holds_the_gil(engine: FakeController) -> None:
    ctx = zmq.Context.instance()
    started = ctx.socket(zmq.PULL)
    stop = ctx.socket(zmq.PUSH)
    started.linger = stop.linger = 0
    started_url = f"tcp://127.0.0.1:{started.bind_to_random_port('tcp://127.0.0.1')}"
    stop_url = f"tcp://127.0.0.1:{stop.bind_to_random_port('tcp://127.0.0.1')}"
    hog = main_func(
        """
        import sys, zmq
        def hog(started_url, stop_url):
            ctx = zmq.Context.instance()
            out, inp = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
            out.connect(started_url)
            inp.connect(stop_url)
            old = sys.getswitchinterval()
            sys.setswitchinterval(100.0)  # no other Python thread runs: the GIL is ours
            try:
                out.send(b"started")
                n = 0
                while True:
                    n += 1
                    if n % 200_000 == 0 and inp.poll(0):
                        break
            finally:
                sys.setswitchinterval(old)
                out.close(0)
                inp.close(0)
            return n
        """,
        "hog",
    )
    try:
        engine.apply(hog, started_url, stop_url)
        assert started.poll(int(TIMEOUT * 1000))
        started.recv()
        ident = engine.engines[0]["ident"]
        # Five more beats echoed while the task holds the GIL (it cannot end on its own).
        engine.wait_pongs(ident, engine.pongs_from(ident) + 5)
        stop.send(b"stop")
        reply = engine.reply("task_engine")
        assert reply["content"]["status"] == "ok"
        assert deserialize(reply["buffers"]) > 0
    finally:
        started.close(0)
        stop.close(0)


def test_bad_input_is_dropped(engine: FakeController) -> None:
    ident = engine.engines[0]["ident"]
    good = engine.msg("task_engine", "apply_request", buffers=pack_apply(abs, (-4,)))
    routed = engine.routed("task_engine", good)
    unsigned = [*routed[:4], b"", *routed[5:]]
    forged = [*routed[:4], b"0" * 64, *routed[5:]]
    altered = [*routed[:5], routed[5].replace(b"apply", b"apqly"), *routed[6:]]
    for channel in ("task_engine", "mux_engine", "control_engine", "broadcast_engine"):
        engine.send_raw(channel, [ident, b"client-1", b"no delimiter"])
        engine.send_raw(channel, [ident, b"client-1", wire.DELIMITER, b"sig"])
        engine.send_raw(channel, [ident, b"client-1", wire.DELIMITER, b"x", b"{", b"", b"", b""])
        engine.send_raw(channel, unsigned)
        engine.send_raw(channel, forged)
        engine.send_raw(channel, altered)
    # Unpicklable buffers and a bad content type: error replies.
    garbage = engine.send("task_engine", "apply_request", buffers=[b"\x80\x05garbage"])
    no_code = engine.send("mux_engine", "execute_request", {"code": 12})
    unknown = engine.send("mux_engine", "frobnicate_request")
    # A valid message, then its exact replay.
    engine.send_raw("task_engine", routed)
    engine.send_raw("task_engine", routed)
    replies = [engine.reply("task_engine"), engine.reply("task_engine")]
    by_parent = {r["parent_header"]["msg_id"]: r for r in replies}
    assert by_parent[garbage["msg_id"]]["content"]["status"] == "error"
    assert "Deserialization" in by_parent[garbage["msg_id"]]["content"]["ename"]
    assert deserialize(by_parent[good["msg_id"]]["buffers"]) == 4
    for msg in (no_code, unknown):
        reply = engine.reply("mux_engine")
        assert reply["parent_header"]["msg_id"] == msg["msg_id"]
        assert reply["content"]["status"] == "error"
    # Garbage on the data socket too.
    ctx = zmq.Context.instance()
    sock = _data_client(engine, ctx)
    try:
        sock.send_multipart([b"nonsense"])
        sock.send_multipart([wire.DELIMITER, b"", b"{}", b"{}", b"{}", b"{}"])
        reply = _data_request(engine, sock, "pull_request", {"keys": ["__name__"]})
        assert deserialize(reply["buffers"]) == ("__main__",)
    finally:
        sock.close(0)
    # The replay was dropped: the next reply answers the next request.
    last = engine.apply(abs, -5)
    reply = engine.reply("task_engine")
    assert reply["parent_header"]["msg_id"] == last["msg_id"]
    engine.send("control_engine", "interrupt_request")
    assert engine.reply("control_engine")["content"]["status"] == "ok"


def test_exits_when_beats_stop_and_no_controller_comes_back(controller: FakeController) -> None:
    controller.start_beating()
    proc = controller.start_engine("--hub-timeout", "0.5", "--controller-grace", "0.5")
    controller.register(0)
    controller.apply(abs, 1)
    controller.reply("task_engine")
    controller.beating.clear()
    assert wait_exit(proc) == 1
    err = proc.stderr.read()
    assert b"no heartbeat" in err and b"grace of 0.5 s" in err


def _stderr_until(proc: subprocess.Popen, marker: bytes) -> bytes:
    """Engine log lines up to the one holding ``marker`` (blocks on the pipe)."""
    seen = b""
    while marker not in seen:
        line = proc.stderr.readline()
        assert line, f"the engine exited before logging {marker!r}: {seen!r}"
        seen += line
    return seen


def test_waits_for_a_returning_controller_and_registers_again(controller: FakeController) -> None:
    controller.start_beating()
    proc = controller.start_engine("--hub-timeout", "0.5", "--controller-grace", "60")
    first = controller.register(4)
    controller.apply(abs, -1, engine=4)
    assert controller.reply("task_engine")["content"]["status"] == "ok"
    controller.beating.clear()
    _stderr_until(proc, b"waiting up to 60 s for a controller")
    # Still serving while it waits: work queued meanwhile is answered.
    controller.apply(abs, -2, engine=4)
    assert controller.reply("task_engine")["metadata"]["engine_id"] == 4
    controller.beating.set()
    again = controller.register(4)
    assert again["id"] == 4 and again["uuid"] == first["uuid"]
    assert proc.poll() is None
    controller.apply(abs, -3, engine=4)
    reply = controller.reply("task_engine")
    assert reply["metadata"]["engine_id"] == 4 and reply["content"]["status"] == "ok"


def test_a_restarted_hub_is_told_again_what_the_old_one_may_have_lost(
    controller: FakeController,
) -> None:
    controller.start_beating()
    proc = controller.start_engine("--controller-grace", "60")
    controller.register(1)
    request = controller.apply(abs, -9, engine=1)
    first = controller.reply("task_engine")
    assert first["parent_header"]["msg_id"] == request["msg_id"]
    # Another hub's beats: the controller was restarted (and has a fresh replay guard).
    controller.session.replay = wire.ReplayGuard()
    controller.beat_number += 10**9
    again = controller.register(1)
    assert again["id"] == 1, "registers again at once, without waiting for a silence"
    resent = controller.reply("task_engine")
    assert resent["parent_header"]["msg_id"] == request["msg_id"]
    assert resent["content"] == first["content"]
    assert proc.poll() is None


def test_a_re_registration_lost_with_a_controller_is_sent_again(
    controller: FakeController,
) -> None:
    controller.start_beating()
    proc = controller.start_engine("--controller-grace", "60")
    controller.register(3)
    # A new hub's beats; it takes the request and is killed before it answers.
    controller.session.replay = wire.ReplayGuard()
    controller.beat_number += 10**9
    _, lost = controller.recv("registration")
    assert lost["msg_type"] == "registration_request"
    # The next controller hears the request again (a new message), and its answer counts.
    controller.session.replay = wire.ReplayGuard()
    again = controller.register(3)
    assert again["id"] == 3 and again["holding"] == lost["content"]["holding"]
    controller.apply(abs, -4, engine=3)
    reply = controller.reply("task_engine")
    assert reply["content"]["status"] == "ok" and reply["metadata"]["engine_id"] == 3
    assert proc.poll() is None


def test_takes_the_id_a_restarted_controller_gives(controller: FakeController) -> None:
    controller.start_beating()
    proc = controller.start_engine("--hub-timeout", "0.5", "--controller-grace", "60")
    controller.register(2)
    controller.beating.clear()
    _stderr_until(proc, b"waiting up to")
    controller.beating.set()
    controller.register(7)  # id 2 was taken by a new engine meanwhile, say
    controller.apply(abs, -3, engine=7)
    reply = controller.reply("task_engine")
    assert reply["metadata"]["engine_id"] == 7
    assert reply["content"]["engine_info"]["engine_id"] == 7


def test_exits_when_parent_dies(controller: FakeController) -> None:
    controller.start_beating()
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        proc = controller.start_engine(env={"CORRAL_PARENT_PID": str(parent.pid)})
        controller.register(0)
        controller.apply(abs, 1)
        controller.reply("task_engine")
    finally:
        parent.stdin.close()
        parent.wait()
    assert wait_exit(proc) == 1
    assert b"parent process" in proc.stderr.read()


def test_registration_refused(controller: FakeController) -> None:
    proc = controller.start_engine()
    idents, msg = controller.recv("registration")
    controller.session.send(
        controller.socks["registration"],
        "registration_reply",
        {"status": "error", "evalue": "no room"},
        msg,
        identities=idents,
    )
    assert wait_exit(proc) == 1
    assert b"no room" in proc.stderr.read()
