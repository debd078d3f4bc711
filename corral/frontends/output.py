"""Showing a kernel's iopub messages as text: on a terminal, or as HTML for an editor.

Both frontends (console and ``corral run``) pass one of these as the ``output_hook`` of
``execute_interactive``, so output appears the moment each message arrives. Kept apart
from the frontends because "how a message looks" is the same whoever asked for the code.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["TerminalOutput", "HtmlOutput", "plain_text"]

Message = dict[str, Any]


def plain_text(data: dict[str, Any] | None) -> str | None:
    """The ``text/plain`` entry of a mime bundle (None when there is none)."""
    text = (data or {}).get("text/plain")
    if isinstance(text, list):  # some kernels split long text into lines
        text = "".join(text)
    return text


class TerminalOutput:
    """An ``output_hook`` that prints streams, results, displays and tracebacks.

    ``out_prompt(count)`` gives the prefix of an execute result (the console's
    ``Out[N]: ``); without it a result prints bare, as a script's would. ``errored`` tells
    afterwards whether an ``error`` message came, which is how ``corral run`` picks its exit
    code even when the reply is lost.
    """

    def __init__(
        self,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        out_prompt: Callable[[int], str] | None = None,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.out_prompt = out_prompt
        self.errored = False
        self._at_line_start = True

    # The real streams are looked up late so that pytest's capsys and prompt_toolkit's
    # patch_stdout (which swap sys.stdout) are honoured.
    def _out(self) -> TextIO:
        return self.stdout or sys.stdout

    def _err(self) -> TextIO:
        return self.stderr or sys.stderr

    def __call__(self, msg: Message) -> None:
        msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content") or {}
        if msg_type == "stream":
            stream = self._err() if content.get("name") == "stderr" else self._out()
            self.write(stream, content.get("text", ""))
        elif msg_type == "execute_result":
            text = plain_text(content.get("data"))
            if text is not None:
                self.result(content.get("execution_count"), text)
        elif msg_type in ("display_data", "update_display_data"):
            text = plain_text(content.get("data"))
            if text is not None:
                self.write(self._out(), text + "\n")
        elif msg_type == "error":
            self.errored = True
            lines = content.get("traceback") or [
                f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            ]
            self.error("\n".join(lines) + "\n")

    def result(self, count: int | None, text: str) -> None:
        prefix = self.out_prompt(count or 0) if self.out_prompt else ""
        if prefix and "\n" in text:
            prefix += "\n"  # a multi-line repr starts on its own line, aligned
        self.write(self._out(), f"{prefix}{text}\n")

    def error(self, text: str) -> None:
        stream = self._err()
        if not _is_terminal(stream):  # kernels colour tracebacks; a file or pipe wants text
            text = _strip_ansi(text)
        self.write(stream, text)

    def write(self, stream: TextIO, text: str) -> None:
        if not text:
            return
        if stream is not self._out() and not self._at_line_start:
            # Keep a traceback from starting in the middle of an unfinished stdout line.
            self._out().write("\n")
            self._out().flush()
        stream.write(text)
        stream.flush()
        if stream is self._out():
            self._at_line_start = text.endswith("\n")


class HtmlOutput(TerminalOutput):
    """The same messages as escaped HTML, for editors that show a command's output as HTML
    (TextMate's "Show as HTML"): everything goes to stdout, errors in red.

    Call :meth:`begin` before and :meth:`end` after the run.
    """

    def begin(self) -> None:
        self._out().write(
            "<pre style='font-family: Menlo, monospace; font-size: 12px; white-space: pre-wrap'>"
        )
        self._out().flush()

    def end(self) -> None:
        self._out().write("</pre>\n")
        self._out().flush()

    def write(self, stream: TextIO, text: str) -> None:
        if not text:
            return
        escaped = html.escape(_strip_ansi(text))
        if stream is not self._out():
            escaped = f"<span style='color: #c00'>{escaped}</span>"
        self._out().write(escaped)
        self._out().flush()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _strip_ansi(text: str) -> str:
    """Drop terminal colour codes, which mean nothing in HTML."""
    return _ANSI.sub("", text)
