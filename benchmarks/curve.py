"""Push/pull of 100 MB with CurveZMQ on and off: corral beside raw pyzmq and ipyparallel.

The goals (issue 10): corral's push/pull with Curve >= 0.5x corral's without, its
throughput with Curve >= 0.7x, and ahead of ipyparallel with its own Curve option. libzmq's
Curve is the ceiling, so raw pyzmq is measured in the same run, both as one 100 MB frame
(what a naive sender does) and in 256 KiB frames (what corral sends on Curve sockets,
corral.transports.zmq.frames), each to another process and back to an ack, best of
``--rounds``. ipyparallel (if installed) runs with its ``enable_curve`` on and off
(``IPP_ENABLE_CURVE=1`` for its controller, which hands the keys to its engines and
client): the same push/pull and, with ``--throughput``, load-balanced no-op tasks (at most
1,000: it runs a few hundred a second). Prints figures and ratios; never pass/fail.

    python benchmarks/curve.py [--rounds 3] [--mb 100] [--throughput 5000] [--no-ipp]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

CHUNK = 256 * 1024


def _sink(url: str, rounds: int, server_public: bytes | None) -> None:
    """Child: connect (as a Curve client if a server key is given), then ack each message."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    if server_public is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            server_public,
            public,
            secret,
        )
    sock.connect(url)
    sock.send(b"ready")
    for _ in range(rounds):
        frames = sock.recv_multipart(copy=False)
        if len(frames) > 1:  # chunks: joined, as corral's receiver does
            b"".join(f.buffer for f in frames)
        sock.send(b"ok")
    sock.close()
    ctx.term()


def raw_mb_s(mb: int, rounds: int, curve: bool, chunked: bool) -> float:
    payload = memoryview(np.ones(mb * 1024 * 1024, dtype=np.uint8))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    public = None
    if curve:
        public, secret = zmq.curve_keypair()
        sock.curve_secretkey, sock.curve_server = secret, True
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    child = multiprocessing.get_context("fork").Process(
        target=_sink, args=(f"tcp://127.0.0.1:{port}", rounds, public)
    )
    child.start()
    try:
        if not sock.poll(30_000):
            raise RuntimeError("raw pyzmq peer did not connect")
        identity = sock.recv_multipart()[0]
        best = float("inf")
        for _ in range(rounds):
            frames = (
                [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)]
                if chunked
                else [payload]
            )
            started = time.perf_counter()
            sock.send_multipart([identity, *frames], copy=False)
            sock.recv_multipart()
            best = min(best, time.perf_counter() - started)
        return mb / best
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
        sock.close()
        ctx.term()


def corral_mb_s(mb: int, rounds: int, encryption: str) -> tuple[float, float]:
    """Best push and best pull of ``mb`` MB to one engine, direct view."""
    from corral.plugins.parallel.cluster import Cluster

    cluster = Cluster(n=1, profile=f"curvebench-{encryption}", encryption=encryption)
    client = cluster.start_and_connect()
    try:
        view = client[client.ids[0]]
        array = np.ones(mb * 1024 * 1024, dtype=np.uint8)
        push = pull = 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            view.push({"bench_array": array}, block=True)
            push = max(push, mb / (time.perf_counter() - started))
            started = time.perf_counter()
            back = view.pull("bench_array", block=True)
            pull = max(pull, mb / (time.perf_counter() - started))
            assert back.nbytes == array.nbytes
        return push, pull
    finally:
        client.close()
        cluster.stop()


def noop() -> None:
    return None


def corral_apply_s(tasks: int, encryption: str) -> float:
    """Load-balanced no-op tasks per second, 2 engines, all submitted then awaited."""
    from corral.plugins.parallel.cluster import Cluster

    cluster = Cluster(n=2, profile=f"curvetp-{encryption}", encryption=encryption)
    client = cluster.start_and_connect()
    try:
        view = client.load_balanced_view()
        view.apply_sync(noop)  # warm: function cache, connections
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for result in [view.apply_async(noop) for _ in range(tasks)]:
                result.get()
            best = max(best, tasks / (time.perf_counter() - started))
        return best
    finally:
        client.close()
        cluster.stop()


class _IPyParallel:
    """An ipyparallel cluster of ``n`` engines, with its Curve on or off, as a context."""

    def __init__(self, n: int, curve: bool) -> None:
        self.n, self.curve = n, curve

    def __enter__(self) -> Any:
        import ipyparallel

        before = os.environ.get("IPP_ENABLE_CURVE")
        os.environ["IPP_ENABLE_CURVE"] = "1" if self.curve else "0"
        try:
            self.cluster = ipyparallel.Cluster(n=self.n, log_level=40)
            self.client = self.cluster.start_and_connect_sync()
        finally:
            if before is None:
                os.environ.pop("IPP_ENABLE_CURVE", None)
            else:
                os.environ["IPP_ENABLE_CURVE"] = before
        self.client.wait_for_engines(self.n, timeout=120)
        # the client's connection info says whether the controller really runs Curve
        secured = bool(self.client._config.get("curve_serverkey"))
        if secured != self.curve:
            raise RuntimeError(f"ipyparallel Curve is {secured}, wanted {self.curve}")
        return self.client

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.stop_cluster_sync()


