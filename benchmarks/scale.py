"""Scale: how corral's controller behaves as the cluster grows (issue 16).

Sections (``--only`` picks some; each prints its figures and is saved to ``--json``):

* ``sim``: simulated engines (corral.plugins.parallel.simengine, 1,000 per process) at
  100, 1,000 and 5,000: registration time of all engines, the hub's CPU for heartbeats
  (1 s period), the task scheduler's CPU per no-op task at 2 and 1,000 engines, a 1 kB
  DirectView round trip to 2 and 256 engines, a 2 MB push to 100 engines;
* ``real``: real local engines 1..64 running 10 ms sleep tasks: throughput and latency
  (and ipyparallel's, for the counts given to ``--ipp-engines``, where it is installed);
* ``million``: N no-op tasks (1,000,000 by default) through one client, 2 engines, the
  task database on: throughput per tenth of the run and the controller's RSS;
* ``contention``: no-op tasks through corral and ProcessPoolExecutor (2 workers each),
  without and then with two spinning processes started here that keep both cores busy:
  throughput, and the CPU and wake-ups per task of each process of either tool;
* ``aggregated``: no-op tasks through one controller with 2 engines, and through 2
  controllers sharing them (corral.plugins.parallel.shards), both running, in turns:
  throughput and controller CPU per task, with the load average;
* ``plot``: docs/scale.png from the saved JSON (matplotlib).

Figures only, never pass/fail. Run: ``python benchmarks/scale.py`` (about 15 minutes on
this 2-core machine), a section: ``python benchmarks/scale.py --only aggregated``, or every
section at smaller sizes: ``python benchmarks/scale.py --quick`` (what ``tox -e bench``
runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "scale.json"
PLOT = ROOT / "docs" / "scale.png"
PER_PROCESS = 1000  # simulated engines per process (each costs ~12 descriptors)
MB = 1024 * 1024
#: ipyparallel's published figures (issue 16): 1 kB DirectView round trip
IPP_DV_MS = {2: 4.8, 256: 160.0}
IPP_BCAST_2MB_100_S = 0.56
#: ``--quick`` (``tox -e bench``): every section, at sizes that take minutes, not a quarter
#: of an hour (the 2 MB push needs 100 simulated engines).
QUICK: dict[str, Any] = {
    "sizes": [100, 1000],
    "queue_sizes": [2, 100],
    "engines": [1, 2, 4, 8],
    "ipp_engines": [1, 2],
    "tasks": 2000,
    "million": 20_000,
}


def noop(*args: Any) -> None:
    return None


def sleep10(*args: Any) -> None:
    import time  # ipyparallel ships __main__ functions without their module's globals

    time.sleep(0.01)


def _proc(cluster: Any, name: str) -> psutil.Process:
    """The controller process named ``name`` (corral-hub, corral-task, ...)."""
    root = psutil.Process(cluster.pids()["controller"])
    for proc in [root, *root.children(recursive=True)]:
        if proc.name() == name:
            return proc
    raise LookupError(f"no {name} process under the controller {root.pid}")


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


@contextmanager
def corral_cluster(n: int, **kw: Any) -> Iterator[tuple[Any, Any]]:
    from corral.plugins.parallel.cluster import Cluster

    cluster = Cluster(n=n, profile="scale-bench", engine_timeout=120, **kw)
    client = cluster.start_and_connect() if n else None
    if client is None:
        cluster.start()
        client = cluster.connect_client()
    try:
        yield cluster, client
    finally:
        cluster.stop()


class Crowd:
    """Processes of simulated engines for one cluster file."""

    def __init__(self, cluster_file: Path, count: int, queues: str, wave: int = 0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.procs: list[subprocess.Popen[str]] = []
        left = count
        while left > 0:
            n = min(PER_PROCESS, left)
            left -= n
            args = [sys.executable, "-m", "corral.plugins.parallel.simengine", str(cluster_file)]
            args += ["-n", str(n), "--queues", queues, "--wave", str(wave), "--trust"]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env))

    def registered(self) -> list[dict[str, Any]]:
        """Each process's line: engines and seconds from its first request to last reply."""
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"simulated engines {proc.pid} exited ({proc.wait()})")
            out.append(json.loads(line))
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _median_ms(call: Callable[[], Any], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _scheduler_us_per_task(cluster: Any, client: Any, tasks: int) -> float:
    """The task scheduler process's CPU per load-balanced no-op task (microseconds)."""
    view = client.load_balanced_view()
    for result in [view.apply_async(noop) for _ in range(500)]:  # warm up
        result.get(60)
    task = _proc(cluster, "corral-task")
    before = _cpu(task)
    results = [view.apply_async(noop) for _ in range(tasks)]
    for result in results:
        result.get(120)
    return (_cpu(task) - before) / tasks * 1e6


def bench_sim(sizes: list[int], queue_sizes: list[int], tasks: int) -> dict[str, Any]:
    out: dict[str, Any] = {"registration_s": {}, "heartbeat_cpu_pct": {}, "scheduler_us": {}}
    out["dview_1kb_ms"] = {}
    out["bview_1kb_ms"] = {}
    # Registration and heartbeats: engines with no queue sockets (descriptors are the
    # limit on one machine: the hub holds 3 connections per engine).
    for size in sizes:
        with corral_cluster(0, hb_period=1.0, hb_misses=5) as (cluster, client):
            crowd = Crowd(cluster.cluster_file, size, queues="none")
            try:
                lines = crowd.registered()
                seconds = max(line["seconds"] for line in lines)
                client.wait_for_engines(size, timeout=120)
                out["registration_s"][size] = seconds
                hub = _proc(cluster, "corral-hub")
                time.sleep(2.0)  # past the registrations' notices
                before, start = _cpu(hub), time.monotonic()
                time.sleep(10.0)
                pct = (_cpu(hub) - before) / (time.monotonic() - start) * 100
                out["heartbeat_cpu_pct"][size] = pct
                alive = len(client.ids)
                print(
                    f"sim {size:>5} engines: registered in {seconds:.2f} s; hub CPU at 1 beat/s "
                    f"{pct:.2f}% of a core; {alive} alive after 12 s",
                    flush=True,
                )
            finally:
                crowd.stop()
    # Scheduler cost, DirectView round trip, broadcast: engines with their queues.
    for size in queue_sizes:
        with corral_cluster(0, hb_period=1.0, hb_misses=5) as (cluster, client):
            crowd = Crowd(cluster.cluster_file, size, queues="mux,task,broadcast,control")
            try:
                crowd.registered()
                client.wait_for_engines(size, timeout=120)
                us = _scheduler_us_per_task(cluster, client, tasks)
                out["scheduler_us"][size] = us
                payload = b"x" * 1024
                dview = client[:]
                dview.apply_sync(noop, payload)
                ms = _median_ms(lambda d=dview, p=payload: d.apply_sync(noop, p), 30)
                out["dview_1kb_ms"][size] = ms
                bview = client.broadcast_view()
                bview.apply_sync(noop, payload)
                bms = _median_ms(lambda b=bview, p=payload: b.apply_sync(noop, p), 30)
                out["bview_1kb_ms"][size] = bms
                line = f"sim {size:>5} engines: scheduler {us:.1f} us/task; 1 kB DirectView "
                line += f"{ms:.1f} ms (BroadcastView {bms:.1f} ms)"
                if size >= 100:
                    blob = {"blob": b"y" * (2 * MB)}
                    hundred = client[client.ids[:100]]
                    hundred.push(blob, block=True)
                    push_s = _median_ms(lambda h=hundred, b=blob: h.push(b, block=True), 5) / 1000
                    out["push_2mb_100_s"] = push_s
                    line += f"; 2 MB push to 100 {push_s:.3f} s"
                print(line, flush=True)
            finally:
                crowd.stop()
    return out


def _throughput(client: Any, func: Callable[..., Any], tasks: int) -> float:
    view = client.load_balanced_view()
    start = time.perf_counter()
    results = [view.apply_async(func) for _ in range(tasks)]
    for result in results:
        result.get(300)
    return tasks / (time.perf_counter() - start)


def bench_real(counts: list[int], ipp_counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"corral": {}, "ipyparallel": {}}
    for count in counts:
        tasks = max(200, 25 * count)
        with corral_cluster(count) as (_cluster, client):
            client.wait_for_engines(count, timeout=300)
            rate = _throughput(client, sleep10, tasks)
            ms = _median_ms(lambda: client[0].apply_sync(sleep10), 30)
        out["corral"][count] = {"tasks_s": rate, "latency_ms": ms}
        line = f"real {count:>3} engines, 10 ms tasks: corral {rate:8.1f} tasks/s, {ms:.1f} ms"
        if count in ipp_counts:
            try:
                import ipyparallel

                with ipyparallel.Cluster(n=count, log_level=40) as rc:
                    rc.wait_for_engines(count, timeout=300)
                    ipp_rate = _throughput(rc, sleep10, tasks)
                    ipp_ms = _median_ms(lambda: rc[0].apply_sync(sleep10), 30)
                out["ipyparallel"][count] = {"tasks_s": ipp_rate, "latency_ms": ipp_ms}
                line += f"; ipyparallel {ipp_rate:8.1f} tasks/s, {ipp_ms:.1f} ms"
            except Exception as exc:  # noqa: BLE001 - a peer that fails is reported
                line += f"; ipyparallel failed: {exc!r}"
        print(line, flush=True)
    return out


def _tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(_cpu(p) for p in [root, *root.children(recursive=True)])


def bench_million(total: int, window: int) -> dict[str, Any]:
    """``total`` no-op tasks, ``window`` in flight at most, purged each tenth: per tenth,
    the throughput, the controller's CPU per task (all its processes: what the machine's
    other load does not change) and its RSS, and the load average."""
    with corral_cluster(2, db="sqlite") as (cluster, client):
        view = client.load_balanced_view()
        pid = cluster.pids()["controller"]
        tenth = total // 10
        rates: list[float] = []
        cpu_us: list[float] = []
        loadavg: list[float] = []
        rss = [_tree_rss(pid)]
        done = 0
        for _ in range(10):
            start, cpu = time.perf_counter(), _tree_cpu(pid)
            left = tenth
            while left:
                n = min(window, left)
                results = [view.apply_async(noop) for _ in range(n)]
                for result in results:
                    result.get(300)
                left -= n
            client.purge_results("all")
            rates.append(tenth / (time.perf_counter() - start))
            cpu_us.append((_tree_cpu(pid) - cpu) / tenth * 1e6)
            loadavg.append(os.getloadavg()[0])
            rss.append(_tree_rss(pid))
            done += tenth
            print(
                f"million: {done:>8} tasks, {rates[-1]:7.0f} tasks/s, controller CPU "
                f"{cpu_us[-1]:.0f} us/task, RSS {rss[-1] / MB:.1f} MB, load {loadavg[-1]:.1f}",
                flush=True,
            )
    return {
        "total": total,
        "rates": rates,
        "cpu_us": cpu_us,
        "loadavg": loadavg,
        "rss_mb": [r / MB for r in rss],
        "last_over_first": rates[-1] / rates[0],
        "cpu_first_over_last": cpu_us[0] / cpu_us[-1],
        "rss_growth_mb": (rss[-1] - rss[1]) / MB,
    }


def _controllers_cpu(pids: list[int]) -> float:
    return sum(_tree_cpu(pid) for pid in pids)


def _aggregate_run(view: Any, pids: list[int], tasks: int) -> tuple[float, float, float]:
    """(tasks/s, controller CPU us per task, client CPU us per task) for ``tasks`` no-op
    tasks through ``view`` (the client's: this process, its I/O threads included)."""
    for result in [view.apply_async(noop) for _ in range(500)]:
        result.get(60)
    cpu, mine, start = _controllers_cpu(pids), time.process_time(), time.perf_counter()
    for result in [view.apply_async(noop) for _ in range(tasks)]:
        result.get(300)
    wall = time.perf_counter() - start
    client_us = (time.process_time() - mine) / tasks * 1e6
    return tasks / wall, (_controllers_cpu(pids) - cpu) / tasks * 1e6, client_us


def bench_aggregated(tasks: int, controllers: int, rounds: int = 3) -> dict[str, Any]:
    """One controller with 2 engines against ``controllers`` controllers sharing 2 engines
    (parallel/shards.py): throughput and the CPU of every controller process per task.
    Both run side by side and take turns, ``rounds`` times, so the machine's other load
    falls on both alike; the figures are medians, with the load average of each turn."""
    from corral.plugins.parallel.shards import Shards

    one_runs: list[tuple[float, float, float]] = []
    many_runs: list[tuple[float, float, float]] = []
    loads: list[float] = []
    shards = Shards(2, controllers=controllers, profile="scale-bench", engine_timeout=120)
    with corral_cluster(2) as (cluster, client), shards as aggregate:
        single_pids = [cluster.pids()["controller"]]
        many_pids = [p["controller"] for p in shards.pids()]
        single_view = client.load_balanced_view()
        many_view = aggregate.load_balanced_view()
        for turn in range(rounds):
            one_runs.append(_aggregate_run(single_view, single_pids, tasks))
            many_runs.append(_aggregate_run(many_view, many_pids, tasks))
            loads.append(os.getloadavg()[0])
            (a, b) = one_runs[-1], many_runs[-1]
            print(
                f"aggregated turn {turn + 1}: 1 controller {a[0]:.0f} tasks/s, {a[1]:.0f} us "
                f"controller CPU/task, {a[2]:.0f} us client CPU/task; {controllers} "
                f"controllers {b[0]:.0f} tasks/s, {b[1]:.0f} us, {b[2]:.0f} us; "
                f"load {loads[-1]:.1f}",
                flush=True,
            )
        moved = many_view.moved
        many_view.close()
    one = [statistics.median(r[i] for r in one_runs) for i in range(3)]
    many = [statistics.median(r[i] for r in many_runs) for i in range(3)]
    ratio = many[1] / one[1]
    print(
        f"aggregated (median of {rounds}): 1 controller {one[0]:.0f} tasks/s, {one[1]:.0f} us "
        f"controller CPU/task, {one[2]:.0f} us client CPU/task; {controllers} controllers "
        f"{many[0]:.0f} tasks/s, {many[1]:.0f} us, {many[2]:.0f} us: cost {ratio:.2f}x (goal "
        f"<= 1.2x), client {many[2] / one[2]:.2f}x, throughput {many[0] / one[0]:.2f}x; "
        f"{moved} tasks moved; load {min(loads):.1f}-{max(loads):.1f}",
        flush=True,
    )
    return {
        "one": {"tasks_s": one[0], "cpu_us": one[1], "client_us": one[2]},
        "many": {
            "controllers": controllers,
            "tasks_s": many[0],
            "cpu_us": many[1],
            "client_us": many[2],
        },
        "cost_ratio": ratio,
        "client_ratio": many[2] / one[2],
        "moved": moved,
        "throughput_ratio": many[0] / one[0],
        "turns": {"one": one_runs, "many": many_runs, "loadavg": loads},
    }


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _threads_cpu(pid: int) -> tuple[float, int]:
    """(CPU seconds, voluntary context switches) of every thread of ``pid`` so far.

    The switches are the thread's wake-ups (each zmq I/O thread counted too). From
    ``/proc/<pid>/task/*/`` (nanoseconds, per thread) where there is one, else psutil.
    """
    cpu, woken = 0.0, 0
    tasks = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(tasks)
    except OSError:
        proc = psutil.Process(pid)
        return _cpu(proc), proc.num_ctx_switches().voluntary
    for tid in tids:
        try:
            cpu += int((tasks / tid / "schedstat").read_text().split()[0]) / 1e9
            for line in (tasks / tid / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    woken += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return cpu, woken


def _roles_cpu(roles: dict[str, list[int]]) -> dict[str, tuple[float, int]]:
    return {
        role: (sum(c for c, _ in stats), sum(w for _, w in stats))
        for role, stats in ((r, [_threads_cpu(p) for p in pids]) for r, pids in roles.items())
    }


def _per_task(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], tasks: int
) -> dict[str, dict[str, float]]:
    """CPU microseconds and wake-ups per task of each role, and their total."""
    out = {
        role: {
            "cpu_us": (after[role][0] - before[role][0]) / tasks * 1e6,
            "wakeups": (after[role][1] - before[role][1]) / tasks,
        }
        for role in after
    }
    out["total"] = {
        "cpu_us": sum(v["cpu_us"] for v in out.values()),
        "wakeups": sum(v["wakeups"] for v in out.values()),
    }
    return out


def _contention_round(
    submit: Callable[[], float], roles: dict[str, list[int]], tasks: int
) -> tuple[float, dict[str, dict[str, float]]]:
    before = _roles_cpu(roles)
    rate = submit()
    return rate, _per_task(before, _roles_cpu(roles), tasks)


def bench_contention(tasks: int, rounds: int = 3) -> dict[str, Any]:
    """corral against ProcessPoolExecutor (2 engines / workers), ``tasks`` no-op tasks per
    round, rounds alternating between the two; without, then with, two processes spinning
    on both cores. Per tool: the best and median throughput, and the CPU and wake-ups per
    task of each of its processes (the median round's), summed over all their threads:
    under a load that keeps the cores busy, a tool's throughput is about the CPU share
    its processes get over the CPU each task costs them."""
    out: dict[str, Any] = {}
    with ProcessPoolExecutor(2) as pool, corral_cluster(2) as (cluster, client):
        list(pool.map(noop, range(100)))
        client.wait_for_engines(2, timeout=120)
        _throughput(client, noop, 500)

        def ppe_run() -> float:
            start = time.perf_counter()
            for future in [pool.submit(noop) for _ in range(tasks)]:
                future.result()
            return tasks / (time.perf_counter() - start)

        pids = cluster.pids()
        controller = psutil.Process(pids["controller"])
        corral_roles: dict[str, list[int]] = {"client": [os.getpid()], "engines": pids["engines"]}
        for proc in [controller, *controller.children(recursive=True)]:
            role = proc.name().removeprefix("corral-") or "controller"
            corral_roles.setdefault(role, []).append(proc.pid)
        # the pool's workers: this process's children that are not the cluster's
        cluster_pids = {*pids["monitors"], *pids["engines"], pids["controller"]}
        workers = [
            p.pid
            for p in psutil.Process().children()
            if p.pid not in cluster_pids and "monitor" not in " ".join(p.cmdline())
        ]
        ppe_roles = {"client": [os.getpid()], "workers": workers}
        for hog in (False, True):
            stop = multiprocessing.Event()
            hogs = [
                multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(2 if hog else 0)
            ]
            for proc in hogs:
                proc.start()
            runs: dict[str, list[tuple[float, dict[str, dict[str, float]]]]] = {
                "ppe": [],
                "corral": [],
            }
            try:
                for _ in range(rounds):
                    runs["ppe"].append(_contention_round(ppe_run, ppe_roles, tasks))
                    runs["corral"].append(
                        _contention_round(
                            lambda: _throughput(client, noop, tasks), corral_roles, tasks
                        )
                    )
            finally:
                stop.set()
                for proc in hogs:
                    proc.join(10)
            section: dict[str, Any] = {"loadavg": os.getloadavg()[0]}
            for tool, results in runs.items():
                ordered = sorted(results, key=lambda r: r[0])
                section[tool] = {
                    "tasks_s": [r[0] for r in results],
                    "best_tasks_s": ordered[-1][0],
                    "median_tasks_s": ordered[len(ordered) // 2][0],
                    "per_task": ordered[len(ordered) // 2][1],
                }
            section["ratio_best"] = (
                section["corral"]["best_tasks_s"] / section["ppe"]["best_tasks_s"]
            )
            section["ratio_median"] = (
                section["corral"]["median_tasks_s"] / section["ppe"]["median_tasks_s"]
            )
            section["cpu_ratio"] = (
                section["corral"]["per_task"]["total"]["cpu_us"]
                / section["ppe"]["per_task"]["total"]["cpu_us"]
            )
            name = "hog" if hog else "quiet"
            out[name] = section
            for tool in ("ppe", "corral"):
                per = section[tool]["per_task"]
                shares = ", ".join(
                    f"{role} {v['cpu_us']:.0f}"
                    for role, v in per.items()
                    if role != "total" and v["cpu_us"] >= 0.5
                )
                print(
                    f"contention ({'2 spinning processes' if hog else 'no hog'}): {tool:6s} "
                    f"{section[tool]['median_tasks_s']:6.0f} tasks/s (best "
                    f"{section[tool]['best_tasks_s']:.0f}); CPU {per['total']['cpu_us']:.0f} "
                    f"us/task ({shares}); {per['total']['wakeups']:.2f} wake-ups/task",
                    flush=True,
                )
            print(
                f"contention ({'2 spinning processes' if hog else 'no hog'}): corral / "
                f"ProcessPoolExecutor {section['ratio_median']:.2f}x median, "
                f"{section['ratio_best']:.2f}x best; CPU per task {section['cpu_ratio']:.2f}x; "
                f"load average {section['loadavg']:.1f}",
                flush=True,
            )
    hogged = out["hog"]
    out.update(
        corral_tasks_s=hogged["corral"]["median_tasks_s"],
        ppe_tasks_s=hogged["ppe"]["median_tasks_s"],
        ratio=hogged["ratio_median"],
    )
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    real = results.get("real", {})
    ax = axes[0][0]
    for tool, style in (("corral", "o-"), ("ipyparallel", "s--")):
        series = real.get(tool) or {}
        if series:
            xs = sorted(int(k) for k in series)
            ax.plot(xs, [series[str(x)]["tasks_s"] for x in xs], style, label=tool)
    ax.set(xscale="log", xlabel="real engines", ylabel="10 ms tasks/s", title="Throughput")
    ax.legend()
    sim = results.get("sim", {})
    ax = axes[0][1]
    reg = sim.get("registration_s") or {}
    if reg:
        xs = sorted(int(k) for k in reg)
        ax.plot(xs, [reg[str(x)] for x in xs], "o-", label="registration (s)")
    hb = sim.get("heartbeat_cpu_pct") or {}
    if hb:
        xs = sorted(int(k) for k in hb)
        ax.plot(xs, [hb[str(x)] for x in xs], "s--", label="hub CPU for beats (% core)")
    ax.set(xscale="log", xlabel="simulated engines", title="Registration and heartbeats")
    ax.legend()
    ax = axes[1][0]
    sched = sim.get("scheduler_us") or {}
    dv = sim.get("dview_1kb_ms") or {}
    if sched:
        xs = sorted(int(k) for k in sched)
        ax.plot(xs, [sched[str(x)] for x in xs], "o-", label="scheduler CPU per task (us)")
    if dv:
        xs = sorted(int(k) for k in dv)
        ax.plot(xs, [dv[str(x)] for x in xs], "s-", label="1 kB DirectView round trip (ms)")
        ax.plot(list(IPP_DV_MS), list(IPP_DV_MS.values()), "x:", label="ipyparallel (published)")
    ax.set(xscale="log", yscale="log", xlabel="simulated engines", title="Per-task costs")
    ax.legend()
    ax = axes[1][1]
    million = results.get("million") or {}
    if million:
        tenths = [(i + 1) * 10 for i in range(len(million["rates"]))]
        ax.plot(tenths, million["rates"], "o-", label="tasks/s")
        if million.get("cpu_us"):
            ax.plot(tenths, million["cpu_us"], "^:", label="controller CPU us/task")
        ax.legend(loc="lower left")
        ax2 = ax.twinx()
        ax2.plot([0, *tenths], million["rss_mb"], "s--", color="tab:red", label="RSS (MB)")
        ax2.set_ylabel("controller RSS (MB)")
        ax.set(xlabel=f"% of {million['total']:,} no-op tasks", ylabel="tasks/s")
        ax.set_title("Long run, database on")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="*", default=["sim", "real", "million", "contention", "aggregated"]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes for `tox -e bench` (a few minutes); figures go to a temporary "
        "file, not to benchmarks/scale.json and docs/scale.png",
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 5000])
    parser.add_argument("--queue-sizes", type=int, nargs="*", default=[2, 256, 1000])
    parser.add_argument("--engines", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--ipp-engines", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="aggregated: turns of each")
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():  # only where the command line left the default
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
        if args.json == RESULTS:
            args.json = Path(tempfile.mkdtemp(prefix="corral-scale-")) / "scale.json"
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    os.environ.setdefault("CORRAL_DIR", tempfile.mkdtemp(prefix="corral-scale-"))
    sections: dict[str, Callable[[], Any]] = {
        "sim": lambda: bench_sim(args.sizes, args.queue_sizes, args.tasks),
        "real": lambda: bench_real(args.engines, args.ipp_engines),
        "million": lambda: bench_million(args.million, 10_000),
        "contention": lambda: bench_contention(args.tasks),
        "aggregated": lambda: bench_aggregated(args.tasks, 2, args.rounds),
    }
    for name in args.only:
        if name in sections:
            # JSON keys are strings: store as the plot reads them back.
            fresh = json.loads(json.dumps(sections[name]()))
            old = results.get(name)
            if isinstance(old, dict):  # a partial rerun keeps the other sizes' figures
                for key, value in fresh.items():
                    if isinstance(value, dict) and isinstance(old.get(key), dict):
                        old[key].update(value)
                    else:
                        old[key] = value
                fresh = old
            results[name] = fresh
            args.json.write_text(json.dumps(results, indent=1))
    if args.json == RESULTS:  # docs/scale.png draws benchmarks/scale.json
        plot(results, PLOT)


if __name__ == "__main__":
    main()
