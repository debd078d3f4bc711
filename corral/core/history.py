"""Input (and output) history in SQLite, kept across sessions.

Each :class:`HistoryManager` is one session: it gets the next session number in the file
and stores every numbered cell as ``(session, line, source, source_raw)``, plus the
``text/plain`` of its result when ``store_output`` is on.

Why it writes in batches: ``execute`` must not wait for a disk sync. Rows are kept in
memory and written in one transaction every ``batch`` cells, before any query, and on
:meth:`close`, so a manager opened later on the same file sees every closed session.
The connection opens lazily (and ``sqlite3`` is imported then), so an interpreter that
never executes costs nothing here.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["HistoryManager"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session INTEGER PRIMARY KEY AUTOINCREMENT,
    start TIMESTAMP, end TIMESTAMP, num_cmds INTEGER, remark TEXT);
CREATE TABLE IF NOT EXISTS history (
    session INTEGER, line INTEGER, source TEXT, source_raw TEXT,
    PRIMARY KEY (session, line));
CREATE TABLE IF NOT EXISTS output_history (
    session INTEGER, line INTEGER, output TEXT,
    PRIMARY KEY (session, line));
"""

#: A history row: (session, line, input) or (session, line, (input, output)).
Entry = tuple[Any, ...]


def _default_path() -> Path:
    from corral.core.profiles import profile_dir

    return profile_dir("default") / "db" / "history.sqlite"


