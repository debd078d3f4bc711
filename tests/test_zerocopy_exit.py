"""A process that exits while libzmq still holds buffers lent to it does not crash.

pyzmq stops its zero-copy collector at exit; libzmq releasing a lent buffer after that
killed the process with SIGSEGV or SIGABRT once the program had finished: 19 of 20 runs
of the script below with plain pyzmq 27.3 ("plain" mode, 2026-12-07), none with
corral.transports.zmq imported, which keeps the collector running.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "corral":
        import corral.transports.zmq  # noqa: F401
    import zmq

    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)  # never reads: the messages stay queued
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.sndhwm = 0
    client.connect(f"tcp://127.0.0.1:{port}")
    big = bytearray(8 * 2**20)
    for _ in range(20):
        client.send(memoryview(big), copy=False)  # lent to libzmq, not copied
    # exit without closing: the sockets close as the interpreter tears down
    """
)


def _exit_codes(mode: str, runs: int) -> list[int]:
    return [
        subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, timeout=60
        ).returncode
        for _ in range(runs)
    ]


def test_exiting_with_lent_buffers_queued_ends_cleanly() -> None:
    assert _exit_codes("corral", 12) == [0] * 12
