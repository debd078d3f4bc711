"""The debugger: DAP over the control channel of a real corral kernel, served by debugpy.

jupyter_client drives the sequence JupyterLab uses: initialize, attach, dumpCell,
setBreakpoints, configurationDone, then a cell that stops on its breakpoint, where the
stack and variables are read, steps one line, and continues.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("debugpy")
pytest.importorskip("jupyter_client")
from helpers import TIMEOUT
from jupyter_client import BlockingKernelClient  # noqa: E402
from test_kernel_protocol import (  # noqa: E402
    kernel_client,
    reply_to,
)

CELL = "def f(a):\n    b = a * 2\n    return b\n\nresult = f(21)\n"


@pytest.fixture(scope="module")
def kc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockingKernelClient]:
    with kernel_client(tmp_path_factory.mktemp("debug")) as client:
        yield client


class Dap:
    """Numbered DAP requests as debug_request messages; events read from IOPub."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.seq = 0
        self.events: list[dict[str, Any]] = []

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        self.seq += 1
        content = {"type": "request", "seq": self.seq, "command": command, "arguments": arguments}
        msg = self.kc.session.msg("debug_request", content)
        self.kc.control_channel.send(msg)
        reply = reply_to(self.kc.control_channel, msg["header"]["msg_id"])
        assert reply["msg_type"] == "debug_reply"
        body = reply["content"]
        assert body["command"] == command and body["request_seq"] == self.seq, body
        assert body["success"], body
        return body

    def locals(self, frame: dict[str, Any]) -> dict[str, str]:
        """``{name: value}`` of the Locals scope of a stack frame."""
        scopes = self.request("scopes", frameId=frame["id"])["body"]["scopes"]
        local = next(s for s in scopes if s["name"] == "Locals")
        variables = self.request("variables", variablesReference=local["variablesReference"])
        return {v["name"]: v["value"] for v in variables["body"]["variables"]}

    def event(self, name: str) -> dict[str, Any]:
        """The next ``debug_event`` called ``name`` (earlier ones are kept in ``events``)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msg = self.kc.get_iopub_msg(timeout=TIMEOUT)
            if msg["msg_type"] == "debug_event":
                self.events.append(msg["content"])
                if msg["content"]["event"] == name:
                    return msg["content"]
        raise TimeoutError(f"no {name} event")


def test_kernel_info_announces_the_debugger(kc: BlockingKernelClient) -> None:
    reply = reply_to(kc.shell_channel, kc.kernel_info())["content"]
    assert reply["debugger"] is True and "debugger" in reply["supported_features"]


def test_breakpoint_stop_stack_and_variables(kc: BlockingKernelClient) -> None:
    dap = Dap(kc)
    info = dap.request("debugInfo")["body"]
    assert info["isStarted"] is False and info["hashMethod"] == "Murmur2"
    dap.request(
        "initialize",
        clientID="corral-test",
        adapterID="python",
        pathFormat="path",
        linesStartAt1=True,
        columnsStartAt1=True,
    )
    dap.request("attach")
    path = dap.request("dumpCell", code=CELL)["body"]["sourcePath"]
    assert path.startswith(info["tmpFilePrefix"]) and path.endswith(info["tmpFileSuffix"])
    set_bp = dap.request("setBreakpoints", source={"path": path}, breakpoints=[{"line": 2}])
    assert set_bp["body"]["breakpoints"][0]["verified"] is True
    dap.request("configurationDone")
    assert dap.request("debugInfo")["body"]["breakpoints"] == [
        {"source": path, "breakpoints": [{"line": 2}]}
    ]

    msg_id = kc.execute(CELL)
    stopped = dap.event("stopped")
    thread = stopped["body"]["threadId"]
    frames = dap.request("stackTrace", threadId=thread)["body"]["stackFrames"]
    assert frames[0]["source"]["path"] == path and frames[0]["line"] == 2
    assert frames[0]["name"] == "f"
    assert dap.locals(frames[0]) == {"a": "21"}  # b = a * 2 has not run yet
    dap.request("next", threadId=thread)  # one line on: the step runs b = a * 2
    assert dap.event("stopped")["body"]["reason"] == "step"
    frames = dap.request("stackTrace", threadId=thread)["body"]["stackFrames"]
    assert frames[0]["line"] == 3
    assert dap.locals(frames[0]) == {"a": "21", "b": "42"}
    assert dap.request("debugInfo")["body"]["stoppedThreads"] == [thread]

    dap.request("continue", threadId=thread)
    reply = reply_to(kc.shell_channel, msg_id)
    assert reply["content"]["status"] == "ok"
    inspected = dap.request("inspectVariables")["body"]["variables"]
    assert {"result": "42"}.items() <= {v["name"]: v["value"] for v in inspected}.items()
    failed = reply_to(kc.shell_channel, kc.execute("1 / 0"))["content"]
    assert failed["status"] == "error"
    assert any("Cell In[" in line for line in failed["traceback"])  # not the temp file name
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    assert dap.request("debugInfo")["body"]["isStarted"] is False
    assert os.path.isdir(os.path.dirname(path))
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700  # owner-only
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_cell_names_hash_as_ipykernel_and_frontends_do() -> None:
    compiler = pytest.importorskip("ipykernel.compiler")
    from corral.transports.zmq.debugger import HASH_SEED, murmur2_x86

    assert HASH_SEED == compiler.get_tmp_hash_seed()
    for text in ["", "a", "ab", "abc", "abcd", CELL, "print('\u03bc \u00e9t\u00e9 \U0001f600')"]:
        assert murmur2_x86(text, HASH_SEED) == compiler.murmur2_x86(text, HASH_SEED), text


def _dap_send(sock: socket.socket, seq: int, command: str, **arguments: Any) -> None:
    body = json.dumps(
        {"type": "request", "seq": seq, "command": command, "arguments": arguments}
    ).encode()
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _dap_response(sock: socket.socket, seq: int) -> dict[str, Any] | None:
    """The adapter's response to request ``seq`` (events and others skipped); None if
    the adapter closes the connection first."""
    sock.settimeout(TIMEOUT)
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = int(head.split(b":", 1)[1])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        message, buffer = json.loads(buffer[:length]), buffer[length:]
        if message.get("type") == "response" and message.get("request_seq") == seq:
            return message


def _adapter_ports(kernel_pid: int) -> list[int]:
    """The listening ports of the debugpy adapter the kernel is connected to: the one
    for its client (the kernel, standing for the frontend) and the one the debugged
    process itself connects to."""
    psutil = pytest.importorskip("psutil")
    remote = {c.raddr.port for c in psutil.Process(kernel_pid).net_connections("tcp") if c.raddr}
    ports = []
    for proc in psutil.process_iter(["cmdline"]):
        if "debugpy/adapter" not in " ".join(proc.info["cmdline"] or []):
            continue
        for conn in proc.net_connections("tcp"):
            if conn.status == "LISTEN" and conn.laddr.port in remote:
                ports.append(conn.laddr.port)
    return ports


def test_after_the_frontend_disconnects_no_one_else_can_attach(tmp_path: Any) -> None:
    """debugpy's adapter takes any client on 127.0.0.1, one at a time, with no credential:
    had the kernel's own session ended when the frontend disconnected (switching the
    debugger off in JupyterLab), any local user could attach next and ``evaluate`` code
    in the kernel. The kernel stays attached; a later frontend session still works."""
    marker = tmp_path / "evaluated-by-another"
    with kernel_client(tmp_path / "k") as client:
        dap = Dap(client)
        dap.request("initialize", clientID="lab", adapterID="python", pathFormat="path")
        dap.request("attach")
        dap.request("configurationDone")
        pid_reply = reply_to(client.shell_channel, client.execute("import os; pid = os.getpid()"))
        assert pid_reply["content"]["status"] == "ok"
        inspected = dap.request("inspectVariables")["body"]["variables"]
        kernel_pid = int(next(v["value"] for v in inspected if v["name"] == "pid"))
        ports = _adapter_ports(kernel_pid)  # its client port and its debuggee port
        assert ports, "the kernel is connected to no debugpy adapter"
        dap.request("disconnect", restart=False, terminateDebuggee=False)
        assert dap.request("debugInfo")["body"]["isStarted"] is False

        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as other:
                _dap_send(other, 1, "initialize", clientID="other", adapterID="python")
                _dap_response(other, 1)
                _dap_send(other, 2, "attach")
                _dap_send(other, 3, "configurationDone")
                expression = f"open({str(marker)!r}, 'w').write('x')"
                _dap_send(other, 4, "evaluate", expression=expression, context="repl")
                answer = _dap_response(other, 4)
                assert answer is None or not answer.get("success"), answer
        assert not marker.exists()

        # the frontend's next session: served by the session the kernel kept
        dap.request("initialize", clientID="lab", adapterID="python", pathFormat="path")
        dap.request("attach")
        path = dap.request("dumpCell", code=CELL)["body"]["sourcePath"]
        dap.request("setBreakpoints", source={"path": path}, breakpoints=[{"line": 2}])
        dap.request("configurationDone")
        msg_id = client.execute(CELL)
        thread = dap.event("stopped")["body"]["threadId"]
        dap.request("continue", threadId=thread)
        assert reply_to(client.shell_channel, msg_id)["content"]["status"] == "ok"
        dap.request("disconnect", restart=False, terminateDebuggee=False)
        # its breakpoint went with it: the same cell runs through
        again = reply_to(client.shell_channel, client.execute(CELL))
        assert again["content"]["status"] == "ok"
