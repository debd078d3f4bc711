"""Reply coalescing (corral/plugins/parallel/coalesce.py): the replies of one call to many
engines leave the mux or broadcast queue together, as one message to the client, and the
client still gets per-engine results, errors and metadata, partial failure included.

The cluster tests give the queues a long quiet gap (``CORRAL_COALESCE_GAP=3``) and make
the engines answer at different times, so replies that were not held would reach the
client in several messages: each test fails when the queue sends replies on as they come
(``CORRAL_COALESCE_GAP=0``) rather than depending on timing to pass.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import TIMEOUT
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import Client, EngineError
from corral.plugins.parallel.client.client import _read_cluster_file
from corral.plugins.parallel.coalesce import Coalescer, mark_metadata, parse_mark, read_mark
from corral.transports.zmq import wire
from corral.transports.zmq.batch import pack_batches, unbatch
from corral.transports.zmq.door import cluster_signer
from corral.transports.zmq.session import Session

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

# -- the bookkeeping, alone ---------------------------------------------------------------


def test_a_mark_survives_the_metadata_splice_and_bad_marks_are_ignored() -> None:
    spliced = mark_metadata(b'{"targets":[0,1],"retries":0}', "m-1", 2)
    assert json.loads(spliced) == {"coalesce": ["m-1", 2], "targets": [0, 1], "retries": 0}
    assert parse_mark(json.loads(mark_metadata(b"{}", "k", 3))) == ("k", 3)
    for bad in (["k", 1], ["k", True], ["", 3], [1, 3], ["k"], "k", ["k", 10**9]):
        assert parse_mark({"coalesce": bad}) is None
    assert parse_mark({}) is None and parse_mark(None) is None
    # The queue reads the mark alone, at the start of the encoded metadata.
    assert read_mark(spliced) == ("m-1", 2)
    assert read_mark(b'{"targets":[0,1],"coalesce":["k",2]}') is None  # not first: unmarked
    assert read_mark(b'{"coalesce":["k",2') is None  # cut short
    assert read_mark(b'{"coalesce":["k",1]}') is None  # one request: nothing to gather


def test_a_group_is_released_only_once_every_request_was_routed_and_answered() -> None:
    co = Coalescer(gap=1.0, hold=10.0)
    a = co.join(b"c", "k", 3)
    co.join(b"c", "k", 3)
    co.hold(a, b"e0", ["copy0"], ["c", "m0"], now=0.0)
    co.hold(a, b"e1", ["copy1"], ["c", "m1"], now=0.0)
    assert not a.complete  # the third request has not reached the queue yet
    co.join(b"c", "k", 3)
    assert not a.complete
    co.hold(a, b"e2", ["copy2"], ["c", "m2"], now=0.0)
    assert a.complete
    assert [m for _, m in co.take(a)] == [["c", "m0"], ["c", "m1"], ["c", "m2"]]
    assert not co.groups and not co.holding


def test_held_replies_go_after_a_quiet_gap_or_the_hold_limit() -> None:
    co = Coalescer(gap=0.25, hold=1.0)  # binary fractions: exact comparisons
    group = co.join(b"c", "k", 2)
    co.join(b"c", "k", 2)
    co.hold(group, b"e0", [], [b"c"], now=1.0)
    assert co.next_due() == 1.25
    assert co.due(1.125) == [] and co.due(1.25) == [group]
    co.take(group)  # one still owed: the group stays for its reply
    assert co.groups and not co.holding
    steady = co.join(b"c", "s", 100)
    for i in range(12):  # a reply every 0.125 s: never quiet, but not held past the limit
        now = 2.0 + 0.125 * i
        co.hold(steady, b"e%d" % i, [], [b"c"], now=now)
        assert co.due(now) == ([] if now < 3.0 else [steady])


def test_an_engines_later_reply_waits_for_its_earlier_held_one() -> None:
    co = Coalescer(gap=1.0, hold=10.0)
    first = co.join(b"c", "first", 2)
    co.hold(first, b"e0", [], [b"c"], now=0.0)
    assert co.blocking(b"c", b"e0", None) == [first]  # a single reply of e0 must wait
    assert co.blocking(b"c", b"e1", None) == []
    assert co.blocking(b"other", b"e0", None) == []
    assert co.blocking(b"c", b"e0", first) == []  # its own call keeps them in order


# -- a real cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    cluster = LiveCluster(
        tmp_path_factory.mktemp("corral"),
        n=3,
        threads=True,
        controller_env={"CORRAL_COALESCE_GAP": "3", "CORRAL_COALESCE_HOLD": "30"},
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def reply_messages(live: LiveCluster) -> Iterator[dict[str, list[int]]]:
    """Per channel, how many replies each zmq message (or batch) brought the client."""
    io = live.client._io
    seen: dict[str, list[int]] = {}
    drain = io._drain

    def counting(sock: Any, channel: str) -> None:
        before = io.received
        drain(sock, channel)
        if io.received > before:
            seen.setdefault(channel, []).append(io.received - before)

    io._drain = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del io._drain


def pid_after(delays: dict[int, float]) -> int:
    """This engine's pid, after the delay its pid is given (engines answer apart)."""
    pid = os.getpid()
    time.sleep(delays.get(pid, 0.0))
    return pid


