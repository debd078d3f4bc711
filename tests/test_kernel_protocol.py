"""The kernel process speaks the Jupyter protocol: driven by jupyter_client's real client.

One kernel process is shared by the module (tests that kill a kernel start their own);
every test filters iopub by its own request's msg_id, so they do not see each other's
output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import TIMEOUT, wait_for_file

jupyter_client = pytest.importorskip("jupyter_client")
from jupyter_client import BlockingKernelClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def kernel_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CORRAL_DIR"] = str(tmp / "corral")
    return env


def start_kernel(tmp: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    cf = tmp / f"kernel-{uuid.uuid4().hex[:8]}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.plugins.kernel_main", "-f", str(cf), *args],
        env=kernel_env(tmp),
    )
    wait_for_file(cf, proc=proc)
    return proc, cf


def connect(cf: Path) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=str(cf))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    return kc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(TIMEOUT)


@contextlib.contextmanager
def kernel_client(tmp: Path) -> Iterator[BlockingKernelClient]:
    """A kernel started in ``tmp`` and a client connected to it; both stopped after (the
    module-scoped ``kc`` fixture of the kernel test files)."""
    proc, cf = start_kernel(tmp)
    client = connect(cf)
    try:
        yield client
    finally:
        client.stop_channels()
        stop(proc)


def reply_to(channel: Any, msg_id: str) -> dict[str, Any]:
    while True:
        msg = channel.get_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(kc: BlockingKernelClient, msg_id: str) -> list[dict[str, Any]]:
    """The iopub messages answering ``msg_id``, up to and including ``status: idle``."""
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


def run(kc: BlockingKernelClient, code: str, **kw: Any) -> tuple[dict, list[dict]]:
    msg_id = kc.execute(code, **kw)
    reply = reply_to(kc.shell_channel, msg_id)
    return reply, iopub_until_idle(kc, msg_id)


def types(msgs: list[dict]) -> list[str]:
    return [m["msg_type"] for m in msgs]


def stdout_of(msgs: list[dict], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def control_request(kc: BlockingKernelClient, msg_type: str, content: dict | None = None) -> dict:
    msg = kc.session.msg(msg_type, content or {})
    kc.control_channel.send(msg)
    return reply_to(kc.control_channel, msg["header"]["msg_id"])


def wait_until_running(kc: BlockingKernelClient, msg_id: str) -> None:
    """The kernel announced ``execute_input`` for ``msg_id``: its code is starting."""
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("kernel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORRAL_DIR", str(path / "corral"))
        yield path


@pytest.fixture(scope="module")
def kernel(tmp: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    proc, cf = start_kernel(tmp)
    yield proc, cf
    stop(proc)


@pytest.fixture(scope="module")
def kc(kernel: tuple[subprocess.Popen, Path]) -> Iterator[BlockingKernelClient]:
    client = connect(kernel[1])
    yield client
    client.stop_channels()


# ------------------------------------------------------------------------ kernel_info


def check_kernel_info(content: dict) -> None:
    assert content["status"] == "ok"
    assert content["protocol_version"] == "5.4"
    assert content["implementation"] == "corral"
    info = content["language_info"]
    assert info["name"] == "python"
    assert info["version"].split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert info["mimetype"] == "text/x-python" and info["file_extension"] == ".py"
    assert info["pygments_lexer"] and info["codemirror_mode"]
    assert content["banner"] and content["help_links"]


def test_kernel_info_on_shell_with_busy_reply_idle(kc: BlockingKernelClient) -> None:
    msg_id = kc.kernel_info()
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["msg_type"] == "kernel_info_reply"
    check_kernel_info(reply["content"])
    status = iopub_until_idle(kc, msg_id)
    assert [m["content"]["execution_state"] for m in status] == ["busy", "idle"]


def test_kernel_info_on_control(kc: BlockingKernelClient) -> None:
    reply = control_request(kc, "kernel_info_request")
    assert reply["msg_type"] == "kernel_info_reply"
    check_kernel_info(reply["content"])


# ------------------------------------------------------------------------------ execute


def test_execute_ok_message_order(kc: BlockingKernelClient) -> None:
    reply, msgs = run(kc, "print('hello')\nanswer = 6 * 7\nanswer")
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["payload"] == [] and content["user_expressions"] == {}
    count = content["execution_count"]
    assert types(msgs) == ["status", "execute_input", "stream", "execute_result", "status"]
    assert msgs[0]["content"]["execution_state"] == "busy"
    assert msgs[1]["content"] == {"code": "print('hello')\nanswer = 6 * 7\nanswer",
                                  "execution_count": count}  # fmt: skip
    assert msgs[2]["content"] == {"name": "stdout", "text": "hello\n"}
    assert msgs[3]["content"]["execution_count"] == count
    assert msgs[3]["content"]["data"]["text/plain"] == "42"
    assert all(m["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"] for m in msgs)


def test_execution_count_increments(kc: BlockingKernelClient) -> None:
    first, _ = run(kc, "1")
    second, _ = run(kc, "2")
    assert second["content"]["execution_count"] == first["content"]["execution_count"] + 1


def test_silent_execute_publishes_no_input_or_result(kc: BlockingKernelClient) -> None:
    reply, msgs = run(kc, "6 * 7", silent=True)
    assert reply["content"]["status"] == "ok"
    assert types(msgs) == ["status", "status"]


def test_user_expressions(kc: BlockingKernelClient) -> None:
    reply, _ = run(kc, "ue = 5", user_expressions={"double": "ue * 2"})
    double = reply["content"]["user_expressions"]["double"]
    assert double["status"] == "ok" and double["data"]["text/plain"] == "10"


def test_execute_error(kc: BlockingKernelClient) -> None:
    reply, msgs = run(kc, "1 / 0")
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "ZeroDivisionError"
    assert "division by zero" in content["evalue"]
    assert isinstance(content["traceback"], list) and content["traceback"]
    errors = [m for m in msgs if m["msg_type"] == "error"]
    assert len(errors) == 1 and errors[0]["content"]["ename"] == "ZeroDivisionError"
    assert msgs[-1]["content"]["execution_state"] == "idle"
    # The kernel keeps serving.
    assert run(kc, "'still here'")[0]["content"]["status"] == "ok"


def test_streams_keep_order_across_stdout_and_stderr(kc: BlockingKernelClient) -> None:
    _, msgs = run(kc, "import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')")
    streams = [
        (m["content"]["name"], m["content"]["text"]) for m in msgs if m["msg_type"] == "stream"
    ]
    assert streams == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")]


def test_what_a_cell_defines_pickles_by_reference_to_main(kc: BlockingKernelClient) -> None:
    """``sys.modules["__main__"]`` is the user's namespace, as in IPython's kernel: a
    function a cell defines pickles (and a process pool runs it: forked children find it
    in ``__main__``). It was the kernel's entry module, where the lookup failed."""
    code = (
        "import pickle, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing\n"
        "def cube(x):\n"
        "    return x ** 3\n"
        "class Point:\n"
        "    pass\n"
        "assert pickle.loads(pickle.dumps(cube)) is cube\n"
        "assert type(pickle.loads(pickle.dumps(Point()))) is Point\n"
        "assert sys.modules['__main__'].__dict__ is globals()\n"
        "with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('fork')) as pool:\n"
        "    print(list(pool.map(cube, range(4))))"
    )
    reply, msgs = run(kc, code)
    assert reply["content"]["status"] == "ok", reply["content"].get("evalue")
    assert stdout_of(msgs) == "[0, 1, 8, 27]\n"


