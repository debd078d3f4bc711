"""Text streams and stdin routing used while the interpreter runs a cell.

During ``execute`` the interpreter swaps ``sys.stdout``/``sys.stderr`` for
:class:`PostingStream` objects, which post every write as a ``STREAM`` notification the
moment it happens, and swaps ``input``/``getpass`` for functions that ask the transport
(through ``input_handler``) instead of a terminal the kernel does not have.

Why no buffering: the core has no clock and no I/O loop (sans-I/O), so it cannot flush a
buffer later; coalescing writes into messages is the transport's job. A write therefore
costs one lock and one post, which keeps 100k ``print`` calls fast and in order.
"""

from __future__ import annotations

import builtins
import getpass
import io
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from corral.core.events import STREAM
from corral.core.interrupts import protect
from corral.core.tracebacks import hide_from_tracebacks
from corral.errors import CorralError
from corral.notification.center import NotificationCenter

__all__ = ["PostingStream", "StdinNotImplementedError", "redirect_output", "route_stdin"]

#: ``(prompt, password) -> line``: how the transport answers ``input()``.
InputHandler = Callable[[str, bool], str]

hide_from_tracebacks(__file__)
# A write holds the output lock and posts: an interrupt must not tear it.
protect(__file__)

# One lock for stdout and stderr of every stream, so that writes from several threads reach
# observers one at a time and in the order they were made. Reentrant: an observer that
# itself prints must not deadlock.
_write_lock = threading.RLock()


class StdinNotImplementedError(CorralError, RuntimeError):
    """Raised by ``input()``/``getpass()`` when the frontend cannot answer (no stdin)."""


class PostingStream(io.TextIOBase):
    """A write-only text stream that posts ``STREAM(name, text)`` for every write."""

    def __init__(self, center: NotificationCenter, sender: Any, name: str) -> None:
        super().__init__()
        self._center = center
        self._sender = sender
        self.name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            with _write_lock:
                self._center.post(STREAM, self._sender, name=self.name, text=text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing is buffered: every write was posted already."""


@contextmanager
def redirect_output(center: NotificationCenter, sender: Any) -> Iterator[None]:
    """Send ``sys.stdout``/``sys.stderr`` writes to ``center`` for the duration."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PostingStream(center, sender, "stdout")
    sys.stderr = PostingStream(center, sender, "stderr")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _refuse(prompt: str = "", password: bool = False) -> str:
    raise StdinNotImplementedError(
        "input() is not available here: the frontend does not support stdin requests "
        "(allow_stdin is False or no input handler is set)"
    )


@contextmanager
def route_stdin(handler: InputHandler | None) -> Iterator[None]:
    """Make ``input()`` and ``getpass.getpass()`` ask ``handler`` (or refuse) meanwhile."""
    ask = handler if handler is not None else _refuse

    def routed_input(prompt: object = "") -> str:
        return ask(str(prompt), False)

    def routed_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        return ask(prompt, True)

    saved = builtins.input, getpass.getpass
    builtins.input = routed_input
    getpass.getpass = routed_getpass
    try:
        yield
    finally:
        builtins.input, getpass.getpass = saved
