"""Log and task-database retention: a profile keeps the newest few, not every one ever.

Why: every cluster writes a controller log, one log per engine and a task database;
measured before this existed, about 25 local runs left 109 log files and 39 databases in
a profile. When a cluster starts, :func:`prune` removes the oldest cluster logs and
databases beyond ``[cluster] keep_logs`` and ``keep_dbs``, never those of a cluster that
is still running (its cluster file exists).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["prune"]

_LOG = re.compile(r"^(?:controller|engine|cluster)-(\d{8}-\d{6}-[0-9a-f]+|.+?)(?:-.*)?\.log$")
_DB = re.compile(r"^tasks-(.+)\.sqlite(?:-wal|-shm|-journal)?$")


def _running_ids(profile_dir: Path) -> set[str]:
    return {
        path.stem.removeprefix("cluster-")
        for path in (profile_dir / "security").glob("cluster-*.json")
    }


def _cluster_id(pattern: re.Pattern[str], name: str, running: set[str]) -> str | None:
    """The cluster a file belongs to, or None for files this module must not touch."""
    if pattern.match(name) is None:
        return None
    if any(f"-{cid}" in name for cid in running):
        return None  # a running cluster's file: never removed
    return name


def _prune_dir(directory: Path, pattern: re.Pattern[str], keep: int, running: set[str]) -> int:
    if not directory.is_dir():
        return 0
    candidates = []
    for path in directory.iterdir():
        if path.is_file() and _cluster_id(pattern, path.name, running) is not None:
            try:
                candidates.append((path.stat().st_mtime, path))
            except OSError:
                continue
    candidates.sort(reverse=True)
    removed = 0
    for _, path in candidates[keep:]:
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def prune(profile_dir: Path, *, keep_logs: int, keep_dbs: int) -> tuple[int, int]:
    """Remove all but the newest ``keep_logs`` cluster log files and ``keep_dbs`` task
    database files of ``profile_dir``; returns how many of each were removed."""
    running = _running_ids(profile_dir)
    logs = _prune_dir(profile_dir / "log", _LOG, keep_logs, running)
    dbs = _prune_dir(profile_dir / "db", _DB, keep_dbs, running)
    return logs, dbs
