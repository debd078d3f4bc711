"""``corral console`` driven through a pseudo-terminal, against real kernel processes.

Every step waits for the text the console prints (pexpect), never for time to pass.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import psutil
import pytest
from helpers import TIMEOUT

from corral.frontends.console_prompt import enter_action

REPO = Path(__file__).resolve().parent.parent

#: Runs the ``corral`` command with the frontends plugin registered, whether or not it is
#: listed among the built-in plugins yet (then registering is a no-op).
LAUNCHER = """
import sys
import corral.frontends.plugin as plugin
from corral.plugins.manager import get_plugin_manager
manager = get_plugin_manager()
if not manager.has_plugin("corral.frontends.plugin"):
    manager.register(plugin, name="corral.frontends.plugin")
from corral.cli import main
sys.exit(main())
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CORRAL_DIR"] = str(tmp_path / "corral")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"  # pexpect does not answer cursor-position queries
    env["TERM"] = "xterm"
    return env


def spawn(env: dict[str, str], *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-c", LAUNCHER, *args],
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 120),
    )


@pytest.fixture
def console(env: dict[str, str]) -> Iterator[pexpect.spawn]:
    child = spawn(env, "console", "--simple-prompt")
    yield child
    if child.isalive():
        child.terminate(force=True)


def run_cell(child: pexpect.spawn, *lines: str) -> None:
    for line in lines:
        child.sendline(line)


