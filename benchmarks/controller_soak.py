"""Fault-injection soak: the controller killed with SIGKILL while a map runs, and restarted.

A 4-engine cluster (controller in processes mode) runs ``--tasks`` (2,000) tasks of
``--task-ms`` (20 ms) each, submitted one by one on the load-balanced view. Meanwhile the
whole controller (every component process) is killed ``--kills`` (5) times with SIGKILL
at random moments and started again on the same profile and cluster id after
``--down-ms`` (300 ms). The client does what a user's script would: on
:class:`ControllerLost` it calls ``reconnect()``, fetches from the restarted controller's
database what finished meanwhile (``get_result``), and resubmits the tasks the database
does not know as finished.

Each task leaves a file when it finishes, named after the task and a fresh token, so the
soak counts how often every task really ran to the end. It prints figures, never a pass
or fail:

* completed: tasks whose value came back right (from a reply or from the database);
* failed: tasks that ended with an error other than ControllerLost (there should be none);
* hung: results that never resolved (neither value nor error) within ``--deadline`` s;
* duplicated: tasks that ran to the end more than once (resubmitted although they had
  run: their reply was lost with the controller);
* how long clients waited between a kill and ControllerLost, and the reconnects;
* after each reconnect, one direct call to every engine (``rc[:]``, through the restarted
  controller's mux): whether every engine answered.

Run: ``python benchmarks/controller_soak.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def task(folder: str, index: int, seconds: float) -> int:
    """Engine side: work ``seconds``, leave a mark that this run finished; ``3 * index + 1``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.001)
    Path(folder, f"{index}-{uuid.uuid4().hex[:8]}").touch()
    return index * 3 + 1


task.__module__ = "__main__"


