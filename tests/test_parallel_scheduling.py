"""Load balancing: the policies, late assignment with a bounded prefetch, and what a dead
engine costs (controller/policies.py, controller/queues.py ``TaskScheduler``).

The promises: an engine holds at most ``hwm`` load-balanced tasks and the rest wait in
the scheduler's backlog; when an engine dies only the task it may have started spends a
retry (or fails), every task merely queued there runs elsewhere; engines that come later
take work from the backlog; a cluster with no engines says so.

The policy and scheduler-state tests need no sockets (the scheduler is driven through
the methods its loop calls); the others run a real controller and real engines, and kill
engines with SIGKILL.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import until
from parallel_client_harness import LiveCluster

from corral.core import compat
from corral.plugins.parallel.client import (
    Client,
    DependencyTimeout,
    EngineError,
    NoEnginesRegistered,
)
from corral.plugins.parallel.controller import policies
from corral.plugins.parallel.controller.liveness import local_engine_dead
from corral.plugins.parallel.controller.main import ControllerConfig, start_controller
from corral.plugins.parallel.controller.queues import STARTED, TaskScheduler
from corral.plugins.parallel.engine import engine as engine_module
from corral.transports.zmq import wire

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


# ------------------------------------------------------------------ policies (pure)


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_every_policy_returns_a_valid_index(name: str) -> None:
    policy = policies.get_policy(name)
    rng = random.Random(1)
    for n in range(1, 9):
        for _ in range(50):
            loads = [rng.randrange(5) for _ in range(n)]
            used = [rng.random() for _ in range(n)]
            index = policy(loads, used, rng, rng.randrange(n))
            assert 0 <= index < n


def test_least_load_picks_the_minimum_round_robin_on_ties() -> None:
    rng = random.Random(0)
    assert policies.least_load([3, 1, 2], [0, 0, 0], rng, 0) == 1
    # ties go to the first at or after the cursor, wrapping around
    assert policies.least_load([1, 1, 1], [0, 0, 0], rng, 2) == 2
    assert policies.least_load([0, 5, 0], [0, 0, 0], rng, 1) == 2
    assert policies.least_load([2, 5, 2], [0, 0, 0], rng, 1) == 2


def test_lru_picks_the_least_recently_used() -> None:
    assert policies.lru([0, 0, 9], [5.0, 2.0, 1.0], random.Random(0), 0) == 2
    assert policies.lru([0, 0], [3.0, 3.0], random.Random(0), 1) == 0


def test_two_bin_never_picks_the_more_loaded_of_its_pair_and_random_covers_all() -> None:
    rng = random.Random(7)
    picks = {policies.two_bin([0, 10], [0, 0], rng, 0) for _ in range(50)}
    assert picks == {0}  # with two candidates the pair is always both
    seen = {policies.plain_random([0, 0, 0, 0], [0] * 4, rng, 0) for _ in range(400)}
    assert seen == {0, 1, 2, 3}


def test_weighted_prefers_idle_engines() -> None:
    rng = random.Random(3)
    counts = [0, 0]
    for _ in range(4000):
        counts[policies.weighted([0, 9], [0, 0], rng, 0)] += 1
    # weights 1 and 1/10: the idle engine is picked about 10 times as often
    assert counts[0] > 5 * counts[1] > 0


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown scheduling policy 'fastest'.*leastload"):
        policies.get_policy("fastest")
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        ControllerConfig(db="none", policy="fastest")
    with pytest.raises(ValueError, match="hwm"):
        ControllerConfig(db="none", hwm=-1)


# ------------------------------------------------------------ scheduler state (no sockets)

KEY = b"test-key"


class Driven:
    """A TaskScheduler driven through the calls its loop makes, with no sockets: what
    it would send to engines and clients is read from its outgoing buffers."""

    def __init__(self, **kw: Any) -> None:
        self.sched = TaskScheduler(
            key=KEY, monitor_url="tcp://127.0.0.1:1", notification_url="tcp://127.0.0.1:2", **kw
        )
        self.signer = wire.Signer(KEY)
        self.count = 0

    def add(self, eid: int) -> bytes:
        engine = f"engine-{eid}".encode()
        self.sched.engines[engine] = eid
        self.sched.engine_added(engine, eid)
        return engine

    def remove(self, engine: bytes) -> None:
        eid = self.sched.engines[engine]
        self.sched.drop_backlog(engine)
        self.sched.engine_removed(engine, eid)
        del self.sched.engines[engine]

    def submit(self, **metadata: Any) -> str:
        self.count += 1
        msg_id = f"t{self.count}"
        header = {"msg_id": msg_id, "msg_type": "apply_request"}
        parts = [json.dumps(p).encode() for p in (header, {}, metadata, {})]
        frames = [b"client", wire.DELIMITER, self.signer.sign(parts), *parts]
        self.sched.route_request(frames, header, metadata)
        return msg_id

    def notice(self, engine: bytes, through: str) -> None:
        """The engine's start notice: tasks up to ``through`` may start."""
        parts = [
            json.dumps({"msg_id": f"notice-{through}", "msg_type": "task_started"}).encode(),
            b"{}",
            b"{}",
            json.dumps({"through": through}).encode(),
        ]
        self.sched._engine_reply([engine, STARTED, wire.DELIMITER, self.signer.sign(parts), *parts])

    def reply(self, engine: bytes, msg_id: str) -> None:
        self.sched.record_reply(engine, msg_id, [b"{}", b"{}", b'{"status": "ok"}', b"{}"])

    def sent(self) -> dict[bytes, list[str]]:
        """msg_ids sent to each engine since the last call."""
        out: dict[bytes, list[str]] = {}
        for engine, messages in self.sched._to_engines.items():
            # [client, route seal, DELIM, signature, header, ...]
            out[engine] = [json.loads(m[m.index(wire.DELIMITER) + 2])["msg_id"] for m in messages]
        self.sched._to_engines = {}
        return out

    def errors(self) -> dict[str, str]:
        """msg_id -> ename of the error replies the scheduler made since the last call."""
        out = {}
        for messages in self.sched._to_clients.values():
            for m in messages:
                at = m.index(wire.DELIMITER)
                parent, content = json.loads(m[at + 3]), json.loads(m[at + 5])
                out[parent["msg_id"]] = f"{content['ename']}: {content['evalue']}"
        self.sched._to_clients = {}
        return out


