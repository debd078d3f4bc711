"""What the console and its line readers share: the prompts, and the two interfaces
between them.

Its own module so the readers (:mod:`.console_prompt` on prompt_toolkit, the plain
:class:`~corral.frontends.console.SimpleReader`) depend on these few names and not on the
console itself: the console picks a reader, a reader never imports the console.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ConsoleSide", "LineReader", "continuation_prompt", "in_prompt", "out_prompt"]


def in_prompt(count: int) -> str:
    return f"In [{count}]: "


def out_prompt(count: int) -> str:
    return f"Out[{count}]: "


def continuation_prompt(count: int) -> str:
    """``   ...: `` as wide as the ``In [N]: `` it continues, so code lines up."""
    width = len(in_prompt(count))
    return " " * (width - 5) + "...: "


class LineReader(Protocol):
    """Reads cells for the console and shows messages that arrive from other threads."""

    def read_cell(self, count: int) -> str:
        """Read one complete cell; ``EOFError`` ends the console, ``KeyboardInterrupt``
        discards what was typed."""
        ...

    def notify(self, text: str) -> None:
        """Show ``text`` now, without breaking a prompt being edited (any thread)."""
        ...

    def set_next_input(self, text: str) -> None:
        """Offer ``text`` as the next cell (the kernel's ``set_next_input`` payload)."""
        ...


class ConsoleSide(Protocol):
    """What a reader may ask of the console it reads for (the kernel's answers)."""

    #: The execution count the next cell will get.
    next_count: int

    def is_complete(self, code: str) -> tuple[str, str]:
        """``(status, indent)`` as in the kernel's ``is_complete_reply``."""
        ...

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any] | None:
        """The kernel's ``complete_reply`` content, or None if it did not answer."""
        ...
