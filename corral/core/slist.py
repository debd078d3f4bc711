"""``SList``: the lines of a shell command's output, as ``x = !cmd`` gives them.

Notebooks written for IPython use the helpers of IPython's list of output lines:
``files.s`` (one string, space-separated, to pass on to another command), ``files.n``
(newline-separated), ``out.grep('numpy')``, ``out.fields(0)``. A plain list has none of
them, so such a cell raised ``AttributeError`` in a corral kernel. This is corral's own
list type with those helpers; it is a ``list`` for everything else.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SList"]


class SList(list[str]):
    """A list of output lines with IPython's helpers (``s``, ``n``, ``p``, ``grep``...)."""

    @property
    def l(self) -> SList:  # noqa: E743 - IPython's name for the list itself
        return self

    list = l

    @property
    def s(self) -> str:
        """The lines joined by spaces (``!ls {files.s}``)."""
        return " ".join(self)

    spstr = s

    @property
    def n(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self)

    nlstr = n

    @property
    def p(self) -> builtins.list[Path]:
        """The lines that name existing files, as paths."""
        return [Path(line) for line in self if Path(line).exists()]

    paths = p

    def grep(
        self, pattern: str | Callable[[str], Any], prune: bool = False, field: int | None = None
    ) -> SList:
        """The lines matching ``pattern`` (a regex searched in the line, or a predicate);
        ``prune=True`` keeps the others; ``field`` matches only that whitespace field."""
        test = pattern if callable(pattern) else re.compile(pattern, re.IGNORECASE).search

        def hit(line: str) -> bool:
            if field is None:
                return bool(test(line))
            words = line.split()
            return _has(words, field) and bool(test(words[field]))

        return SList(line for line in self if hit(line) != prune)

    def fields(self, *numbers: int) -> SList:
        """Whitespace-separated columns of each line (all of them without ``numbers``),
        joined by a space; lines lacking a column are left out of it."""
        picked = []
        for line in self:
            words = line.split()
            if not numbers:
                picked.append(" ".join(words))
                continue
            picked.append(" ".join(words[i] for i in numbers if _has(words, i)))
        return SList(picked)

    def sort(  # type: ignore[override]  # IPython's signature: a field, not a key
        self, field: int | None = None, nums: bool = False
    ) -> SList:
        """A sorted copy, by whitespace field ``field`` (whole lines without one);
        ``nums=True`` sorts by the digits in it, as numbers."""

        def key(line: str) -> Any:
            words = line.split()
            value = line if field is None else _word(words, field)
            if nums:
                digits = "".join(ch for ch in value if ch.isdigit())
                return int(digits) if digits else 0
            return value

        return SList(sorted(self, key=key))


def _has(words: list[str], index: int) -> bool:
    return -len(words) <= index < len(words)


def _word(words: list[str], index: int) -> str:
    return words[index] if _has(words, index) else ""