def test_an_engine_holds_at_most_hwm_tasks_the_rest_wait_in_order() -> None:
    d = Driven(hwm=2)
    a, b = d.add(0), d.add(1)
    ids = [d.submit() for _ in range(10)]
    sent = d.sent()
    assert sorted(sent[a] + sent[b]) == sorted(ids[:4])
    assert len(sent[a]) == len(sent[b]) == 2
    assert [j.msg_id for j in d.sched.pool] == ids[4:]
    d.reply(a, sent[a][0])
    assert d.sent() == {a: [ids[4]]}  # the oldest waiting task, to the engine with room


def test_a_dead_engine_costs_a_retry_only_for_its_oldest_task() -> None:
    d = Driven(hwm=3)
    a = d.add(0)
    ids = [d.submit(retries=0) for _ in range(5)]
    assert d.sent() == {a: ids[:3]}
    d.reply(a, ids[0])
    d.sent()  # ids[3] goes to a
    b = d.add(1)
    assert d.sent() == {b: [ids[4]]}
    d.remove(a)  # a held ids[1] (may have started), ids[2], ids[3] (never started)
    assert list(d.errors()) == [ids[1]]
    assert d.sent() == {b: [ids[2], ids[3]]}  # in the order they were first sent
    assert d.sched.jobs[ids[2]].retries == 0


def test_start_notices_say_exactly_which_tasks_may_have_run() -> None:
    d = Driven(hwm=0)
    a = d.add(0)
    ids = [d.submit(retries=1) for _ in range(6)]
    d.notice(a, ids[0])
    d.reply(a, ids[0])
    d.notice(a, ids[2])  # a group of two: ids[1] and ids[2] may run, ids[3:] may not
    d.sent()
    d.remove(a)
    assert not d.errors()
    assert [(j.msg_id, j.retries) for j in d.sched.pool] == [
        (ids[1], 0),
        (ids[2], 0),
        (ids[3], 1),
        (ids[4], 1),
        (ids[5], 1),
    ]
    # Everything announced was answered: the engine died between tasks, none ran.
    b = d.add(1)
    assert d.sent() == {b: ids[1:]}
    d.notice(b, ids[1])
    d.reply(b, ids[1])
    d.remove(b)
    assert [j.retries for j in d.sched.pool] == [0, 1, 1, 1]


def test_the_engine_and_the_scheduler_agree_on_the_notice_route() -> None:
    assert engine_module._STARTED_ROUTE == STARTED
    assert STARTED[:1] == b"\x00"  # ZeroMQ refuses such client ids: no reply looks like it


def test_a_retry_is_spent_by_the_started_task_only() -> None:
    d = Driven(hwm=0)  # no bound: today's all-at-once dispatch, same accounting
    a = d.add(0)
    ids = [d.submit(retries=1) for _ in range(4)]
    assert d.sent() == {a: ids}
    d.remove(a)
    assert not d.errors()
    assert [j.retries for j in d.sched.pool] == [0, 1, 1, 1]
    assert [j.msg_id for j in d.sched.pool] == ids
    b = d.add(1)
    assert d.sent() == {b: ids}


