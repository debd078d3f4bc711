"""A client that stops reading while large results arrive: what the controller holds.

A 2-engine cluster (task database on SQLite) serves a client process that submits
``--tasks`` (100) load-balanced tasks, each returning ``--mb`` (10) MB, and is then
stopped with SIGSTOP for ``--stop`` (15) seconds: its sockets are not read, as with a
client stuck in user code or on a saturated link. Meanwhile this script samples the
resident memory of every controller process. Then the client is continued, checks every
result byte for byte, and purges all results.

It prints figures, never a pass or fail:

* the peak RSS of each controller process while the client was stopped, and 5 s after
  the results were delivered;
* whether every result arrived intact (a wrong or missing result is reported);
* the task database's size on disk after the run, how long ``purge_results("all")``
  took, and the size after the purge.

Run: ``python benchmarks/slow_client.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def payload(index: int, size: int) -> bytes:
    """Engine side: ``size`` bytes that only task ``index`` would return."""
    head = index.to_bytes(4, "little")
    return head + bytes([index % 251]) * (size - 4)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return 0.0


def process_name(pid: int) -> str:
    """The name a controller component gives itself (corral-hub, corral-task, ...)."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return str(pid)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc, no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


class Sampler(threading.Thread):
    """Samples the RSS of the given processes every 50 ms and keeps each one's peak."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))

    def reset(self) -> None:
        self.peak = dict.fromkeys(self.pids, 0.0)


def client_main(cluster_file: str, tasks: int, size: int) -> None:
    """The client process: submit, wait to be told, check every result, purge."""
    import corral

    if os.environ.get("SLOW_CLIENT_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG)
    rc = corral.Client(connection_file=cluster_file)
    rc.wait_for_engines(2, timeout=60)
    view = rc.load_balanced_view()
    results = [view.apply_async(payload, i, size) for i in range(tasks)]
    # Stopped only once the controller has every request: a request still in this
    # process's socket when it stops would never run.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = rc.queue_status()
        known = status.pop("unassigned", 0) + sum(
            s["queue"] + s["completed"] for s in status.values()
        )
        if known >= tasks:
            break
        time.sleep(0.05)
    print(json.dumps({"submitted": tasks}), flush=True)
    sys.stdin.readline()  # the parent stops us before we get here, and lets us go
    start = time.perf_counter()
    wrong = missing = 0
    for index, result in enumerate(results):
        try:
            value = result.get(timeout=300)
        except Exception:
            missing += 1
            continue
        if value != payload(index, size):
            wrong += 1
    delivered = time.perf_counter() - start
    print(json.dumps({"wrong": wrong, "missing": missing, "delivered_s": delivered}), flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    rc.purge_results("all", timeout=300)
    print(json.dumps({"purge_s": time.perf_counter() - start}), flush=True)
    rc.close()


def db_size(profile_dir: Path) -> float:
    """Total size in MB of the task database files (with -wal/-shm) under the profile."""
    total = 0
    for path in profile_dir.rglob("tasks-*.sqlite*"):
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total / 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    import corral

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["CORRAL_DIR"] = home
        cluster = corral.Cluster(n=2, db="sqlite", profile="slow")
        cluster.start()
        try:
            info = cluster.cluster_info or {}
            controller = int(info["controller_pid"])
            pids = descendants(controller)
            figures["names"] = {pid: process_name(pid) for pid in pids}
            sampler = Sampler(pids)
            sampler.start()
            child = subprocess.Popen(
                [sys.executable, __file__, "--client", str(cluster.cluster_file)]
                + ["--tasks", str(args.tasks), "--mb", str(args.mb)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdin and child.stdout
            json.loads(child.stdout.readline())
            child.send_signal(signal.SIGSTOP)
            time.sleep(args.stop)  # the point of the benchmark: nobody reads for this long
            figures["stopped_peak_mb"] = dict(sampler.peak)
            sampler.reset()
            child.send_signal(signal.SIGCONT)
            child.stdin.write("go\n")
            child.stdin.flush()
            figures.update(json.loads(child.stdout.readline()))
            time.sleep(5)  # memory a while after delivery
            figures["after_peak_mb"] = dict(sampler.peak)
            figures["db_mb_before_purge"] = db_size(Path(home))
            child.stdin.write("purge\n")
            child.stdin.flush()
            figures.update(json.loads(child.stdout.readline()))
            child.wait(timeout=60)
            time.sleep(1)
            figures["db_mb_after_purge"] = db_size(Path(home))
            figures["pids"] = pids
            sampler.done.set()
        finally:
            cluster.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--stop", type=float, default=15.0, help="seconds the client is stopped")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = int(args.mb * 1e6)
    if args.client:
        client_main(args.client, args.tasks, size)
        return
    figures = run(args)
    total = args.tasks * size / 1e6
    print(
        f"{args.tasks} results of {args.mb:g} MB ({total:,.0f} MB), client stopped {args.stop:g} s"
    )
    for label in ("stopped_peak_mb", "after_peak_mb"):
        peaks = figures[label]
        names = figures["names"]
        text = ", ".join(f"{names.get(pid, pid)}: {mb:,.0f}" for pid, mb in peaks.items())
        print(f"  controller RSS peak (MB) {label.split('_')[0]}: {text}")
    print(f"  results wrong: {figures['wrong']}, missing: {figures['missing']}")
    print(f"  delivered in {figures['delivered_s']:.2f} s after the client continued")
    print(f"  task db: {figures['db_mb_before_purge']:,.0f} MB before purge")
    print(f"  purge_results('all'): {figures['purge_s']:.2f} s")
    print(f"  task db: {figures['db_mb_after_purge']:,.0f} MB after purge")


if __name__ == "__main__":
    main()
