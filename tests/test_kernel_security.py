"""A kernel ignores what it cannot trust and keeps serving: raw ZeroMQ peers on 127.0.0.1.

Requests on one channel are served in order, so "the first reply that comes back answers
the valid request sent *after* the bad one" proves the bad one got no reply, without
waiting for a timeout.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import TIMEOUT

from corral.transports.zmq import wire
from corral.transports.zmq.connection import ConnectionInfo, read_connection_file
from corral.transports.zmq.kernelspec import install_kernelspec
from corral.transports.zmq.session import Session

ROOT = Path(__file__).resolve().parents[1]


def kernel_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CORRAL_DIR"] = str(tmp / "corral")
    return env


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectionInfo]:
    tmp = tmp_path_factory.mktemp("secure")
    cf = tmp / "kernel.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.plugins.kernel_main", "-f", str(cf)],
        env=kernel_env(tmp),
    )
    deadline = time.monotonic() + TIMEOUT
    while not cf.exists():  # a file has no event to await
        assert proc.poll() is None and time.monotonic() < deadline, "kernel did not start"
        time.sleep(0.005)
    assert stat.S_IMODE(cf.stat().st_mode) == 0o600
    yield read_connection_file(cf)
    proc.kill()
    proc.wait(TIMEOUT)


@pytest.fixture
def client(kernel: ConnectionInfo) -> Session:
    return Session(kernel.key, username="tester")


def dealer(info: ConnectionInfo, channel: str, **curve: bytes) -> zmq.Socket[Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    for name, value in curve.items():
        setattr(sock, name, value)
    sock.connect(info.url(channel))
    return sock


def request_frames(session: Session, msg_type: str = "kernel_info_request") -> tuple[str, list]:
    msg = session.msg(msg_type, {})
    return msg["msg_id"], [bytes(f) for f in wire.serialize(msg, session.signer)]


def next_reply(sock: zmq.Socket[Any], session: Session) -> dict[str, Any]:
    assert sock.poll(TIMEOUT * 1000), "no reply from the kernel"
    parsed = session.parse(sock.recv_multipart())
    assert parsed is not None, "the kernel's reply did not verify"
    return parsed[1]


def assert_serves_next(sock: zmq.Socket[Any], session: Session) -> None:
    """Send a valid request: the very next reply must answer it."""
    msg_id, frames = request_frames(session)
    sock.send_multipart(frames)
    reply = next_reply(sock, session)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["msg_type"] == "kernel_info_reply"


def forged(frames: list[bytes]) -> list[bytes]:
    bad = list(frames)
    bad[1] = b"0" * 64
    return bad


def unsigned(frames: list[bytes]) -> list[bytes]:
    bad = list(frames)
    bad[1] = b""
    return bad


def tampered(frames: list[bytes]) -> list[bytes]:
    bad = list(frames)
    bad[5] = b'{"code":"import os; os._exit(1)"}'
    return bad


def wrong_key(frames: list[bytes]) -> list[bytes]:
    parts = frames[2:6]
    return [wire.DELIMITER, wire.Signer(b"not the key").sign(parts), *parts]


def garbage(frames: list[bytes]) -> list[bytes]:
    return [b"\x00\xff garbage", b"more"]


def no_delimiter(frames: list[bytes]) -> list[bytes]:
    return frames[1:]


def truncated(frames: list[bytes]) -> list[bytes]:
    return frames[:3]


BAD = [forged, unsigned, tampered, wrong_key, garbage, no_delimiter, truncated]


@pytest.mark.parametrize("channel", ["shell", "control"])
@pytest.mark.parametrize("corrupt", BAD, ids=lambda f: f.__name__)
def test_bad_request_gets_no_reply(kernel, client, channel, corrupt) -> None:
    sock = dealer(kernel, channel)
    try:
        _, frames = request_frames(client)
        sock.send_multipart(corrupt(frames))
        assert_serves_next(sock, client)
    finally:
        sock.close()


@pytest.mark.parametrize("channel", ["shell", "control"])
def test_signed_bad_json_gets_no_reply(kernel, client, channel) -> None:
    signer = client.signer
    for parts in (
        [b"{not json", b"{}", b"{}", b"{}"],
        [b'{"msg_id":"x","msg_type":"kernel_info_request"}', b"[]", b"{}", b"{}"],
        [b'{"msg_type":"kernel_info_request"}', b"{}", b"{}", b"{}"],
        [b'{"msg_id":"y","msg_type":"kernel_info_request"}', b"{}", b"{}", b"\xff\xfe"],
    ):
        sock = dealer(kernel, channel)
        try:
            sock.send_multipart([wire.DELIMITER, signer.sign(parts), *parts])
            assert_serves_next(sock, client)
        finally:
            sock.close()


def test_replayed_request_gets_no_reply(kernel, client) -> None:
    sock = dealer(kernel, "shell")
    try:
        msg_id, frames = request_frames(client)
        sock.send_multipart(frames)
        assert next_reply(sock, client)["parent_header"]["msg_id"] == msg_id
        sock.send_multipart(frames)  # an exact resend, as an eavesdropper would
        assert_serves_next(sock, client)
    finally:
        sock.close()


def test_replay_on_another_channel_gets_no_reply(kernel, client) -> None:
    shell, control = dealer(kernel, "shell"), dealer(kernel, "control")
    try:
        msg_id, frames = request_frames(client)
        shell.send_multipart(frames)
        assert next_reply(shell, client)["parent_header"]["msg_id"] == msg_id
        control.send_multipart(frames)
        assert_serves_next(control, client)
    finally:
        shell.close()
        control.close()


def test_replayed_execute_does_not_run_twice(kernel, client) -> None:
    sock = dealer(kernel, "shell")
    try:
        code = "replay_count = globals().get('replay_count', 0) + 1"
        msg = client.msg("execute_request", {"code": code, "silent": False})
        frames = [bytes(f) for f in wire.serialize(msg, client.signer)]
        sock.send_multipart(frames)
        assert next_reply(sock, client)["content"]["status"] == "ok"
        sock.send_multipart(frames)
        check = client.msg(
            "execute_request",
            {"code": "", "user_expressions": {"n": "replay_count"}, "silent": False},
        )
        client.send_msg(sock, check)
        reply = next_reply(sock, client)
        assert reply["parent_header"]["msg_id"] == check["msg_id"]
        assert reply["content"]["user_expressions"]["n"]["data"]["text/plain"] == "1"
    finally:
        sock.close()


# ----------------------------------------------------------------------------- CurveZMQ


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CurveZMQ")
def test_curve_encrypted_kernel_via_jupyter_client(tmp_path: Path, monkeypatch) -> None:
    manager = pytest.importorskip("jupyter_client.manager")
    data = tmp_path / "jupyter"
    install_kernelspec(prefix=tmp_path / "prefix", name="corral-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    for key, value in kernel_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    km = manager.KernelManager(kernel_name="corral-test", transport_encryption="required")
    km.start_kernel()
    try:
        info = read_connection_file(km.connection_file)
        assert info.curve_publickey and info.curve_secretkey
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=TIMEOUT)
            reply = kc.execute_interactive("6 * 7", timeout=TIMEOUT, output_hook=lambda m: None)
            assert reply["content"]["status"] == "ok"
            msg_id = kc.kernel_info()
            content = kc.get_shell_msg(timeout=TIMEOUT)["content"]
            assert msg_id and content["supported_encryption"] == ["curve"]
        finally:
            kc.stop_channels()

        session = Session(info.key)
        # The right server key, with a client key pair of our own: served.
        public, secret = zmq.curve_keypair()
        good = dealer(
            info,
            "shell",
            curve_serverkey=info.curve_publickey.encode(),
            curve_publickey=public,
            curve_secretkey=secret,
        )
        plain = dealer(info, "shell")
        try:
            assert_serves_next(good, session)
            # A plaintext peer with the right HMAC key still cannot even hand over a message.
            # Once the server has refused its handshake, the DEALER may have no connection
            # to queue on at all: a send that cannot even be queued proves it too.
            _, frames = request_frames(session)
            plain.sndtimeo = 1000
            try:
                plain.send_multipart(frames)
            except zmq.Again:
                pass
            assert not plain.poll(1000)
        finally:
            good.close()
            plain.close()
    finally:
        km.shutdown_kernel(now=True)


def test_info_reply_without_curve_advertises_none(kernel, client) -> None:
    sock = dealer(kernel, "control")
    try:
        client.send(sock, "kernel_info_request", {})
        assert next_reply(sock, client)["content"]["supported_encryption"] == []
    finally:
        sock.close()


def test_a_keyless_multipart_ping_does_not_stop_the_heartbeat(kernel: ConnectionInfo) -> None:
    """Pinging needs no key. A ping of two frames stopped the heartbeat for good (the REP
    echo refused the second frame once it had sent the first back: EFSM), so anyone on
    the host could make a tcp kernel look dead to its manager, which then restarted it
    and lost its state. Frames of any kind and number are echoed now, and a frontend's
    ping is still answered as a REP would."""
    ctx = zmq.Context.instance()
    attacker = ctx.socket(zmq.REQ)
    attacker.linger = 0
    attacker.connect(kernel.url("hb"))
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(kernel.url("hb"))
    frontend = ctx.socket(zmq.REQ)
    frontend.linger = 0
    frontend.connect(kernel.url("hb"))
    try:
        attacker.send_multipart([b"two", b"frames"])
        raw.send_multipart([b"no", b"envelope", b"at all"])
        raw.send(b"")
        for i in range(3):
            frontend.send(b"ping %d" % i)
            assert frontend.poll(TIMEOUT * 1000), "the heartbeat stopped answering"
            assert frontend.recv() == b"ping %d" % i
    finally:
        for sock in (attacker, raw, frontend):
            sock.close()
