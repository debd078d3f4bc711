"""The server skeleton a kernel and an engine share (corral.transports.zmq.server)."""

from __future__ import annotations

import threading

from corral.transports.zmq.requests import InterruptGuard
from corral.transports.zmq.server import RequestServer


def test_the_first_stop_reason_stands_and_wakes_the_loop() -> None:
    server = RequestServer({"control": {}})
    server.open_wake()
    try:
        assert not server.drain_wake()
        server.request_stop("shutdown requested", 0)
        server.request_stop("terminated", 1)
        assert server.stop_reason == "shutdown requested"
        assert server.exit_code == 0
        assert server.shutdown_requested.is_set()
        assert server.drain_wake()
        assert not server.drain_wake()
    finally:
        server.close_wake()
    server.wake()  # closed: ignored, never raised
    assert not server.drain_wake()


def test_a_shared_guard_is_the_cores_too() -> None:
    server = RequestServer({"shell": {}})
    guard = InterruptGuard()
    server.use_guard(guard)
    assert server.guard is guard and server.core.guard is guard


def test_signals_are_installed_on_the_main_thread_only() -> None:
    server = RequestServer({"shell": {}})
    installed: list[bool] = []
    thread = threading.Thread(target=lambda: installed.append(server.install_signals(sigterm=True)))
    thread.start()
    thread.join()
    assert installed == [False]
    server.restore_signals()  # nothing installed: nothing to undo


def test_a_type_nobody_serves_yet_waits_for_the_plugins_once_asked() -> None:
    server = RequestServer({"shell": {}})
    table = server.core.tables["shell"]
    assert server.late_handler(table, "x_request") is None  # nothing loading: refused

    def plugin(*args: object) -> None:
        pass

    waited: list[bool] = []

    def load() -> None:
        waited.append(True)
        server.core.add("shell", {"x_request": plugin})

    server.await_handlers = load
    assert server.late_handler(table, "x_request") is plugin
    assert waited == [True]


def test_work_handed_to_the_main_thread_runs_in_order_after_a_wake() -> None:
    server = RequestServer({"control": {}})
    server.open_wake()
    ran: list[int] = []
    try:
        thread = threading.Thread(
            target=lambda: [server.hand_to_main(lambda i=i: ran.append(i)) for i in range(3)]
        )
        thread.start()
        thread.join()
        assert ran == [] and server.drain_wake()
        server.run_handed()
        assert ran == [0, 1, 2] and not server.handed
    finally:
        server.close_wake()
