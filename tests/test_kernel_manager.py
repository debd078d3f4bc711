"""KernelManager against real kernel processes: start, interrupt, restart, death, shutdown.

Every test waits for events (a notification observed, a reply, a process exit), never for
time to pass, and asserts no durations.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import TIMEOUT
from observers import NoticeLog

from corral.notification import NotificationCenter
from corral.transports.zmq.client import KernelDiedError
from corral.transports.zmq.kernel_events import KERNEL_DIED, KERNEL_RESTARTED, KERNEL_STARTED
from corral.transports.zmq.manager import KernelManager, KernelStartError


@pytest.fixture(autouse=True)
def corral_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def center() -> NotificationCenter:
    return NotificationCenter()


@pytest.fixture
def km(center: NotificationCenter) -> Iterator[KernelManager]:
    manager = KernelManager(center=center)
    manager.start()
    try:
        yield manager
    finally:
        manager.shutdown(now=True)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int) -> bool:
    try:
        psutil.Process(pid).wait(TIMEOUT)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return _gone(pid)
    return True


def test_start_writes_private_connection_file_and_posts(center: NotificationCenter) -> None:
    recorder = NoticeLog()
    center.add_observer(recorder)
    with KernelManager(center=center) as km:
        assert km.is_alive()
        assert km.pid is not None
        assert km.connection_file.exists()
        assert stat.S_IMODE(km.connection_file.stat().st_mode) == 0o600
        assert km.connection_info is not None and km.connection_info.shell_port > 0
        # The kernel leads its own process group, so the group can be signalled as one.
        assert os.getpgid(km.pid) == km.pid
        started = recorder.of(KERNEL_STARTED)
        assert started == [{"pid": km.pid, "connection_file": str(km.connection_file)}]
        kc = km.client()
        assert kc.wait_for_ready(TIMEOUT)["content"]["status"] == "ok"
        kc.close()


def test_shutdown_kills_the_process_group_and_removes_the_file(km: KernelManager) -> None:
    kc = km.client()
    outputs: list[str] = []
    reply = kc.execute_interactive(
        "import subprocess\nchild = subprocess.Popen(['sleep', '1000'])\nprint(child.pid)",
        timeout=TIMEOUT,
        output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
    )
    assert reply["content"]["status"] == "ok"
    child_pid = int("".join(outputs).strip())
    kernel_pid = km.pid
    assert kernel_pid is not None
    assert not _gone(child_pid)
    km.shutdown()
    assert not km.is_alive()
    assert km.pid is None
    assert _wait_gone(kernel_pid)
    assert _wait_gone(child_pid)
    assert not km.connection_file.exists()
    # A client of a kernel that was shut down says so instead of waiting forever.
    with pytest.raises(KernelDiedError):
        kc.execute_interactive("1", timeout=TIMEOUT)
    kc.close()


def test_shutdown_without_asking_first(km: KernelManager) -> None:
    pid = km.pid
    assert pid is not None
    km.shutdown(now=True)
    assert _wait_gone(pid)
    assert not km.connection_file.exists()


def test_interrupt_raises_keyboardinterrupt_and_kernel_survives(km: KernelManager) -> None:
    kc = km.client()
    kc.wait_for_ready(TIMEOUT)
    msg_id = kc.execute("print('spinning', flush=True)\nwhile True:\n    pass\n")
    # Interrupt only once the loop runs: the kernel ignores SIGINT between requests.
    while True:
        msg = kc.get_iopub_msg(TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    km.interrupt()
    reply = kc.get_reply(msg_id, TIMEOUT)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert km.is_alive()
    again = kc.execute_interactive("1 + 1", timeout=TIMEOUT, output_hook=lambda m: None)
    assert again["content"]["status"] == "ok"
    kc.close()


def test_restart_gives_a_new_process_and_clients_follow(
    km: KernelManager, center: NotificationCenter
) -> None:
    recorder = NoticeLog()
    center.add_observer(recorder)
    kc = km.client()
    kc.execute_interactive("x = 41", timeout=TIMEOUT)
    old_pid = km.pid
    assert old_pid is not None
    km.restart()
    assert km.is_alive()
    assert km.pid != old_pid
    assert _wait_gone(old_pid)
    assert km.connection_file.exists()
    (restarted,) = recorder.of(KERNEL_RESTARTED)
    assert restarted["pid"] == km.pid and restarted["automatic"] is False
    assert recorder.of(KERNEL_DIED) == []
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive("'x' in dir()", timeout=TIMEOUT, output_hook=outputs.append)
    assert reply["content"]["status"] == "ok"
    results = [
        m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"
    ]
    assert results == ["False"]  # a fresh namespace: really a new kernel
    kc.close()


def test_segfault_fails_pending_wait_then_restarts(
    km: KernelManager, center: NotificationCenter
) -> None:
    died = threading.Event()
    restarted = threading.Event()
    infos: dict[str, dict[str, Any]] = {}

    def observer(type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        assert sender is km
        infos[type] = info
        (died if type == KERNEL_DIED else restarted).set()

    center.add_observer(observer, KERNEL_DIED)
    center.add_observer(observer, KERNEL_RESTARTED)
    kc = km.client()
    kc.wait_for_ready(TIMEOUT)
    old_pid = km.pid
    with pytest.raises(KernelDiedError) as excinfo:
        kc.execute_interactive("import ctypes; ctypes.string_at(0)", timeout=TIMEOUT)
    assert "SIGSEGV" in str(excinfo.value)
    assert died.wait(TIMEOUT)
    assert restarted.wait(TIMEOUT)
    assert infos[KERNEL_DIED]["pid"] == old_pid
    assert infos[KERNEL_DIED]["exit_code"] == -11
    assert infos[KERNEL_DIED]["reason"] == "exited"
    assert infos[KERNEL_DIED]["restarting"] is True
    assert infos[KERNEL_RESTARTED]["restart_count"] == 1
    assert infos[KERNEL_RESTARTED]["pid"] == km.pid != old_pid
    # The very same client object works against the new kernel.
    outputs: list[str] = []
    reply = kc.execute_interactive(
        "print('alive again')",
        timeout=TIMEOUT,
        output_hook=lambda m: outputs.append(m["content"].get("text", "")),
    )
    assert reply["content"]["status"] == "ok"
    assert "".join(outputs) == "alive again\n"
    kc.close()


def test_restart_limit_stops_restarting(center: NotificationCenter) -> None:
    recorder = NoticeLog()
    center.add_observer(recorder)
    with KernelManager(center=center, restart_limit=0) as km:
        kc = km.client()
        with pytest.raises(KernelDiedError):
            kc.execute_interactive("import os; os._exit(7)", timeout=TIMEOUT)
        (died,) = recorder.wait_for(KERNEL_DIED)
        assert died["exit_code"] == 7
        assert died["restarting"] is False
        assert "not restarting" in died["message"]
        assert recorder.of(KERNEL_RESTARTED) == []
        assert not km.is_alive()
        # The kernel stays dead: new requests fail at once instead of hanging.
        with pytest.raises(KernelDiedError):
            kc.execute_interactive("1", timeout=TIMEOUT)
        kc.close()


def test_frozen_kernel_is_found_by_the_heartbeat(center: NotificationCenter) -> None:
    recorder = NoticeLog()
    center.add_observer(recorder)
    with KernelManager(center=center, heartbeat_interval=0.2) as km:
        kc = km.client()
        kc.wait_for_ready(TIMEOUT)
        frozen = km.pid
        # SIGSTOP freezes the kernel without ending it: only the heartbeat can tell.
        kc.execute("import os, signal; os.kill(os.getpid(), signal.SIGSTOP)")
        (died,) = recorder.wait_for(KERNEL_DIED)
        assert died["reason"] == "heartbeat"
        assert died["pid"] == frozen
        recorder.wait_for(KERNEL_RESTARTED)
        assert frozen is not None and _wait_gone(frozen)
        reply = kc.execute_interactive("1", timeout=TIMEOUT, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
        kc.close()


def test_kernel_exiting_at_startup_reports_its_stderr() -> None:
    code = "import sys; sys.stderr.write('boom: no such option --frobnicate\\n'); sys.exit(3)"
    km = KernelManager(kernel_cmd=[sys.executable, "-c", code])
    with pytest.raises(KernelStartError) as excinfo:
        km.start()
    message = str(excinfo.value)
    assert "boom: no such option --frobnicate" in message
    assert "exit code 3" in message
    assert not km.is_alive()


def test_existing_connection_file_ports_are_reused(center: NotificationCenter) -> None:
    with KernelManager(center=center) as first:
        path = first.connection_file
        info = first.connection_info
        first.restart()
        # The previous kernel's file named every port: the new kernel bound them again.
        assert first.connection_info == info
        assert first.connection_file == path


def test_methods_need_a_started_kernel() -> None:
    km = KernelManager()
    assert not km.is_alive() and km.pid is None
    with pytest.raises(RuntimeError):
        km.client()
    with pytest.raises(RuntimeError):
        km.interrupt()
    km.shutdown()  # nothing to do, no error
