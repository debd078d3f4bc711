"""``corral console``: a terminal frontend for one kernel (started here, or ``--existing``).

The loop is the same whichever way lines are read: read a cell, run it while forwarding
Ctrl-C to the kernel, show its output with ``In [N]`` / ``Out[N]`` numbers, show help the
kernel pages, answer ``input()``, and survive the kernel crashing. How a cell is *read* is
a :class:`LineReader`: :class:`SimpleReader` here (plain ``input()``, scriptable, used with
``--simple-prompt`` or when stdin is not a terminal), or the prompt_toolkit reader in
:mod:`corral.frontends.console_prompt` (editing, highlighting, completion, history).

Both readers ask the kernel (``is_complete_request``) whether Enter ends the cell, so the
console never guesses at the syntax of the language the kernel speaks.
"""

from __future__ import annotations

import getpass
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from corral.frontends.kernel_link import KernelLink
from corral.frontends.output import TerminalOutput, plain_text
from corral.frontends.prompts import LineReader, continuation_prompt, in_prompt, out_prompt
from corral.transports.zmq.client import KernelDiedError, MessageTimeout

__all__ = ["Console", "LineReader", "SimpleReader", "in_prompt", "continuation_prompt"]

Message = dict[str, Any]
#: ``is_complete(code) -> (status, indent)``; status as in ``is_complete_reply``.
IsComplete = Callable[[str], tuple[str, str]]

#: Seconds to wait for short kernel answers (is_complete, complete, inspect).
QUICK_REPLY_TIMEOUT = 5.0

_HELP_REQUEST = re.compile(r"^\s*(?P<name>[\w.]+)\s*(?P<marks>\?\??)\s*$")


class SimpleReader:
    """Reads with ``input()``: no editing beyond the terminal's, but it can be scripted.

    A cell continues while the kernel calls it ``incomplete``; an empty line ends an
    indented block, as in the standard Python prompt.
    """

    def __init__(self, is_complete: IsComplete) -> None:
        self.is_complete = is_complete

    def read_cell(self, count: int) -> str:
        lines = [input(in_prompt(count))]
        while True:
            code = "\n".join(lines)
            if not code.strip():
                return code
            status, _indent = self.is_complete(code)
            if status != "incomplete":
                return code
            line = input(continuation_prompt(count))
            lines.append(line)
            if not line.strip() and self.is_complete(code + "\n\n")[0] != "incomplete":
                return code

    def notify(self, text: str) -> None:
        print(f"\n{text}", flush=True)

    def set_next_input(self, text: str) -> None:
        pass  # input() cannot be pre-filled


