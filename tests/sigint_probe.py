"""Interrupts as tests rely on them; run by ``test_conftest.py`` under a parent ignoring SIGINT.

Not collected by default (no ``test_`` prefix): it is only meaningful when started that way.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal semantics")


def test_sigint_raises_keyboard_interrupt_in_the_test_process() -> None:
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_child_process_is_interrupted_by_sigint() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGINT)
    # An ignoring child would go on reading until communicate() closes stdin, then exit 0.
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "KeyboardInterrupt" in err
