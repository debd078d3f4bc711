"""``corral run`` (the editor bridge) against real kernels, and the TextMate bundle's files.

Streaming is shown without timing anything: the code prints, then blocks reading a FIFO
that the test opens only after it has seen the first line arrive.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import TIMEOUT

from corral.transports.zmq.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "corral" / "frontends" / "editors" / "textmate"

#: Runs ``corral`` with the frontends plugin registered (a no-op once it is built in).
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
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def corral_run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, "run", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )


@pytest.fixture
def kernel(env: dict[str, str]) -> Iterator[KernelManager]:
    with KernelManager(autorestart=False) as manager:
        yield manager


def test_file_output_streams_live(env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = tmp_path / "stream.py"
    script.write_text(
        "print('first line', flush=True)\n"
        f"with open({str(fifo)!r}) as fh:\n"
        "    word = fh.read()\n"
        "print('second line', word)\n"
    )
    child = pexpect.spawn(
        sys.executable, ["-c", LAUNCHER, "run", str(script)], env=env, encoding="utf-8"
    )
    try:
        child.expect("first line", timeout=TIMEOUT)
        # The kernel is now blocked on the FIFO: the first line came while it was running.
        with open(fifo, "w") as fh:
            fh.write("go")
        child.expect("second line go", timeout=TIMEOUT)
        child.expect(pexpect.EOF, timeout=TIMEOUT)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_file_sets_dunder_file_and_exits_zero(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "where.py"
    script.write_text("import sys\nprint('at', __file__)\nprint('warn', file=sys.stderr)\n")
    result = corral_run(env, str(script))
    assert result.returncode == 0, result.stderr
    assert f"at {script.resolve()}" in result.stdout
    assert "warn" in result.stderr


def test_raising_file_exits_one_with_traceback_naming_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "boom.py"
    script.write_text("x = 1\n\ndef f():\n    return 1 / 0\n\nf()\n")
    result = corral_run(env, str(script))
    assert result.returncode == 1
    assert "ZeroDivisionError" in result.stderr
    assert str(script.resolve()) in result.stderr
    assert "return 1 / 0" in result.stderr  # the file's own line is quoted


def test_script_sees_its_arguments_in_sys_argv(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corral run script.py a -v` gives the script the sys.argv `python script.py a -v`
    would (the file as typed, then its arguments, options included)."""
    (tmp_path / "args.py").write_text("import sys\nprint(sys.argv)\n")
    monkeypatch.chdir(tmp_path)
    result = corral_run(env, "args.py", "a", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['args.py', 'a', '-v']"
    plain = corral_run(env, "args.py")
    assert plain.stdout.strip() == "['args.py']", plain.stderr


def test_script_argv_is_restored_in_an_existing_kernel(
    env: dict[str, str], kernel: KernelManager, tmp_path: Path
) -> None:
    script = tmp_path / "args.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    cf = str(kernel.connection_file)
    ran = corral_run(env, "--existing", cf, str(script), "x")
    assert ran.stdout.strip() == "['x']", ran.stderr
    after = corral_run(env, "--existing", cf, "-", stdin="import sys\nprint('x' in sys.argv)\n")
    assert after.stdout.strip() == "False", after.stderr


def test_code_from_stdin(env: dict[str, str]) -> None:
    result = corral_run(env, "-", stdin="print(6 * 7)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_missing_file_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    result = corral_run(env, str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_html_output_is_escaped(env: dict[str, str]) -> None:
    result = corral_run(env, "--html", "-", stdin="print('<b>&')\n")
    assert result.returncode == 0, result.stderr
    assert "&lt;b&gt;&amp;" in result.stdout
    assert result.stdout.startswith("<pre")


def test_timeout_interrupts_and_exits_124(env: dict[str, str], kernel: KernelManager) -> None:
    result = corral_run(
        env,
        "--existing",
        str(kernel.connection_file),
        "--timeout",
        "0.5",
        "-",
        stdin="while True: pass\n",
    )
    assert result.returncode == 124
    assert "did not finish" in result.stderr
    # The interrupt freed the kernel for the next run.
    again = corral_run(env, "--existing", str(kernel.connection_file), "-", stdin="print(1)\n")
    assert again.returncode == 0, again.stderr


def test_existing_kernel_keeps_state(env: dict[str, str], kernel: KernelManager) -> None:
    cf = str(kernel.connection_file)
    first = corral_run(env, "--existing", cf, "-", stdin="x = 41\n")
    assert first.returncode == 0, first.stderr
    second = corral_run(env, "--existing", cf, "-", stdin="print(x + 1)\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "42"
    # By file name alone, found in the profile's security directory.
    third = corral_run(env, "--existing", kernel.connection_file.name, "-", stdin="print(x)\n")
    assert third.stdout.strip() == "41"
    assert kernel.is_alive()
    client = kernel.client()
    try:
        client.wait_for_ready(TIMEOUT)
        outputs: list[str] = []
        client.execute_interactive(
            "x",
            timeout=TIMEOUT,
            output_hook=lambda m: outputs.append(str(m["content"].get("data", {}))),
        )
        assert any("41" in out for out in outputs)
    finally:
        client.close()


def test_unknown_connection_file(env: dict[str, str]) -> None:
    result = corral_run(env, "--existing", "no-such-kernel.json", "-", stdin="1\n")
    assert result.returncode == 2
    assert "no connection file" in result.stderr


@pytest.mark.parametrize(
    "name", ["info.plist", "Commands/Run File.tmCommand", "Commands/Run Selection.tmCommand"]
)
def test_textmate_bundle_files_parse(name: str) -> None:
    with open(BUNDLE / name, "rb") as fh:
        data = plistlib.load(fh)
    assert data["name"]
    assert data["uuid"]
    if name.startswith("Commands/"):
        assert "corral run" in data["command"]
        assert "TM_CORRAL_CONNECTION_FILE" in data["command"]


def test_traceback_shows_no_frame_of_the_runner(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "deep.py"
    script.write_text("def g():\n    raise KeyError('k')\n\ng()\n")
    result = corral_run(env, str(script))
    assert result.returncode == 1
    assert "KeyError" in result.stderr and "raise KeyError('k')" in result.stderr
    assert "exec(compile" not in result.stderr and "Cell In" not in result.stderr
    assert "source_file" not in result.stderr


def test_input_in_a_script_reads_the_terminal(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "ask.py"
    script.write_text("name = input('who? ')\nprint('hi', name)\n")
    child = pexpect.spawn(
        sys.executable, ["-c", LAUNCHER, "run", str(script)], env=env, encoding="utf-8"
    )
    try:
        child.expect("who\\? ", timeout=TIMEOUT)
        child.sendline("bob")
        child.expect("hi bob", timeout=TIMEOUT)
        child.expect(pexpect.EOF, timeout=TIMEOUT)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_input_with_code_on_stdin_asks_the_controlling_terminal(
    env: dict[str, str], tmp_path: Path
) -> None:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    command = f"echo \"print('got', input('what? '))\" | {sys.executable} {launcher} run -"
    child = pexpect.spawn("/bin/sh", ["-c", command], env=env, encoding="utf-8")
    try:
        child.expect("what\\? ", timeout=TIMEOUT)
        child.sendline("tea")
        child.expect("got tea", timeout=TIMEOUT)
        child.expect(pexpect.EOF, timeout=TIMEOUT)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_traceback_to_a_pipe_has_no_colour_codes(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("1 / 0\n")
    result = corral_run(env, str(script))
    assert result.returncode == 1 and "ZeroDivisionError: division by zero" in result.stderr
    assert "\x1b[" not in result.stderr


def test_exit_in_a_script_ends_it(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "leave.py"
    script.write_text("print('before')\nexit()\nprint('after')\n")
    result = corral_run(env, str(script))
    assert result.returncode == 0, result.stderr
    assert "before" in result.stdout and "after" not in result.stdout
    script.write_text("import sys\nsys.exit(3)\n")
    assert corral_run(env, str(script)).returncode == 1
