"""A kernel with the parallel plugin answers what an engine answers.

The plugin adds ``apply``, ``push``, ``pull``, ``clear`` (shell) and ``abort`` (control) to
the kernel's dispatch tables through ``corral_request_handlers``, once, when the kernel
loads its plugins; the requests here are sent by jupyter_client's own client, as any
frontend would, to a real kernel process.
"""

from __future__ import annotations

import operator
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from helpers import TIMEOUT
from test_kernel_protocol import connect, control_request, reply_to, start_kernel, stop

from corral.core.serialize import deserialize, pack_apply, serialize

jupyter_client = pytest.importorskip("jupyter_client")
from jupyter_client import BlockingKernelClient  # noqa: E402

# The functions below are applied on the kernel, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def print_then_sleep(text: str) -> None:
    print(text, flush=True)
    import time

    time.sleep(10 * TIMEOUT)


def set_global(name: str, value: Any) -> None:
    globals()[name] = value


# As if defined in a client's script: the kernel binds it to the user namespace.
set_global.__module__ = "__main__"


# ----------------------------------------------------------------------------- helpers


def _bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(memoryview(f)) for f in frames]


def send(
    kc: BlockingKernelClient,
    msg_type: str,
    content: dict[str, Any] | None = None,
    buffers: list[Any] = (),  # type: ignore[assignment]
    channel: str = "shell",
) -> str:
    msg = kc.session.msg(msg_type, content or {})
    msg["buffers"] = _bytes(list(buffers))
    getattr(kc, f"{channel}_channel").send(msg)
    return msg["header"]["msg_id"]


def apply(kc: BlockingKernelClient, func: Any, *args: Any) -> dict[str, Any]:
    msg_id = send(kc, "apply_request", buffers=pack_apply(func, args))
    return reply_to(kc.shell_channel, msg_id)


def iopub_for(kc: BlockingKernelClient, msg_id: str, until: str) -> list[dict[str, Any]]:
    """iopub messages answering ``msg_id``, up to the first of type ``until``."""
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            out.append(msg)
            if msg["msg_type"] == until:
                return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    proc, cf = start_kernel(tmp_path_factory.mktemp("kernel"))
    yield cf
    stop(proc)


@pytest.fixture
def kc(kernel: Path) -> Iterator[BlockingKernelClient]:
    client = connect(kernel)
    yield client
    client.stop_channels()


# ------------------------------------------------------------------------------- tests


def test_apply_returns_the_result_in_buffers(kc: BlockingKernelClient) -> None:
    reply = apply(kc, operator.add, 2, 3)
    assert reply["msg_type"] == "apply_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["metadata"]["status"] == "ok"
    assert deserialize(reply["buffers"]) == 5


def test_apply_runs_in_the_user_namespace_and_its_output_goes_to_iopub(
    kc: BlockingKernelClient,
) -> None:
    assert apply(kc, set_global, "shared", 42)["content"]["status"] == "ok"
    msg_id = kc.execute("print(shared * 2)")
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "ok"
    streams = [m for m in iopub_for(kc, msg_id, "stream") if m["msg_type"] == "stream"]
    assert streams[0]["content"]["text"] == "84\n"

    msg_id = send(kc, "apply_request", buffers=pack_apply(print, ("from apply",)))
    assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
    stream = iopub_for(kc, msg_id, "stream")[-1]
    assert stream["content"] == {"name": "stdout", "text": "from apply\n"}


def test_a_failing_apply_replies_with_the_error(kc: BlockingKernelClient) -> None:
    msg_id = send(kc, "apply_request", buffers=pack_apply(operator.truediv, (1, 0)))
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert reply["buffers"] == []
    error = iopub_for(kc, msg_id, "error")[-1]
    assert error["content"]["ename"] == "ZeroDivisionError"


def test_push_pull_and_clear(kc: BlockingKernelClient) -> None:
    msg_id = send(kc, "push_request", {}, serialize({"a": 1, "b": [2, 3]}))
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "ok"
    assert sorted(reply["content"]["keys"]) == ["a", "b"]

    msg_id = send(kc, "pull_request", {"keys": ["b", "a"]})
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "ok"
    assert deserialize(reply["buffers"]) == ([2, 3], 1)

    msg_id = send(kc, "clear_request")
    assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
    msg_id = send(kc, "pull_request", {"keys": ["a"]})
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyError"
    assert "'a' is not defined" in reply["content"]["evalue"]