class Console:
    """The read-run-print loop around a :class:`KernelLink`.

    ``reader_factory`` builds the reader from the console (so the reader can ask the
    kernel about completeness and completions through it).

    .. versionadded:: 0.1
    """

    def __init__(self, link: KernelLink, reader_factory: Callable[[Console], LineReader]) -> None:
        self.link = link
        self.client = link.client
        self.next_count = 1
        self._restarts_seen = 0
        self._exit_requested = False
        self.reader = reader_factory(self)
        link.on_died = self._kernel_died
        link.on_restarted = self._kernel_restarted

    # --------------------------------------------------------------- kernel queries

    def ask(self, msg_id: str) -> Message | None:
        """The reply to a quick request, or None when the kernel cannot answer now."""
        try:
            return self.client.get_reply(msg_id, timeout=QUICK_REPLY_TIMEOUT)
        except (MessageTimeout, KernelDiedError):
            return None

    def is_complete(self, code: str) -> tuple[str, str]:
        """The kernel's verdict on ``code``; ``unknown`` when it cannot tell (then Enter
        runs the cell and the kernel reports any syntax error)."""
        try:
            reply = self.ask(self.client.is_complete(code))
        except KernelDiedError:
            reply = None
        if reply is None:
            return "unknown", ""
        content = reply["content"]
        return content.get("status", "unknown"), content.get("indent", "") or ""

    def complete(self, code: str, cursor_pos: int) -> Message | None:
        """The kernel's ``complete_reply`` content, or None."""
        try:
            reply = self.ask(self.client.complete(code, cursor_pos))
        except KernelDiedError:
            return None
        return None if reply is None else reply["content"]

    def sync_count(self) -> None:
        """Learn the next execution count of a kernel that has run cells already.

        A silent request runs nothing and stores nothing, but its reply carries the count
        the next stored cell will get.
        """
        try:
            reply = self.client.execute_interactive(
                "", silent=True, store_history=False, timeout=QUICK_REPLY_TIMEOUT
            )
        except (MessageTimeout, KernelDiedError):
            return
        self.next_count = int(reply["content"].get("execution_count") or 1)

    # ------------------------------------------------------------------- the loop

    def run(self) -> int:
        """Read and run cells until Ctrl-D (or ``exit``); the exit status of the console."""
        if not self.link.owns_kernel:
            self.sync_count()
        while not self._exit_requested:
            self._check_restarts()
            try:
                code = self.reader.read_cell(self.next_count)
            except KeyboardInterrupt:
                continue  # the reader already dropped the line
            except EOFError:
                print()
                break
            if not code.strip():
                continue
            if not self.execute(code):
                return 1
        return 0

    def execute(self, code: str) -> bool:
        """Run one cell and show everything it produced; False if the kernel is gone."""
        deaths_before = self.link.state.deaths
        output = TerminalOutput(out_prompt=out_prompt)
        try:
            with self._forward_interrupts():
                reply = self.client.execute_interactive(
                    code, output_hook=output, stdin_hook=self._answer_input, allow_stdin=True
                )
        except KernelDiedError:
            return self._recover(deaths_before)
        content = reply.get("content", {})
        count = content.get("execution_count")
        if isinstance(count, int):
            self.next_count = count + 1
        if content.get("status") == "error" and not output.errored:
            output.error(f"{content.get('ename', 'Error')}: {content.get('evalue', '')}\n")
        self._handle_payloads(code, content)
        return True

    # ---------------------------------------------------------------- what replies ask

    def _handle_payloads(self, code: str, content: Message) -> None:
        paged = False
        for payload in content.get("payload") or []:
            source = payload.get("source")
            if source == "page":
                text = plain_text(payload.get("data"))
                if text:
                    print(text, flush=True)
                    paged = True
            elif source == "set_next_input":
                self.reader.set_next_input(payload.get("text", ""))
            elif source == "ask_exit":
                self._exit_requested = True
                self.link.keep_kernel = bool(payload.get("keepkernel"))
        if not paged and content.get("status") == "error":
            self._help_fallback(code)

    def _help_fallback(self, code: str) -> None:
        """``obj?`` for kernels that do not page help themselves: ask ``inspect`` instead."""
        match = _HELP_REQUEST.match(code)
        if match is None:
            return
        name = match["name"]
        detail = len(match["marks"]) - 1
        try:
            reply = self.ask(self.client.inspect(name, len(name), detail))
        except KernelDiedError:
            return
        if reply and reply["content"].get("found"):
            print(plain_text(reply["content"].get("data")) or "", flush=True)

    def _answer_input(self, msg: Message) -> str:
        """Answer ``input()`` in user code; Ctrl-C here interrupts that code."""
        content = msg["content"]
        prompt = content.get("prompt", "")
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if content.get("password"):
                return getpass.getpass(prompt)
            return input(prompt)
        except KeyboardInterrupt:
            print()
            self.link.interrupt()
            return ""
        except EOFError:
            return ""
        finally:
            signal.signal(signal.SIGINT, previous)

    # -------------------------------------------------------------- interrupts, deaths

    @contextmanager
    def _forward_interrupts(self) -> Iterator[None]:
        """While a cell runs, Ctrl-C interrupts the kernel, not the console."""

        def forward(signum: int, frame: FrameType | None) -> None:
            self.link.interrupt()

        previous = signal.signal(signal.SIGINT, forward)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _recover(self, deaths_before: int) -> bool:
        """After the kernel died under a running cell: wait for its replacement."""
        if self.link.state.wait_recovered(deaths_before):
            self._check_restarts()
            return True
        message = self.link.state.last_message or "the kernel died"
        print(f"[corral] {message}; the console stops", file=sys.stderr, flush=True)
        return False

    def _check_restarts(self) -> None:
        restarts = self.link.state.restarts
        if restarts != self._restarts_seen:
            self._restarts_seen = restarts
            self.next_count = 1

    def _kernel_died(self, message: str, restarting: bool) -> None:
        """From the manager's thread: say so at once, even while the user is typing.

        The message already says what happened and whether a restart follows ("kernel 12
        died (killed by SIGSEGV); restarting it"): a prefix would say it twice.
        """
        del restarting  # told by the message itself
        self.reader.notify(f"[corral] {message}")

    def _kernel_restarted(self) -> None:
        self.reader.notify("[corral] kernel restarted; its variables are gone")


def run_console(
    *, existing: str | None = None, simple_prompt: bool = False, profile: str = "default"
) -> int:
    """Start (or join) a kernel and run the console on it; the console's exit status."""
    import logging

    from corral.frontends.kernel_link import resolve_connection_file

    # The console tells of a kernel's death and restart itself, once, in its own words;
    # the manager's log line would say it a second time.
    logging.getLogger("corral.manager").setLevel(logging.ERROR)
    if existing:
        link = KernelLink.existing(resolve_connection_file(existing, profile))
    else:
        link = KernelLink.start(profile=profile)
    with link:
        if simple_prompt or not (sys.stdin.isatty() and sys.stdout.isatty()):
            factory: Callable[[Console], LineReader] = lambda console: SimpleReader(  # noqa: E731
                console.is_complete
            )
        else:
            try:
                from corral.frontends.console_prompt import PromptReader
            except ImportError as error:  # a broken install: still a usable console
                print(
                    f"[corral] the full prompt needs {error.name} ({error}); "
                    "using a simple prompt. Install it with: pip install prompt_toolkit pygments",
                    file=sys.stderr,
                )
                factory = lambda console: SimpleReader(console.is_complete)  # noqa: E731
            else:
                factory = lambda console: PromptReader(console, profile=profile)  # noqa: E731
        return Console(link, factory).run()
