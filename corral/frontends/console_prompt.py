"""The console's full-screen-terminal reader, on prompt_toolkit.

What it adds over plain ``input()``: multi-line editing where Enter asks the kernel whether
the cell is complete (and indents a continuation line as the kernel suggests), Python
highlighting, Tab completion from the kernel, and a history kept across sessions in the
profile directory. Imported only when a terminal is there, so scripted use and the other
``corral`` commands never pay for importing prompt_toolkit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from pygments.lexers.python import PythonLexer

from corral.frontends.prompts import ConsoleSide, continuation_prompt

__all__ = ["KernelCompleter", "PromptReader", "enter_action"]


class KernelCompleter(Completer):
    """Completions from the kernel's ``complete_request`` (the kernel knows the live
    namespace; a local completer would not).

    Called on the console's own thread (``complete_in_thread`` stays off), because the
    kernel client's sockets belong to that thread.
    """

    def __init__(self, console: ConsoleSide) -> None:
        self.console = console

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        pos = document.cursor_position
        content = self.console.complete(document.text, pos)
        if not content or content.get("status", "ok") != "ok":
            return
        start = int(content.get("cursor_start", pos))
        if start > pos:
            return
        types = {
            item.get("text"): item.get("type")
            for item in (content.get("metadata") or {}).get("_jupyter_types_experimental", [])
        }
        for match in content.get("matches") or []:
            yield Completion(match, start_position=start - pos, display_meta=types.get(match))


def enter_action(text: str, cursor_at_end: bool, status: str) -> str:
    """What Enter does: ``"submit"``, or ``"newline"`` to keep editing the cell.

    ``status`` is the kernel's ``is_complete`` verdict on ``text``. Enter in the middle of
    the text always breaks the line; a cell the kernel still calls incomplete is submitted
    anyway once its last line is blank (how an indented block is ended).
    """
    if not text.strip():
        return "submit"
    if not cursor_at_end:
        return "newline"
    if status != "incomplete":
        return "submit"
    last_line = text.rsplit("\n", 1)[-1]
    if "\n" in text and not last_line.strip():
        return "submit"
    return "newline"


def _history(profile: str) -> History:
    """The console's history file in the profile directory (in memory if unwritable)."""
    from corral.core.private import private_file
    from corral.core.profiles import profile_dir

    try:
        path = profile_dir(profile) / "console_history"
        os.close(private_file(path))  # what you typed: yours alone, whatever the umask
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


class PromptReader:
    """A :class:`~corral.frontends.prompts.LineReader` on a prompt_toolkit session."""

    def __init__(self, console: ConsoleSide, *, profile: str = "default") -> None:
        self.console = console
        self._count = 1
        self._next_input = ""
        self.session: PromptSession[str] = PromptSession(
            history=_history(profile),
            lexer=PygmentsLexer(PythonLexer),
            completer=KernelCompleter(console),
            complete_in_thread=False,
            complete_while_typing=False,
            auto_suggest=AutoSuggestFromHistory(),
            multiline=True,
            key_bindings=self._key_bindings(),
            prompt_continuation=lambda width, line, soft: continuation_prompt(self._count),
            enable_history_search=False,
        )

    def _message(self) -> FormattedText:
        return FormattedText(
            [
                ("ansigreen", "In ["),
                ("ansibrightgreen bold", str(self.console.next_count)),
                ("ansigreen", "]: "),
            ]
        )

    def read_cell(self, count: int) -> str:
        self._count = count
        default, self._next_input = self._next_input, ""
        # A callable message re-reads the count, so a restart while typing shows In [1].
        return self.session.prompt(self._message, default=default)

    def set_next_input(self, text: str) -> None:
        self._next_input = text

    def notify(self, text: str) -> None:
        app = self.session.app
        loop: Any = getattr(app, "loop", None)
        if app.is_running and loop is not None:
            # Print above the prompt being edited, then redraw it (on the prompt's thread).
            def show() -> None:
                run_in_terminal(lambda: print(text, flush=True))
                app.invalidate()

            loop.call_soon_threadsafe(show)
        else:
            print(f"\n{text}", flush=True)

    def _key_bindings(self) -> KeyBindings:
        bindings = KeyBindings()

        @bindings.add("enter")
        def _enter(event: KeyPressEvent) -> None:
            buffer = event.current_buffer
            state = buffer.complete_state
            if state is not None and state.current_completion is not None:
                buffer.apply_completion(state.current_completion)
                return
            doc = buffer.document
            text = doc.text
            status, indent = ("complete", "")
            if doc.is_cursor_at_the_end and text.strip():
                status, indent = self.console.is_complete(text)
            action = enter_action(text, doc.is_cursor_at_the_end, status)
            if action == "submit":
                buffer.text = text.rstrip()
                buffer.validate_and_handle()
            elif status == "incomplete":
                buffer.insert_text("\n" + indent)
            else:
                buffer.newline(copy_margin=True)

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.newline(copy_margin=True)

        return bindings
