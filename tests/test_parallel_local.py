"""Blocking calls to an engine on this host over its Unix socket (client/local.py,
engine/local.py), against a real controller and real engines.

What is promised: the same results and errors as through the mux, the hub still records
every task, nothing overtakes this client's queued work, a dead engine fails the call at
once, and bad bytes on the engine's socket never stop it serving.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import until
from parallel_client_harness import LiveCluster

from corral.core import compat
from corral.plugins.parallel.client import Client, EngineError, RemoteError
from corral.transports import unix
from corral.transports.zmq import wire

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [
    pytest.mark.timeout(180),
    # The same-host Unix-socket path: Windows (and CORRAL_PLATFORM_COMPAT=windows) has none.
    pytest.mark.skipif(not compat.HAS_UNIX_SOCKETS, reason="no Unix sockets in Windows mode"),
]


def double(x: Any) -> Any:
    return x * 2


def fail() -> None:
    raise ValueError("from the engine")


def write_after(delay: float, path: str, text: str) -> str:
    time.sleep(delay)
    Path(path).write_text(text)
    return text


def read_text(path: str) -> str | None:
    return Path(path).read_text() if os.path.exists(path) else None


def engine_pid() -> int:
    return os.getpid()


def touch_then_sleep(path: str, seconds: float) -> None:
    Path(path).touch()
    time.sleep(seconds)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def rc(cluster: LiveCluster) -> Client:
    return cluster.client


def test_engines_advertise_a_private_socket(rc: Client) -> None:
    for engine in rc.engines.values():
        assert engine.local_path, "every engine on this host has a Unix socket"
        info = os.stat(engine.local_path)
        assert stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()
        folder = os.stat(os.path.dirname(engine.local_path))
        assert folder.st_mode & 0o777 == 0o700


def test_blocking_apply_goes_local_and_matches_the_mux(rc: Client) -> None:
    view = rc[0]
    before = rc._local.calls
    assert view.apply_sync(double, 21) == 42
    assert view.apply_sync(double, "ab") == "abab"
    assert rc._local.calls == before + 2
    assert view.apply_async(double, 21).get(10) == 42  # the queued path agrees


def test_numpy_arguments_and_results_round_trip(rc: Client) -> None:
    np = pytest.importorskip("numpy")
    data = np.arange(300_000, dtype=np.float64)  # above the out-of-band threshold
    out = rc[1].apply_sync(double, data)
    assert out.dtype == np.float64 and out.shape == data.shape
    assert np.array_equal(out, data * 2)


def test_remote_error_names_engine_and_traceback(rc: Client) -> None:
    before = rc._local.calls
    with pytest.raises(RemoteError) as info:
        rc[1].apply_sync(fail)
    assert rc._local.calls == before + 1
    err = info.value
    assert err.ename == "ValueError" and "from the engine" in err.evalue
    assert err.engine_id == 1
    assert "fail" in "".join(err.traceback)


def test_view_apply_with_block_flag_goes_local(rc: Client) -> None:
    view = rc[0]
    before = rc._local.calls
    with view.temp_flags(block=True):
        assert view.apply(double, 4) == 8
    assert rc._local.calls == before + 1


def test_the_hub_records_local_calls(rc: Client) -> None:
    def recorded() -> list[str]:
        records = rc.db_query(
            {"client_id": rc.session, "engine_id": 0, "result_status": "ok"},
            keys=["msg_id", "completed"],
        )
        return [r["msg_id"] for r in records if r.get("completed")]

    known = set(recorded())
    token = f"record-{time.monotonic_ns()}"
    before = rc._local.calls
    assert rc[0].apply_sync(double, token) == token * 2
    assert rc._local.calls == before + 1
    # The engine sends its copies to the hub in batches, within 20 ms (earlier tests'
    # calls may land in the same batch, so look for ours among the new records).

    def ours() -> bool:
        new = set(recorded()) - known
        return any(rc.get_result(m).get(10) == token * 2 for m in new)

    assert until(ours, timeout=10)


def test_queued_work_is_never_overtaken(rc: Client, tmp_path: Path) -> None:
    view = rc[1]
    before = rc._local.calls
    path = str(tmp_path / "ordered")
    queued = view.apply_async(write_after, 0.3, path, "first")
    assert view.apply_sync(read_text, path) == "first"  # waited behind the queued task
    assert rc._local.calls == before  # so it went through the mux
    assert queued.get(10) == "first"
    assert view.apply_sync(double, 1) == 2
    assert rc._local.calls == before + 1  # nothing pending any more: local again


def test_threads_each_get_their_own_answers(rc: Client) -> None:
    results: dict[int, list[Any]] = {}

    def work(n: int) -> None:
        results[n] = [rc[n % 2].apply_sync(double, n * 1000 + i) for i in range(40)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {n: r for n, r in results.items()} == {
        n: [2 * (n * 1000 + i) for i in range(40)] for n in range(4)
    }


def test_a_finished_thread_drops_its_connections(rc: Client) -> None:
    import gc

    gc.collect()
    held = len(list(rc._local._all))
    calls = rc._local.calls
    worker = threading.Thread(target=rc[0].apply_sync, args=(double, 1))
    worker.start()
    worker.join(30)
    assert rc._local.calls == calls + 1
    del worker
    gc.collect()
    assert len(list(rc._local._all)) == held  # closed with its thread, not kept open


def test_an_interrupted_call_never_hands_its_reply_to_the_next(rc: Client) -> None:
    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            rc[0].apply_sync(write_after, 0.5, os.devnull, "late")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # The late reply (99) must not be taken for this call's.
    assert rc[0].apply_sync(double, 5) == 10


def test_local_false_keeps_everything_on_the_queues(cluster: LiveCluster) -> None:
    client = cluster.connect(local=False)
    try:
        assert client[0].apply_sync(double, 3) == 6
        assert client._local is None
    finally:
        client.close()


# --------------------------------------------------------------- bad input at the socket


def raw_connection(rc: Client, engine_id: int) -> socket.socket:
    return unix.connect(rc.engines[engine_id].local_path, timeout=5)


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def signed_request(rc: Client, engine: int, msg_type: str = "apply_request") -> list[Any]:
    """A request as the client signs it for ``engine``'s own sockets (door.dest_of)."""
    from corral.core.serialize import pack_apply
    from corral.transports.zmq.door import dest_of

    _, frames = rc._builder.build(
        msg_type,
        None,
        metadata=b"{}",
        buffers=pack_apply(double, (2,), None),
        dest=dest_of("engine", rc.engines[engine].uuid),
    )
    return frames


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,  # announces an absurd number of frames
        (1 << 31).to_bytes(8, "little") + (1).to_bytes(4, "little"),  # 2 GiB: oversized
        (9).to_bytes(8, "little") + (1).to_bytes(4, "little") + b"\x05" + b"\0" * 8,
    ],
)
def test_garbage_closes_that_connection_only(rc: Client, garbage: bytes) -> None:
    sock = raw_connection(rc, 0)
    try:
        sock.sendall(garbage)
        assert closed_by_peer(sock)
    finally:
        sock.close()
    assert rc[0].apply_sync(double, 8) == 16


