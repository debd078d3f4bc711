"""The task database: one record per task, written off the hub's hot path.

Task state lives here, not in Python dicts, so a controller that has run a million tasks
holds no more memory than one that has run ten. Three backends share one interface:

``sqlite`` (default)
    a file, ``<profile>/db/tasks-<cluster_id>.sqlite`` in WAL mode.
``memory``
    the same schema in an SQLite ``:memory:`` database: nothing on disk, compact rows.
``none``
    stores nothing; every lookup answers "unknown".

Writes are gathered in a list on the hub's thread and handed to one writer thread every
``flush_interval`` seconds or ``batch_size`` writes (the hub calls :meth:`hand_over` on
every pass of its loop), which applies each batch in one transaction with
``executemany``: the hub pays a list append per write, and the writer wakes once per
batch, not once per record. Queries go through the same thread, after handing over
what is gathered, so a query always sees what the hub has already recorded.

Records are keyed by ``(msg_id, engine_uuid)``: a broadcast request becomes one record per
target engine. A load-balanced request recorded before its engine was chosen has
``engine_uuid == ""`` until its reply claims it.

Fields of a record (also the names queries may use):

``msg_id, client_id, engine_uuid, engine_id, msg_type, label, header, metadata,
submitted, started, completed, received, result_status, result_header, result_metadata,
result_content, stdout, stderr, buffer_count`` and ``result_buffers`` (a list of bytes).

``label`` is the user's name for the task (ipyparallel's ``label`` view flag), read from
the request's metadata by SQLite itself: a virtual generated column, so the hub's writes
stay what they were, and a database made before the column existed gets it when opened.

``header``, ``metadata`` and the ``result_*`` dicts are JSON in the database and dicts in
records. Times are the ISO 8601 strings the messages carry (``submitted``: the request
header's date; ``started``/``completed``: the engine's reply metadata; ``received``: when
the hub recorded the reply).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corral.core.private import private_dir, private_file

__all__ = [
    "FIELDS",
    "MemoryTaskDB",
    "NoTaskDB",
    "SQLiteTaskDB",
    "TaskDB",
    "open_taskdb",
    "pack_buffers",
    "unpack_buffers",
]

log = logging.getLogger("corral.plugins.parallel.controller.taskdb")

FIELDS = (
    "msg_id",
    "client_id",
    "engine_uuid",
    "engine_id",
    "msg_type",
    "label",
    "header",
    "metadata",
    "submitted",
    "started",
    "completed",
    "received",
    "result_status",
    "result_header",
    "result_metadata",
    "result_content",
    "stdout",
    "stderr",
    "buffer_count",
    "result_buffers",
)
_JSON_FIELDS = frozenset(
    {"header", "metadata", "result_header", "result_metadata", "result_content"}
)
_DEFAULT_KEYS = tuple(f for f in FIELDS if f != "result_buffers")
#: Comparisons of ipyparallel's query language (the operators its task databases take).
#: ``$eq``/``$ne`` are null-safe (``IS``/``IS NOT``), as a plain ``{field: value}`` is.
_OPERATORS = {
    "$lt": "<",
    "$gt": ">",
    "$lte": "<=",
    "$gte": ">=",
    "$eq": "IS",
    "$ne": "IS NOT",
    "$glob": "GLOB",
}
_KNOWN_OPERATORS = "$in, $nin, $lt, $gt, $lte, $gte, $eq, $ne, $glob or $exists"

#: SQLite page size for new task databases (see SQLiteTaskDB._run).
_PAGE_SIZE = 16384
#: Bytes the WAL file is truncated to at each checkpoint.
_WAL_LIMIT = 64 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    rowid INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    client_id TEXT,
    engine_uuid TEXT NOT NULL DEFAULT '',
    engine_id INTEGER,
    msg_type TEXT,
    header TEXT,
    metadata TEXT,
    submitted TEXT,
    started TEXT,
    completed TEXT,
    received TEXT,
    result_status TEXT,
    result_header TEXT,
    result_metadata TEXT,
    result_content TEXT,
    stdout TEXT,
    stderr TEXT,
    buffer_count INTEGER NOT NULL DEFAULT 0,
    result_buffers BLOB,
    UNIQUE (msg_id, engine_uuid)
);
CREATE INDEX IF NOT EXISTS tasks_unanswered ON tasks (engine_uuid) WHERE result_status IS NULL;
"""

