"""The task database backends: sqlite (file), memory, none; batching, queries, purge."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.plugins.parallel.controller.taskdb import (
    FIELDS,
    TaskDB,
    open_taskdb,
    pack_buffers,
    unpack_buffers,
)

HEADER = json.dumps({"msg_id": "m", "msg_type": "apply_request"})


@pytest.fixture(params=["sqlite", "memory"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskDB]:
    store = open_taskdb(request.param, tmp_path / "db" / "tasks.sqlite")
    yield store
    store.close()


def request(db: TaskDB, msg_id: str, engine: str = "", eid: int | None = None, **kw: Any) -> None:
    header = json.dumps({"msg_id": msg_id, "msg_type": "apply_request", "date": kw.get("date")})
    metadata = kw.get("metadata", "{}")
    db.add_request(
        msg_id,
        "client",
        engine,
        eid,
        "apply_request",
        header,
        metadata,
        kw.get("date", "2026-01-01"),
    )


def reply(db: TaskDB, msg_id: str, engine: str, eid: int, status: str = "ok", **kw: Any) -> None:
    db.add_reply(
        msg_id,
        "client",
        engine,
        eid,
        "2026-01-01T00:00:01",
        kw.get("completed", "2026-01-01T00:00:02"),
        status,
        json.dumps({"msg_id": "r-" + msg_id}),
        json.dumps({"status": status}),
        json.dumps({"status": status, "n": kw.get("n", 0)}),
        kw.get("buffers", []),
        recorded=kw.get("recorded"),
    )


def test_pack_buffers_roundtrip() -> None:
    bufs = [b"", b"abc", os.urandom(70_000), memoryview(b"xyz")]
    assert unpack_buffers(pack_buffers(bufs)) == [bytes(b) for b in bufs]
    assert pack_buffers([]) is None and unpack_buffers(None) == []


def test_request_reply_and_get(db: TaskDB) -> None:
    payload = [os.urandom(100_000), b"\x00", b""]
    request(db, "a", "e1", 0)
    request(db, "b")  # load-balanced: engine not chosen yet
    reply(db, "a", "e1", 0, buffers=payload)
    db.append_output("a", "stdout", "hi ", 0)
    db.append_output("a", "stdout", "there", None)
    db.append_output("a", "stderr", "err", 0)
    db.append_output("a", "bogus", "ignored", 0)
    got = db.get(["a", "b", "zzz"])
    assert set(got) == {"a", "b"}
    a = got["a"]
    assert set(a) == set(FIELDS)
    assert a["result_buffers"] == payload and a["buffer_count"] == 3
    assert a["stdout"] == "hi there" and a["stderr"] == "err"
    assert a["header"]["msg_id"] == "a" and a["result_content"] == {"status": "ok", "n": 0}
    assert a["received"] is not None and a["engine_id"] == 0
    b = got["b"]
    assert b["result_status"] is None and b["engine_uuid"] == "" and b["result_buffers"] == []
    reply(db, "b", "e2", 1)  # the reply claims the unassigned record
    b = db.get(["b"])["b"]
    assert b["engine_uuid"] == "e2" and b["engine_id"] == 1 and b["result_status"] == "ok"
    assert len(db.find({"msg_id": "b"})) == 1


def test_broadcast_records_per_engine_and_engine_lost(db: TaskDB) -> None:
    request(db, "x", "e1", 0)
    request(db, "x", "e2", 1)
    reply(db, "x", "e2", 1)
    recs = db.find({"msg_id": "x"}, ["engine_uuid", "result_status"])
    assert [(r["engine_uuid"], r["result_status"]) for r in recs] == [("e1", None), ("e2", "ok")]
    request(db, "y", "e1", 0)
    db.engine_lost("e1")  # y and x@e1 unanswered: both become unassigned...
    reply(db, "y", "e3", 2)  # ...and a retry elsewhere claims y
    assert db.get(["y"])["y"]["engine_uuid"] == "e3"
    reply(db, "x", "e1", 0, status="error")  # the queue's EngineError claims x@e1 back
    recs = db.find({"msg_id": "x"}, ["engine_uuid", "result_status"])
    assert sorted((r["engine_uuid"], r["result_status"]) for r in recs) == [
        ("e1", "error"),
        ("e2", "ok"),
    ]


def test_request_and_reply_in_one_batch_make_one_full_row(db: TaskDB) -> None:
    request(db, "j", "e1", 0, date="2026-01-01T00:00:00")
    reply(db, "j", "e1", 0, buffers=[b"result"])
    assert len(db.find({"msg_id": "j"})) == 1
    row = db.get(["j"])["j"]
    assert row["msg_type"] == "apply_request" and row["submitted"] == "2026-01-01T00:00:00"
    assert row["result_status"] == "ok" and row["result_buffers"] == [b"result"]


def test_duplicate_unassigned_request_next_to_its_reply(db: TaskDB) -> None:
    request(db, "d")
    db.flush()  # the first request is written by an earlier batch
    request(db, "d")  # a duplicate, in the reply's batch
    reply(db, "d", "e1", 0)
    rows = db.find({"msg_id": "d"}, ["engine_uuid", "result_status"])
    assert [(r["engine_uuid"], r["result_status"]) for r in rows] == [("e1", "ok")]


def test_rows_from_earlier_batches_keep_their_request_fields(db: TaskDB) -> None:
    request(db, "m", "e1", 0)
    db.flush()
    request(db, "m", date="2026-01-02")  # unassigned, and answered by the queue itself
    reply(db, "m", "e1", 0)
    reply(db, "m", "", 0, status="error")
    rows = db.find({"msg_id": "m"}, ["engine_uuid", "msg_type", "submitted", "result_status"])
    assert sorted((r["engine_uuid"], r["msg_type"], r["result_status"]) for r in rows) == [
        ("", "apply_request", "error"),
        ("e1", "apply_request", "ok"),
    ]
    assert {r["engine_uuid"]: r["submitted"] for r in rows}[""] == "2026-01-02"


def test_a_reply_lands_on_its_earlier_row_in_one_write(db: TaskDB) -> None:
    """A reply whose request was written by an earlier batch (a burst's queued tasks, any
    task longer than a batch), with the row the hub knows it has, updates that row once:
    one row changed per reply, where a claim then an upsert changed it twice. Without
    the hint, or with a wrong one, every reply of the batch still lands."""
    request(db, "u")  # queued in the scheduler: no engine yet
    request(db, "v", "e1", 0)
    request(db, "w", "e1", 0)
    request(db, "x", "e1", 0)
    db.flush()
    reply(db, "w", "e1", 0, recorded="e1")
    reply(db, "w", "e1", 0, status="error", recorded="e1")  # never replaces the first
    db.flush()
    changes = db._call(lambda: db._db.total_changes)  # type: ignore[attr-defined]
    reply(db, "u", "e2", 1, recorded="")
    reply(db, "v", "e1", 0, buffers=[b"v"], recorded="e1")
    db.flush()
    assert db._call(lambda: db._db.total_changes) - changes == 2  # type: ignore[attr-defined]
    reply(db, "x", "e1", 0, recorded="")  # a wrong hint: the batch takes the long way
    reply(db, "late", "e1", 0, recorded="e1")  # no request row at all
    reply(db, "v", "e1", 0, status="error")
    got = db.get(["u", "v", "w", "x", "late"])
    assert [(got[m]["engine_uuid"], got[m]["result_status"]) for m in "uvwx"] == [
        ("e2", "ok"),
        ("e1", "ok"),
        ("e1", "ok"),
        ("e1", "ok"),
    ]
    assert got["v"]["result_buffers"] == [b"v"] and got["late"]["result_status"] == "ok"
    assert len(db.find({})) == 5


def test_reply_without_request_is_recorded(db: TaskDB) -> None:
    reply(db, "orphan", "e1", 0)
    assert db.get(["orphan"])["orphan"]["result_status"] == "ok"


def test_find_operators_and_keys(db: TaskDB) -> None:
    for i in range(6):
        request(db, f"m{i}", "e", i % 2, date=f"2026-01-0{i + 1}")
        if i < 4:
            reply(db, f"m{i}", "e", i % 2, status="ok" if i % 3 else "error", n=i)

    def ids(query: dict[str, Any]) -> list[str]:
        return [r["msg_id"] for r in db.find(query, ["msg_id"])]

    assert ids({}) == [f"m{i}" for i in range(6)]
    assert ids({"engine_id": 1}) == ["m1", "m3", "m5"]
    assert ids({"msg_id": {"$in": ["m1", "m4", "nope"]}}) == ["m1", "m4"]
    assert ids({"msg_id": {"$in": []}}) == []
    assert ids({"submitted": {"$lt": "2026-01-03"}}) == ["m0", "m1"]
    assert ids({"submitted": {"$gt": "2026-01-02", "$lt": "2026-01-05"}}) == ["m2", "m3"]
    assert ids({"result_status": None}) == ["m4", "m5"]
    assert ids({"result_status": {"$ne": None}}) == ["m0", "m1", "m2", "m3"]
    assert ids({"result_status": {"$ne": "ok"}, "engine_id": 0}) == ["m0", "m4"]  # null too
    # the rest of ipyparallel's operators
    assert ids({"submitted": {"$lte": "2026-01-02"}}) == ["m0", "m1"]
    assert ids({"submitted": {"$gte": "2026-01-05"}}) == ["m4", "m5"]
    assert ids({"engine_id": {"$eq": 1}}) == ["m1", "m3", "m5"]
    assert ids({"result_status": {"$nin": ["ok"]}}) == ["m0", "m3"]  # not the nulls
    assert ids({"result_status": {"$nin": "error"}}) == ["m1", "m2"]  # one value
    assert ids({"result_status": {"$exists": False}}) == ["m4", "m5"]
    assert ids({"result_status": {"$exists": True}}) == ["m0", "m1", "m2", "m3"]
    assert ids({"msg_id": {"$glob": "m[13]"}}) == ["m1", "m3"]
    recs = db.find({"msg_id": "m2"}, ["result_content", "result_buffers"])
    assert recs == [
        {"msg_id": "m2", "result_content": {"status": "ok", "n": 2}, "result_buffers": []}
    ]
    assert set(db.find({"msg_id": "m0"})[0]) == set(FIELDS) - {"result_buffers"}


@pytest.mark.parametrize(
    "query, keys",
    [
        ({"nope": 1}, None),
        ({"header": "x"}, None),
        ({"msg_id": {"$regex": "x"}}, None),
        ({"msg_id": {"$in": "abc"}}, None),
        ({"msg_id": {"$nin": [["x"]]}}, None),
        ({"msg_id": {"$exists": 1}}, None),
        ({"msg_id": {"$lt": [1]}}, None),
        ({"msg_id": {}}, None),
        ({"msg_id; DROP TABLE tasks": 1}, None),
        ({}, ["nope"]),
        ({}, "msg_id"),
        ("not a dict", None),
    ],
)
def test_bad_queries_raise_value_error(db: TaskDB, query: Any, keys: Any) -> None:
    with pytest.raises(ValueError):
        db.find(query, keys)
    request(db, "still-works")
    assert "still-works" in db.get(["still-works"])


def test_labels_are_recorded_and_queried(db: TaskDB) -> None:
    """ipyparallel's ``label`` flag: the request metadata names the task, the record has
    it as a field, and ``db_query({"label": ...})`` finds the tasks by it."""
    request(db, "l1", "e1", 0, metadata=json.dumps({"label": "stage-1", "targets": [0]}))
    request(db, "l2", "e1", 0, metadata=json.dumps({"label": "stage-2"}))
    request(db, "l3", "e1", 0, metadata=json.dumps({"label": "stage-1"}))
    request(db, "nolabel", "e1", 0)
    request(db, "junk", "e1", 0, metadata="not json")  # must not break the queries
    reply(db, "l1", "e1", 0)
    assert [r["msg_id"] for r in db.find({"label": "stage-1"}, ["label"])] == ["l1", "l3"]
    found = db.find({"label": {"$in": ["stage-2", "x"]}}, ["label"])
    assert found == [{"msg_id": "l2", "label": "stage-2"}]
    assert [r["msg_id"] for r in db.find({"label": None}, ["label"])] == ["nolabel", "junk"]
    assert db.find({"label": "stage-2"})[0]["metadata"] == {"label": "stage-2"}
    assert db.get(["l1"])["l1"]["label"] == "stage-1"
    assert db.get(["nolabel"])["nolabel"]["label"] is None


def test_a_database_from_before_labels_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)  # the schema as it was before the label column
    old.executescript(
        "CREATE TABLE tasks (rowid INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, client_id TEXT,"
        " engine_uuid TEXT NOT NULL DEFAULT '', engine_id INTEGER, msg_type TEXT, header TEXT,"
        " metadata TEXT, submitted TEXT, started TEXT, completed TEXT, received TEXT,"
        " result_status TEXT, result_header TEXT, result_metadata TEXT, result_content TEXT,"
        " stdout TEXT, stderr TEXT, buffer_count INTEGER NOT NULL DEFAULT 0,"
        " result_buffers BLOB, UNIQUE (msg_id, engine_uuid));"
    )
    old.execute(
        "INSERT INTO tasks (msg_id, engine_uuid, metadata) VALUES ('old', 'e', ?)",
        (json.dumps({"label": "kept"}),),
    )
    old.commit()
    old.close()
    db = open_taskdb("sqlite", path)
    try:
        request(db, "new", "e1", 0, metadata=json.dumps({"label": "kept"}))
        assert [r["msg_id"] for r in db.find({"label": "kept"})] == ["old", "new"]
    finally:
        db.close()
    db = open_taskdb("sqlite", path)  # and opens again, the column now there
    try:
        assert len(db.find({"label": "kept"})) == 2
    finally:
        db.close()


def test_purge_only_completed(db: TaskDB) -> None:
    for i in range(4):
        request(db, f"p{i}", "e", 0)
    reply(db, "p0", "e", 0)
    reply(db, "p1", "e", 0)
    reply(db, "p2", "e", 0)
    assert db.purge(["p0", "p3", "unknown"]) == 1  # p3 is still running: kept
    assert db.purge("all") == 2
    assert [r["msg_id"] for r in db.find({})] == ["p3"]
    with pytest.raises(ValueError):
        db.purge("p3")  # a bare string other than "all"


def test_store_buffers_false(tmp_path: Path) -> None:
    db = open_taskdb("memory", store_buffers=False)
    try:
        request(db, "a", "e", 0)
        reply(db, "a", "e", 0, buffers=[b"big"])
        rec = db.get(["a"])["a"]
        assert rec["result_buffers"] == [] and rec["buffer_count"] == 0
    finally:
        db.close()


def test_sqlite_is_wal_batched_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite"
    db = open_taskdb("sqlite", path, flush_interval=60.0, batch_size=10_000)
    for i in range(1000):
        request(db, f"t{i}", "e", 0)
        reply(db, f"t{i}", "e", 0, buffers=[b"%d" % i])
    # nothing forces a flush but a query, which first applies every earlier write
    assert len(db.find({}, ["msg_id"])) == 1000
    request(db, "last", "e", 0)
    db.close()  # close applies what is pending
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1001
    con.close()
    again = open_taskdb("sqlite", path)
    try:
        assert again.get(["t999"])["t999"]["result_buffers"] == [b"999"]
    finally:
        again.close()
    with pytest.raises(RuntimeError):
        again.get(["t1"])


def test_none_backend_stores_nothing() -> None:
    db = open_taskdb("none")
    request(db, "a", "e", 0)
    reply(db, "a", "e", 0)
    db.append_output("a", "stdout", "x", 0)
    db.engine_lost("e")
    assert db.get(["a"]) == {}
    assert db.find({"msg_id": "a"}) == []
    assert db.purge("all") == 0
    with pytest.raises(ValueError):
        db.find({"nope": 1})
    db.flush()
    db.close()


def test_unknown_backend() -> None:
    with pytest.raises(ValueError):
        open_taskdb("mongodb")
    with pytest.raises(ValueError):
        open_taskdb("sqlite")