def ipp_mb_s(mb: int, rounds: int, curve: bool) -> tuple[float, float]:
    """ipyparallel's best push and best pull of ``mb`` MB to one engine."""
    with _IPyParallel(1, curve) as client:
        view = client[0]
        array = np.ones(mb * 1024 * 1024, dtype=np.uint8)
        push = pull = 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            view.push({"bench_array": array}, block=True)
            push = max(push, mb / (time.perf_counter() - started))
            started = time.perf_counter()
            back = view.pull("bench_array", block=True)
            pull = max(pull, mb / (time.perf_counter() - started))
            assert back.nbytes == array.nbytes
        return push, pull


def ipp_apply_s(tasks: int, curve: bool) -> float:
    """ipyparallel's load-balanced no-op tasks per second, 2 engines (as corral's)."""
    with _IPyParallel(2, curve) as client:
        view = client.load_balanced_view()
        view.apply_sync(noop)
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for result in [view.apply_async(noop) for _ in range(tasks)]:
                result.get()
            best = max(best, tasks / (time.perf_counter() - started))
        return best


def _have_ipp() -> bool:
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument(
        "--throughput", type=int, default=0, help="also N no-op tasks/s, Curve off and on"
    )
    parser.add_argument("--no-ipp", action="store_true", help="skip ipyparallel")
    args = parser.parse_args(argv)
    ipp = not args.no_ipp and _have_ipp()
    with tempfile.TemporaryDirectory() as root:
        os.environ.setdefault("CORRAL_DIR", str(Path(root) / "corral"))
        figures: dict[str, Any] = {}
        for name, func in (
            ("raw, Curve off", lambda: raw_mb_s(args.mb, args.rounds, False, False)),
            ("raw, Curve on, one frame", lambda: raw_mb_s(args.mb, args.rounds, True, False)),
            ("raw, Curve on, 256 KiB frames", lambda: raw_mb_s(args.mb, args.rounds, True, True)),
            ("corral, Curve off", lambda: corral_mb_s(args.mb, args.rounds, "none")),
            ("corral, Curve on", lambda: corral_mb_s(args.mb, args.rounds, "curve")),
        ):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            figures[name] = func()
        if ipp:
            for curve in (False, True):
                name = f"ipyparallel, Curve {'on' if curve else 'off'}"
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                figures[name] = ipp_mb_s(args.mb, args.rounds, curve)
        if args.throughput:
            for encryption in ("none", "curve"):
                print(f"measuring throughput, {encryption} ...", file=sys.stderr, flush=True)
                figures[f"apply/s {encryption}"] = corral_apply_s(args.throughput, encryption)
            if ipp:
                ipp_tasks = min(args.throughput, 1000)
                for curve in (False, True):
                    print(f"measuring ipyparallel throughput, {curve=} ...", file=sys.stderr)
                    key = f"ipp apply/s {'curve' if curve else 'none'}"
                    figures[key] = ipp_apply_s(ipp_tasks, curve)
    print(f"{args.mb} MB, best of {args.rounds}, load average {os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        if name.startswith("apply/s"):
            print(f"  corral {name:<25} {value:,.0f}")
            continue
        if name.startswith("ipp apply/s"):
            print(f"  ipyparallel {name[4:]:<20} {value:,.0f}")
            continue
        shown = " / ".join(f"{v:,.0f}" for v in value) if isinstance(value, tuple) else value
        print(f"  {name:<32} {shown if isinstance(shown, str) else f'{shown:,.0f}'} MB/s")
    off, on = figures["corral, Curve off"], figures["corral, Curve on"]
    raw_off = figures["raw, Curve off"]
    print(f"  corral Curve on / off, push      {on[0] / off[0]:.2f}  [>= 0.5]")
    print(f"  corral Curve on / off, pull      {on[1] / off[1]:.2f}  [>= 0.5]")
    for name in ("raw, Curve on, one frame", "raw, Curve on, 256 KiB frames"):
        print(f"  {name} / raw off  {figures[name] / raw_off:.2f}")
    if args.throughput:
        ratio = figures["apply/s curve"] / figures["apply/s none"]
        print(f"  corral throughput Curve on / off {ratio:.2f}  [>= 0.7]")
    if ipp:
        theirs = figures["ipyparallel, Curve on"]
        print(
            f"  corral / ipyparallel, both Curve on, push / pull "
            f"{on[0] / theirs[0]:.2f} / {on[1] / theirs[1]:.2f}  [> 1]"
        )
        if args.throughput:
            ratio = figures["apply/s curve"] / figures["ipp apply/s curve"]
            print(f"  corral / ipyparallel throughput, both Curve on {ratio:.1f}  [> 1]")
    print(
        f"  corral Curve on / raw Curve on (256 KiB), push / pull "
        f"{on[0] / figures['raw, Curve on, 256 KiB frames']:.2f} / "
        f"{on[1] / figures['raw, Curve on, 256 KiB frames']:.2f}"
    )


if __name__ == "__main__":
    main()
