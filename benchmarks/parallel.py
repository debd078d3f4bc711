"""Parallel computing: corral beside ipyparallel, dask.distributed, ProcessPoolExecutor and
raw pyzmq, in one run, with two engines (workers) each.

Figures, for every tool that has the feature:

* startup: from nothing to a client with 2 engines ready (median of a few starts);
* latency: median of sequential no-op ``apply_sync`` round trips (``submit().result()``);
* throughput: 5,000 no-op ``apply_async`` on the load-balanced view, submit all, wait all;
* map: a no-op mapped over 10,000 items, each tool's default chunking;
* push / pull: a 100 MB numpy array to one engine and back (dask: scatter / gather),
  best of PUSH_PULL_ROUNDS for each direction, as for raw pyzmq: one transfer of 100 MB
  over loopback on this shared 2-core machine varies between runs by 2-4x (raw pyzmq
  alone: 400-1,700 MB/s), so a single transfer says more about the neighbours than
  about the tool;
* controller RSS growth over 100k no-op tasks (corral: every controller process;
  ipyparallel: its controller; dask: the scheduler, which LocalCluster runs in-process);
* raw pyzmq: 100 MB over tcp 127.0.0.1 between two processes (DEALER/ROUTER), best of
  PUSH_PULL_ROUNDS: the ceiling for push and pull.

Prints a table and the ratios against corral's goals; never passes or fails. A peer that
is not installed is reported and skipped. Every cluster is stopped even when a
measurement fails, and the whole run is bounded (about 10 minutes at worst).

Run: ``python benchmarks/parallel.py`` (or ``tox -e bench``).
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import psutil

ENGINES = 2
STARTS = 3
LATENCY_CALLS = 200
THROUGHPUT_TASKS = 5_000
MAP_ITEMS = 10_000
ARRAY_MB = 100
PUSH_PULL_ROUNDS = 5
RSS_TASKS = 100_000
RSS_BATCH = 5_000
#: A peer that cannot do RSS_TASKS in this long is measured on the tasks it did.
RSS_BUDGET_S = 60.0

MB = 1024 * 1024

try:
    import corral  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


#: corral's ``encryption`` setting for this run (``--curve``: "curve").
ENCRYPTION = "none"
#: corral's controller ``transport`` for this run (``--ipc``: "ipc").
TRANSPORT = "tcp"


def noop(*args: Any) -> None:
    """The task: nothing, so what is measured is the framework."""
    return None


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def _tree(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid, *(child.pid for child in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _array() -> Any:
    import numpy

    return numpy.random.default_rng(0).integers(0, 255, ARRAY_MB * MB, dtype=numpy.uint8)


class Tool:
    """One framework's way of doing each measurement; ``None`` means not applicable."""

    name = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def latency(self) -> list[float]:
        raise NotImplementedError

    def throughput(self) -> float:
        raise NotImplementedError

    def map(self) -> float:
        raise NotImplementedError

    def push_pull(self) -> tuple[float, float] | None:
        return None

    def rss_growth(self) -> tuple[float, int] | None:
        return None

    def _rss_run(self, submit_batch: Callable[[int], None], pids: Callable[[], list[int]]):
        """Run up to RSS_TASKS tasks in batches; return (MB grown, tasks run)."""
        submit_batch(RSS_BATCH)  # warm: first-use allocations are not growth
        before = _rss(pids())
        done = 0
        started = time.monotonic()
        while done < RSS_TASKS and time.monotonic() - started < RSS_BUDGET_S:
            submit_batch(RSS_BATCH)
            done += RSS_BATCH
        return (_rss(pids()) - before) / MB, done


def _timed_start(tool_factory: Callable[[], Tool]) -> tuple[float, Tool]:
    tool = tool_factory()
    started = time.perf_counter()
    tool.start()
    return time.perf_counter() - started, tool


# ---------------------------------------------------------------------- view API


