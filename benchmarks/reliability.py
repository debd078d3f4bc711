"""Fault-injection soak: engines killed with SIGKILL while load-balanced work runs.

A 4-engine cluster runs a map of ``--tasks`` (2,000) tasks of ``--task-ms`` (20 ms)
each, one task per item (``chunksize=1``; submitted item by item so each task's outcome
is seen), with ``retries=3``. Meanwhile ``--kills`` (20) engines are killed with SIGKILL
at random moments over the expected run time, each replaced by a new engine. Then the
same with ``retries=0``.

Each task leaves a file when it starts and another when it finishes, named after the
task and the engine's pid, so the soak knows what ran where. It prints figures, never a
pass or fail:

* correct: the task's result is its own value; failed: an error came back;
* lost: a result came back but it is not the task's value;
* hung: no answer by ``--deadline`` seconds after the last kill;
* duplicated: tasks that *finished* on more than one engine (ran twice to the end);
* with ``retries=0``, how many failed tasks were running on a killed engine when it
  died (started there, never finished): the goal is all of them.

Run: ``python benchmarks/reliability.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def task(folder: str, index: int, seconds: float) -> int:
    """Engine side: mark the start, work ``seconds``, mark the end; returns ``index``."""
    pid = os.getpid()
    Path(folder, f"s-{index}-{pid}").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.001)
    Path(folder, f"e-{index}-{pid}").touch()
    return index * 3 + 1


def marks(folder: Path) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """(started, finished): task index -> the pids it started / finished in."""
    started: dict[int, set[int]] = {}
    finished: dict[int, set[int]] = {}
    for entry in os.listdir(folder):
        kind, index, pid = entry.split("-")
        (started if kind == "s" else finished).setdefault(int(index), set()).add(int(pid))
    return started, finished


def killer(
    cluster: Any, client: Any, kills: int, span: float, seed: int, killed: list[int]
) -> None:
    """Kill ``kills`` registered engines at random moments within ``span`` seconds,
    starting a new engine after each."""
    rng = random.Random(seed)
    moments = sorted(rng.uniform(0, span) for _ in range(kills))
    begin = time.monotonic()
    for moment in moments:
        delay = begin + moment - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        engines = client.engines
        alive = [info.pid for eid, info in engines.items() if info.pid not in killed]
        if not alive:
            continue
        pid = rng.choice(alive)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
        cluster.add_engines(1)


def soak(args: argparse.Namespace, retries: int) -> dict[str, Any]:
    from corral.plugins.parallel.client import RemoteError
    from corral.plugins.parallel.cluster import Cluster

    cluster = Cluster(
        n=args.engines,
        profile="reliability",
        hb_period=args.hb_period,
        hb_misses=args.hb_misses,
        engine_timeout=60,
    )
    client = cluster.start_and_connect()
    killed: list[int] = []
    try:
        with tempfile.TemporaryDirectory(prefix="corral-soak-") as tmp:
            folder = Path(tmp)
            lview = client.load_balanced_view()
            seconds = args.task_ms / 1000
            span = args.tasks * seconds / args.engines
            started_at = time.monotonic()
            with lview.temp_flags(retries=retries):
                results = [
                    lview.apply_async(task, str(folder), i, seconds) for i in range(args.tasks)
                ]
            thread = threading.Thread(
                target=killer,
                args=(cluster, client, args.kills, span, args.seed + retries, killed),
            )
            thread.start()
            thread.join()
            deadline = time.monotonic() + args.deadline
            correct, failed, lost, hung = [], [], [], []
            for i, result in enumerate(results):
                try:
                    value = result.get(timeout=max(0.0, deadline - time.monotonic()))
                except RemoteError:
                    failed.append(i)
                    continue
                except TimeoutError:
                    hung.append(i)
                    continue
                (correct if value == i * 3 + 1 else lost).append(i)
            elapsed = time.monotonic() - started_at
            started, finished = marks(folder)
    finally:
        cluster.stop()
    dead = set(killed)
    running_on_killed = [
        i
        for i in failed
        if any(p in dead and p not in finished.get(i, ()) for p in started.get(i, ()))
    ]
    return {
        "retries": retries,
        "tasks": args.tasks,
        "kills": len(killed),
        "correct": len(correct),
        "failed": len(failed),
        "lost": len(lost),
        "hung": len(hung),
        "duplicated": sum(1 for pids in finished.values() if len(pids) > 1),
        "executions": sum(len(p) for p in started.values()),
        "failed_running_on_killed": len(running_on_killed),
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--task-ms", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--retries", type=int, nargs="*", default=[3, 0])
    parser.add_argument("--hb-period", type=float, default=1.0, help="controller heartbeat")
    parser.add_argument("--hb-misses", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to wait at the end")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    for retries in args.retries:
        row = soak(args, retries)
        print(
            f"retries={row['retries']}: {row['correct']}/{row['tasks']} correct, "
            f"{row['failed']} failed, {row['lost']} lost, {row['hung']} hung, "
            f"{row['duplicated']} duplicated; {row['kills']} kills, "
            f"{row['executions']} executions, {row['seconds']:.1f} s"
        )
        if row["failed"]:
            print(
                f"  of the {row['failed']} failed, {row['failed_running_on_killed']} were "
                "running on an engine when it was killed"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
