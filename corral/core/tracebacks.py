"""Tracebacks written for the person who ran the cell, not for corral's developers.

Frames of corral's own machinery (the interpreter, the magic dispatcher) are removed; a
cell shows as ``Cell In[N], line L`` with a few lines of context read from linecache,
where the interpreter registers every cell under ``<cell-N>``. Colours are off by
default because frontends that want them ask for them.
"""

from __future__ import annotations

import builtins as builtins_
import linecache
import os
import re
from types import CodeType, FrameType, TracebackType

__all__ = [
    "cell_filename",
    "cell_label",
    "format_exception",
    "hide_from_tracebacks",
    "is_hidden_frame",
    "name_cell",
    "own_traceback",
]

_hidden_files: set[str] = set()
# Every frame inside the corral package is corral's own, not the user's: the interpreter,
# the notification center an output write passes through, the kernel's signal handler.
_CORRAL_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_CELL_NAME = re.compile(r"^<cell-(\d+)(?:\.\d+)?>$")
_CONTEXT = 2  # lines shown before and after the failing line
_CAUSE = "The above exception was the direct cause of the following exception:"
_DURING = "During handling of the above exception, another exception occurred:"
_RED, _GREEN, _CYAN, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[36m", "\x1b[0m"
# inspect.CO_VARARGS and inspect.CO_VARKEYWORDS (stable flag bits): inspect itself is not
# worth its import time on the kernel's start path.
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08


def hide_from_tracebacks(filename: str) -> None:
    """Leave frames of ``filename`` (a module's ``__file__``) out of user tracebacks."""
    _hidden_files.add(filename)


def is_hidden_frame(frame: FrameType) -> bool:
    """Whether ``frame`` is left out of user tracebacks (and debuggers): corral's own."""
    filename = frame.f_code.co_filename
    return (
        filename in _hidden_files
        or filename.startswith(_CORRAL_ROOT)
        or bool(frame.f_globals.get("__corral_hide_traceback__"))
    )


def cell_filename(count: int, serial: int | None = None) -> str:
    """The linecache name of a cell: ``<cell-N>``, or ``<cell-N.k>`` for unnumbered runs."""
    return f"<cell-{count}>" if serial is None else f"<cell-{count}.{serial}>"


#: Cells that run under a real file name (a debugger's), by file name: their number.
_named_cells: dict[str, int] = {}


def name_cell(filename: str, count: int) -> None:
    """Label the cell run as ``filename`` ``Cell In[count]`` in tracebacks."""
    _named_cells[filename] = count


def cell_label(filename: str) -> str | None:
    """``Cell In[N]`` for a cell's filename, None for real files."""
    match = _CELL_NAME.match(filename)
    if match:
        return f"Cell In[{match.group(1)}]"
    count = _named_cells.get(filename)
    return f"Cell In[{count}]" if count is not None else None


def _paint(text: str, colour: str, colors: bool) -> str:
    return f"{colour}{text}{_RESET}" if colors else text


def _location(filename: str, lineno: int | None, code: CodeType | None, colors: bool) -> str:
    label = cell_label(filename)
    where = f"{label}, line {lineno}" if label else f"File {filename}:{lineno}"
    if code is not None and code.co_name != "<module>":
        where += f", in {_called(code)}"
    return _paint(where, _CYAN, colors)


def _called(code: CodeType) -> str:
    """``Class.method(self, x, *args, **kw)``: the function as IPython names it, so a reader
    sees which method of which class failed and what it takes (never the values: they can
    be huge or secret)."""
    name = getattr(code, "co_qualname", code.co_name)  # 3.11+ knows the class
    positional, keyword_only = code.co_argcount, code.co_kwonlyargcount
    names = list(code.co_varnames[:positional])
    extra = positional + keyword_only  # *args, then **kwargs, follow the named ones
    if code.co_flags & _CO_VARARGS:
        names.append("*" + code.co_varnames[extra])
        extra += 1
    names.extend(code.co_varnames[positional : positional + keyword_only])
    if code.co_flags & _CO_VARKEYWORDS:
        names.append("**" + code.co_varnames[extra])
    # Comprehensions and generator expressions take a hidden ``.0`` iterator: not the user's.
    return f"{name}({', '.join(n for n in names if not n.startswith('.'))})"


def _context(filename: str, lineno: int | None, colors: bool) -> list[str]:
    lines = linecache.getlines(filename)
    if not lines or lineno is None:  # None: a frame caught between two lines (3.11+)
        return []
    first = max(1, lineno - _CONTEXT)
    last = min(len(lines), lineno + _CONTEXT)
    width = len(str(last))
    shown = []
    for number in range(first, last + 1):
        text = lines[number - 1].rstrip("\n")
        if number == lineno:
            shown.append(_paint(f"----> {number:>{width}} {text}", _GREEN, colors))
        else:
            shown.append(f"      {number:>{width}} {text}")
    return shown


def _frames(tb: TracebackType | None, colors: bool) -> list[str]:
    entries = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if not is_hidden_frame(tb.tb_frame):
            lineno = tb.tb_lineno
            head = _location(code.co_filename, lineno, code, colors)
            entries.append("\n".join([head, *_context(code.co_filename, lineno, colors)]))
        tb = tb.tb_next
    return entries


def _syntax_error(exc: SyntaxError, colors: bool) -> list[str]:
    filename = exc.filename or "<unknown>"
    lines = [_location(filename, exc.lineno, None, colors)]
    if exc.text:
        text = exc.text.rstrip("\n")
        stripped = text.lstrip()
        lines.append(f"    {stripped}")
        if exc.offset:
            caret = max(0, exc.offset - 1 - (len(text) - len(stripped)))
            end = exc.end_offset if exc.end_lineno == exc.lineno and exc.end_offset else 0
            width = max(1, end - exc.offset) if end else 1
            lines.append("    " + " " * caret + _paint("^" * width, _RED, colors))
    lines.append(_final(exc, colors))
    return ["\n".join(lines)]


def _final(exc: BaseException, colors: bool) -> str:
    name = type(exc).__name__
    value = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    head = _paint(name, _RED, colors)
    return "\n".join([f"{head}: {value}" if value else head, *_notes(exc)])


def _notes(exc: BaseException) -> list[str]:
    """The notes added to ``exc`` (PEP 678, ``add_note``), shown under its line as Python
    and IPython show them: libraries say there what went wrong in the user's terms."""
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, (list, tuple)):
        return []
    shown = []
    for note in notes:
        try:
            shown.append(note if isinstance(note, str) else str(note))
        except Exception:  # a note whose str() fails must not hide the error
            shown.append("<note str() failed>")
    return shown


def _chain(exc: BaseException) -> list[tuple[BaseException, str | None]]:
    """The exceptions to show, oldest first, each with the sentence linking it to the one
    shown before it (None for the oldest)."""
    newest_first: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        older: BaseException | None = None
        link: str | None = None
        if current.__cause__ is not None:
            older, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            older, link = current.__context__, _DURING
        newest_first.append((current, link))
        current = older
    return newest_first[::-1]


def own_traceback(exc: BaseException) -> list[str] | None:
    """The traceback ``exc`` renders itself (``_render_traceback_``), as IPython asks
    for it; None if it has no such method, or the method fails or gives no strings.

    Errors that stand for another process's failure (ipyparallel's ``RemoteError``)
    show the remote traceback this way rather than the local frames that re-raised it.
    """
    try:
        render = getattr(exc, "_render_traceback_", None)
        if not callable(render):
            return None
        lines = render()
    except Exception:  # a broken renderer must not hide the error it was to show
        return None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        return None
    return lines


def format_exception(exc: BaseException, *, colors: bool = False) -> list[str]:
    """The Jupyter ``traceback`` list for ``exc``: a header, one entry per frame, the error.

    An error that knows how it should be shown (``_render_traceback_``, IPython's protocol:
    a remote error whose traceback is on an engine, where the bug is) is shown its own
    way, as IPython does; the local frames it was raised through (where a result was
    waited for) are not the user's concern."""
    rendered = own_traceback(exc)
    if rendered is not None:
        return rendered
    parts: list[str] = []
    for one, link in _chain(exc):
        if link:
            parts.append(f"\n{link}\n")
        name = type(one).__name__
        header = f"{name:<42}Traceback (most recent call last)"
        parts.append(_paint("-" * 75, _RED, colors))
        if isinstance(one, SyntaxError):
            frames = _frames(one.__traceback__, colors)
            if frames:
                parts.append(_paint(header, _RED, colors))
            parts.extend(frames)
            parts.extend(_syntax_error(one, colors))
        else:
            parts.append(_paint(header, _RED, colors))
            parts.extend(_frames(one.__traceback__, colors))
            parts.append(_final(one, colors))
            parts.extend(_group_members(one, colors))
    return parts


_GROUP_WIDTH = 15  # members shown of one exception group, as Python's own tracebacks


def _group_members(exc: BaseException, colors: bool) -> list[str]:
    """An exception group's members, each under a numbered rule, their lines indented.

    ``asyncio.TaskGroup`` and ``except*`` code raise groups whose own line only counts
    the members ("(2 sub-exceptions)"): what failed, and where, is in the members.
    """
    members = getattr(exc, "exceptions", None)
    if not isinstance(members, tuple) or not isinstance(
        exc, getattr(builtins_, "BaseExceptionGroup", ())
    ):
        return []
    lines: list[str] = []
    for number, member in enumerate(members[:_GROUP_WIDTH], 1):
        lines.append(f"+---------------- {number} ----------------")
        for part in format_exception(member, colors=colors):
            lines.append("\n".join(f"    | {line}" for line in part.split("\n")))
    if len(members) > _GROUP_WIDTH:
        lines.append(
            f"+---------------- ... ----------------\nand {len(members) - _GROUP_WIDTH} more"
        )
    return lines