def test_abort_on_control_cancels_a_queued_apply(kc: BlockingKernelClient) -> None:
    msg = kc.session.msg("apply_request", {})
    msg["buffers"] = _bytes(pack_apply(operator.add, (1, 1)))
    reply = control_request(kc, "abort_request", {"msg_ids": [msg["header"]["msg_id"]]})
    assert reply["content"]["status"] == "ok"
    kc.shell_channel.send(msg)
    reply = reply_to(kc.shell_channel, msg["header"]["msg_id"])
    assert reply["content"]["status"] == "aborted"
    assert apply(kc, operator.add, 1, 1)["content"]["status"] == "ok"  # only that one


def test_interrupt_stops_a_running_apply(kc: BlockingKernelClient) -> None:
    msg_id = send(kc, "apply_request", buffers=pack_apply(print_then_sleep, ("running",)))
    iopub_for(kc, msg_id, "stream")  # the function runs: the guard is armed
    assert control_request(kc, "interrupt_request")["content"]["status"] == "ok"
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert deserialize(apply(kc, operator.mul, 6, 7)["buffers"]) == 42


@pytest.mark.parametrize(
    "module", ["corral.plugins.kernel_main", "corral.transports.zmq.kernel_main"]
)
def test_an_apply_sent_first_waits_for_the_plugins(module: str, tmp_path: Path) -> None:
    """The very first message is an apply: the kernel has not loaded its plugins yet, and
    serves it once they are (not UnsupportedRequest). The transport's module, which
    kernelspecs of older versions start, loads them too."""
    from helpers import wait_for_file
    from test_kernel_protocol import kernel_env

    cf = tmp_path / "kernel.json"
    proc = subprocess.Popen([sys.executable, "-m", module, "-f", str(cf)], env=kernel_env(tmp_path))
    try:
        wait_for_file(cf, proc=proc)
        kc = BlockingKernelClient(connection_file=str(cf))
        kc.load_connection_file()
        kc.start_channels()
        try:
            reply = apply(kc, operator.add, 20, 22)
            assert reply["content"]["status"] == "ok", reply["content"]
            assert deserialize(reply["buffers"]) == 42
        finally:
            kc.stop_channels()
    finally:
        stop(proc)


def test_a_kernel_without_plugins_refuses_apply(tmp_path: Path) -> None:
    """Without the plugin the kernel does not know the type: it says so at once (the
    handlers come from the hook, not from the kernel)."""
    from helpers import wait_for_file
    from test_kernel_protocol import kernel_env

    cf = tmp_path / "kernel.json"
    code = "import sys; from corral.transports.zmq.kernel_main import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "-f", str(cf)], env=kernel_env(tmp_path))
    try:
        wait_for_file(cf, proc=proc)
        kc = connect(cf)
        try:
            reply = apply(kc, operator.add, 1, 2)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "UnsupportedRequest"
        finally:
            kc.stop_channels()
    finally:
        stop(proc)


# --------------------------------------------------------------- the table, in-process


def test_the_hook_fills_the_dispatch_tables_once() -> None:
    from corral.plugins.kernel_main import install_request_handlers
    from corral.plugins.manager import get_plugin_manager
    from corral.transports.zmq.connection import ConnectionInfo
    from corral.transports.zmq.kernel import KernelServer

    server = KernelServer(ConnectionInfo(), context=None)
    try:
        added = install_request_handlers(get_plugin_manager(), server)
        assert set(added) == {
            "apply_request",
            "push_request",
            "pull_request",
            "clear_request",
            "abort_request",
        }
        assert "apply_request" in server._shell_handlers
        assert "abort_request" in server._control_handlers
        # Installed again (a second plugin naming the same types): the first stays.
        first = server._shell_handlers["apply_request"]
        assert install_request_handlers(get_plugin_manager(), server) == []
        assert server._shell_handlers["apply_request"] is first
        # A kernel's own type cannot be taken over; an unknown channel is refused.
        own = server._shell_handlers["execute_request"]
        assert server.add_handlers("shell", {"execute_request": print}) == []
        assert server._shell_handlers["execute_request"] is own
        with pytest.raises(ValueError, match="use control or shell"):
            server.add_handlers("iopub", {"x_request": print})
    finally:
        server.context.term()