class Soak:
    """A controller that can be killed and restarted, and engines that outlive it."""

    def __init__(self, root: Path, engines: int, hb_period: float) -> None:
        self.env = dict(os.environ, CORRAL_DIR=str(root), CORRAL_CONTROLLER_GRACE="60")
        self.args = [
            sys.executable,
            "-m",
            "corral.plugins.parallel.controller",
            "--profile",
            "soak",
            "--cluster-id",
            "soak",
            "--hb-period",
            str(hb_period),
            "--hb-misses",
            "5",
        ]
        self.controller = self.start_controller()
        self.engines = [
            subprocess.Popen(
                [sys.executable, "-m", "corral.plugins.parallel.engine", "-f", str(self.file)],
                env=self.env,
                start_new_session=True,
            )
            for _ in range(engines)
        ]

    def start_controller(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError("the controller did not start")
        self.file = Path(json.loads(line)["cluster_file"])
        return proc

    def kill_controller(self) -> None:
        os.killpg(self.controller.pid, signal.SIGKILL)
        self.controller.wait()

    def stop(self) -> None:
        for proc in [*self.engines, self.controller]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from corral.plugins.parallel.client import Client, ControllerLost

    root = Path(tempfile.mkdtemp(prefix="corral-soak-"))
    marks = root / "marks"
    marks.mkdir()
    soak = Soak(root, args.engines, args.hb_period)
    rng = random.Random(args.seed)
    losses: list[float] = []
    reconnects: list[float] = []
    recovered: list[int] = []
    resubmitted: list[int] = []
    try:
        rc = Client(connection_file=soak.file, timeout=30)
        rc.wait_for_engines(args.engines, timeout=60)
        view = rc.load_balanced_view()
        engine_pids = sorted(rc[:].apply_sync(os.getpid))
        direct_ok = 0
        direct_failed: list[str] = []
        seconds = args.task_ms / 1000
        expected_span = args.tasks * seconds / args.engines
        kill_at = sorted(rng.uniform(0.1, 0.9) * expected_span for _ in range(args.kills))
        done: dict[int, int] = {}
        failed: dict[int, str] = {}
        outstanding: dict[int, Any] = {}
        lost_event = threading.Event()
        killed_at: list[float] = []

        def killer() -> None:
            begin = time.monotonic()
            for moment in kill_at:
                delay = begin + moment - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                killed_at.append(time.monotonic())
                soak.kill_controller()
                time.sleep(args.down_ms / 1000)  # the operator's restart, some time later
                soak.controller = soak.start_controller()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        pending = list(range(args.tasks))

        def recover() -> tuple[int, int]:
            """After a reconnect: check direct calls, then sort the lost tasks into those
            an engine holds and those to submit again; (held, lost). Idempotent, so a
            ControllerLost midway is recovered from by calling it again."""
            nonlocal direct_ok
            # A direct call to every engine through the restarted controller's mux:
            # each queue must know the engines that re-registered with its hub.
            try:
                pids = rc[:].apply_async(os.getpid).get(timeout=args.deadline)
            except ControllerLost:
                raise
            except Exception as exc:
                direct_failed.append(repr(exc))
            else:
                if sorted(pids) == engine_pids:
                    direct_ok += 1
                else:
                    direct_failed.append(f"other engines answered: {pids}")
            # The database (kept across the restart) knows every task the old
            # controller handed to an engine. Engines outlive the controller, finish
            # those tasks and send the replies to the new one: wait for them there.
            # Only tasks no engine was given (lost in the dead scheduler) run again.
            lost = {
                result.msg_ids[0]: index
                for index, result in outstanding.items()
                if not result.done() or isinstance(result.exception(), ControllerLost)
            }
            records = rc.db_query(
                {"msg_id": {"$in": list(lost)}}, ["msg_id", "engine_uuid", "result_status"]
            )
            given = {r["msg_id"] for r in records if r.get("engine_uuid")}
            for msg_id, index in lost.items():
                if msg_id in given:
                    outstanding[index] = rc.get_result(msg_id)
                else:
                    del outstanding[index]
                    pending.append(index)
            return len(given), len(lost)

        while pending or outstanding:
            try:
                while pending:
                    index = pending.pop()
                    outstanding[index] = view.apply_async(task, str(marks), index, seconds)
                for index, result in list(outstanding.items()):
                    value = result.get(timeout=args.deadline)
                    done[index] = value
                    del outstanding[index]
            except ControllerLost:
                losses.append(time.monotonic() - killed_at[-1] if killed_at else 0.0)
                lost_event.set()
                began = time.monotonic()
                while True:  # killed again while recovering: recover from the new loss
                    try:
                        rc.reconnect(timeout=60)
                        rc.wait_for_engines(args.engines, timeout=60)
                        given, lost = recover()
                        break
                    except (ControllerLost, TimeoutError):
                        continue
                reconnects.append(time.monotonic() - began)
                recovered.append(given)
                resubmitted.append(lost - given)
            except concurrent.futures.TimeoutError:
                break  # hung: counted below
            except Exception as exc:  # a task error
                for index, result in list(outstanding.items()):
                    if result.done() and result.exception() is not None:
                        failed[index] = repr(result.exception())
                        del outstanding[index]
                if not failed:
                    raise exc
        thread.join()
        runs: dict[int, int] = {}
        for entry in os.listdir(marks):
            index = int(entry.split("-")[0])
            runs[index] = runs.get(index, 0) + 1
        correct = sum(1 for index, value in done.items() if value == index * 3 + 1)
        return {
            "tasks": args.tasks,
            "kills": len(killed_at),
            "completed": correct,
            "wrong": len(done) - correct,
            "failed": len(failed),
            "hung": len(outstanding),
            "duplicated": sum(1 for count in runs.values() if count > 1),
            "never ran": args.tasks - len(runs),
            "lost after kill (median s)": sorted(losses)[len(losses) // 2] if losses else None,
            "reconnect (median s)": sorted(reconnects)[len(reconnects) // 2]
            if reconnects
            else None,
            "losses seen": len(losses),
            "answered through the database": sum(recovered),
            "resubmitted": sum(resubmitted),
            "direct calls to all engines after a restart (ok)": direct_ok,
            "direct calls failed": direct_failed,
        }
    finally:
        soak.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--task-ms", type=float, default=20.0)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--down-ms", type=float, default=300.0)
    parser.add_argument("--hb-period", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=11)
    figures = run(parser.parse_args())
    print("controller soak (SIGKILL of the whole controller, restarted on the same cluster)")
    for name, value in figures.items():
        print(f"  {name:>28}: {value}")


if __name__ == "__main__":
    main()