def test_a_cell_imports_from_the_working_directory(
    kc: BlockingKernelClient, tmp_path: Path
) -> None:
    """``""`` leads ``sys.path``, as in IPython's kernel: after ``%cd`` to a project, its
    modules import (the kernel's start directory stood there instead)."""
    (tmp_path / "corral_kernel_cwd_module.py").write_text("VALUE = 7\n")
    code = (
        "import os\n"
        "back = os.getcwd()\n"
        f"os.chdir({str(tmp_path)!r})\n"
        "try:\n"
        "    import corral_kernel_cwd_module\n"
        "    print(corral_kernel_cwd_module.VALUE)\n"
        "finally:\n"
        "    os.chdir(back)"
    )
    reply, msgs = run(kc, code)
    assert reply["content"]["status"] == "ok", reply["content"].get("evalue")
    assert stdout_of(msgs) == "7\n"


def test_user_logging_reaches_the_frontend(kc: BlockingKernelClient) -> None:
    """The root logger is the user's, as under ipykernel: a warning goes to the cell's
    stderr, and a notebook's basicConfig works (both went to the kernel's own stderr,
    and basicConfig did nothing, since the kernel had configured the root logger)."""
    # (a logger's, not logging.warning(): that one calls basicConfig itself)
    _, msgs = run(kc, "import logging\nlogging.getLogger('mine').warning('careful')")
    assert "careful" in stdout_of(msgs, "stderr")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "logging.getLogger('mine').info('configured')"
    )
    _, msgs = run(kc, code)
    assert stdout_of(msgs) == "configured\n"


