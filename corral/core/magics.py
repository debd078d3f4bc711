"""Magic commands: the registry, and the input transformation that calls them.

A line magic is ``func(interpreter, line) -> result``; a cell magic is
``func(interpreter, line, cell) -> result``. A non-None result becomes the cell's value.
:func:`transform_cell` rewrites the magic syntax of a cell into plain Python calling the
interpreter's ``__corral__`` accessor, one line for one line, so line numbers in
tracebacks still point at what the user typed:

=====================  ======================================================
typed                  becomes
=====================  ======================================================
``%name args``         ``__corral__.line_magic('name', 'args')``
``x = %name args``     ``x = __corral__.line_magic('name', 'args')``
``!cmd``               ``__corral__.system('cmd')``
``x = !cmd``           ``x = __corral__.getoutput('cmd')``
``obj?`` / ``?obj``    ``__corral__.help('obj', 0)``  (``??``: detail level 1)
=====================  ======================================================

A cell starting with ``%%name`` is not Python at all: :func:`split_cell_magic` finds it and
the interpreter hands the rest of the cell to the magic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from corral.errors import CorralError

__all__ = [
    "NO_VAR_EXPAND",
    "MagicsRegistry",
    "UsageError",
    "automagic",
    "clean_cell",
    "is_magic_line",
    "split_cell_magic",
    "switch_arg",
    "transform_cell",
    "transform_source",
    "var_expand",
]

LineMagic = Callable[[Any, str], Any]
CellMagic = Callable[[Any, str, str], Any]


class UsageError(CorralError):
    """A magic was called wrongly; shown to the user as one line, without a traceback."""


class MagicsRegistry:
    """Line and cell magics by name. Plugins add theirs with :meth:`register_line`."""

    def __init__(self) -> None:
        self._line: dict[str, LineMagic] = {}
        self._cell: dict[str, CellMagic] = {}

    def register_line(self, name: str, func: LineMagic | None = None) -> Any:
        """Register ``func`` as ``%name``; without ``func``, return a decorator."""
        if func is None:
            return lambda f: self.register_line(name, f)
        self._line[_check(name)] = func
        return func

    def register_cell(self, name: str, func: CellMagic | None = None) -> Any:
        """Register ``func`` as ``%%name``; without ``func``, return a decorator."""
        if func is None:
            return lambda f: self.register_cell(name, f)
        self._cell[_check(name)] = func
        return func

    def remove_line(self, name: str) -> None:
        """Forget the line magic ``name`` (``%unalias``); nothing happens if there is none."""
        self._line.pop(name, None)

    def line(self, name: str) -> LineMagic | None:
        """The line magic ``name``, or None."""
        return self._line.get(name)

    def cell(self, name: str) -> CellMagic | None:
        """The cell magic ``name``, or None."""
        return self._cell.get(name)

    def names(self) -> dict[str, list[str]]:
        """``{"line": [...], "cell": [...]}``, each sorted, without ``%`` prefixes."""
        return {"line": sorted(self._line), "cell": sorted(self._cell)}

    def call_line(self, interpreter: Any, name: str, line: str) -> Any:
        func = self._line.get(name)
        if func is None:
            hint = " (it is a cell magic: use %%" + name + ")" if name in self._cell else ""
            raise UsageError(f"Line magic function `%{name}` not found{hint}.")
        return func(interpreter, line)

    def call_cell(self, interpreter: Any, name: str, line: str, cell: str) -> Any:
        func = self._cell.get(name)
        if func is None:
            hint = " (it is a line magic: use %" + name + ")" if name in self._line else ""
            raise UsageError(f"Cell magic `%%{name}` not found{hint}.")
        return func(interpreter, line, cell)


_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


def _check(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid magic name {name!r}")
    return name


# ------------------------------------------------------------------ transformation

_CELL_MAGIC = re.compile(r"^%%([A-Za-z_][\w.-]*)[ \t]*(.*)$")
_ASSIGN = r"(?P<target>[\w.,\[\]\s'\"()*]+?\s*=\s*)?"
_LINE_MAGIC = re.compile(rf"^(?P<indent>[ \t]*){_ASSIGN}%(?P<name>[A-Za-z_][\w.-]*)(?P<args>.*)$")
_SHELL = re.compile(rf"^(?P<indent>[ \t]*){_ASSIGN}!(?P<cmd>.*)$")
_HELP_AFTER = re.compile(r"^(?P<indent>[ \t]*)(?P<name>%{0,2}[\w.]+(?:\(\))?)(?P<q>\?{1,2})\s*$")
_HELP_BEFORE = re.compile(r"^(?P<indent>[ \t]*)(?P<q>\?{1,2})(?P<name>%{0,2}[\w.]+)\s*$")


#: Prompts pasted with code: ``(first line, any line)`` of the Python shell and of IPython.
_PROMPTS = (
    (re.compile(r">>>( |$)"), re.compile(r"(>>>|\.\.\.)( |$)")),
    (re.compile(r"In \[\d+\]: "), re.compile(r"In \[\d+\]: |\s*\.{3,}: ?")),
)


def clean_cell(code: str) -> str:
    """``code`` without the prompts and the indentation it was pasted with.

    Notebook users paste examples from docs and consoles: ``>>> x = 1`` / ``... `` lines,
    ``In [1]: ...`` / ``   ...: `` lines, or a block copied from inside a function. IPython
    runs those cells, so a kernel that wants its notebooks must too. Prompts are removed
    when the first line starts with one (or the second with one, a paste that began
    mid-example); a first line that is indented sets the indentation removed from every
    line that has it. Lines stay lines, so tracebacks point at what was typed.
    """
    if code[:1] in (" ", "\t"):
        indent = code[: len(code) - len(code.lstrip(" \t"))]
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line for line in code.split("\n")
        )
    if ">" not in code and "In [" not in code and "..." not in code:
        return code
    lines = code.split("\n")
    for first, prompt in _PROMPTS:
        if first.match(lines[0]) or (len(lines) > 1 and prompt.match(lines[1])):
            return "\n".join(prompt.sub("", line, count=1) for line in lines)
    return code


def split_cell_magic(code: str) -> tuple[str, str, str] | None:
    """``(name, line, body)`` when ``code`` is a ``%%name line`` cell, else None.

    ``%%name?`` alone is help about the magic, as in IPython (it ran the magic with
    ``?`` as its arguments: ``%%writefile?`` wrote a file named ``?``).
    """
    first, _, body = code.lstrip("\n").partition("\n")
    if not body.strip() and first.rstrip().endswith("?"):
        return None
    # The body ends with a newline, as IPython hands it over (a cell typed without a
    # final newline gets one): magics that write or render the body see what they do there.
    if body and not body.endswith("\n"):
        body += "\n"
    if first.startswith("%%!"):  # IPython's spelling of %%sx
        return "sx", first[3:].strip(), body
    match = _CELL_MAGIC.match(first)
    if match is None:
        return None
    return match.group(1), match.group(2).strip(), body


_AUTO = re.compile(r"^(?P<indent>[ \t]*)(?P<name>[\w*.]+)(?P<rest>.*)$")


def automagic(code: str, callable_magic: Callable[[str], bool]) -> str | None:
    """``%name rest`` when the one-line cell ``code`` calls a line magic without its ``%``.

    IPython's automagic, with its rules: only a cell of one line; only when
    ``callable_magic(name)`` (a magic, not shadowed by a variable or builtin); not when
    what follows is ``=`` or ``,`` (``ls = 3`` and ``ls, x`` stay Python); a name with a
    dot or ``*`` is never a magic (``ls.x``, ``ls*2``). None when the cell is left alone.
    """
    lines = [line for line in code.split("\n") if line.strip()]
    if len(lines) != 1 or _transform_line(lines[0]) is not None:
        return None
    match = _AUTO.match(lines[0])
    if match is None:
        return None
    name, rest = match.group("name"), match.group("rest")
    if rest.lstrip().startswith(("=", ",")) or not name.isidentifier():
        return None
    if not callable_magic(name):
        return None
    return f"%{name}{rest}"


def switch_arg(current: bool, line: str, magic: str) -> bool:
    """The new state of an on/off magic (``%pdb``, ``%automagic``): its argument ``on``
    or ``off`` (also ``1``/``true``, ``0``/``false``), or none to toggle ``current``."""
    arg = line.strip().lower()
    if not arg:
        return not current
    if arg in ("on", "1", "true"):
        return True
    if arg in ("off", "0", "false"):
        return False
    raise UsageError(f"%{magic} takes on or off, not {line.strip()!r}")


def is_magic_line(line: str) -> bool:
    """Whether a line is magic syntax (``%``, ``!`` or help) rather than Python."""
    return _transform_line(line) is not None


def _transform_line(line: str) -> str | None:
    match = _HELP_AFTER.match(line) or _HELP_BEFORE.match(line)
    if match:
        level = len(match.group("q")) - 1
        name = match.group("name").removesuffix("()")
        return f"{match.group('indent')}__corral__.help({name!r}, {level})"
    match = _LINE_MAGIC.match(line)
    if match and not match.group("name").startswith("%"):
        target = match.group("target") or ""
        if not target or _is_target(target):
            args = match.group("args").strip()
            call = f"__corral__.line_magic({match.group('name')!r}, {args!r})"
            return f"{match.group('indent')}{target}{call}"
    match = _SHELL.match(line)
    if match:
        target = match.group("target") or ""
        if target and not _is_target(target):
            return None
        cmd = match.group("cmd").strip()
        func = "getoutput" if target else "system"
        return f"{match.group('indent')}{target}__corral__.{func}({cmd!r})"
    return None


def _is_target(target: str) -> bool:
    """``x =`` and ``a, b =`` are assignments; ``x ==`` or ``f(a=`` are not."""
    body = target.rstrip()[:-1].rstrip()
    return bool(body) and not body.endswith(("=", "!", "<", ">")) and "(" not in body


def transform_source(code: str) -> str:
    """:func:`transform_cell`, or for a ``%%name line`` cell one call of that cell magic:
    what a magic running user code (``%%time``, ``%%timeit``) runs, so a cell magic
    under it works as in IPython (``%%time`` over ``%%px`` was a SyntaxError)."""
    magic = split_cell_magic(code)
    if magic is None:
        return transform_cell(code)
    name, line, body = magic
    return f"__corral__.cell_magic({name!r}, {line!r}, {body!r})"


def transform_cell(code: str) -> str:
    """Rewrite magic, shell and help lines of ``code`` as Python, one line for one line.

    Lines inside brackets, after a backslash or inside triple-quoted strings are left
    alone, so ``%`` and ``!`` keep their Python meaning there.
    """
    if "%" not in code and "!" not in code and "?" not in code:
        return code
    out = []
    depth = 0
    quote: str | None = None
    continued = False
    for line in code.split("\n"):
        new = None
        if depth == 0 and quote is None and not continued:
            new = _transform_line(line)
        out.append(line if new is None else new)
        if new is None:
            depth, quote = _scan(line, depth, quote)
        continued = line.endswith("\\") and quote is None
    return "\n".join(out)


def _scan(line: str, depth: int, quote: str | None) -> tuple[int, str | None]:
    """Bracket depth and open triple quote after ``line`` (a cheap, forgiving scanner)."""
    i, n = 0, len(line)
    while i < n:
        if quote is not None:
            end = line.find(quote, i)
            if end < 0:
                return depth, quote
            i = end + 3
            quote = None
            continue
        ch = line[i]
        if ch == "#":
            break
        if ch in "\"'":
            triple = line[i : i + 3]
            if triple in ('"""', "'''"):
                quote = triple
                i += 3
                continue
            end = i + 1
            while end < n and line[end] != ch:
                end += 2 if line[end] == "\\" else 1
            i = end + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, quote


# ------------------------------------------------------------------ variable expansion

#: Magics that get their line as typed: it is code, where ``{`` and ``$`` mean Python.
NO_VAR_EXPAND = frozenset({"time", "timeit", "prun", "debug", "config", "load", "run"})

_EXPAND = re.compile(r"\$\$|\{\{|\}\}|\{([^{}]+)\}|\$([A-Za-z_][\w.]*)")


def var_expand(text: str, namespace: dict[str, Any]) -> str:
    """``{expr}`` and ``$name`` in a magic's line or shell command, filled from ``namespace``.

    As in IPython: ``!ls {path}`` and ``%cd $where`` use Python values. What cannot be
    evaluated is left as typed; ``$$``, ``{{`` and ``}}`` stand for ``$``, ``{`` and ``}``.
    """
    if "$" not in text and "{" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        whole, expr, name = match.group(0), match.group(1), match.group(2)
        if whole in ("$$", "{{", "}}"):
            return whole[0]
        try:
            return str(eval(expr if expr is not None else name, namespace))
        except Exception:
            return whole

    return _EXPAND.sub(replace, text)
