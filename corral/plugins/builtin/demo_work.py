"""The demo's workload and its worker process: count primes, chunk by chunk, and report
each finished chunk to the parent as a notification carried by the bridge.

Run as ``python -m corral.plugins.builtin.demo_work WORKER WORKERS LIMIT CHUNKS`` with
``CORRAL_DEMO_ADDRESS`` and ``CORRAL_DEMO_AUTHKEY`` (hex) in the environment: the key is
passed there, not on the command line, because other users can read command lines.
"""

from __future__ import annotations

import itertools
import math
import os
import sys

CHUNK_DONE = "demo.chunk_done"
WORKER_DONE = "demo.worker_done"


def count_primes(low: int, high: int) -> int:
    """Primes in [low, high), by trial division: honest CPU work in pure Python."""
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


def chunk_bounds(limit: int, chunks: int) -> list[tuple[int, int]]:
    """Split [0, limit) into ``chunks`` contiguous ranges."""
    edges = [limit * index // chunks for index in range(chunks + 1)]
    return list(itertools.pairwise(edges))


class _Worker:
    """The sender of a worker's notifications, named so the parent can tell workers apart."""

    def __init__(self, index: int) -> None:
        self.notification_name = f"worker-{index}"


def main(argv: list[str]) -> int:
    from corral.notification import NotificationCenter
    from corral.notification.bridge import BridgeSender, PipeTransport

    worker, workers, limit, chunks = (int(arg) for arg in argv)
    address = os.environ["CORRAL_DEMO_ADDRESS"]
    authkey = bytes.fromhex(os.environ["CORRAL_DEMO_AUTHKEY"])
    center = NotificationCenter(strict=True)
    me = _Worker(worker)
    with PipeTransport.connect(address, authkey) as transport:
        with BridgeSender(transport, center, types=[CHUNK_DONE, WORKER_DONE]):
            total = 0
            for index, (low, high) in enumerate(chunk_bounds(limit, chunks)):
                if index % workers != worker:
                    continue
                found = count_primes(low, high)
                total += found
                center.post(CHUNK_DONE, me, low=low, high=high, primes=found)
            center.post(WORKER_DONE, me, primes=total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