class ViewTool(Tool):
    """A tool with ipyparallel's view API: ``direct`` (one engine) and ``lview`` (load
    balanced). corral and ipyparallel are measured by this same code."""

    direct: Any
    lview: Any

    def latency(self) -> list[float]:
        times = []
        for _ in range(LATENCY_CALLS):
            started = time.perf_counter()
            self.direct.apply_sync(noop)
            times.append(time.perf_counter() - started)
        return times

    def throughput(self) -> float:
        started = time.perf_counter()
        results = [self.lview.apply_async(noop) for _ in range(THROUGHPUT_TASKS)]
        for result in results:
            result.get()
        return THROUGHPUT_TASKS / (time.perf_counter() - started)

    def map(self) -> float:
        started = time.perf_counter()
        self.lview.map_sync(noop, range(MAP_ITEMS))
        return MAP_ITEMS / (time.perf_counter() - started)

    def push_pull(self) -> tuple[float, float]:
        array = _array()
        started = time.perf_counter()
        self.direct.push({"bench_array": array}, block=True)
        push = time.perf_counter() - started
        started = time.perf_counter()
        back = self.direct.pull("bench_array", block=True)
        pull = time.perf_counter() - started
        assert back.nbytes == array.nbytes
        return ARRAY_MB / push, ARRAY_MB / pull


# ---------------------------------------------------------------------- corral


class Corral(ViewTool):
    name = "corral"

    def start(self) -> None:
        import corral.plugins.parallel.cluster as cluster_module

        self.cluster = cluster_module.Cluster(
            n=ENGINES,
            profile="bench",
            engine_timeout=60,
            encryption=ENCRYPTION,
            transport=TRANSPORT,
        )
        self.client = self.cluster.start_and_connect()
        self.lview = self.client.load_balanced_view()
        self.direct = self.client[self.client.ids[0]]

    def stop(self) -> None:
        self.cluster.stop()

    def rss_growth(self) -> tuple[float, int]:
        def batch(n: int) -> None:
            results = [self.lview.apply_async(noop) for _ in range(n)]
            for result in results:
                result.get()
            # A client keeps results it was given; the controller must not.
            purge = getattr(self.client, "purge_results", None)
            if purge is not None:
                purge("all")

        return self._rss_run(batch, lambda: _tree(self.cluster.pids()["controller"]))


# ---------------------------------------------------------------------- ipyparallel


class IPyParallel(ViewTool):
    name = "ipyparallel"

    def start(self) -> None:
        import ipyparallel

        self.cluster = ipyparallel.Cluster(n=ENGINES, log_level=40)
        self.client = self.cluster.start_and_connect_sync()
        self.lview = self.client.load_balanced_view()
        self.direct = self.client[0]

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.stop_cluster_sync()

    def rss_growth(self) -> tuple[float, int]:
        def batch(n: int) -> None:
            results = [self.lview.apply_async(noop) for _ in range(n)]
            for result in results:
                result.get()
            self.client.purge_everything()

        pid = self.cluster.controller.pid
        return self._rss_run(batch, lambda: _tree(pid))


# ---------------------------------------------------------------------- dask