#: The ``label`` column: computed from the stored request metadata when read (a column
#: the hub never writes, so no write path changes). ``json_valid`` first: metadata is
#: whatever a client sent, and ``json_extract`` on malformed text fails the whole query.
_LABEL_COLUMN = (
    "ALTER TABLE tasks ADD COLUMN label GENERATED ALWAYS AS "
    "(CASE WHEN json_valid(metadata) THEN json_extract(metadata, '$.label') END) VIRTUAL"
)


def _add_label_column(db: sqlite3.Connection) -> None:
    """Give ``tasks`` its ``label`` column if it lacks it (new and older databases alike;
    ``table_xinfo`` because ``table_info`` does not list generated columns)."""
    columns = {row[1] for row in db.execute("PRAGMA table_xinfo(tasks)")}
    if "label" in columns:
        return
    try:
        db.execute(_LABEL_COLUMN)
    except sqlite3.OperationalError as exc:  # an SQLite without JSON or generated columns
        log.warning(
            "task labels are not recorded: SQLite %s cannot compute them (%s)",
            sqlite3.sqlite_version,
            exc,
        )
        db.execute("ALTER TABLE tasks ADD COLUMN label TEXT")  # queries still work


# A request, and its reply when both are in one batch (most are: a batch spans 50 ms): one
# row written once, where a request then its reply took an insert, a claim and an upsert.
# A duplicate request (same msg_id and engine) leaves the row as it is, as INSERT OR
# IGNORE would; a reply to it still lands.
_INSERT_TASK = (
    "INSERT INTO tasks (msg_id, client_id, engine_uuid, engine_id, msg_type, header, "
    "metadata, submitted, started, completed, received, result_status, result_header, "
    "result_metadata, result_content, buffer_count, result_buffers) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (msg_id, engine_uuid) DO UPDATE SET engine_id = excluded.engine_id, "
    "started = excluded.started, completed = excluded.completed, received = excluded.received, "
    "result_status = excluded.result_status, result_header = excluded.result_header, "
    "result_metadata = excluded.result_metadata, result_content = excluded.result_content, "
    "buffer_count = excluded.buffer_count, result_buffers = excluded.result_buffers "
    "WHERE excluded.result_status IS NOT NULL AND tasks.result_status IS NULL"
)
_NO_REPLY = (None, None, None, None, None, None, None, 0, None)
# A task an engine says it holds: it claims the task's row if that names no engine yet
# (recorded while the task waited in the scheduler), else a row is made if none exists.
_CLAIM_HELD = (
    "UPDATE OR IGNORE tasks SET engine_uuid = ?, engine_id = ? "
    "WHERE msg_id = ? AND engine_uuid = '' AND result_status IS NULL"
)
_INSERT_HELD = (
    "INSERT INTO tasks (msg_id, client_id, engine_uuid, engine_id) SELECT ?, '', ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE msg_id = ?)"
)
# A dead engine's unanswered tasks become unassigned, for a retry or an error to claim.
_ENGINE_LOST = (
    "UPDATE OR IGNORE tasks SET engine_uuid = '' WHERE engine_uuid = ? AND result_status IS NULL"
)
# A reply first claims a request recorded before its engine was chosen, then upserts.
_CLAIM = "UPDATE OR IGNORE tasks SET engine_uuid = ? WHERE msg_id = ? AND engine_uuid = ''"
# A reply to the row its request made under the engine the hub says (``''`` if it was
# unassigned), in one statement; replies of a batch that do not all land this way go
# through the claim and the upsert below, which leave the rows answered here as they are.
_ANSWER = (
    "UPDATE OR IGNORE tasks SET engine_uuid = ?, engine_id = ?, started = ?, completed = ?, "
    "received = ?, result_status = ?, result_header = ?, result_metadata = ?, "
    "result_content = ?, buffer_count = ?, result_buffers = ? "
    "WHERE msg_id = ? AND engine_uuid = ? AND result_status IS NULL"
)
_UPSERT_REPLY = (
    "INSERT INTO tasks (msg_id, engine_uuid, client_id, engine_id, started, completed, "
    "received, result_status, result_header, result_metadata, result_content, buffer_count, "
    "result_buffers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (msg_id, engine_uuid) DO UPDATE SET engine_id = excluded.engine_id, "
    "started = excluded.started, completed = excluded.completed, received = excluded.received, "
    "result_status = excluded.result_status, result_header = excluded.result_header, "
    "result_metadata = excluded.result_metadata, result_content = excluded.result_content, "
    "buffer_count = excluded.buffer_count, result_buffers = excluded.result_buffers "
    "WHERE tasks.result_status IS NULL"  # a stored result is never overwritten
)
_APPEND_OUTPUT = {
    name: f"UPDATE tasks SET {name} = coalesce({name}, '') || ? "
    "WHERE msg_id = ? AND (engine_id IS NULL OR ? IS NULL OR engine_id = ?)"
    for name in ("stdout", "stderr")
}


