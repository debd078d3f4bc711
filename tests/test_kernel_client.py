"""Blocking and asyncio kernel clients against a real corral kernel process.

One kernel serves the whole module (starting one per test would only test start-up
again); tests that kill or restart kernels live in ``test_kernel_manager.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import TIMEOUT

from corral.notification import NotificationCenter
from corral.transports.zmq.client import (
    BlockingKernelClient,
    KernelDiedError,
    MessageTimeout,
    default_output_hook,
)
from corral.transports.zmq.connection import ConnectionInfo
from corral.transports.zmq.kernel_events import KERNEL_RESTARTED
from corral.transports.zmq.manager import KernelManager
from corral.transports.zmq.wire import Signer, make_message, serialize


@pytest.fixture(scope="module")
def km(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelManager]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORRAL_DIR", str(tmp_path_factory.mktemp("corral")))
        manager = KernelManager(center=NotificationCenter())
        manager.start()
        try:
            yield manager
        finally:
            manager.shutdown(now=True)


@pytest.fixture
def kc(km: KernelManager) -> Iterator[BlockingKernelClient]:
    client = km.client()
    client.wait_for_ready(TIMEOUT)
    yield client
    client.close()


def _texts(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def test_requests_get_replies(kc: BlockingKernelClient) -> None:
    info = kc.get_reply(kc.kernel_info(), TIMEOUT)
    assert info["msg_type"] == "kernel_info_reply"
    assert info["content"]["protocol_version"].startswith("5.")
    done = kc.get_reply(kc.is_complete("for i in range(3):"), TIMEOUT)
    assert done["content"]["status"] == "incomplete"
    kc.execute_interactive("some_long_name = 1", timeout=TIMEOUT)
    matches = kc.get_reply(kc.complete("some_long_n"), TIMEOUT)["content"]["matches"]
    assert "some_long_name" in matches
    assert kc.get_reply(kc.inspect("len"), TIMEOUT)["content"]["status"] == "ok"
    assert kc.get_reply(kc.comm_info(), TIMEOUT)["content"]["status"] == "ok"
    history = kc.get_reply(kc.history(hist_access_type="tail", n=5), TIMEOUT)
    assert history["msg_type"] == "history_reply"
    assert kc.heartbeat(TIMEOUT)


def test_replies_to_other_requests_stay_queued(kc: BlockingKernelClient) -> None:
    first = kc.kernel_info()
    second = kc.is_complete("x = 1")
    assert kc.get_reply(second, TIMEOUT)["parent_header"]["msg_id"] == second
    assert kc.get_shell_msg(TIMEOUT)["parent_header"]["msg_id"] == first


def test_execute_interactive_streams_outputs_in_order(kc: BlockingKernelClient) -> None:
    outputs: list[dict[str, Any]] = []
    code = (
        "import sys\n"
        "print('first', flush=True)\n"
        "sys.stderr.write('oops\\n'); sys.stderr.flush()\n"
        "print('second', flush=True)\n"
        "40 + 2\n"
    )
    reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=outputs.append)
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    assert _texts(outputs) == "first\nsecond\n"
    assert _texts(outputs, "stderr") == "oops\n"
    kinds = [m["msg_type"] for m in outputs]
    assert kinds[-1] == "execute_result"
    assert outputs[-1]["content"]["data"]["text/plain"] == "42"
    stdout_first = next(i for i, m in enumerate(outputs) if "first" in m["content"].get("text", ""))
    stderr_at = next(i for i, m in enumerate(outputs) if "oops" in m["content"].get("text", ""))
    assert stdout_first < stderr_at
    # Only this request's messages reach the hook.
    assert {m["parent_header"]["msg_id"] for m in outputs} == {reply["parent_header"]["msg_id"]}


def test_errors_come_back_in_reply_and_hook(kc: BlockingKernelClient) -> None:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive("1 / 0", timeout=TIMEOUT, output_hook=outputs.append)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert [m["msg_type"] for m in outputs] == ["execute_input", "error"]


def test_default_output_hook_prints_like_a_terminal(
    kc: BlockingKernelClient, capsys: pytest.CaptureFixture[str]
) -> None:
    kc.execute_interactive("print('to stdout'); 6 * 7", timeout=TIMEOUT)
    kc.execute_interactive("raise ValueError('bad value')", timeout=TIMEOUT)
    captured = capsys.readouterr()
    assert "to stdout\n" in captured.out and "42\n" in captured.out
    assert "ValueError" in captured.err and "bad value" in captured.err
    assert default_output_hook is not None


def test_input_goes_through_stdin_hook(kc: BlockingKernelClient) -> None:
    prompts: list[str] = []

    def answer(msg: dict[str, Any]) -> str:
        prompts.append(msg["content"]["prompt"])
        return "corral"

    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "name = input('name? ')\nprint('hello', name)",
        timeout=TIMEOUT,
        output_hook=outputs.append,
        stdin_hook=answer,
    )
    assert reply["content"]["status"] == "ok"
    assert prompts == ["name? "]
    assert _texts(outputs) == "hello corral\n"


def test_stdin_hook_may_answer_itself(kc: BlockingKernelClient) -> None:
    def answer(msg: dict[str, Any]) -> None:
        kc.input("direct")

    outputs: list[dict[str, Any]] = []
    kc.execute_interactive(
        "print(input())", timeout=TIMEOUT, output_hook=outputs.append, stdin_hook=answer
    )
    assert _texts(outputs) == "direct\n"


def test_timeout_raises_timeouterror(km: KernelManager, kc: BlockingKernelClient) -> None:
    started = threading.Event()

    def hook(msg: dict[str, Any]) -> None:
        started.set()

    with pytest.raises(TimeoutError):
        kc.execute_interactive(
            "print('go', flush=True)\nwhile True:\n    pass", timeout=0.5, output_hook=hook
        )
    if not started.is_set():
        kc.get_iopub_msg(TIMEOUT)  # the loop has started once its print arrived
    km.interrupt()
    reply = kc.get_shell_msg(TIMEOUT)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert issubclass(MessageTimeout, TimeoutError)


def test_get_msg_timeout_is_also_queue_empty(kc: BlockingKernelClient) -> None:
    import queue

    with pytest.raises(queue.Empty):
        kc.get_stdin_msg(timeout=0.01)


def test_forged_and_replayed_messages_are_dropped() -> None:
    """A fake kernel (real sockets) sends bad messages; the client only sees the good one."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    info = ConnectionInfo(iopub_port=port, shell_port=1, stdin_port=1, control_port=1, hb_port=1)
    signer = Signer(info.key)
    client = BlockingKernelClient(info)
    try:
        # Keep publishing a probe until the subscription is up, so nothing races.
        while True:
            probe = make_message("status", {"execution_state": "idle"}, session="k")
            pub.send_multipart(serialize(probe, signer))
            try:
                client.get_iopub_msg(timeout=0.05)
                break
            except MessageTimeout:
                continue
        while True:  # drain probes already on their way
            try:
                client.get_iopub_msg(timeout=0.05)
            except MessageTimeout:
                break
        forged = make_message("stream", {"name": "stdout", "text": "forged"}, session="k")
        pub.send_multipart(serialize(forged, Signer(b"not-the-key")))
        good = make_message("stream", {"name": "stdout", "text": "genuine"}, session="k")
        frames = serialize(good, signer)
        pub.send_multipart(frames)
        pub.send_multipart(frames)  # an exact replay
        last = make_message("stream", {"name": "stdout", "text": "last"}, session="k")
        pub.send_multipart(serialize(last, signer))
        texts = [client.get_iopub_msg(TIMEOUT)["content"]["text"] for _ in range(2)]
        assert texts == ["genuine", "last"]
    finally:
        client.close()
        pub.close(linger=0)


