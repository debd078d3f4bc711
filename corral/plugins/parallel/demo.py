"""``corral demo``: a cluster on every core counts primes, and shows what it gained.

The first command a new user runs, so it has to show the whole path honestly: start a
cluster (timed), send real CPU work through the load-balanced scheduler in chunks with a
live progress bar, check the answer against the same count done serially in this process,
print the speed-up, and stop every process it started.

Prime counting by trial division is the workload because it is pure-Python CPU work with
no dependencies, splits into independent ranges, and has a checkable answer.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from typing import Any

__all__ = ["chunk_bounds", "count_primes", "count_primes_in", "run_demo"]


def count_primes(low: int, high: int) -> int:
    """Primes in ``[low, high)``, by trial division by odd numbers."""
    count = 0
    for candidate in range(max(low, 2), high):
        if candidate < 4:
            count += 1
            continue
        if candidate % 2 == 0:
            continue
        root = math.isqrt(candidate)
        divisor = 3
        while divisor <= root:
            if candidate % divisor == 0:
                break
            divisor += 2
        else:
            count += 1
    return count


def count_primes_in(bounds: tuple[int, int]) -> int:
    """One task: the primes of one chunk (a single argument, for ``map``)."""
    return count_primes(*bounds)


def chunk_bounds(limit: int, chunks: int) -> list[tuple[int, int]]:
    """Split ``[0, limit)`` into ``chunks`` ranges of about equal *work*.

    Trial division costs about sqrt(n) per number, so equal-width ranges would leave the
    last chunks several times slower than the first; edges at equal steps of n**1.5 make
    every chunk cost about the same, so no engine idles at the end.
    """
    total = limit**1.5
    edges = [round((total * index / chunks) ** (2 / 3)) for index in range(chunks + 1)]
    edges[0], edges[-1] = 0, limit
    return [(low, high) for low, high in itertools.pairwise(edges) if high > low]


def _progress(result: Any, total: int) -> None:
    """A tqdm bar over finished chunks (the client's own when it has one)."""
    wait_interactive = getattr(result, "wait_interactive", None)
    if wait_interactive is not None:
        try:
            wait_interactive(interval=0.05, file=sys.stdout)
            return
        except ImportError:  # tqdm missing: fall through to the plain bar
            pass
    while not result.wait(0.1):
        done = getattr(result, "progress", 0)
        filled = 30 * done // max(total, 1)
        sys.stdout.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} chunks")
        sys.stdout.flush()
    sys.stdout.write(f"\r  [{'#' * 30}] {total}/{total} chunks\n")


def run_demo(args: argparse.Namespace, config: Any = None) -> int:
    """Run the demo; returns the exit code (0 when the parallel and serial counts agree)."""
    from corral.plugins.parallel.cluster import Cluster

    engines = args.engines or os.cpu_count() or 1
    bounds = chunk_bounds(args.limit, max(args.chunks, engines))
    profile = getattr(args, "profile", "default")
    print(f"corral demo: counting primes below {args.limit:,} on {engines} engines", flush=True)
    started = time.perf_counter()
    cluster = Cluster(n=engines, profile=profile, cluster_id=f"demo-{os.getpid()}")
    with cluster as client:
        ready = time.perf_counter() - started
        print(f"  cluster of {len(client.ids)} engines ready in {ready:.2f} s", flush=True)
        view = client.load_balanced_view()
        started = time.perf_counter()
        result = view.map_async(count_primes_in, bounds, chunksize=1)
        _progress(result, len(bounds))
        counts = result.get()
        parallel = time.perf_counter() - started
        per_engine: dict[Any, int] = {}
        for meta in getattr(result, "metadata", None) or []:
            engine = meta.get("engine_id") if isinstance(meta, dict) else None
            per_engine[engine] = per_engine.get(engine, 0) + 1
    primes = sum(counts)
    print(f"  {primes:,} primes below {args.limit:,} in {parallel:.2f} s", flush=True)
    if per_engine and None not in per_engine:
        print(
            "  chunks per engine: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_engine.items()))
        )
    if args.no_serial:
        return 0
    print("  the same count on one core in this process, for comparison ...", flush=True)
    started = time.perf_counter()
    serial_primes = sum(count_primes_in(b) for b in bounds)
    serial = time.perf_counter() - started
    if serial_primes != primes:
        print(f"corral demo: MISMATCH: the serial count is {serial_primes:,}", file=sys.stderr)
        return 1
    print(f"  one core: {serial:.2f} s; speed-up {serial / parallel:.2f}x on {engines} engines")
    return 0