def _engine_answers(d: Driven, engine: bytes, msg_id: str, status: str) -> None:
    """``engine``'s reply to ``msg_id`` as the scheduler's loop hands it over, verified."""
    parts = [
        json.dumps({"msg_id": f"r-{msg_id}", "msg_type": "apply_reply"}).encode(),
        json.dumps({"msg_id": msg_id}).encode(),
        json.dumps({"status": status}).encode(),
        json.dumps({"status": status}).encode(),
    ]
    d.sched._accept_reply(([engine, b"client", wire.DELIMITER, b"sig", *parts], parts, msg_id))


def test_a_failed_task_with_retries_goes_to_an_engine_that_has_not_run_it() -> None:
    """ipyparallel's ``retries`` also covers a task that raised: it is tried again
    elsewhere. Never on an engine that ran it (the engine refuses a request it has
    seen: the retry would wait for ever); with no such engine left, the error stands."""
    d = Driven()
    first, second, third = d.add(0), d.add(1), d.add(2)
    flaky = d.submit(retries=5)
    (ran_on,) = [engine for engine, ids in d.sent().items() if flaky in ids]
    _engine_answers(d, ran_on, flaky, "error")
    assert not d.sched._to_clients  # withheld: the task runs again
    (again_on,) = [engine for engine, ids in d.sent().items() if flaky in ids]
    assert again_on != ran_on
    _engine_answers(d, again_on, flaky, "error")
    (last_on,) = [engine for engine, ids in d.sent().items() if flaky in ids]
    assert last_on not in (ran_on, again_on) and {ran_on, again_on, last_on} == {
        first,
        second,
        third,
    }
    _engine_answers(d, last_on, flaky, "error")  # every engine ran it: the error stands
    assert d.sched._to_clients and flaky not in d.sched.jobs
    assert not any(flaky in ids for ids in d.sent().values())
    plain = d.submit()  # no retries: the first error is the answer
    (ran_on,) = [engine for engine, ids in d.sent().items() if plain in ids]
    d.sched._to_clients = {}
    _engine_answers(d, ran_on, plain, "error")
    assert d.sched._to_clients and plain not in d.sched.jobs


def test_new_engines_take_from_the_backlog_and_targets_are_honoured() -> None:
    d = Driven(hwm=1)
    a = d.add(0)
    anywhere = [d.submit() for _ in range(3)]
    pinned = d.submit(targets=[2])
    assert d.sent() == {a: anywhere[:1]}
    d.add(1)
    c = d.add(2)
    sent = d.sent()
    assert sent[c] == [pinned]  # the targeted task does not wait behind the others
    assert sent[b"engine-1"] == [anywhere[1]]
    d.remove(c)
    d.reply(a, anywhere[0])
    assert d.sent() == {a: [anywhere[2]]}
    assert d.errors() == {pinned: "EngineError: engine 2 died"}


class Anywhere:
    targets = None
    avoid = None


def test_the_scheduler_s_least_load_picks_a_least_loaded_engine() -> None:
    """The hot path uses the bucketed index (loadindex.py), not the scan: same choice of
    load as policies.least_load (ties may go to another engine of the same load)."""
    rng = random.Random(5)
    d = Driven(hwm=0)
    engines = [d.add(i) for i in range(5)]
    for _ in range(300):
        for engine in engines:
            d.sched.load[engine] = rng.randrange(4)
        n = len(engines)
        expected = policies.least_load([d.sched.load[e] for e in engines], [0] * n, rng, 0)
        chosen = d.sched._choose(Anywhere())  # type: ignore[arg-type]
        assert d.sched.load[chosen] == d.sched.load[engines[expected]]


def test_least_load_ties_go_round_robin_through_the_scheduler() -> None:
    d = Driven(hwm=0)
    engines = [d.add(i) for i in range(4)]
    order = []
    for _ in range(8):  # one task at a time, answered at once: every engine is tied at 0
        msg_id = d.submit()
        assert msg_id
        ((engine, ids),) = d.sent().items()
        order.append(engine)
        d.reply(engine, ids[0])
    assert order == engines + engines


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_every_policy_respects_the_prefetch_bound(name: str) -> None:
    d = Driven(hwm=2, policy=name, seed=1)
    a, b, c = d.add(0), d.add(1), d.add(2)
    ids = [d.submit() for _ in range(9)]
    sent = d.sent()
    assert sorted(len(sent.get(e, [])) for e in (a, b, c)) == [2, 2, 2]
    assert len(d.sched.pool) == 3
    for engine in (a, b, c):
        for msg_id in sent[engine]:
            d.reply(engine, msg_id)
    assert sorted(sum(d.sent().values(), [])) == sorted(ids[6:])


