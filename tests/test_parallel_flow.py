"""Flow control of large results (corral.plugins.parallel.flow) and the task database's
size: the controller's memory stays bounded when a client does not read, results stay
byte-exact when they travel stored, and purging gives the disk space back.

Real clusters, real processes; a client that does not read is a real process stopped
with SIGSTOP.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import corral
from corral.plugins.parallel.controller.taskdb import SQLiteTaskDB

numpy = pytest.importorskip("numpy")

TIMEOUT = 60
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # engines cannot import tests


def blob(index: int, size: int) -> bytes:
    """Engine side: ``size`` bytes only task ``index`` returns."""
    return index.to_bytes(4, "little") + bytes([index % 251]) * (size - 4)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return 0.0


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the controller's components)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    return tmp_path


#: The controller stores every large reply: its memory bound is 0.
STORE_EVERYTHING = ["--memory-bound-mb", "0"]


@pytest.fixture
def cluster(home: Path) -> Iterator[Any]:
    with corral.Cluster(n=2, db="sqlite", profile="flow", controller_args=STORE_EVERYTHING) as rc:
        rc.wait_for_engines(2, timeout=TIMEOUT)
        yield rc


def test_stored_replies_arrive_byte_exact(cluster: Any) -> None:
    """With bound 0 every large reply travels stored: load-balanced, direct, pull."""
    view = cluster.load_balanced_view()
    results = [view.apply_async(blob, i, 2_000_000) for i in range(12)]
    for index, result in enumerate(results):
        assert result.get(timeout=TIMEOUT) == blob(index, 2_000_000)
    assert cluster._stored.received >= 12

    # Through the mux: a client that does not take the same-host shortcuts.
    remote = corral.Client(connection_file=cluster.connection_file, local=False)
    try:
        array = numpy.arange(600_000, dtype="float64")  # 4.8 MB
        dview = remote[:]
        dview.push({"a": array}, block=True)
        # direct=False: the values come through the mux, not from the engines' data path
        # (which does not pass through the controller at all).
        pulled = dview.pull("a", block=True, direct=False)
        assert len(pulled) == 2
        for value in pulled:
            numpy.testing.assert_array_equal(value, array)
        doubled = remote[0].apply_sync(lambda x: x * 2, array)
        numpy.testing.assert_array_equal(doubled, array * 2)
        assert remote._stored.received >= 3
    finally:
        remote.close()


def test_small_replies_are_never_stored(cluster: Any) -> None:
    view = cluster.load_balanced_view()
    assert view.map_sync(lambda x: x * 3, range(200)) == [x * 3 for x in range(200)]
    assert cluster.load_balanced_view().apply_sync(blob, 1, 900_000) == blob(1, 900_000)
    assert cluster._stored.received == 0


def test_nothing_is_stored_without_a_database_on_disk(home: Path) -> None:
    """``db="memory"``: the hub's memory is no place to park results; they go whole."""
    with corral.Cluster(
        n=1, db="memory", profile="flowmem", controller_args=STORE_EVERYTHING
    ) as rc:
        rc.wait_for_engines(1, timeout=TIMEOUT)
        view = rc.load_balanced_view()
        results = [view.apply_async(blob, i, 2_000_000) for i in range(4)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [blob(i, 2_000_000) for i in range(4)]
        assert rc._stored.received == 0


_STOPPED_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import corral

    def blob(index, size):
        return index.to_bytes(4, "little") + bytes([index % 251]) * (size - 4)

    rc = corral.Client(connection_file={cluster_file!r})
    rc.wait_for_engines(2, timeout=60)
    view = rc.load_balanced_view()
    results = [view.apply_async(blob, i, {size}) for i in range({tasks})]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every request with the controller
        status = rc.queue_status()
        known = status.pop("unassigned", 0) + sum(
            s["queue"] + s["completed"] for s in status.values()
        )
        if known >= {tasks}:
            break
        time.sleep(0.05)
    print("submitted", flush=True)
    sys.stdin.readline()
    wrong = sum(r.get(timeout=120) != blob(i, {size}) for i, r in enumerate(results))
    print(json.dumps({{"wrong": wrong, "stored": rc._stored.received}}), flush=True)
    rc.close()
    """
)


def test_a_stopped_client_does_not_grow_the_controller(home: Path) -> None:
    """40 results of 4 MB (160 MB) for a client stopped with SIGSTOP: no controller
    process grows by more than a fraction of that, and every result arrives intact.
    The bound comes from the profile's ini file, as a user would set it."""
    profile = home / "profile_flowstop"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "corral.ini").write_text("[controller]\nmemory_bound_mb = 8\n")
    tasks, size = 40, 4_000_000
    with corral.Cluster(n=2, db="sqlite", profile="flowstop") as rc:
        rc.wait_for_engines(2, timeout=TIMEOUT)
        cluster_file = str(rc.connection_file)
        controller = int(json.loads(Path(cluster_file).read_text())["controller_pid"])
        components = children(controller)
        assert len(components) >= 5
        base = {pid: rss_mb(pid) for pid in components}
        peak = dict(base)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                for pid in components:
                    peak[pid] = max(peak[pid], rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        script = _STOPPED_CLIENT.format(
            cluster_file=cluster_file,
            size=size,
            tasks=tasks,
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout and child.stdin
            assert child.stdout.readline().strip() == "submitted"
            child.send_signal(signal.SIGSTOP)
            # Wait (bounded) until the engines have produced every result: the hub's
            # records say so, whatever the stopped client has read.
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                done = sum(
                    s["completed"] for k, s in rc.queue_status().items() if k != "unassigned"
                )
                if done >= tasks:
                    break
                time.sleep(0.1)
            assert done >= tasks
            child.send_signal(signal.SIGCONT)
            child.stdin.write("go\n")
            child.stdin.flush()
            outcome = json.loads(child.stdout.readline())
            child.wait(timeout=TIMEOUT)
        finally:
            child.send_signal(signal.SIGCONT)
            child.kill()
            sampling.set()
        assert outcome["wrong"] == 0
        assert outcome["stored"] > 0
        growth = {pid: peak[pid] - base[pid] for pid in components}
        # Without flow control the task scheduler alone grew by the full 160 MB.
        assert max(growth.values()) < 100, growth


def _fill(db: SQLiteTaskDB, count: int, size: int) -> None:
    for index in range(count):
        msg_id = f"m{index}"
        db.add_request(msg_id, "c", "e", 0, "apply_request", "{}", "{}", None)
        db.add_reply(msg_id, "c", "e", 0, None, None, "ok", "{}", "{}", "{}", [os.urandom(size)])
    db.flush()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_purging_shrinks_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite"
    db = SQLiteTaskDB(path)
    try:
        _fill(db, 40, 1_000_000)
        full = _size(path)
        assert full > 40_000_000
        assert db.backlog_bytes == 0
        assert db.purge([f"m{i}" for i in range(20)]) == 20
        half = _size(path)
        assert half < full * 0.7, (full, half)
        assert db.purge("all") == 20
        assert _size(path) < 2_000_000
        assert db.get(["m1", "m30"]) == {}
    finally:
        db.close()


def test_backlog_counts_unwritten_result_bytes(tmp_path: Path) -> None:
    db = SQLiteTaskDB(tmp_path / "tasks.sqlite", flush_interval=3600, batch_size=10_000)
    try:
        db.add_request("m", "c", "e", 0, "apply_request", "{}", "{}", None)
        db.add_reply("m", "c", "e", 0, None, None, "ok", "{}", "{}", "{}", [b"x" * 5000])
        assert db.backlog_bytes == 5000  # gathered on the hub's side, not written
        db.flush()
        assert db.backlog_bytes == 0
        assert db.get(["m"])["m"]["result_buffers"] == [b"x" * 5000]
    finally:
        db.close()


def test_stored_buffers_must_match_what_the_engine_signed() -> None:
    """A stored reply travels without its buffers; the ones fetched later from the hub
    are checked against the digests the engine's (verified) signature carries."""
    from corral.transports.zmq import wire
    from corral.transports.zmq.door import (
        BUFFERS_IGNORED,
        check_signed_buffers,
        cluster_signer,
        signed_digests,
    )

    signer = cluster_signer(b"k" * 32)
    parts = [b"{}", b"{}", b"{}", b"{}"]
    buffers = [b"a" * 2_000_000, b"b" * 10]
    signature = signer.seal(parts, buffers)
    signer.check(parts, signature, (), BUFFERS_IGNORED)  # the stub alone verifies
    digests = signed_digests(signature)
    check_signed_buffers(digests, buffers)
    with pytest.raises(wire.BadSignature, match="buffer 0 differs"):
        check_signed_buffers(digests, [b"a" * 1_999_999 + b"X", b"b" * 10])
    with pytest.raises(wire.BadSignature, match="1 buffer"):
        check_signed_buffers(digests, buffers[:1])
