"""bind_kernel: a running engine served as a Jupyter kernel too, driven by jupyter_client
while it keeps serving tasks."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from jupyter_client import BlockingKernelClient
from parallel_client_harness import LiveCluster

from corral.core.serialize import deserialize, pack_apply
from corral.plugins.parallel.engine import bind_kernel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    cluster = LiveCluster(tmp_path_factory.mktemp("corral"), n=1, threads=True)
    yield cluster
    cluster.stop()


def connect(path: str) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=path)
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=WAIT)
    return kc


def ok_in_new_console(path: str, code: str) -> None:
    """A console attached to the kernel at ``path`` runs ``code`` without error."""
    kc = connect(path)
    try:
        reply, _ = run(kc, code)
        assert reply["status"] == "ok"
    finally:
        kc.stop_channels()


def shell_reply(kc: BlockingKernelClient, msg_id: str) -> dict[str, Any]:
    """The shell reply to ``msg_id`` (a late answer to one of the ``kernel_info``
    requests ``wait_for_ready`` repeats on a loaded machine may come first)."""
    while True:
        reply = kc.get_shell_msg(timeout=WAIT)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply
        assert reply["msg_type"] == "kernel_info_reply", reply["msg_type"]


def run(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; the reply content and the iopub messages of the request."""
    msg_id = kc.execute(code)
    reply = shell_reply(kc, msg_id)
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=WAIT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        outputs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return reply["content"], outputs


def engine_pid() -> int:
    return os.getpid()


def test_a_bound_engine_is_a_kernel_sharing_its_namespace(live: LiveCluster) -> None:
    rc = live.client
    engine = rc[rc.ids[0]]
    engine.push({"a": 21}, block=True)
    path = engine.apply_sync(bind_kernel)
    assert engine.apply_sync(bind_kernel) == path  # one kernel per engine
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    kc = connect(path)
    try:
        info = kc.kernel_info(reply=True, timeout=WAIT)["content"]
        assert info["implementation"] == "corral" and info["status"] == "ok"

        # A cell sees what tasks pushed, and tasks see what cells define.
        reply, outputs = run(kc, "b = a * 2\nprint('b is', b)\nimport os\nos.getpid()")
        assert reply["status"] == "ok"
        text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
        assert text == "b is 42\n"
        result = next(m for m in outputs if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == str(engine.apply_sync(engine_pid))
        assert engine.pull("b", block=True) == 42

        # The parallel requests, on the kernel's channels, over the engine's namespace.
        pull = kc.session.msg("pull_request", {"keys": ["a", "b"]})
        kc.shell_channel.send(pull)
        reply = shell_reply(kc, pull["header"]["msg_id"])
        assert reply["content"]["status"] == "ok", reply["content"]
        assert deserialize(reply["buffers"]) == (21, 42)
        apply = kc.session.msg("apply_request", {})
        apply["buffers"] = [bytes(memoryview(f)) for f in pack_apply(engine_pid)]
        kc.shell_channel.send(apply)
        reply = shell_reply(kc, apply["header"]["msg_id"])
        assert reply["content"]["status"] == "ok", reply["content"]
        assert deserialize(reply["buffers"]) == engine.apply_sync(engine_pid)

        # The interpreter's features, for a console attached to an engine.
        complete = kc.complete("import o", 8, reply=True, timeout=WAIT)["content"]
        assert "os" in complete["matches"]
        reply, _ = run(kc, "%who")
        assert reply["status"] == "ok"

        # Errors stay on the kernel's side; tasks keep running between cells.
        reply, outputs = run(kc, "1/0")
        assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
        assert [r.get(timeout=WAIT) for r in [engine.apply_async(engine_pid) for _ in range(20)]]

        # A task's output never lands on the kernel's iopub under a cell of its own.
        run(kc, "pass")
        engine.execute("print('from a task')", block=True)
        reply, outputs = run(kc, "print('from a cell')")
        texts = [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"]
        assert texts == ["from a cell\n"]

        # Shutting the kernel down leaves the engine serving.
        kc.shutdown()  # on the control channel
        msg = kc.get_control_msg(timeout=WAIT)
        assert msg["msg_type"] == "shutdown_reply"
    finally:
        kc.stop_channels()
    assert engine.apply_sync(engine_pid) > 0
    # And it can be bound again: a new kernel, the old one's file gone.
    again = engine.apply_sync(bind_kernel)
    assert again != path and not Path(path).exists()
    ok_in_new_console(again, "b")


def test_connect_info_on_an_engine_binds_it_and_says_how_to_attach(live: LiveCluster) -> None:
    """``%px %connect_info`` as on ipyparallel's engines (kernels already): the engine
    is bound on demand and the text names the file a console attaches to."""
    rc = live.client
    engine = rc[rc.ids[0]]
    text = engine.execute("%connect_info", block=True).stdout
    path = engine.apply_sync(bind_kernel)  # the kernel %connect_info bound (or found)
    assert f"jupyter console --existing {path}" in text
    info = json.loads(text.split("\n\n")[0])
    assert info == json.loads(Path(path).read_text())
    ok_in_new_console(path, "6 * 7")


def test_bind_kernel_off_an_engine_says_where_it_runs() -> None:
    with pytest.raises(RuntimeError, match="runs on an engine"):
        bind_kernel()