def test_100k_lines_arrive_complete_in_order_and_coalesced(kc: BlockingKernelClient) -> None:
    reply, msgs = run(kc, "for i in range(100_000):\n    print(i)")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(msgs) == "".join(f"{i}\n" for i in range(100_000))
    assert len([m for m in msgs if m["msg_type"] == "stream"]) < 1000


def test_print_from_a_user_thread(kc: BlockingKernelClient) -> None:
    code = (
        "import threading\n"
        "t = threading.Thread(target=lambda: print('from thread'))\n"
        "t.start(); t.join()"
    )
    _, msgs = run(kc, code)
    assert stdout_of(msgs) == "from thread\n"


def test_display_update_and_clear(kc: BlockingKernelClient) -> None:
    code = (
        "from corral.display import display, update_display, clear_output\n"
        "display({'text/plain': 'first'}, raw=True, display_id='d1')\n"
        "update_display({'text/plain': 'second'}, raw=True, display_id='d1')\n"
        "clear_output(wait=True)"
    )
    reply, msgs = run(kc, code)
    assert reply["content"]["status"] == "ok"
    shown = [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]
    assert [m["msg_type"] for m in shown] == ["display_data", "update_display_data"]
    assert shown[0]["content"]["data"] == {"text/plain": "first"}
    assert shown[1]["content"]["data"] == {"text/plain": "second"}
    assert all(m["content"]["transient"] == {"display_id": "d1"} for m in shown)
    clears = [m for m in msgs if m["msg_type"] == "clear_output"]
    assert clears and clears[0]["content"] == {"wait": True}


# ------------------------------------------------------------------------ other requests


def test_complete(kc: BlockingKernelClient) -> None:
    run(kc, "alpha_beta_gamma = 1")
    msg_id = kc.complete("alpha_b", 7)
    content = reply_to(kc.shell_channel, msg_id)["content"]
    assert content["status"] == "ok"
    assert "alpha_beta_gamma" in content["matches"]
    assert content["cursor_start"] == 0 and content["cursor_end"] == 7
    assert types(iopub_until_idle(kc, msg_id)) == ["status", "status"]


def test_inspect(kc: BlockingKernelClient) -> None:
    msg_id = kc.inspect("len", 3, detail_level=0)
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["msg_type"] == "inspect_reply"
    assert reply["content"]["status"] == "ok" and reply["content"]["found"] is True
    assert "len" in reply["content"]["data"]["text/plain"]
    missing = reply_to(kc.shell_channel, kc.inspect("no_such_name_here", 5))["content"]
    assert missing["found"] is False


def test_history(kc: BlockingKernelClient) -> None:
    run(kc, "history_marker = 'hm'")
    msg_id = kc.history(hist_access_type="tail", n=5, output=False, raw=True)
    content = reply_to(kc.shell_channel, msg_id)["content"]
    assert content["status"] == "ok"
    assert all(len(entry) == 3 for entry in content["history"])
    assert any("history_marker" in entry[2] for entry in content["history"])


@pytest.mark.parametrize(
    "code, status",
    [("x = 1", "complete"), ("for i in range(3):", "incomplete"), ("1 +* 2 )", "invalid")],
)
def test_is_complete(kc: BlockingKernelClient, code: str, status: str) -> None:
    content = reply_to(kc.shell_channel, kc.is_complete(code))["content"]
    assert content["status"] == status
    if status == "incomplete":
        assert content["indent"].strip() == "" and content["indent"]