def _merge(requests: list[tuple], replies: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Rows for :data:`_INSERT_TASK`, in request order, each request joined with its reply
    when that is in the same batch; and the replies left over, written as before (a
    claim, then an upsert).

    Only a reply from the very engine the request was recorded under is joined: a task
    recorded before its engine was chosen (engine "") may also have rows from earlier
    batches, which only the claim statement sees.
    """
    if not replies:
        return [(*r, *_NO_REPLY) for r in requests], []
    at: dict[tuple[str, str], int] = {}
    # Each is reused below for a lookup that may find nothing.
    index: int | None
    reply: tuple[Any, ...] | None
    for index, request in enumerate(requests):
        at[(request[0], request[2])] = index
    answers: dict[int, tuple] = {}
    left: list[tuple] = []
    for reply in replies:
        msg_id, engine_uuid = reply[0], reply[1]
        index = at.pop((msg_id, engine_uuid), None)
        if index is None:
            left.append(reply)
        else:
            answers[index] = reply
    rows = []
    for index, request in enumerate(requests):
        reply = answers.get(index)
        if reply is None:
            rows.append((*request, *_NO_REPLY))
            continue
        # reply: msg_id, engine_uuid, client_id, engine_id, started, completed, received,
        # status, header, metadata, content, buffer count, buffers
        rows.append(
            (
                request[0],
                request[1],
                reply[1],
                reply[3] if reply[3] is not None else request[3],
                *request[4:8],
                *reply[4:12],
                pack_buffers(reply[12]),
            )
        )
    return rows, left


def pack_buffers(buffers: Sequence[Any]) -> bytes | None:
    """Buffers as one BLOB: a count, the lengths, then the bytes (None when empty)."""
    if not buffers:
        return None
    views = [memoryview(b).cast("B") for b in buffers]
    head = struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views))
    return b"".join([head, *views])


def unpack_buffers(blob: bytes | None) -> list[bytes]:
    """The buffers packed by :func:`pack_buffers`, byte-identical."""
    if not blob:
        return []
    view = memoryview(blob)
    (count,) = struct.unpack_from("<I", view)
    lengths = struct.unpack_from(f"<{count}Q", view, 4)
    out = []
    pos = 4 + 8 * count
    for n in lengths:
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class TaskDB:
    """The interface every backend implements; the base class stores nothing (``none``)."""

    kind = "none"

    def add_request(
        self,
        msg_id: str,
        client_id: str,
        engine_uuid: str,
        engine_id: int | None,
        msg_type: str,
        header: str,
        metadata: str,
        submitted: str | None,
    ) -> None:
        """Record a request; ``header``/``metadata`` are the JSON text off the wire."""

    def add_reply(
        self,
        msg_id: str,
        client_id: str,
        engine_uuid: str,
        engine_id: int | None,
        started: str | None,
        completed: str | None,
        result_status: str | None,
        result_header: str,
        result_metadata: str,
        result_content: str,
        buffers: Sequence[Any] = (),
        recorded: str | None = None,
    ) -> None:
        """Record the reply to ``msg_id`` from ``engine_uuid``. ``recorded``: the engine
        its request was recorded under (``""`` unassigned), when the caller knows: the
        reply then lands on that row in one write (a wrong guess costs only time)."""

    def append_output(self, msg_id: str, name: str, text: str, engine_id: int | None) -> None:
        """Append captured ``stdout``/``stderr`` text to a task's record."""

    def engine_lost(self, engine_uuid: str) -> None:
        """``engine_uuid`` died: its unanswered tasks may be answered by another engine."""

    def add_held(self, msg_id: str, engine_uuid: str, engine_id: int) -> None:
        """Record that ``engine_uuid`` holds ``msg_id``, unless the task is known already
        (an engine re-registering with a restarted controller says what it holds)."""

    def unanswered_engines(self) -> set[str]:
        """Engines owing replies in the records (of a controller that died, at start)."""
        return set()

    def fail_unanswered(self, engine_uuid: str, ename: str, evalue: str) -> int:
        """Answer every unanswered task of ``engine_uuid`` (``""``: of no engine yet)
        with the error ``ename: evalue``; how many. For tasks nobody is left to answer:
        a dead controller's backlog, or engines that did not come back after it."""
        return 0

    def get(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{msg_id: record}`` for the ids found. A broadcast's record is its first row,
        with every row (one per engine, in the order recorded) under ``"parts"``."""
        return {}

    def find(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Records matching ``query``: ``{field: value | {operator: v}}`` with ipyparallel's
        operators (``$in``, ``$nin``, ``$lt``, ``$gt``, ``$lte``, ``$gte``, ``$eq``,
        ``$ne``, ``$glob``, ``$exists``)."""
        _where(query)
        _select_keys(keys)
        return []

    def purge(self, msg_ids: Sequence[str] | str) -> int:
        """Forget completed tasks (``"all"`` or a list of ids); returns how many records."""
        return 0

    def flush(self) -> None:
        """Wait until every write queued so far is applied."""

    def close(self) -> None:
        """Apply pending writes and release the database."""

    def hand_over(self, now: float, force: bool = False) -> None:
        """Pass the writes gathered by the caller's thread on to be applied (see
        :class:`SQLiteTaskDB`); the hub calls it on every pass of its loop."""

    def hand_over_in(self, now: float) -> float | None:
        """Seconds until gathered writes are due to be handed over; None if none wait."""
        return None

    @property
    def backlog_bytes(self) -> int:
        """Result buffer bytes recorded by the hub and not yet written out: what the hub
        holds in memory for the database (it stops reading copies above its bound)."""
        return 0

    #: Whether result buffers can be fetched back later (a queue may then leave them out
    #: of a reply to a client that is not reading, see docs/parallel-protocol.md).
    keeps_buffers_on_disk = False


NoTaskDB = TaskDB


def _select_keys(keys: Sequence[str] | None) -> tuple[str, ...]:
    if keys is None or len(keys) == 0:
        return _DEFAULT_KEYS
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys must be a list of field names")
    unknown = [k for k in keys if k not in FIELDS]
    if unknown:
        raise ValueError(f"unknown record field(s) {unknown}; known: {list(FIELDS)}")
    out = tuple(dict.fromkeys(["msg_id", *keys]))
    return out


def _where(query: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL for a query dict; field names are checked against :data:`FIELDS`, values bound."""
    if not isinstance(query, dict):
        raise ValueError("query must be an object {field: condition}")
    clauses: list[str] = []
    params: list[Any] = []
    for field, cond in query.items():
        if field not in FIELDS or field in _JSON_FIELDS or field == "result_buffers":
            raise ValueError(f"cannot query on field {field!r}")
        if isinstance(cond, dict):
            if not cond:
                raise ValueError(f"empty condition for {field!r}")
            for op, value in cond.items():
                if op == "$in":
                    _check_list(value, op)
                    if not value:
                        clauses.append("0")
                    else:
                        clauses.append(f"{field} IN ({','.join('?' * len(value))})")
                        params.extend(value)
                elif op == "$nin":  # ipyparallel's examples give one value too
                    values = value if isinstance(value, list) else [value]
                    _check_list(values, op)
                    # As ipyparallel's SQLite backend: a record without a value (null) is
                    # in no list and matches nothing, so {"label": {"$nin": ""}} finds
                    # the labelled tasks.
                    marks = ",".join("?" * len(values))
                    clauses.append(f"{field} NOT IN ({marks})" if values else f"{field} NOT NULL")
                    params.extend(values)
                elif op == "$exists":
                    if not isinstance(value, bool):
                        raise ValueError("$exists takes true or false")
                    clauses.append(f"{field} {'NOT NULL' if value else 'IS NULL'}")
                elif op in _OPERATORS:
                    _check_scalar(value)
                    clauses.append(f"{field} {_OPERATORS[op]} ?")
                    params.append(value)
                else:
                    raise ValueError(f"unknown operator {op!r}; use {_KNOWN_OPERATORS}")
        else:
            _check_scalar(cond)
            clauses.append(f"{field} IS ?")
            params.append(cond)
    return (" AND ".join(clauses) or "1"), params


def _check_list(value: Any, op: str) -> None:
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int, float)) or v is None for v in value
    ):
        raise ValueError(f"{op} takes a list of scalars")


def _check_scalar(value: Any) -> None:
    if not (value is None or isinstance(value, (str, int, float))) or isinstance(value, bool):
        raise ValueError(f"query values are strings, numbers or null, not {value!r:.40}")


def _row_to_record(keys: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key, value in zip(keys, row, strict=True):
        if key in _JSON_FIELDS:
            rec[key] = json.loads(value) if value else None
        elif key == "result_buffers":
            rec[key] = unpack_buffers(value)
        else:
            rec[key] = value
    return rec


class _Op:
    """A query handed to the writer thread, with the future its caller waits on."""

    __slots__ = ("fn", "args", "future")

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()


_STOP = object()


class SQLiteTaskDB(TaskDB):
    """SQLite behind one writer thread; ``path=":memory:"`` keeps it in memory."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        store_buffers: bool = True,
        flush_interval: float = 0.05,
        batch_size: int = 500,
    ) -> None:
        self.path = str(path)
        self.store_buffers = store_buffers
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Writes gathered on the hub's thread, handed to the writer thread in one piece at
        # most every flush_interval (or batch_size writes): waking the writer for every
        # record cost the hub ~90 us per task when tasks come one at a time.
        self._gathered: list[Any] = []
        self._gathered_since = 0.0
        # Buffer bytes recorded (hub thread) and written (writer thread): each counter has
        # one writer, so their difference is the backlog without a lock.
        self._added_bytes = 0
        self._written_bytes = 0
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="corral-taskdb-writer", daemon=True)
        self._thread.start()
        self._ready.result()  # re-raises a failure to open the database here

    # -- hub side: gathered, then handed over in batches --------------------------------

    def _put(self, item: Any) -> None:
        gathered = self._gathered
        if not gathered:
            self._gathered_since = time.monotonic()
        gathered.append(item)
        if len(gathered) >= self.batch_size:
            self.hand_over(0.0, force=True)

    def hand_over(self, now: float, force: bool = False) -> None:
        gathered = self._gathered
        if gathered and (force or now - self._gathered_since >= self.flush_interval):
            self._gathered = []
            self._queue.put(gathered)

    def hand_over_in(self, now: float) -> float | None:
        if not self._gathered:
            return None
        return max(0.0, self._gathered_since + self.flush_interval - now)

    def add_request(
        self,
        msg_id: str,
        client_id: str,
        engine_uuid: str,
        engine_id: int | None,
        msg_type: str,
        header: str,
        metadata: str,
        submitted: str | None,
    ) -> None:
        self._put(
            (0, (msg_id, client_id, engine_uuid, engine_id, msg_type, header, metadata, submitted))
        )

    def add_reply(
        self,
        msg_id: str,
        client_id: str,
        engine_uuid: str,
        engine_id: int | None,
        started: str | None,
        completed: str | None,
        result_status: str | None,
        result_header: str,
        result_metadata: str,
        result_content: str,
        buffers: Sequence[Any] = (),
        recorded: str | None = None,
    ) -> None:
        # Packing (a copy) happens on the writer thread; the views keep the frames alive.
        kept = list(buffers) if self.store_buffers else []
        if kept:
            self._added_bytes += sum(memoryview(b).nbytes for b in kept)
        self._put(
            (
                1,
                (
                    msg_id,
                    engine_uuid,
                    client_id,
                    engine_id,
                    started,
                    completed,
                    _now(),
                    result_status,
                    result_header,
                    result_metadata,
                    result_content,
                    len(kept),
                    kept,
                    recorded,
                ),
            )
        )

    def append_output(self, msg_id: str, name: str, text: str, engine_id: int | None) -> None:
        if name in _APPEND_OUTPUT:
            self._put((2, (name, (text, msg_id, engine_id, engine_id))))

    def engine_lost(self, engine_uuid: str) -> None:
        self._put((3, (engine_uuid,)))

    def add_held(self, msg_id: str, engine_uuid: str, engine_id: int) -> None:
        self._put((4, (msg_id, engine_uuid, engine_id, msg_id)))

    def unanswered_engines(self) -> set[str]:
        return self._call(self._unanswered_engines)

    def fail_unanswered(self, engine_uuid: str, ename: str, evalue: str) -> int:
        content = json.dumps({"status": "error", "ename": ename, "evalue": evalue, "traceback": []})
        return self._call(self._fail_unanswered, engine_uuid, content)

    def _unanswered_engines(self) -> set[str]:
        sql = "SELECT DISTINCT engine_uuid FROM tasks WHERE result_status IS NULL"
        return {row[0] for row in self._db.execute(sql)}

    def _fail_unanswered(self, engine_uuid: str, content: str) -> int:
        now = _now()
        sql = (
            "UPDATE tasks SET result_status = 'error', result_content = ?, completed = ?, "
            "received = ? WHERE engine_uuid = ? AND result_status IS NULL"
        )
        return self._db.execute(sql, (content, now, now, engine_uuid)).rowcount

    # -- queries: run on the writer thread after the writes queued before them ------

    def _call(self, fn: Any, *args: Any) -> Any:
        if not self._thread.is_alive():
            raise RuntimeError("the task database is closed")
        self.hand_over(0.0, force=True)  # a query sees every write made before it
        op = _Op(fn, args)
        self._queue.put(op)
        return op.future.result()

    def get(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = [m for m in msg_ids if isinstance(m, str)]
        return self._call(self._get, ids) if ids else {}

    def find(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        where, params = _where(query)
        cols = _select_keys(keys)
        return self._call(self._find, where, params, cols)

    def purge(self, msg_ids: Sequence[str] | str) -> int:
        if msg_ids == "all":
            return self._call(self._purge_all)
        if isinstance(msg_ids, str) or not all(isinstance(m, str) for m in msg_ids):
            raise ValueError('msg_ids must be a list of ids or "all"')
        return self._call(self._purge, list(msg_ids))

    def flush(self) -> None:
        self._call(lambda: None)

    @property
    def backlog_bytes(self) -> int:
        return self._added_bytes - self._written_bytes

    @property
    def keeps_buffers_on_disk(self) -> bool:  # type: ignore[override]
        return self.store_buffers and self.path != ":memory:"

    def close(self) -> None:
        self.hand_over(0.0, force=True)
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.path != ":memory:":
                # Pickled results live here: owner-only from the first byte, whatever
                # the umask (SQLite gives -wal and -shm the database file's mode).
                os.close(private_file(self.path))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            if self.path != ":memory:":
                # Before the first table, or they do not apply: pages of 16 KiB write and
                # free large result BLOBs 2-3x faster than 4 KiB ones (fewer overflow
                # pages to chain), and incremental auto-vacuum lets a purge give the space
                # back to the filesystem (see _shrink). An existing file keeps its own.
                db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # A checkpoint truncates the WAL to this: it stays small after a burst of
                # large results instead of keeping its high-water size for good.
                db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            db.executescript(_SCHEMA)
            _add_label_column(db)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.chmod(self.path + suffix, 0o600)
        except Exception as exc:
            self._ready.set_exception(exc)
            return
        self._db = db
        self._ready.set_result(None)
        pending: list[Any] = []
        get = self._queue.get
        try:
            while True:
                item = get()
                if item is _STOP:
                    break
                if type(item) is list:  # a batch of writes handed over: one transaction
                    pending.extend(item)
                    self._apply(pending)
                    continue
                try:  # a query (_Op): it runs after every write handed over before it
                    item.future.set_result(item.fn(*item.args))
                except Exception as exc:  # a bad query must not stop the writer
                    item.future.set_exception(exc)
        finally:
            self._apply(pending)
            # Queries that raced with close() must not hang their callers.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Op):
                    item.future.set_exception(RuntimeError("the task database is closed"))
            db.close()

    def _apply(self, pending: list[Any]) -> None:
        """Write a batch: requests, then replies, then output (the order they happen in)."""
        if not pending:
            return
        requests = [args for kind, args in pending if kind == 0]
        replies = [args for kind, args in pending if kind == 1]
        outputs = [args for kind, args in pending if kind == 2]
        lost = [args for kind, args in pending if kind == 3]
        held = [args for kind, args in pending if kind == 4]
        pending.clear()
        written = sum(memoryview(b).nbytes for r in replies for b in r[12])
        rows, replies = _merge(requests, replies)
        db = self._db
        try:
            db.execute("BEGIN")
            if rows:
                db.executemany(_INSERT_TASK, rows)
            if held:
                db.executemany(_CLAIM_HELD, [(u, e, m) for m, u, e, _ in held])
                db.executemany(_INSERT_HELD, held)
            if lost:
                db.executemany(_ENGINE_LOST, lost)
            if replies:
                self._answer(db, replies)
            for name, args in outputs:
                db.execute(_APPEND_OUTPUT[name], args)
            db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("task database write failed; a batch of records is lost")
            if db.in_transaction:
                db.execute("ROLLBACK")
        finally:
            self._written_bytes += written

    @staticmethod
    def _answer(db: sqlite3.Connection, replies: list[tuple]) -> None:
        """Write replies whose request rows came in earlier batches: one UPDATE each where
        the hub said which row (a claim and an upsert cost 1.75x as much). If any reply
        did not land that way (no hint, a wrong one, no row yet, answered already), the
        batch goes the claim-and-upsert way, which leaves rows answered here untouched."""
        # reply: msg_id, engine_uuid, client_id, engine_id, started, completed, received,
        # status, header, metadata, content, buffer count, buffers, recorded engine
        rows = [(*r[:12], pack_buffers(r[12])) for r in replies]
        hinted = [
            (row[1], row[3], *row[4:13], row[0], reply[13])
            for row, reply in zip(rows, replies, strict=True)
            if reply[13] is not None
        ]
        if hinted and len(hinted) == len(rows):
            # each reply updates at most one row: (msg_id, engine_uuid) is unique
            if db.executemany(_ANSWER, hinted).rowcount == len(rows):
                return
        db.executemany(_CLAIM, [(r[1], r[0]) for r in rows])
        db.executemany(_UPSERT_REPLY, rows)

    def _get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cols = FIELDS
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = (
                f"SELECT {', '.join(cols)} FROM tasks WHERE msg_id IN "
                f"({','.join('?' * len(chunk))}) ORDER BY rowid"
            )
            for row in self._db.execute(sql, chunk):
                record = _row_to_record(cols, row)
                first = out.get(row[0])
                if first is None:
                    out[row[0]] = record
                else:  # a broadcast: one row per engine, all of them under "parts"
                    first.setdefault("parts", [dict(first)]).append(record)
        return out

    def _find(self, where: str, params: list[Any], cols: Sequence[str]) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(cols)} FROM tasks WHERE {where} ORDER BY rowid"
        return [_row_to_record(cols, row) for row in self._db.execute(sql, params)]

    def _purge_all(self) -> int:
        purged = self._db.execute("DELETE FROM tasks WHERE result_status IS NOT NULL").rowcount
        self._shrink()
        return purged

    def _purge(self, ids: list[str]) -> int:
        total = 0
        self._db.execute("BEGIN")
        try:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                sql = (
                    "DELETE FROM tasks WHERE result_status IS NOT NULL AND msg_id IN "
                    f"({','.join('?' * len(chunk))})"
                )
                total += self._db.execute(sql, chunk).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._shrink()
        return total

    def _shrink(self) -> None:
        """Give the pages a purge freed back to the filesystem: the file shrinks.

        ``executescript`` because ``sqlite3``'s ``execute`` steps an
        ``incremental_vacuum`` only once, freeing a single page. Then a checkpoint moves
        the WAL into the file, which truncates it, and the WAL back to empty. A database
        created before auto-vacuum was on keeps its size (only a full VACUUM would help,
        which rewrites every live record: not done behind a user's back).
        """
        if self.path == ":memory:":
            return
        try:
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            log.warning("task database: could not shrink the file after a purge", exc_info=True)


class MemoryTaskDB(SQLiteTaskDB):
    """The SQLite schema in memory: no file, rows stored compactly by SQLite, not as dicts."""

    kind = "memory"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(":memory:", **kwargs)


def open_taskdb(kind: str, path: str | Path | None = None, **kwargs: Any) -> TaskDB:
    """The backend named ``kind`` (``sqlite`` needs ``path``)."""
    if kind == "sqlite":
        if path is None:
            raise ValueError("the sqlite task database needs a path")
        private_dir(Path(path).parent)
        return SQLiteTaskDB(path, **kwargs)
    if kind == "memory":
        return MemoryTaskDB(**kwargs)
    if kind == "none":
        return TaskDB()
    raise ValueError(f"unknown task database {kind!r}; use sqlite, memory or none")
