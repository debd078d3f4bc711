"""Name the file and show the source line of shipped functions in remote tracebacks.

cloudpickle sends a ``__main__`` function's code with ``co_filename`` set to
``<dynamic-code>``, and the engine has no copy of the script or notebook cell it came
from, so its frames read ``File <dynamic-code>:4, in boom(x)``. The client attaches the
function's own source lines (``__corral_source__ = (filename, first line, lines)``, see
``client.funccache.attach_source``); when a task fails, :func:`annotate` rewrites those
frames with the real file name (``Cell In[N]`` for a corral cell) and the lines around
the failing one. Only failing tasks pay for this.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["annotate"]

# ``in NAME(PARAMETERS)`` as corral.core.tracebacks writes it; NAME may be qualified
# (``Shape.area``, ``f.<locals>.g``) where the code's own name is its last part.
_DYNAMIC = re.compile(r"^File <dynamic-code>:(\d+), in ([^(\n]+)(\([^)\n]*\))")
_CONTEXT = 2


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _sources(functions: Iterable[Any]) -> dict[str, list[tuple[int, int, Any]]]:
    """``{co_name: [(first line, last line, source)]}`` of the code of ``functions``."""
    found: dict[str, list[tuple[int, int, Any]]] = {}
    for func in functions:
        source = getattr(func, "__dict__", {}).get("__corral_source__")
        code = getattr(func, "__code__", None)
        if not isinstance(source, tuple) or len(source) != 3 or code is None:
            continue
        for one in _codes(code):
            numbers = [n for _, _, n in one.co_lines() if n is not None] or [one.co_firstlineno]
            found.setdefault(one.co_name, []).append((min(numbers), max(numbers), source))
    return found


def _where(filename: str, lineno: int, called: str) -> str:
    from corral.core.tracebacks import cell_label

    label = cell_label(filename)
    head = f"{label}, line {lineno}" if label else f"File {filename}:{lineno}"
    return f"{head}, in {called}"


def _context(source: tuple[str, int, list[str]], lineno: int) -> list[str]:
    _, first, lines = source
    last = first + len(lines) - 1
    if not first <= lineno <= last:
        return []
    start, stop = max(first, lineno - _CONTEXT), min(last, lineno + _CONTEXT)
    width = len(str(stop))
    shown = []
    for number in range(start, stop + 1):
        text = lines[number - first].rstrip("\n")
        arrow = "---->" if number == lineno else "     "
        shown.append(f"{arrow} {number:>{width}} {text}")
    return shown


def annotate(traceback: list[str], functions: Iterable[Any]) -> list[str]:
    """``traceback`` with ``<dynamic-code>`` frames of ``functions`` named and shown."""
    if not any(entry.startswith("File <dynamic-code>") for entry in traceback):
        return traceback
    sources = _sources(functions)
    if not sources:
        return traceback
    out = []
    for entry in traceback:
        match = _DYNAMIC.match(entry)
        if match is None:
            out.append(entry)
            continue
        lineno, name, parameters = int(match.group(1)), match.group(2), match.group(3)
        code_name = name.rsplit(".", 1)[-1]
        candidates = [s for lo, hi, s in sources.get(code_name, ()) if lo <= lineno <= hi]
        if not candidates:
            out.append(entry)
            continue
        source = candidates[0]
        head = _where(source[0], lineno, name + parameters)
        out.append("\n".join([head, *_context(source, lineno)]))
    return out