class Dask(Tool):
    name = "dask"

    def start(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=ENGINES,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(ENGINES)

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()

    def latency(self) -> list[float]:
        times = []
        for _ in range(LATENCY_CALLS):
            started = time.perf_counter()
            self.client.submit(noop, pure=False).result()
            times.append(time.perf_counter() - started)
        return times

    def throughput(self) -> float:
        from dask.distributed import wait

        started = time.perf_counter()
        futures = [self.client.submit(noop, pure=False) for _ in range(THROUGHPUT_TASKS)]
        wait(futures)
        self.client.gather(futures)
        return THROUGHPUT_TASKS / (time.perf_counter() - started)

    def map(self) -> float:
        started = time.perf_counter()
        futures = self.client.map(noop, range(MAP_ITEMS), pure=False)
        self.client.gather(futures)
        return MAP_ITEMS / (time.perf_counter() - started)

    def push_pull(self) -> tuple[float, float]:
        array = _array()
        worker = next(iter(self.client.scheduler_info()["workers"]))
        started = time.perf_counter()
        future = self.client.scatter(array, workers=[worker], direct=True)
        push = time.perf_counter() - started
        started = time.perf_counter()
        back = self.client.gather(future, direct=True)
        pull = time.perf_counter() - started
        assert back.nbytes == array.nbytes
        return ARRAY_MB / push, ARRAY_MB / pull

    def rss_growth(self) -> tuple[float, int]:
        def batch(n: int) -> None:
            futures = [self.client.submit(noop, pure=False) for _ in range(n)]
            self.client.gather(futures)
            del futures

        # LocalCluster's scheduler lives in this process, beside the client.
        return self._rss_run(batch, lambda: [os.getpid()])


# ---------------------------------------------------------------------- ProcessPoolExecutor


class Pool(Tool):
    name = "ProcessPool"

    def start(self) -> None:
        self.pool = ProcessPoolExecutor(ENGINES, mp_context=multiprocessing.get_context("fork"))
        # The pool starts workers lazily: 2 ready means both have answered once.
        list(self.pool.map(noop, range(ENGINES)))

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def latency(self) -> list[float]:
        times = []
        for _ in range(LATENCY_CALLS):
            started = time.perf_counter()
            self.pool.submit(noop).result()
            times.append(time.perf_counter() - started)
        return times

    def throughput(self) -> float:
        started = time.perf_counter()
        futures = [self.pool.submit(noop) for _ in range(THROUGHPUT_TASKS)]
        futures_wait(futures)
        return THROUGHPUT_TASKS / (time.perf_counter() - started)

    def map(self) -> float:
        started = time.perf_counter()
        list(self.pool.map(noop, range(MAP_ITEMS)))
        return MAP_ITEMS / (time.perf_counter() - started)


# ---------------------------------------------------------------------- raw pyzmq


def _zmq_sink(url: str, rounds: int) -> None:
    """Child: say hello, then receive each big message and answer with a small one."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(url)
    sock.send(b"ready")
    for _ in range(rounds):
        sock.recv(copy=False)
        sock.send(b"ok")
    sock.close()


def raw_zmq_mb_s(rounds: int = PUSH_PULL_ROUNDS) -> float:
    """Best of ``rounds`` transfers of ARRAY_MB to another process, each until its ack."""
    import zmq

    payload = _array()
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_zmq_sink, args=(f"tcp://127.0.0.1:{port}", rounds))
    child.start()
    try:
        if not sock.poll(10_000):
            raise RuntimeError("raw zmq peer did not connect")
        identity = sock.recv_multipart()[0]
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            sock.send_multipart([identity, payload], copy=False)
            sock.recv_multipart()
            best = min(best, time.perf_counter() - started)
        return ARRAY_MB / best
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        sock.close(linger=0)


# ---------------------------------------------------------------------- running


def measure(factory: Callable[[], Tool], results: dict[str, dict[str, Any]]) -> None:
    """Every figure of one tool; an error in one is reported and the others still run."""
    row: dict[str, Any] = {}
    name = factory.name  # type: ignore[attr-defined]
    results[name] = row
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    starts = []
    try:
        for index in range(STARTS):
            seconds, tool = _timed_start(factory)
            starts.append(seconds)
            if index < STARTS - 1:
                tool.stop()
    except ImportError as error:
        row["error"] = f"not installed ({error.name})"
        print(f"  {name}: {row['error']}", file=sys.stderr, flush=True)
        return
    except Exception as error:
        traceback.print_exc()
        row["error"] = f"failed to start: {error!r}"[:200]
        return
    row["startup"] = statistics.median(starts)
    try:
        for key, method in (
            ("latency", lambda: _median_ms(tool.latency())),
            ("throughput", tool.throughput),
            ("map", tool.map),
            ("push_pull", lambda: _best_push_pull(tool)),
            ("rss", tool.rss_growth),
        ):
            try:
                row[key] = method()
            except Exception as error:
                traceback.print_exc()
                row[key] = f"error: {error!r}"[:60]
            print(f"  {key}: {row[key]}", file=sys.stderr, flush=True)
    finally:
        tool.stop()


def _best_push_pull(tool: Tool) -> tuple[float, float] | None:
    """The best push and the best pull (MB/s) of PUSH_PULL_ROUNDS, like raw_zmq_mb_s."""
    rounds = [tool.push_pull() for _ in range(PUSH_PULL_ROUNDS)]
    if rounds[0] is None:
        return None
    return max(r[0] for r in rounds), max(r[1] for r in rounds)  # type: ignore[index]


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def report(results: dict[str, dict[str, Any]], raw_mb_s: float | None) -> None:
    header = (
        f"{'tool':<12} {'startup s':>9} {'latency ms':>10} {'apply/s':>9} {'map items/s':>11}"
        f" {'push MB/s':>9} {'pull MB/s':>9} {'ctrl RSS +MB':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        if "error" in row:
            print(f"{name:<12} {row['error']}")
            continue
        push_pull = row.get("push_pull")
        push, pull = push_pull if isinstance(push_pull, tuple) else (push_pull, push_pull)
        rss = row.get("rss")
        rss_text = f"{rss[0]:.1f} ({rss[1] // 1000}k)" if isinstance(rss, tuple) else _fmt(rss, "")
        print(
            f"{name:<12} {_fmt(row.get('startup'), '9.3f'):>9}"
            f" {_fmt(row.get('latency'), '10.3f'):>10}"
            f" {_fmt(row.get('throughput'), '9.0f'):>9} {_fmt(row.get('map'), '11.0f'):>11}"
            f" {_fmt(push, '9.0f'):>9} {_fmt(pull, '9.0f'):>9} {rss_text:>14}"
        )
    print(f"{'raw pyzmq':<12} {'':>9} {'':>10} {'':>9} {'':>11} {_fmt(raw_mb_s, '9.0f'):>9}")

    print()
    print("ratios (goal in brackets):")
    corral = results.get("corral", {})

    def ratio(label: str, key: str, peer: str, goal: str, invert: bool = False) -> None:
        mine, theirs = corral.get(key), results.get(peer, {}).get(key)
        if not isinstance(mine, float) or not isinstance(theirs, float) or not theirs:
            print(f"  {label:<34} n/a  [{goal}]")
            return
        print(f"  {label:<34} {mine / theirs:6.2f}  [{goal}]")

    ratio("throughput vs ipyparallel", "throughput", "ipyparallel", ">= 10")
    ratio("throughput vs dask", "throughput", "dask", ">= 5")
    ratio("throughput vs ProcessPool", "throughput", "ProcessPool", ">= 1")
    ratio("map vs ipyparallel", "map", "ipyparallel", "higher is better")
    ratio("map vs dask", "map", "dask", "higher is better")
    ratio("map vs ProcessPool", "map", "ProcessPool", "higher is better")
    ratio("latency vs ipyparallel", "latency", "ipyparallel", "<= 0.1")
    ratio("latency vs dask", "latency", "dask", "lower is better")
    ratio("startup vs dask", "startup", "dask", "<= 0.5")
    ratio("startup vs ipyparallel", "startup", "ipyparallel", "lower is better")
    push_pull = corral.get("push_pull")
    for index, label in enumerate(("push", "pull")):
        if isinstance(push_pull, tuple) and raw_mb_s:
            print(f"  {label + ' vs raw pyzmq':<34} {push_pull[index] / raw_mb_s:6.2f}  [>= 0.7]")
        else:
            print(f"  {label + ' vs raw pyzmq':<34} n/a  [>= 0.7]")
    rss = corral.get("rss")
    if isinstance(rss, tuple):
        print(f"  {'controller RSS growth, MB':<34} {rss[0]:6.1f}  [<= 30 over 100k tasks]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="*", help="tools to run: corral ipyparallel dask ProcessPool raw"
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt: corral with encryption='curve', ipyparallel with IPP_ENABLE_CURVE=1",
    )
    parser.add_argument("--ipc", action="store_true", help="corral's controller on ipc sockets")
    args = parser.parse_args(argv)
    if args.ipc:
        global TRANSPORT
        TRANSPORT = "ipc"
    if args.curve:
        global ENCRYPTION
        ENCRYPTION = "curve"
        os.environ["IPP_ENABLE_CURVE"] = "1"
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every cluster is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The last line of defence for the 10-minute bound: dump stacks and exit.
    faulthandler.dump_traceback_later(570, exit=True)
    wanted = set(args.only or ["corral", "ipyparallel", "dask", "ProcessPool", "raw"])
    with tempfile.TemporaryDirectory() as root:
        os.environ.setdefault("CORRAL_DIR", str(Path(root) / "corral"))
        results: dict[str, dict[str, Any]] = {}
        for factory in (Corral, IPyParallel, Dask, Pool):
            if factory.name in wanted:
                measure(factory, results)
        raw = None
        if "raw" in wanted:
            try:
                raw = raw_zmq_mb_s()
            except Exception:
                traceback.print_exc()
    print()
    report(results, raw)


if __name__ == "__main__":
    main()
