"""More attacks on corral's security claims (docs/security.md), each of which succeeded
before its fix.

Files: "every file and directory corral writes is owner-only whatever the umask". Two
files in the profile directory were created with the process's umask: the console's
input history and ``%bookmark``'s bookmarks (``0o666`` under ``umask 000``).

Other local users are not trusted. A kernel's debugger wrote the cells it debugs into
``<tmp>/corral_<pid>``, taking that directory as it found it: another user who made it
first (the kernel's pid is public) owned the directory the cells went into, and through a
symlink named after a cell (its name is the hash of its code, the same on every run) had
the kernel overwrite any file of its user with that cell.

The notification bridge's ZeroMQ transport signed every message, but its bound end's PUSH
socket took any connection: a keyless PULL connected to it was dealt every other
notification (kernel output, say), which the genuine peer then never received.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import TIMEOUT
from interp_helpers import make_interpreter
from zmq.utils.monitor import recv_monitor_message

from corral.frontends.console_prompt import _history
from corral.transports.zmq.bridge import ZmqBridgeTransport
from corral.transports.zmq.debugger import HASH_SEED, murmur2_x86


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


def test_another_user_cannot_make_the_debugger_write_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("debugpy")
    pytest.importorskip("jupyter_client")
    from test_kernel_debugger import CELL, Dap
    from test_kernel_protocol import kernel_client

    shared = tmp_path / "tmp"  # a temporary directory every user may write to, like /tmp
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(shared))
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    with kernel_client(tmp_path) as kc:
        dap = Dap(kc)
        cells = Path(dap.request("debugInfo")["body"]["tmpFilePrefix"])
        # The attacker: makes the cells' directory wherever they may, and plants a link
        # named as the cell's file will be.
        if cells.parent.stat().st_mode & 0o002:
            cells.mkdir()
            cells.chmod(0o777)
            (cells / f"{murmur2_x86(CELL, HASH_SEED)}.py").symlink_to(victim)
        dap.request("initialize", clientID="attack", adapterID="python", pathFormat="path")
        dap.request("attach")
        path = Path(dap.request("dumpCell", code=CELL)["body"]["sourcePath"])
        assert victim.read_text() == "the user's own file\n"
        assert not path.is_symlink() and path.read_text() == CELL
        for folder in (path.parent, path.parent.parent):  # nobody else may add or swap
            assert oct(_mode(folder) & 0o077) == oct(0), folder
        dap.request("disconnect", restart=False, terminateDebuggee=False)


_HANDSHAKE_ENDS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def test_a_keyless_peer_can_neither_read_nor_take_bridged_notifications() -> None:
    key = os.urandom(32)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thief = ctx.socket(zmq.PULL)
    monitor = thief.get_monitor_socket(_HANDSHAKE_ENDS)
    try:
        with ZmqBridgeTransport.bind(key) as bound:
            with ZmqBridgeTransport.connect(bound.address, key) as peer:
                thief.connect(bound.address[1])  # the bound end's outgoing PUSH
                assert monitor.poll(TIMEOUT * 1000), "the thief's handshake never ended"
                recv_monitor_message(monitor)  # let in or refused: either way, settled
                sent = [b"notification %d" % n for n in range(10)]
                for data in sent:
                    bound.send(data)
                got: list[bytes] = []
                while len(got) < len(sent) and (data := peer.recv(TIMEOUT)) is not None:
                    got.append(data)
                assert got == sent
                assert not thief.poll(0)
    finally:
        monitor.close(0)
        thief.close(0)
        ctx.term()