def test_async_client(km: KernelManager) -> None:
    async def main() -> None:
        async with km.async_client() as akc:
            info = await akc.wait_for_ready(TIMEOUT)
            assert info["content"]["status"] == "ok"
            outputs: list[dict[str, Any]] = []

            async def hook(msg: dict[str, Any]) -> None:
                outputs.append(msg)

            reply = await akc.execute_interactive(
                "print('async hello'); 3 * 3", timeout=TIMEOUT, output_hook=hook
            )
            assert reply["content"]["status"] == "ok"
            assert _texts(outputs) == "async hello\n"
            assert outputs[-1]["content"]["data"]["text/plain"] == "9"
            reply = await akc.execute_interactive(
                "print(input('? '))",
                timeout=TIMEOUT,
                output_hook=outputs.append,
                stdin_hook=lambda msg: "typed",
            )
            assert _texts(outputs).endswith("typed\n")
            msg_id = akc.is_complete("x = (")
            reply = await akc.get_reply(msg_id, TIMEOUT)
            assert reply["content"]["status"] == "incomplete"
            with pytest.raises(TimeoutError):
                await akc.get_stdin_msg(timeout=0.01)
            assert await akc.heartbeat(TIMEOUT)

    asyncio.run(main())


def test_async_client_survives_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    center = NotificationCenter()
    restarted = threading.Event()
    center.add_observer(lambda *a, **k: restarted.set(), KERNEL_RESTARTED)

    async def main(km: KernelManager) -> None:
        akc = km.async_client()
        await akc.wait_for_ready(TIMEOUT)
        with pytest.raises(KernelDiedError):
            await akc.execute_interactive("import os; os._exit(1)", timeout=TIMEOUT)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, restarted.wait, TIMEOUT)
        reply = await akc.execute_interactive("1", timeout=TIMEOUT, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
        akc.close()

    with KernelManager(center=center) as km:
        asyncio.run(main(km))
