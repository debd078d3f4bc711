"""The kernel clients' shared, socket-free conversations: the readiness handshake and the
iopub/stdin side of ``execute_interactive``. Both clients drive these machines, so each
decision (resend, give up, hand to a hook, stop) is checked here once."""

from __future__ import annotations

import itertools
from typing import Any

from corral.transports.zmq.client_protocol import (
    RESEND_AFTER,
    Handshake,
    InteractiveRun,
    interactive_hooks,
    parent_id,
)

Message = dict[str, Any]


def requests() -> Any:
    counter = itertools.count(1)
    return lambda: {"msg_id": f"info-{next(counter)}", "msg_type": "kernel_info_request"}


def answer(to: str, msg_type: str, **content: Any) -> Message:
    return {"parent_header": {"msg_id": to}, "msg_type": msg_type, "content": content}


def test_handshake_needs_the_reply_and_an_iopub_message() -> None:
    talk = Handshake(requests(), timeout=5, now=100.0)
    first = talk.start()
    assert talk.wake_at() == 105.0 and not talk.done
    assert talk.receive("iopub", answer(first["msg_id"], "status", execution_state="busy"), 100.1)
    assert not talk.done  # iopub heard, no reply yet
    reply = answer(first["msg_id"], "kernel_info_reply", status="ok")
    assert talk.receive("shell", reply, 100.2)
    assert talk.done and talk.reply is reply


def test_handshake_asks_again_while_iopub_stays_silent() -> None:
    talk = Handshake(requests(), timeout=None, now=0.0)
    first = talk.start()
    talk.receive("shell", answer(first["msg_id"], "kernel_info_reply"), 1.0)
    assert not talk.done and talk.wake_at() == 1.0 + RESEND_AFTER
    assert talk.resend(1.0 + RESEND_AFTER / 2) is None  # not yet
    second = talk.resend(1.0 + RESEND_AFTER)
    assert second is not None and second["msg_id"] != first["msg_id"]
    # The status of the *second* request completes the handshake; the first reply stands.
    talk.receive("iopub", answer(second["msg_id"], "status", execution_state="idle"), 1.3)
    assert talk.done and parent_id(talk.reply or {}) == first["msg_id"]
    assert talk.ids == {first["msg_id"], second["msg_id"]}  # late answers dropped by id


def test_handshake_leaves_other_messages_to_their_owners_and_expires() -> None:
    talk = Handshake(requests(), timeout=2, now=10.0)
    talk.start()
    assert not talk.receive("shell", answer("someone-else", "execute_reply"), 10.5)
    assert not talk.expired(11.9) and talk.expired(12.0)
    assert talk.timeout_message == "kernel did not become ready within 2s"


def test_interactive_run_sorts_iopub_and_stdin() -> None:
    run = InteractiveRun("exec-1", timeout=3, deadline=50.0)
    assert run.on_iopub(None) == "skip"
    assert run.on_iopub(answer("exec-2", "stream", text="other")) == "skip"
    assert run.on_iopub(answer("exec-1", "status", execution_state="busy")) == "skip"
    assert run.on_iopub(answer("exec-1", "stream", text="hi")) == "output"
    assert run.on_iopub(answer("exec-1", "status", execution_state="idle")) == "idle"
    assert run.wants_answer(answer("exec-1", "input_request", prompt="? "))
    assert not run.wants_answer(None)
    assert run.expired(50.0) and not run.expired(49.9)
    assert run.timeout_message == "execution did not finish within 3s"


def test_stdin_is_allowed_with_a_hook_or_a_terminal_unless_refused() -> None:
    def out(msg: Message) -> None: ...
    def ask(msg: Message) -> str:
        return ""

    def never() -> bool:
        return False

    def always() -> bool:
        return True

    kw = {"default_output": out, "default_stdin": ask}
    assert interactive_hooks(None, None, None, stdin_is_tty=never, **kw) == (False, out, ask)
    assert interactive_hooks(None, None, None, stdin_is_tty=always, **kw)[0] is True
    assert interactive_hooks(None, None, ask, stdin_is_tty=never, **kw)[0] is True
    assert interactive_hooks(False, None, ask, stdin_is_tty=always, **kw)[0] is False