class HistoryManager:
    """One session of history in a SQLite file (or ``":memory:"``).

    ``session_id`` reopens an existing session number instead of starting a new one.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        session_id: int | None = None,
        *,
        store_output: bool = True,
        batch: int = 16,
    ) -> None:
        self.path = path
        self.log_output = store_output
        self.batch = batch
        self._session_id = session_id
        self._conn: Any = None
        self._lock = threading.Lock()
        self._pending_inputs: list[tuple[int, str, str]] = []
        self._pending_outputs: list[tuple[int, str]] = []
        self._num_cmds = 0

    # -------------------------------------------------------------- connection

    def _connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        import sqlite3

        path = self.path if self.path is not None else _default_path()
        target = str(path)
        if target != ":memory:":
            from corral.core.private import private_dir, private_file

            private_dir(Path(target).parent)
            os.close(private_file(target))  # what you typed: yours alone, whatever the umask
        conn = sqlite3.connect(target, check_same_thread=False, timeout=10.0)
        if target != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for suffix in ("-wal", "-shm"):
                if os.path.exists(target + suffix):
                    os.chmod(target + suffix, 0o600)
        with conn:
            conn.executescript(_SCHEMA)
            if self._session_id is None:
                cursor = conn.execute(
                    "INSERT INTO sessions (start, num_cmds, remark) VALUES (?, 0, '')",
                    (datetime.datetime.now().isoformat(" "),),
                )
                self._session_id = int(cursor.lastrowid or 0)
        self._conn = conn
        return conn

    @property
    def session_id(self) -> int:
        """This manager's session number (opens the database the first time)."""
        with self._lock:
            self._connect()
        assert self._session_id is not None
        return self._session_id

    def new_session(self) -> int:
        """Close this session and start the next one (used by ``Interpreter.reset``)."""
        with self._lock:
            self._flush()
            self._end_session()
            self._session_id = None
            self._num_cmds = 0
            if self._conn is not None:  # keep the connection: a ":memory:" file lives in it
                with self._conn:
                    cursor = self._conn.execute(
                        "INSERT INTO sessions (start, num_cmds, remark) VALUES (?, 0, '')",
                        (datetime.datetime.now().isoformat(" "),),
                    )
                self._session_id = int(cursor.lastrowid or 0)
        return self.session_id

    def close(self) -> None:
        """Write everything pending and record the session's end."""
        with self._lock:
            if self._conn is None and not (self._pending_inputs or self._pending_outputs):
                return
            self._flush()
            self._end_session()
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HistoryManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _end_session(self) -> None:
        if self._conn is None:
            return
        with self._conn:
            self._conn.execute(
                "UPDATE sessions SET end = ?, num_cmds = ? WHERE session = ?",
                (datetime.datetime.now().isoformat(" "), self._num_cmds, self._session_id),
            )

    # ------------------------------------------------------------------ writing

    def store_input(self, line: int, source: str, source_raw: str | None = None) -> None:
        """Remember cell ``line`` (``source`` transformed, ``source_raw`` as typed)."""
        with self._lock:
            raw = source if source_raw is None else source_raw
            self._pending_inputs.append((line, source, raw))
            self._num_cmds += 1
            if len(self._pending_inputs) >= self.batch:
                self._flush()

    def store_output(self, line: int, output: str) -> None:
        """Remember the ``text/plain`` result of cell ``line`` (when ``store_output``)."""
        if not self.log_output:
            return
        with self._lock:
            self._pending_outputs.append((line, output))

    def flush(self) -> None:
        """Write pending rows now."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not (self._pending_inputs or self._pending_outputs):
            return
        conn = self._connect()
        session = self._session_id
        inputs = [(session, *row) for row in self._pending_inputs]
        outputs = [(session, *row) for row in self._pending_outputs]
        with conn:
            conn.executemany("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)", inputs)
            conn.executemany("INSERT OR REPLACE INTO output_history VALUES (?, ?, ?)", outputs)
        self._pending_inputs.clear()
        self._pending_outputs.clear()

    # ------------------------------------------------------------------ reading

    def _query(
        self,
        where: str,
        params: tuple[Any, ...],
        *,
        output: bool,
        raw: bool,
        order: str = "history.session, history.line",
        limit: int | None = None,
    ) -> list[Entry]:
        with self._lock:
            self._flush()
            conn = self._connect()
            column = "source_raw" if raw else "source"
            sql = f"SELECT history.session, history.line, history.{column}"
            if output:
                sql += ", output_history.output"
            sql += " FROM history"
            if output:
                sql += (
                    " LEFT JOIN output_history ON history.session = output_history.session"
                    " AND history.line = output_history.line"
                )
            sql += f" {where} ORDER BY {order}"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            rows = conn.execute(sql, params).fetchall()
        if output:
            return [(s, n, (src, out)) for s, n, src, out in rows]
        return [tuple(row) for row in rows]

    def resolve_session(self, session: int) -> int:
        """Jupyter numbering: 0 is this session, negative counts back from it."""
        return self.session_id + session if session <= 0 else session

    def range(
        self,
        session: int = 0,
        start: int = 1,
        stop: int | None = None,
        *,
        output: bool = False,
        raw: bool = True,
    ) -> list[Entry]:
        """Lines ``start <= line < stop`` of ``session`` (0: this one), in order."""
        session = self.resolve_session(session)
        where = "WHERE history.session = ? AND history.line >= ?"
        params: tuple[Any, ...] = (session, start)
        if stop is not None:
            where += " AND history.line < ?"
            params += (stop,)
        return self._query(where, params, output=output, raw=raw)

    def tail(self, n: int | None = 10, *, output: bool = False, raw: bool = True) -> list[Entry]:
        """The last ``n`` lines over all sessions, oldest first."""
        rows = self._query(
            "",
            (),
            output=output,
            raw=raw,
            order="history.session DESC, history.line DESC",
            limit=n,
        )
        rows.reverse()
        return rows

    def search(
        self,
        pattern: str = "*",
        n: int | None = None,
        unique: bool = False,
        *,
        output: bool = False,
        raw: bool = True,
    ) -> list[Entry]:
        """Lines matching the glob ``pattern`` (most recent ``n``), oldest first.

        ``unique`` keeps only the most recent occurrence of each distinct input.
        """
        column = "source_raw" if raw else "source"
        rows = self._query(
            f"WHERE history.{column} GLOB ?",
            (pattern,),
            output=output,
            raw=raw,
            order="history.session DESC, history.line DESC",
        )
        if unique:
            seen: set[str] = set()
            kept = []
            for row in rows:
                text = row[2][0] if output else row[2]
                if text not in seen:
                    seen.add(text)
                    kept.append(row)
            rows = kept
        if n is not None:
            rows = rows[:n]
        rows.reverse()
        return rows

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.range())
