"""What the blocking and the asyncio kernel clients both do, with no I/O at all.

The two clients used to repeat, line for line, the two longest conversations a frontend
has with a kernel: the readiness handshake and ``execute_interactive``. Here each is a
small state machine, in the manner of h11: the client feeds it the messages it read and
the time it is, and the machine says what to send, what to hand to a hook, and when the
conversation is over. The clients keep only the waiting (``zmq.Poller`` or ``await``).
Every decision is therefore tested without sockets (``tests/test_client_protocol.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeGuard

__all__ = ["Handshake", "InteractiveRun", "parent_id"]

Message = dict[str, Any]

#: Seconds after a ``kernel_info_reply`` with no iopub message before asking again.
RESEND_AFTER = 0.2


def parent_id(msg: Message) -> str | None:
    """The msg_id of the request ``msg`` answers, if any."""
    return (msg.get("parent_header") or {}).get("msg_id")


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


class Handshake:
    """``kernel_info`` until both its reply *and* an iopub message it caused arrived.

    Why iopub: a SUB socket misses whatever is published before its subscription has
    reached the kernel, so a client that only waited for the shell reply could lose the
    first execution's output. If the reply comes but nothing on iopub, the subscription
    was not up yet: ask again after :data:`RESEND_AFTER`, and the next status reaches us.

    The caller sends :meth:`start`'s request, then loops: :meth:`expired` (raise),
    :meth:`resend` (send what it returns), wait until :meth:`wake_at`, and
    :meth:`receive` every message read (one it does not claim belongs to someone else).
    """

    def __init__(self, request: Callable[[], Message], timeout: float | None, now: float) -> None:
        self._request = request
        self.timeout = timeout
        self.deadline = None if timeout is None else now + timeout
        #: Every msg_id asked so far: late answers to the extra requests are dropped.
        self.ids: set[str] = set()
        self.reply: Message | None = None
        self.heard_iopub = False
        self._resend_at: float | None = None

    def _ask(self) -> Message:
        msg = self._request()
        self.ids.add(msg["msg_id"])
        return msg

    def start(self) -> Message:
        """The first ``kernel_info_request`` to send."""
        return self._ask()

    @property
    def done(self) -> bool:
        return self.reply is not None and self.heard_iopub

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    @property
    def timeout_message(self) -> str:
        return f"kernel did not become ready within {self.timeout}s"

    def resend(self, now: float) -> Message | None:
        """Another request to send now, if the shell answered and iopub stayed silent."""
        if self._resend_at is None or now < self._resend_at:
            return None
        self._resend_at = now + RESEND_AFTER
        return self._ask()

    def wake_at(self) -> float | None:
        """When the caller must look again even if nothing arrives (None: never)."""
        return _earliest(self.deadline, self._resend_at)

    def receive(self, channel: str, msg: Message, now: float) -> bool:
        """Take ``msg`` read on ``channel``; False if it answers something else (the
        caller keeps it for whoever waits for it)."""
        if parent_id(msg) not in self.ids:
            return False
        if channel == "iopub":
            self.heard_iopub = True
        elif self.reply is None:
            self.reply = msg
            if not self.heard_iopub:
                self._resend_at = now + RESEND_AFTER
        return True


class InteractiveRun:
    """The iopub and stdin side of ``execute_interactive`` for one ``execute_request``.

    :meth:`on_iopub` says what to do with each iopub message: ``"output"`` (hand it to the
    output hook), ``"idle"`` (the kernel went idle after this request, so no output can
    follow: fetch the reply and return) or ``"skip"`` (another request's, or a status).
    :meth:`wants_answer` says whether a stdin message is an ``input_request`` to answer.
    """

    def __init__(self, msg_id: str, timeout: float | None, deadline: float | None) -> None:
        self.msg_id = msg_id
        self.timeout = timeout
        self.deadline = deadline

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    @property
    def timeout_message(self) -> str:
        return f"execution did not finish within {self.timeout}s"

    @staticmethod
    def wants_answer(msg: Message | None) -> TypeGuard[Message]:
        return msg is not None and msg["msg_type"] == "input_request"

    def on_iopub(self, msg: Message | None) -> Literal["output", "idle", "skip"]:
        if msg is None or parent_id(msg) != self.msg_id:
            return "skip"
        if msg["msg_type"] == "status":
            return "idle" if msg["content"].get("execution_state") == "idle" else "skip"
        return "output"


def interactive_hooks(
    allow_stdin: bool | None,
    output_hook: Any,
    stdin_hook: Any,
    *,
    default_output: Any,
    default_stdin: Any,
    stdin_is_tty: Callable[[], bool],
) -> tuple[bool, Any, Any]:
    """``(allow_stdin, output_hook, stdin_hook)`` as ``execute_interactive`` documents:
    stdin is allowed when a hook is given or stdin is a terminal, unless told otherwise."""
    if allow_stdin is None:
        allow_stdin = stdin_hook is not None or stdin_is_tty()
    return allow_stdin, output_hook or default_output, stdin_hook or default_stdin
