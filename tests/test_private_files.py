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


def test_a_created_profile_is_owner_only_under_umask_000(
    umask_000: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``corral profile create`` wrote ``corral.ini`` with ``write_text``: mode 0666
    under ``umask 000``, a configuration anyone could rewrite (launchers, commands)."""
    from corral.cli import main

    assert main(["profile", "create", "made"]) == 0
    assert (umask_000 / "profile_made" / "corral.ini").exists()
    assert _open_to_others(umask_000) == []


def test_key_files_get_owner_only_parents_under_umask_000(umask_000: Path) -> None:
    """A connection file named in a directory that does not exist yet: its missing
    parents were made by ``mkdir(parents=True)``, 0777 under ``umask 000``, so another
    user could replace the (0600) key file with one of their own. An existing directory
    is left as it is (it may be the user's working directory)."""
    from corral.transports.zmq.keyfile import write_private_json

    umask_000.mkdir(mode=0o700)
    shared = umask_000 / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    target = shared / "new" / "deeper" / "kernel-1.json"
    write_private_json(target, {"key": "secret"})
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # not ours to tighten
    assert _open_to_others(shared / "new") == []


def test_kernelspecs_are_not_writable_by_others_under_umask_000(
    umask_000: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``umask 000`` ``corral kernel install`` made ``kernels/corral`` and every
    missing parent 0777 and ``kernel.json`` 0666: another user could put their own argv
    in it, run by Jupyter as this user. A per-user spec is owner-only; one installed into
    an environment is readable by all and writable by its owner only."""
    from corral.transports.zmq.kernelspec import install_kernelspec

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(umask_000 / "data" / "jupyter"))
    umask_000.mkdir(mode=0o700)
    install_kernelspec(user=True)
    assert _open_to_others(umask_000 / "data") == []
    env = umask_000 / "env"
    spec = install_kernelspec(prefix=env)
    for path in [*env.rglob("*"), spec / "kernel.json"]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o022 == 0, f"{oct(mode)} {path}"
    assert stat.S_IMODE((spec / "kernel.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(spec.stat().st_mode) == 0o755


def test_a_kernels_connection_file_gets_owner_only_parents_under_umask_000(
    umask_000: Path,
) -> None:
    """``KernelManager(connection_file=...)`` in a directory that does not exist yet made
    it (and its parents) 0777 under ``umask 000`` before writing the key there."""
    from corral import KernelManager

    umask_000.mkdir(mode=0o700)
    connection_file = umask_000 / "kernels" / "mine" / "kernel-x.json"
    km = KernelManager(connection_file=connection_file, autorestart=False)
    km.start()
    try:
        reply = km.client().execute_interactive("x = 1", timeout=60)
        assert reply["content"]["status"] == "ok"
        assert connection_file.exists()
        assert _open_to_others(umask_000) == []
    finally:
        km.shutdown()