def test_unsigned_and_forged_messages_are_dropped(rc: Client) -> None:
    sock = raw_connection(rc, 0)
    try:
        frames = signed_request(rc, 0)
        unsigned = [frames[0], b"", *frames[2:]]
        forged = [frames[0], b"0" * 64, *frames[2:]]
        for bad in (unsigned, forged):
            unix.send_message(sock, bad)
        unix.send_message(sock, frames)  # then a good one on the same connection
        (reply,) = read_replies(rc, sock, 1)
        assert reply.parent_header["msg_id"] == wire_msg_id(frames)
    finally:
        sock.close()
    assert rc[0].apply_sync(double, 1) == 2


def test_a_replayed_request_runs_once(rc: Client) -> None:
    sock = raw_connection(rc, 1)
    try:
        frames = signed_request(rc, 1)
        unix.send_message(sock, frames)
        unix.send_message(sock, frames)
        marker = signed_request(rc, 1)
        unix.send_message(sock, marker)
        first, second = read_replies(rc, sock, 2)
        # The replay got no answer: the next reply is the marker's.
        assert first.parent_header["msg_id"] == wire_msg_id(frames)
        assert second.parent_header["msg_id"] == wire_msg_id(marker)
    finally:
        sock.close()


def wire_msg_id(frames: list[Any]) -> str:
    import json

    return str(json.loads(frames[2])["msg_id"])


def read_replies(rc: Client, sock: socket.socket, n: int) -> list[Any]:
    """The next ``n`` replies on ``sock`` (blocking reads, 10 s at most each)."""
    from corral.plugins.parallel.client.messages import parse

    sock.settimeout(10)
    reader = unix.FrameReader(sock)
    messages: list[Any] = []
    while len(messages) < n:
        messages += reader.read()
    return [parse(m, rc._signer, wire.ReplayGuard()) for m in messages]


# --------------------------------------------------------------- engine death


@pytest.fixture
def own(tmp_path: Path) -> Any:
    live = LiveCluster(tmp_path / "corral", threads=True)
    yield live
    live.stop()


def test_engine_killed_mid_call_fails_at_once(own: LiveCluster, tmp_path: Path) -> None:
    rc = own.client
    pid = rc[0].apply_sync(engine_pid)
    path = rc.engines[0].local_path
    running = tmp_path / "running"
    errors: list[BaseException] = []
    calls = rc._local.calls

    def call() -> None:
        try:
            rc[0].apply_sync(touch_then_sleep, str(running), 60)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    until(running.exists, timeout=30)
    assert rc._local.calls == calls + 1
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    caller.join(10)
    assert not caller.is_alive()
    assert time.monotonic() - started < 3.0
    assert len(errors) == 1 and isinstance(errors[0], EngineError)
    until(lambda: not os.path.exists(path) or _refuses(path), timeout=5)


def _refuses(path: str) -> bool:
    try:
        unix.connect(path, timeout=1).close()
    except OSError:
        return True
    return False


def test_socket_is_removed_when_the_engine_stops(own: LiveCluster) -> None:
    rc = own.client
    paths = [e.local_path for e in rc.engines.values()]
    assert all(p and os.path.exists(p) for p in paths)
    rc.shutdown(hub=True, timeout=10)
    for proc in own.engines:
        proc.wait(10)
    assert not any(os.path.exists(p) for p in paths)


# --------------------------------------------------------------- the socket's directory


def test_socket_directory_is_private_and_checked(tmp_path: Path) -> None:
    from corral.plugins.parallel.engine.local import socket_directory

    folder = socket_directory(str(tmp_path))
    assert folder.name == f"corral-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o755)  # someone opened it up: refuse rather than serve from it
    with pytest.raises(PermissionError, match="open to other users"):
        socket_directory(str(tmp_path))


def test_stale_sockets_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    from corral.plugins.parallel.engine.local import LocalEndpoint, socket_directory

    folder = socket_directory(str(tmp_path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(folder / "dead.sock"))
    stale.close()  # bound, never listening again: what kill -9 leaves behind
    live = LocalEndpoint("live", folder)
    fresh = LocalEndpoint("fresh", folder)
    try:
        assert not (folder / "dead.sock").exists()
        assert (folder / "live.sock").exists() and (folder / "fresh.sock").exists()
    finally:
        live.close()
        fresh.close()
    assert not (folder / "live.sock").exists()
