"""``corral demo``: a real parallel run on every core, with progress, result and speed-up.

Until the cluster lands this shows the foundation working: one worker process per core
counts primes in its share of the chunks, and every finished chunk crosses back to this
process as a notification over the bridge, where an observer draws the progress bar.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

from corral.core.config import Config
from corral.plugins.builtin.demo_work import CHUNK_DONE, WORKER_DONE, count_primes
from corral.plugins.markers import hookimpl


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="count primes on every core and show the speed-up over one core"
    )
    parser.add_argument("-n", "--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--no-serial", action="store_true", help="skip the one-core baseline")
    parser.set_defaults(run=run_demo)


class _Progress:
    """Observer of the workers' notifications: a progress bar and the running total."""

    def __init__(self, chunks: int, workers: int, stream) -> None:
        self.chunks = chunks
        self.workers = workers
        self.stream = stream
        self.done_chunks = 0
        self.done_workers = 0
        self.primes = 0
        self.per_worker: dict[str, int] = {}
        self.finished = threading.Event()
        self.lock = threading.Lock()

    def on_chunk(self, type, sender, /, **info) -> None:  # noqa: A002
        with self.lock:
            self.done_chunks += 1
            self.per_worker[sender] = self.per_worker.get(sender, 0) + 1
            filled = 30 * self.done_chunks // self.chunks
            self.stream.write(
                f"\r  [{'#' * filled}{'.' * (30 - filled)}] {self.done_chunks}/{self.chunks} chunks"
            )
            self.stream.flush()

    def on_worker(self, type, sender, /, **info) -> None:  # noqa: A002
        with self.lock:
            self.primes += info["primes"]
            self.done_workers += 1
            if self.done_workers == self.workers:
                self.finished.set()


def run_demo(args: argparse.Namespace, config: Config) -> int:
    from corral.notification import NotificationCenter
    from corral.notification.bridge import BridgeReceiver, PipeListener

    workers = max(1, args.workers)
    if args.chunks < workers:
        print("corral demo: --chunks must be at least the number of workers", file=sys.stderr)
        return 2
    print(f"corral demo: counting primes below {args.limit:,} on {workers} processes")
    center = NotificationCenter()
    progress = _Progress(args.chunks, workers, sys.stdout)
    center.add_observer(progress.on_chunk, CHUNK_DONE)
    center.add_observer(progress.on_worker, WORKER_DONE)

    listener = PipeListener()
    env = {
        **os.environ,
        "CORRAL_DEMO_ADDRESS": str(listener.address),
        "CORRAL_DEMO_AUTHKEY": listener.authkey.hex(),
    }
    started = time.perf_counter()
    command = [sys.executable, "-m", "corral.plugins.builtin.demo_work"]
    processes = [
        subprocess.Popen(
            [*command, str(i), str(workers), str(args.limit), str(args.chunks)], env=env
        )
        for i in range(workers)
    ]
    receivers = []
    try:
        for _ in processes:
            receivers.append(BridgeReceiver(listener.accept(timeout=60), center))
        while not progress.finished.wait(0.2):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed:
                print(f"\ncorral demo: worker exited with {failed[0].returncode}", file=sys.stderr)
                return 1
        parallel = time.perf_counter() - started
    finally:
        for receiver in receivers:
            receiver.close()
        listener.close()
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()
    print(f"\n  {progress.primes:,} primes below {args.limit:,} in {parallel:.2f} s")
    print(
        "  chunks per worker: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(progress.per_worker.items()))
    )
    if args.no_serial:
        return 0
    print("  the same count on one core, for comparison ...", flush=True)
    started = time.perf_counter()
    serial_primes = count_primes(0, args.limit)
    serial = time.perf_counter() - started
    if serial_primes != progress.primes:
        print(f"corral demo: MISMATCH: serial count {serial_primes:,}", file=sys.stderr)
        return 1
    print(f"  one core: {serial:.2f} s; speed-up {serial / parallel:.2f}x on {workers} processes")
    return 0