def test_comm_info_and_unknown_comm_open(kc: BlockingKernelClient) -> None:
    content = reply_to(kc.shell_channel, kc.comm_info())["content"]
    assert content == {"status": "ok", "comms": {}}
    msg = kc.session.msg("comm_open", {"comm_id": "c1", "target_name": "nope", "data": {}})
    kc.shell_channel.send(msg)
    msgs = iopub_until_idle(kc, msg["header"]["msg_id"])
    closes = [m for m in msgs if m["msg_type"] == "comm_close"]
    assert closes and closes[0]["content"]["comm_id"] == "c1"


# ------------------------------------------------------------------------------- stdin


def test_input_request_and_reply(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("print('before')\nname = input('name? ')\nprint('got', name)")
    request = kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["msg_type"] == "input_request"
    assert request["content"] == {"prompt": "name? ", "password": False}
    assert request["parent_header"]["msg_id"] == msg_id
    kc.input("bob")
    assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
    assert stdout_of(iopub_until_idle(kc, msg_id)) == "before\ngot bob\n"


def test_password_request(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("import getpass\nsecret = getpass.getpass('pw: ')\nlen(secret)")
    request = kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["content"] == {"prompt": "pw: ", "password": True}
    kc.input("hunter2")
    assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
    results = [m for m in iopub_until_idle(kc, msg_id) if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "7"


def test_input_without_allow_stdin_fails_cleanly(kc: BlockingKernelClient) -> None:
    reply, _ = run(kc, "input('never')", allow_stdin=False)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "StdinNotImplementedError"


# ------------------------------------------------------------------- busy kernel, signals


def test_interrupt_a_busy_loop(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("while True:\n    pass")
    wait_until_running(kc, msg_id)
    assert control_request(kc, "interrupt_request")["content"]["status"] == "ok"
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert run(kc, "'alive'")[0]["content"]["status"] == "ok"


def test_interrupt_while_printing_keeps_iopub_intact(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("while True:\n    print('spam')")
    wait_until_running(kc, msg_id)
    control_request(kc, "interrupt_request")
    assert reply_to(kc.shell_channel, msg_id)["content"]["ename"] == "KeyboardInterrupt"
    iopub_until_idle(kc, msg_id)
    _, msgs = run(kc, "print('clean')")
    assert stdout_of(msgs) == "clean\n"


def test_control_answers_while_shell_sleeps(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("import time\ntime.sleep(600)")
    wait_until_running(kc, msg_id)
    info = control_request(kc, "kernel_info_request")
    check_kernel_info(info["content"])
    # The shell request is still running: its reply has not come.
    assert not kc.shell_channel.msg_ready()
    control_request(kc, "interrupt_request")
    assert reply_to(kc.shell_channel, msg_id)["content"]["ename"] == "KeyboardInterrupt"


def test_heartbeat_answers_while_user_code_holds_the_gil(kc: BlockingKernelClient) -> None:
    msg_id = kc.execute("n = 0\nwhile True:\n    n += 1")
    wait_until_running(kc, msg_id)
    ctx = zmq.Context.instance()
    ping = ctx.socket(zmq.REQ)
    ping.linger = 0
    ping.connect(f"tcp://{kc.ip}:{kc.hb_port}")
    try:
        for i in range(3):
            ping.send(b"ping %d" % i)
            assert ping.poll(TIMEOUT * 1000), "no heartbeat echo while the kernel is busy"
            assert ping.recv() == b"ping %d" % i
    finally:
        ping.close()
    control_request(kc, "interrupt_request")
    assert reply_to(kc.shell_channel, msg_id)["content"]["ename"] == "KeyboardInterrupt"


def test_sigint_while_idle_is_ignored(kernel: tuple, kc: BlockingKernelClient) -> None:
    proc, _ = kernel
    os.kill(proc.pid, signal.SIGINT)
    reply, _ = run(kc, "'survived'")
    assert reply["content"]["status"] == "ok"
    assert proc.poll() is None


def test_stop_on_error_aborts_queued_executes(kc: BlockingKernelClient) -> None:
    # The first cell waits on input(), so the next two are queued behind it for sure.
    first = kc.execute("input('hold')\n1 / 0")
    kc.get_stdin_msg(timeout=TIMEOUT)
    second = kc.execute("aborted_marker = 1")
    third = kc.execute("aborted_marker = 2")
    kc.input("go")
    assert reply_to(kc.shell_channel, first)["content"]["status"] == "error"
    for msg_id in (second, third):
        reply = reply_to(kc.shell_channel, msg_id)
        assert reply["content"]["status"] == "aborted"
        states = [m["content"].get("execution_state") for m in iopub_until_idle(kc, msg_id)]
        assert states == ["busy", "idle"]
    _, msgs = run(kc, "print('aborted_marker' in globals())")
    assert stdout_of(msgs) == "False\n"


def test_stop_on_error_false_runs_queued_executes(kc: BlockingKernelClient) -> None:
    first = kc.execute("input('hold')\n1 / 0", stop_on_error=False)
    kc.get_stdin_msg(timeout=TIMEOUT)
    second = kc.execute("ran_anyway = 1")
    kc.input("go")
    assert reply_to(kc.shell_channel, first)["content"]["status"] == "error"
    assert reply_to(kc.shell_channel, second)["content"]["status"] == "ok"


def test_first_request_on_control_then_code(tmp: Path) -> None:
    """The interpreter is built after the first reply, by the main thread: a frontend
    whose very first request is a kernel_info on control, then code and completion on
    shell, gets all of them answered (plugins and magics loaded too)."""
    proc, cf = start_kernel(tmp)
    try:
        kc = BlockingKernelClient(connection_file=str(cf))
        kc.load_connection_file()
        kc.start_channels()
        info = control_request(kc, "kernel_info_request")
        assert info["content"]["implementation"] == "corral"
        msg_id = kc.execute("x = 40 + 2\nprint(x)\n%pwd")
        msgs = iopub_until_idle(kc, msg_id)
        assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
        assert "42" in stdout_of(msgs)
        reply = reply_to(kc.shell_channel, kc.complete("x.bit_le"))
        assert "bit_length" in reply["content"]["matches"]
        kc.stop_channels()
    finally:
        stop(proc)


# ------------------------------------------------------------------------------ shutdown


def test_shutdown_restart_flag_and_exit(tmp: Path) -> None:
    proc, cf = start_kernel(tmp)
    try:
        kc = connect(cf)
        msg_id = kc.shutdown(restart=True)
        reply = reply_to(kc.control_channel, msg_id)
        assert reply["content"] == {"status": "ok", "restart": True}
        assert proc.wait(TIMEOUT) == 0
        kc.stop_channels()
    finally:
        stop(proc)


def test_shutdown_while_busy(tmp: Path) -> None:
    proc, cf = start_kernel(tmp)
    try:
        kc = connect(cf)
        msg_id = kc.execute("while True:\n    pass")
        wait_until_running(kc, msg_id)
        reply_to(kc.control_channel, kc.shutdown())
        assert proc.wait(TIMEOUT) == 0
        kc.stop_channels()
    finally:
        stop(proc)


# ------------------------------------------------------------------------ connection file


def test_connection_file_is_private_and_ports_are_bound_first(
    kernel: tuple, kc: BlockingKernelClient
) -> None:
    _, cf = kernel
    assert stat.S_IMODE(cf.stat().st_mode) == 0o600
    ctx = zmq.Context.instance()
    for port in (kc.shell_port, kc.iopub_port, kc.stdin_port, kc.control_port, kc.hb_port):
        sock = ctx.socket(zmq.ROUTER)
        try:
            with pytest.raises(zmq.ZMQError):
                sock.bind(f"tcp://127.0.0.1:{port}")
        finally:
            sock.close(0)


def test_without_connection_file_kernel_writes_one_into_the_profile(tmp: Path) -> None:
    env = kernel_env(tmp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.plugins.kernel_main"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        path = Path(line.rsplit(" ", 1)[-1].strip())
        security = Path(env["CORRAL_DIR"]) / "profile_default" / "security"
        assert path.parent == security
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(security.stat().st_mode) == 0o700
        kc = connect(path)
        assert run(kc, "1")[0]["content"]["status"] == "ok"
        kc.stop_channels()
    finally:
        stop(proc)
        proc.stdout.close()
