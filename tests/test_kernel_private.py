"""Kernels started by corral's KernelManager listen where only their owner can connect.

By default the kernel binds ipc (Unix) sockets inside the owner-only runtime directory
(``<tmp>/corral-<uid>``, 0700), so another local user can neither send to it nor
subscribe to its iopub and read the output, and a Jupyter client still drives it through
the connection file (jupyter_client speaks ipc). ``transport="tcp"`` keeps 127.0.0.1
ports for frontends that need them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TIMEOUT

from corral.transports.zmq.manager import KernelManager

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def corral_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    yield tmp_path


def test_kernel_sockets_are_owner_only_by_default() -> None:
    with KernelManager() as km:
        info = km.connection_info
        assert info is not None and info.transport == "ipc"
        directory = Path(info.ip).parent
        mode = directory.lstat()
        assert mode.st_uid == os.getuid() and stat.S_IMODE(mode.st_mode) == 0o700
        mine = [p for p in directory.iterdir() if p.name.startswith(Path(info.ip).name + "-")]
        sockets = [p for p in mine if p.suffix != ".claim"]  # claims: corral.transports.zmq.ipc
        assert len(sockets) == 5 and all(stat.S_ISSOCK(p.lstat().st_mode) for p in sockets)
        assert sorted(p.with_suffix("") for p in mine if p.suffix == ".claim") == sorted(sockets)
        kc = km.client()
        try:
            assert kc.wait_for_ready(TIMEOUT)["content"]["status"] == "ok"
            reply = kc.execute_interactive("print('only for my eyes')", timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.close()


def test_a_jupyter_client_drives_the_ipc_kernel() -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    with KernelManager() as km:
        kc = jupyter_client.BlockingKernelClient(connection_file=str(km.connection_file))
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=TIMEOUT)
            reply = kc.execute_interactive("x = 6 * 7", timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()


def test_tcp_stays_available() -> None:
    with KernelManager(transport="tcp") as km:
        info = km.connection_info
        assert info is not None and info.transport == "tcp" and info.shell_port > 0
        kc = km.client()
        try:
            assert kc.wait_for_ready(TIMEOUT)["content"]["status"] == "ok"
        finally:
            kc.close()
