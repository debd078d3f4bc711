"""HistoryManager in SQLite: sessions, tail, range, search, outputs, and the API on top."""

from __future__ import annotations

import pytest
from interp_helpers import make_interpreter

from corral.core.history import HistoryManager


def _fill(hm: HistoryManager, lines: list[str]) -> None:
    for number, text in enumerate(lines, start=1):
        hm.store_input(number, text)


def test_two_sessions_on_one_file(tmp_path):
    path = tmp_path / "hist.sqlite"
    first = HistoryManager(path)
    _fill(first, ["a = 1", "b = 2", "a + b"])
    first.store_output(3, "3")
    s1 = first.session_id
    first.close()

    second = HistoryManager(path)
    _fill(second, ["c = 3", "a + b"])
    s2 = second.session_id
    assert s2 == s1 + 1

    assert second.tail(3) == [(s1, 3, "a + b"), (s2, 1, "c = 3"), (s2, 2, "a + b")]
    assert second.range(-1, 1, 3) == [(s1, 1, "a = 1"), (s1, 2, "b = 2")]
    assert second.range(s1, 2) == [(s1, 2, "b = 2"), (s1, 3, "a + b")]
    assert second.range(0, 1) == [(s2, 1, "c = 3"), (s2, 2, "a + b")]
    assert second.search("a*") == [(s1, 1, "a = 1"), (s1, 3, "a + b"), (s2, 2, "a + b")]
    assert second.search("a*", unique=True) == [(s1, 1, "a = 1"), (s2, 2, "a + b")]
    assert second.search("*", n=2) == [(s2, 1, "c = 3"), (s2, 2, "a + b")]
    assert second.range(s1, 3, 4, output=True) == [(s1, 3, ("a + b", "3"))]
    assert second.range(s1, 1, 2, output=True) == [(s1, 1, ("a = 1", None))]
    second.close()


def test_wal_mode_and_pending_rows_reach_the_file_on_close(tmp_path):
    import sqlite3

    path = tmp_path / "h.sqlite"
    hm = HistoryManager(path, batch=1000)
    _fill(hm, ["x"] * 5)
    hm.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 5


def test_raw_and_transformed_sources():
    hm = HistoryManager(":memory:")
    hm.store_input(1, "__corral__.line_magic('pwd', '')", "%pwd")
    sid = hm.session_id
    assert hm.range(0, 1, raw=True) == [(sid, 1, "%pwd")]
    assert hm.range(0, 1, raw=False) == [(sid, 1, "__corral__.line_magic('pwd', '')")]


def test_default_path_is_in_the_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    hm = HistoryManager()
    hm.store_input(1, "x")
    hm.close()
    assert (tmp_path / "profile_default" / "db" / "history.sqlite").is_file()


def test_explicit_session_id_reopens_a_session(tmp_path):
    path = tmp_path / "h.sqlite"
    first = HistoryManager(path)
    first.store_input(1, "one")
    sid = first.session_id
    first.close()
    again = HistoryManager(path, session_id=sid)
    again.store_input(2, "two")
    assert again.range(0, 1) == [(sid, 1, "one"), (sid, 2, "two")]
    again.close()


def test_output_logging_can_be_off():
    hm = HistoryManager(":memory:", store_output=False)
    hm.store_input(1, "1")
    hm.store_output(1, "1")
    assert hm.range(0, 1, output=True) == [(hm.session_id, 1, ("1", None))]


def test_interpreter_history_api(tmp_path):
    interp, _ = make_interpreter(history=HistoryManager(tmp_path / "h.sqlite"))
    for code in ["x = 1", "x + 1", "%pwd", "x + 1"]:
        interp.execute(code)
    sid = interp.history_manager.session_id
    assert interp.history("tail", n=2) == [(sid, 3, "%pwd"), (sid, 4, "x + 1")]
    assert interp.history("range", start=2, stop=3, output=True) == [(sid, 2, ("x + 1", "2"))]
    assert interp.history("range", start=3, stop=4, raw=False) == [
        (sid, 3, "__corral__.line_magic('pwd', '')")
    ]
    assert interp.history("search", pattern="x*", unique=True) == [
        (sid, 1, "x = 1"),
        (sid, 4, "x + 1"),
    ]
    with pytest.raises(ValueError):
        interp.history("bogus")