def _pids(rc: Client) -> list[int]:
    return [rc.engines[i].pid for i in rc.ids]


def test_direct_view_replies_reach_the_client_together(
    live: LiveCluster, reply_messages: dict[str, list[int]]
) -> None:
    rc = live.client
    pids = _pids(rc)
    delays = {pid: 0.15 * i for i, pid in enumerate(pids)}  # 0, 150, 300 ms
    result = rc[:].apply_async(pid_after, delays)
    assert result.get(timeout=TIMEOUT) == pids
    assert [md["engine_id"] for md in result.metadata] == rc.ids
    assert all(md["status"] == "ok" for md in result.metadata)
    assert reply_messages["mux"] == [3], reply_messages


def test_broadcast_replies_reach_the_client_together(
    live: LiveCluster, reply_messages: dict[str, list[int]]
) -> None:
    rc = live.client
    pids = _pids(rc)
    delays = {pid: 0.15 * i for i, pid in enumerate(pids)}
    result = rc.broadcast_view().apply_async(pid_after, delays)
    assert result.get(timeout=TIMEOUT) == pids
    assert reply_messages["broadcast"] == [3], reply_messages


def test_a_single_engine_call_is_not_held(
    live: LiveCluster, reply_messages: dict[str, list[int]]
) -> None:
    rc = live.client
    start = time.monotonic()
    one = rc[rc.ids[0]]
    assert one.apply_async(pid_after, {}).get(timeout=TIMEOUT) == rc.engines[rc.ids[0]].pid
    assert time.monotonic() - start < 2.5  # not the 3 s quiet gap
    assert reply_messages["mux"] == [1]


def die_or_wait(victim: int) -> int:
    pid = os.getpid()
    if pid == victim:
        os._exit(3)
    time.sleep(0.3)
    return pid


def test_an_engine_dying_mid_call_fails_its_part_only(tmp_path: Path) -> None:
    cluster = LiveCluster(
        tmp_path,
        n=3,
        threads=True,
        controller_env={"CORRAL_COALESCE_GAP": "3", "CORRAL_COALESCE_HOLD": "30"},
    )
    try:
        rc = cluster.client
        ids, pids = list(rc.ids), _pids(rc)
        victim = pids[1]
        result = rc[:].apply_async(die_or_wait, victim)
        values = result.get(timeout=TIMEOUT, return_exceptions=True)
        assert values[0] == pids[0] and values[2] == pids[2]
        assert isinstance(values[1], EngineError)
        assert values[1].engine_id == ids[1]
        statuses = [md["status"] for md in result.metadata]
        assert statuses == ["ok", "error", "ok"]
        # The dead engine's error completed the call: nothing waited for the 3 s gap.
        assert result.wall_time < 2.5
    finally:
        cluster.stop()


# -- wrong data is refused ----------------------------------------------------------------


def _forged_reply(cluster_file: Path, parent: dict[str, Any], engine_id: int) -> list[bytes]:
    """A correctly signed apply reply to ``parent`` that says it comes from ``engine_id``."""
    info = _read_cluster_file(cluster_file)
    key = info["key"] if isinstance(info["key"], bytes) else info["key"].encode("ascii")
    scheme = info.get("signature_scheme", "hmac-sha256")
    signer = cluster_signer(key, scheme)
    session = Session(key, scheme=scheme, username="forger", signer=signer)
    content = {"status": "ok"}
    metadata = {"engine_id": engine_id, "status": "ok", "started": None, "completed": None}
    msg = session.msg("apply_reply", content, parent=parent, metadata=metadata)
    return [bytes(f) for f in wire.serialize(msg, signer, [])]


def wait_for(path: str) -> int:
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def test_a_reply_naming_another_engine_than_its_request_went_to_is_refused(
    live: LiveCluster, tmp_path: Path
) -> None:
    rc = live.client
    first, second = rc.ids[0], rc.ids[1]
    release = tmp_path / "release"
    result = rc[[first, second]].apply_async(wait_for, str(release))
    parent = {"msg_id": result.msg_ids[0], "msg_type": "apply_request"}  # sent to ``first``
    # A batch as a queue would coalesce it: a reply for ``first``'s request signed as
    # ``second``'s; the client unpacks it and checks each reply on its own.
    forged = _forged_reply(live.cluster_file, parent, second)
    (batch,) = pack_batches((), [forged, forged[:-1] + [b"{}"]], 64)
    dropped = rc.dropped
    for message in unbatch(batch, 0):
        rc._dispatch("mux", message)
    assert rc.dropped == dropped + 2  # one names the wrong engine, one fails its signature
    assert not result.done()
    release.touch()
    assert result.get(timeout=TIMEOUT) == [rc.engines[first].pid, rc.engines[second].pid]
