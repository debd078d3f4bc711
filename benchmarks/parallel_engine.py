"""Engine hot path: no-op ``apply_request`` round trips against one real engine process.

A fake queue made of raw sockets (the hub's registration ROUTER and the task scheduler's
``task_engine`` ROUTER, signing with a real Session) keeps ``--window`` tasks in flight.
Requests are built and signed before the clock starts, so the figures are the engine's:
its CPU time per task (user + system, read from /proc), and the round-trip throughput
one engine sustains. Prints figures; asserts nothing (the machine is shared and noisy).

    python benchmarks/parallel_engine.py [-n 20000] [--window 64]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corral.core.serialize import pack_apply  # noqa: E402
from corral.transports.zmq import wire  # noqa: E402
from corral.transports.zmq.session import Session  # noqa: E402

KEY = "b" * 64
NAMES = (
    "registration hb_ping hb_pong mux_engine control_engine task_engine broadcast_engine "
    "iopub_engine"
).split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of ``pid`` (Linux)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode()
        fields = raw.rsplit(b")", 1)[1].split()
        secs = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[f"{name}/{tid}"] = secs
    return out


def noop() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--profile", help="run the engine under cProfile, stats to this file")
    parser.add_argument(
        "--by-reference",
        action="store_true",
        help="apply an importable function (pickled by name) instead of a __main__ one",
    )
    args = parser.parse_args()
    ctx = zmq.Context()
    session = Session(KEY.encode(), username="bench")
    socks, ports = {}, {}
    for name in NAMES:
        kind = {"hb_ping": zmq.PUB, "iopub_engine": zmq.SUB}.get(name, zmq.ROUTER)
        sock = ctx.socket(kind)
        sock.linger = 0
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        ports[name] = sock.bind_to_random_port("tcp://127.0.0.1")
        socks[name] = sock
    tmp = Path(tempfile.mkdtemp())
    cluster = tmp / "cluster-bench.json"
    cluster.write_text(json.dumps({"key": KEY, "ip": "127.0.0.1", **ports, "hb_period": 1.0}))
    task = socks["task_engine"]
    body = pack_apply(int if args.by_reference else noop, (), {})
    requests = []  # signed before the engine starts: the clock measures the engine only
    for _ in range(args.n + 201):
        m = session.msg("apply_request", {}, buffers=body)
        frames = wire.serialize(m, session.signer)
        requests.append([b"client", *[bytes(f) for f in frames]])
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable]
        + (["-m", "cProfile", "-o", args.profile] if args.profile else [])
        + ["-m", "corral.plugins.parallel.engine", "--file", str(cluster)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    reg = socks["registration"]
    idents, msg = session.parse(reg.recv_multipart())  # type: ignore[misc]
    t_reg = time.perf_counter() - t0
    session.send(
        reg,
        "registration_reply",
        {"status": "ok", "id": 0, "hb_period": 1.0, "hb_misses": 2},
        msg,
        identities=idents,
    )
    uuid = msg["content"]["uuid"].encode()
    uuid = msg["content"]["uuid"].encode()

    def send(frames: list) -> None:
        while True:
            try:
                task.send_multipart([uuid, *frames])
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                time.sleep(0.001)

    def run(batch: list) -> float:
        it = iter(batch)
        inflight = 0
        for frames in it:
            send(frames)
            inflight += 1
            if inflight >= args.window:
                break
        done = 0
        start = time.perf_counter()
        while done < len(batch):
            task.recv_multipart()
            done += 1
            inflight -= 1
            nxt = next(it, None)
            if nxt is not None:
                send(nxt)
        return time.perf_counter() - start

    run(requests[:1])
    t_first = time.perf_counter() - t0
    run(requests[1:200])  # warm up
    cpu0 = cpu_seconds(proc.pid)
    threads0 = thread_cpu(proc.pid)
    wall = run(requests[201:])
    cpu = cpu_seconds(proc.pid) - cpu0
    threads1 = thread_cpu(proc.pid)
    n = args.n
    print(f"process start -> registration_request received: {t_reg * 1000:.0f} ms")
    print(f"process start -> first apply_reply received:   {t_first * 1000:.0f} ms")
    print(f"{n} no-op apply round trips, window {args.window}, one engine")
    print(f"  engine CPU per task: {cpu / n * 1e6:.1f} us")
    for name, secs in threads1.items():
        used = secs - threads0.get(name, 0.0)
        if used > 0:
            print(f"    thread {name}: {used / n * 1e6:.1f} us/task")
    print(f"  throughput:          {n / wall:,.0f} tasks/s ({wall / n * 1e6:.1f} us/task wall)")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for sock in socks.values():
        sock.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
