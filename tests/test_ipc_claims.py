"""ipc endpoints are claimed with O_EXCL before binding, so no two binders share a path.

libzmq unlinks an ipc path before binding it, so without claims a second binder steals
the first one's socket silently: these tests race real processes for the same prefix and
check that every socket got its own path and still answers its own peer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.plugins.parallel.controller.base import bind_random
from corral.transports.zmq.ipc import Claims, claim_path, release_path

_RACERS = 6
_PER_RACER = 5


def _racer(prefix: str, start: Any, out: Any) -> None:
    """Bind ``_PER_RACER`` REP sockets under ``prefix`` as soon as ``start`` is set, then
    answer one request on each with this process's pid and the path's number."""
    ctx = zmq.Context()
    claims = Claims()
    socks = []
    start.wait()
    for _ in range(_PER_RACER):
        sock = ctx.socket(zmq.REP)
        sock.linger = 0
        n = bind_random(sock, "ipc", prefix, 0, claims)
        socks.append((n, sock))
    out.put([n for n, _ in socks])
    for n, sock in socks:
        sock.recv()
        sock.send(f"{os.getpid()}:{n}".encode())
    for _, sock in socks:
        sock.close()
    ctx.term()
    claims.release()


def test_racing_binders_never_share_a_path(tmp_path: Path) -> None:
    prefix = str(tmp_path / "cluster-same")
    mpc = mp.get_context("fork")
    start, out = mpc.Event(), mpc.Queue()
    procs = [mpc.Process(target=_racer, args=(prefix, start, out)) for _ in range(_RACERS)]
    for p in procs:
        p.start()
    start.set()
    numbers = [n for _ in procs for n in out.get(timeout=60)]
    assert len(numbers) == len(set(numbers)) == _RACERS * _PER_RACER
    ctx = zmq.Context.instance()
    owners: dict[str, int] = {}
    for n in numbers:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = 20_000
        req.connect(f"ipc://{prefix}-{n}")
        req.send(b"who")
        pid, got = req.recv().decode().split(":")
        req.close()
        assert int(got) == n  # the socket at path n is the one that claimed n
        owners[pid] = owners.get(pid, 0) + 1
    assert sorted(owners.values()) == [_PER_RACER] * _RACERS
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert not list(tmp_path.glob("*.claim"))  # released on a clean close


def test_claim_is_exclusive_and_owner_only(tmp_path: Path) -> None:
    path = str(tmp_path / "x-1")
    old = os.umask(0)
    try:
        assert claim_path(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path + ".claim").st_mode) == 0o600
    assert not claim_path(path)  # the same process cannot claim it twice either
    release_path(path)
    assert claim_path(path)
    release_path(path)


def test_a_dead_owners_claim_is_skipped_unless_preferred(tmp_path: Path) -> None:
    prefix = str(tmp_path / "c")
    dead = subprocess.run(
        [sys.executable, "-c", "import os;print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(prefix + "-1.claim").write_text(dead.stdout.strip())
    ctx = zmq.Context.instance()
    claims = Claims()
    a, b = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    try:
        assert claims.bind(a, prefix) == 2  # skipped: maybe a crashed controller's
        assert claims.bind(b, prefix, preferred=1) == 1  # its restart takes it over
        assert Path(prefix + "-1.claim").read_text() == str(os.getpid())
    finally:
        a.close(0)
        b.close(0)
        claims.release()
    assert not list(tmp_path.glob("*.claim"))


def test_a_live_socket_without_claim_is_never_bound_over(tmp_path: Path) -> None:
    """A socket bound by something that does not claim (an older corral, another
    program) keeps its path."""
    prefix = str(tmp_path / "k")
    ctx = zmq.Context.instance()
    other = ctx.socket(zmq.PULL)
    other.bind(f"ipc://{prefix}-1")
    mine = ctx.socket(zmq.PULL)
    claims = Claims()
    try:
        assert claims.bind(mine, prefix) == 2
    finally:
        other.close(0)
        mine.close(0)
        claims.release()


def test_an_ipc_cluster_claims_every_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real cluster on ipc: every controller endpoint has its claim, owner-only, while
    it runs; none is left after it stops."""
    from corral.plugins.parallel.cluster import Cluster

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    cluster = Cluster(n=1, profile="ipc", hb_period=0.2, hb_misses=5, transport="ipc")
    client = cluster.start_and_connect()
    try:
        prefix = Path(client.cluster_info["ip"])
        mine = list(prefix.parent.glob(prefix.name + "-*"))
        claims = sorted(p.with_suffix("") for p in mine if p.suffix == ".claim")
        sockets = sorted(p for p in mine if p.suffix != ".claim")
        # 15 in the cluster file, and the task scheduler's direct feed (queues.py)
        assert claims == sockets and len(sockets) == 16
        assert all(stat.S_IMODE(p.with_suffix(".claim").stat().st_mode) == 0o600 for p in claims)
        assert client[:].apply_sync(pow, 2, 5) == [32]
    finally:
        client.close()
        cluster.stop()
    assert not list(prefix.parent.glob(prefix.name + "-*.claim"))