def kernel_pid(child: pexpect.spawn, count: int) -> int:
    run_cell(child, "import os; os.getpid()")
    child.expect(rf"Out\[{count}\]: (\d+)")
    return int(child.match.group(1))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_execute_result_print_and_multiline(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    run_cell(console, "1+1")
    console.expect(r"Out\[1\]: 2")
    console.expect(r"In \[2\]: ")
    run_cell(console, "for i in range(3):", "    print('line', i * 10)", "")
    console.expect("line 0")
    console.expect("line 10")
    console.expect("line 20")
    console.expect(r"In \[3\]: ")
    run_cell(console, "print('hello from the kernel')")
    console.expect("hello from the kernel")
    console.expect(r"In \[4\]: ")


def test_error_help_and_input(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    run_cell(console, "1/0")
    console.expect("ZeroDivisionError")
    console.expect(r"In \[\d+\]: ")
    run_cell(console, "x = 5")
    console.expect(r"In \[\d+\]: ")
    run_cell(console, "x?")
    console.expect(r"Type:\s+int")
    console.expect(r"In \[\d+\]: ")
    run_cell(console, "name = input('your name? ')")
    console.expect("your name\\? ")
    console.sendline("bob")
    console.expect(r"In \[(\d+)\]: ")
    count = console.match.group(1)
    run_cell(console, "name.upper()")
    console.expect(rf"Out\[{count}\]: 'BOB'")


def test_ctrl_c_interrupts_running_cell(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    # The literal is split so that the echo of the typed line cannot match "spinning".
    run_cell(console, "print('spin' + 'ning', flush=True); exec('while True: pass')")
    console.expect("spinning")
    console.sendintr()
    console.expect("KeyboardInterrupt")
    console.expect(r"In \[(\d+)\]: ")
    count = console.match.group(1)
    run_cell(console, "6*7")
    console.expect(rf"Out\[{count}\]: 42")


def test_ctrl_c_at_prompt_clears_line(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    console.send("this is not python")
    console.sendintr()
    console.expect(r"In \[1\]: ")
    run_cell(console, "2+2")
    console.expect(r"Out\[1\]: 4")


def test_crash_restarts_kernel_and_console_goes_on(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    first = kernel_pid(console, 1)
    run_cell(console, "import ctypes; ctypes.string_at(0)")
    console.expect(r"died \(killed by SIGSEGV\); restarting it")
    console.expect("kernel restarted")
    console.expect(r"In \[1\]: ")
    run_cell(console, "1+2")
    console.expect(r"Out\[1\]: 3")
    second = kernel_pid(console, 2)
    assert second != first


def test_ctrl_d_exits_and_stops_the_kernel(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    pid = kernel_pid(console, 1)
    console.expect(r"In \[2\]: ")
    console.sendeof()
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0
    assert gone(pid)


def test_full_prompt_executes_and_completes(env: dict[str, str]) -> None:
    child = spawn(env, "console")
    try:
        child.expect(r"In \[")
        child.send("1+1\r")
        child.expect(r"Out\[1\]: 2")
        child.expect(r"In \[")
        child.send("import o\t")
        child.expect(r"\bos\b")
        child.sendcontrol("c")  # drop the half-typed line
        child.expect(r"In \[")
        child.send("import os; os.sep\r")
        child.expect(r"Out\[2\]: '/'")
        child.expect(r"In \[")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


@pytest.mark.parametrize(
    ("text", "at_end", "status", "action"),
    [
        ("", True, "complete", "submit"),
        ("1+1", True, "complete", "submit"),
        ("for i in x:", True, "incomplete", "newline"),
        ("for i in x:\n    f(i)", True, "incomplete", "newline"),
        ("for i in x:\n    f(i)\n    ", True, "incomplete", "submit"),
        ("x = 1", False, "complete", "newline"),
        ("def f(:", True, "invalid", "submit"),
    ],
)
def test_enter_action(text: str, at_end: bool, status: str, action: str) -> None:
    assert enter_action(text, at_end, status) == action


def test_existing_kernel_is_joined_and_left_running(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.transports.zmq.manager import KernelManager

    monkeypatch.setenv("CORRAL_DIR", env["CORRAL_DIR"])
    with KernelManager(autorestart=False) as manager:
        client = manager.client()
        client.wait_for_ready(TIMEOUT)
        client.execute_interactive("y = 'kept'", timeout=TIMEOUT, output_hook=lambda m: None)
        client.close()
        child = spawn(env, "console", "--simple-prompt", "--existing", str(manager.connection_file))
        try:
            child.expect(r"In \[2\]: ")  # numbering goes on from the kernel's count
            run_cell(child, "y")
            child.expect(r"Out\[2\]: 'kept'")
            run_cell(child, "print('spin' + 'ning', flush=True); exec('while True: pass')")
            child.expect("spinning")
            child.sendintr()  # an interrupt_request on the control channel
            child.expect("KeyboardInterrupt")
            child.expect(r"In \[\d+\]: ")
            child.sendeof()
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0
            assert manager.is_alive()
        finally:
            if child.isalive():
                child.terminate(force=True)


@pytest.mark.parametrize("typed", ["exit()", "quit()", "exit", "quit"])
def test_exit_and_quit_leave_the_console(env: dict[str, str], typed: str) -> None:
    child = spawn(env, "console", "--simple-prompt")
    try:
        child.expect(r"In \[1\]: ")
        pid = kernel_pid(child, 1)
        child.expect(r"In \[2\]: ")
        run_cell(child, typed)
        child.expect(pexpect.EOF)
        assert "SystemExit" not in child.before and "Traceback" not in child.before
        child.close()
        assert child.exitstatus == 0
        assert wait_gone(pid)
    finally:
        if child.isalive():
            child.terminate(force=True)


def wait_gone(pid: int) -> bool:
    """The kernel is shut down as the console leaves: poll for its end with a deadline."""
    import time

    deadline = time.monotonic() + TIMEOUT
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_crash_is_reported_once(console: pexpect.spawn) -> None:
    console.expect(r"In \[1\]: ")
    run_cell(console, "import ctypes; ctypes.string_at(0)")
    console.expect("kernel restarted")
    said = console.before  # everything from the typed line to the restart notice
    console.expect(r"In \[1\]: ")
    assert said.count("SIGSEGV") == 1, said
    assert said.count("died") == 1 and said.count("restarting") == 1, said
    assert "WARNING" not in said


def test_without_prompt_toolkit_falls_back_to_a_simple_prompt(
    env: dict[str, str], tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "prompt_toolkit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])}
    child = spawn(env, "console")
    try:
        child.expect("using a simple prompt")
        child.expect(r"In \[1\]: ")
        run_cell(child, "40 + 2")
        child.expect(r"Out\[1\]: 42")
        run_cell(child, "exit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
