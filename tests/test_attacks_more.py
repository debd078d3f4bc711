"""More attacks on corral's security claims (docs/security.md), each of which succeeded
before its fix.

Files: "every file and directory corral writes is owner-only whatever the umask". Two
files in the profile directory were created with the process's umask: the console's
input history and ``%bookmark``'s bookmarks (``0o666`` under ``umask 000``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from interp_helpers import make_interpreter

from corral.frontends.console_prompt import _history


@pytest.fixture
def umask_000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.chdir(tmp_path)
    old = os.umask(0)
    try:
        yield tmp_path / "corral"
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_console_history_is_owner_only_under_umask_000(umask_000: Path) -> None:
    _history("default")
    path = umask_000 / "profile_default" / "console_history"
    assert oct(_mode(path)) == oct(0o600)


def test_a_console_history_left_open_to_others_is_made_owner_only(umask_000: Path) -> None:
    """A file an earlier version left readable (what you typed) is closed on next use."""
    folder = umask_000 / "profile_default"
    _history("default")
    path = folder / "console_history"
    path.chmod(0o666)
    _history("default")
    assert oct(_mode(path)) == oct(0o600)


def test_bookmarks_are_owner_only_under_umask_000(umask_000: Path, tmp_path: Path) -> None:
    interp, _ = make_interpreter()
    result = interp.execute(f"%bookmark place {tmp_path}")
    assert result.status == "ok", "\n".join(result.traceback)
    path = umask_000 / "profile_default" / "bookmarks.json"
    assert str(tmp_path) in path.read_text()
    assert oct(_mode(path)) == oct(0o600)
