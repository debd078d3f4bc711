"""Everything corral writes is owner-only, even under ``umask 000``.

A real cluster (controller and engine processes, which inherit the umask) runs a task
so that the task database, its -wal/-shm files, logs, pid and record files all exist;
then every path under the profile must deny group and others everything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.core.history import HistoryManager
from corral.plugins.parallel.cluster import Cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def umask_000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    old = os.umask(0)
    try:
        yield tmp_path / "corral"
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that group or others may use at all."""
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # removed while we looked (a -shm file, say)
            continue
        if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found.append(f"{oct(mode & 0o777)} {path.relative_to(root.parent)}")
    return found


def test_cluster_files_are_owner_only_under_umask_000(umask_000: Path) -> None:
    def square(x: int) -> int:
        print("secret output")
        return x * x

    cluster = Cluster(n=1, profile="u", hb_period=0.2, hb_misses=5)
    client = cluster.start_and_connect()
    try:
        assert client[:].apply_sync(square, 3) == [9]
        profile = umask_000 / "profile_u"
        db_files = list((profile / "db").glob("*"))
        assert any(p.name.endswith("-wal") for p in db_files), db_files
        assert list((profile / "run").glob("*.pid"))
        assert list((profile / "log").glob("*"))
        assert _open_to_others(umask_000) == []
    finally:
        cluster.stop()
    assert _open_to_others(umask_000) == []


def test_history_is_owner_only_under_umask_000(umask_000: Path) -> None:
    path = umask_000 / "somewhere" / "history.sqlite"
    history = HistoryManager(path)
    history.store_input(1, "password = 'hunter2'")
    assert history.session_id >= 1
    history.close()
    assert path.exists()
    assert _open_to_others(umask_000) == []


def test_an_ipc_cluster_listens_only_in_the_owner_only_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    cluster = Cluster(n=1, profile="ipc", hb_period=0.2, hb_misses=5, transport="ipc")
    client = cluster.start_and_connect()
    try:
        info = client.cluster_info
        assert info["transport"] == "ipc"
        prefix = Path(info["ip"])
        directory = prefix.parent
        mode = directory.lstat()
        assert mode.st_uid == os.getuid() and stat.S_IMODE(mode.st_mode) == 0o700
        mine = [p for p in directory.iterdir() if p.name.startswith(prefix.name + "-")]
        sockets = [p for p in mine if p.suffix != ".claim"]  # claims: corral.transports.zmq.ipc
        # 15 in the cluster file, and the task scheduler's direct feed (queues.py)
        assert len(sockets) == 16 and all(stat.S_ISSOCK(p.lstat().st_mode) for p in sockets)
        assert client[:].apply_sync(pow, 2, 5) == [32]
    finally:
        cluster.stop()