def test_no_engines_logs_and_a_timeout_says_so(caplog: pytest.LogCaptureFixture) -> None:
    d = Driven()
    with caplog.at_level(logging.WARNING, logger="corral.plugins.parallel.controller.queues"):
        waiting = d.submit()
        timed = d.submit(timeout=0)
    assert "no engines registered" in caplog.text
    d.sched.on_timer(time.monotonic())
    errors = d.errors()
    assert waiting not in errors
    expected = f"DependencyTimeout: task {timed} timed out waiting: no engines registered"
    assert errors[timed] == expected
    a = d.add(0)
    assert d.sent() == {a: [waiting]}


# ------------------------------------------------------------ real engines, kill -9


def mark_then_wait(folder: str, index: int, release: str) -> int:
    """Engine side: note that task ``index`` started in this process, then wait for the
    file ``release``; returns the pid."""
    (Path(folder) / f"{index}-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def started(folder: Path) -> dict[int, set[int]]:
    """task index -> the pids it started in"""
    out: dict[int, set[int]] = {}
    for entry in folder.iterdir():
        index, pid = entry.name.split("-")
        out.setdefault(int(index), set()).add(int(pid))
    return out


@pytest.mark.parametrize("retries", [0, 1])
def test_kill_engine_with_queued_tasks_fails_only_what_it_ran(tmp_path: Path, retries: int) -> None:
    live = LiveCluster(tmp_path / "corral", n=2)
    try:
        rc = live.client
        marks, release = tmp_path / "marks", str(tmp_path / "release")
        marks.mkdir()
        lview = rc.load_balanced_view()
        n = 40
        with lview.temp_flags(retries=retries):
            results = [lview.apply_async(mark_then_wait, str(marks), i, release) for i in range(n)]
        # Each engine runs one task and holds the others of its share, queued.
        until(lambda: len({p for ps in started(marks).values() for p in ps}) == 2)
        victim = rc.engines[0].pid
        (running,) = [i for i, pids in started(marks).items() if victim in pids]
        os.kill(victim, signal.SIGKILL)
        until(lambda: rc.ids == [1])
        Path(release).touch()
        failed = []
        for i, result in enumerate(results):
            try:
                assert result.get(timeout=60) == rc.engines[1].pid
            except EngineError:
                failed.append(i)
        assert failed == ([running] if retries == 0 else [])
        # Every task started exactly once on the survivor, the killed one once more if
        # it had a retry; nothing ran twice otherwise.
        runs = started(marks)
        assert sorted(runs) == list(range(n))
        survivor = rc.engines[1].pid
        for i, pids in runs.items():
            if i == running:
                assert pids == ({victim} if retries == 0 else {victim, survivor})
            else:
                assert len(pids) == 1
    finally:
        live.stop()


def test_a_new_engine_takes_work_already_queued(tmp_path: Path) -> None:
    live = LiveCluster(tmp_path / "corral", n=1, controller_args=("--hwm", "2"))
    try:
        rc = live.client
        marks, release = tmp_path / "marks", str(tmp_path / "release")
        marks.mkdir()
        lview = rc.load_balanced_view()
        results = [lview.apply_async(mark_then_wait, str(marks), i, release) for i in range(10)]
        until(lambda: started(marks))
        first = rc.engines[0].pid
        live.add_engine()
        rc.wait_for_engines(2, timeout=60)
        # The newcomer starts a task while the first engine is still blocked: it took
        # one from the backlog (with every task sent at once it would get none).
        until(lambda: {p for ps in started(marks).values() for p in ps} - {first})
        Path(release).touch()
        pids = [r.get(timeout=60) for r in results]
        assert set(pids) == {first, rc.engines[1].pid}
    finally:
        live.stop()


def test_no_engines_waits_says_so_and_runs_once_one_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    handle = start_controller("noengines", mode="threads", db="memory")
    try:
        rc = Client(connection_file=handle.cluster_file)
        lview = rc.load_balanced_view()
        with caplog.at_level(logging.WARNING, logger="corral.plugins.parallel.controller.queues"):
            waiting = lview.apply_async(os.getpid)
            until(lambda: "no engines registered" in caplog.text)
        with pytest.raises(concurrent.futures.TimeoutError) as info:
            waiting.get(timeout=0.2)
        assert waiting.msg_ids[0] in str(info.value)
        assert "no engines registered" in str(info.value)
        with lview.temp_flags(timeout=0.2):
            timed = lview.apply_async(os.getpid)
        with pytest.raises(DependencyTimeout, match="no engines registered"):
            timed.get(timeout=30)
        live_engine = LiveClusterEngine(handle.cluster_file, tmp_path / "corral")
        try:
            rc.wait_for_engines(1, timeout=60)
            assert waiting.get(timeout=60) == rc.engines[0].pid
        finally:
            live_engine.stop()
        rc.close()
    finally:
        handle.stop()


class LiveClusterEngine:
    """One engine process for a controller started in this process."""

    def __init__(self, cluster_file: Path, corral_dir: Path) -> None:
        import subprocess

        env = dict(os.environ, CORRAL_DIR=str(corral_dir))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral.plugins.parallel.engine", "--file", str(cluster_file)],
            env=env,
            start_new_session=True,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.mark.skipif(
    not compat.HAS_UNIX_SOCKETS,
    reason="the same-host death check asks the engine's Unix socket; in Windows mode a "
    "monitor's report or the heartbeat tells",
)
def test_direct_tasks_of_a_killed_engine_fail_before_the_heartbeat_says_so(
    tmp_path: Path,
) -> None:
    # Heartbeats every 20 s, 3 misses: the hub would need a minute to declare the death.
    live = LiveCluster(tmp_path / "corral", n=2, hb_period=20.0, hb_misses=3)
    try:
        rc = live.client
        marks, release = tmp_path / "marks", str(tmp_path / "release")
        marks.mkdir()
        victim = rc.engines[1].pid
        running = rc[1].apply_async(mark_then_wait, str(marks), 0, release)
        queued = [rc[1].apply_async(os.getpid) for _ in range(5)]
        until(lambda: started(marks))
        os.kill(victim, signal.SIGKILL)
        for result in [running, *queued]:
            with pytest.raises(EngineError) as info:
                result.get(timeout=15)  # far less than the heartbeat's verdict
            assert info.value.engine_id == 1
        assert 1 in rc.ids  # the hub has not declared it dead yet ...
        with pytest.raises(EngineError):  # ... but new work for it fails at once
            rc[1].apply_async(os.getpid).get(timeout=15)
        assert rc[0].apply_sync(os.getpid) == rc.engines[0].pid
    finally:
        live.stop()


def test_a_unix_socket_nobody_listens_on_means_the_engine_is_gone(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "engine.sock")
    assert local_engine_dead(path)  # no file
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    assert not local_engine_dead(path)  # listening: alive
    server.close()  # the file stays, as after a SIGKILL
    assert os.path.exists(path)
    assert local_engine_dead(path)


@pytest.mark.parametrize("policy", ["lru", "twobin"])
def test_a_policy_chosen_on_the_command_line_serves_a_map(tmp_path: Path, policy: str) -> None:
    args = ("--policy", policy, "--hwm", "1")
    live = LiveCluster(tmp_path / "corral", n=2, controller_args=args)
    try:
        rc = live.client
        pids = rc.load_balanced_view().map_sync(getpid_of, range(30), chunksize=1)
        assert len(pids) == 30
        # One task per engine at a time: the second task had to go to the other engine.
        assert set(pids) == {e.pid for e in rc.engines.values()}
    finally:
        live.stop()


def getpid_of(_: int) -> int:
    return os.getpid()


def test_cluster_of_no_engines_waits_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from corral.plugins.parallel.cluster import Cluster

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    cluster = Cluster(n=0, profile="none", hb_period=0.2, hb_misses=5)
    try:
        rc = cluster.start_and_connect()
        lview = rc.load_balanced_view()
        with caplog.at_level(logging.WARNING, logger="corral.plugins.parallel.client.views"):
            result = lview.apply_async(os.getpid)
        assert "no engines registered" in caplog.text
        with pytest.raises(concurrent.futures.TimeoutError, match="no engines registered"):
            result.get(timeout=0.2)
        # A direct view of no engine says so (it answered [], which looks like success).
        for call in (
            lambda: rc[:].apply_sync(os.getpid),
            lambda: rc.direct_view().pull("x", block=True),
            lambda: rc.broadcast_view().apply_sync(os.getpid),
            lambda: rc[:].map_sync(abs, [-1]),
        ):
            with pytest.raises(NoEnginesRegistered, match="wait_for_engines"):
                call()
        cluster.add_engines(1)
        assert result.get(timeout=60) in cluster.pids()["engines"]
        assert rc.direct_view().apply_sync(os.getpid) == [result.get()]
    finally:
        cluster.stop()
