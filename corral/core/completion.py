"""Tab completion and "is this input finished?" for the interpreter.

Completion asks jedi about the live namespace (attributes, dict keys, paths, imports) and
falls back to the standard library's ``rlcompleter`` when jedi is missing or fails. Magic
names complete after ``%``. jedi is imported on the first completion, never at startup.

:func:`input_status` answers Jupyter's ``is_complete_request`` with ``codeop`` and the
tokenizer: a compound statement stays open until a blank line, as at a console prompt.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from corral.core.magics import split_cell_magic, transform_cell

__all__ = ["complete", "input_status"]

_MAGIC_PREFIX = re.compile(r"^\s*(%{1,2})([\w.-]*)$")
_WORD = re.compile(r"[\w.]*$")
_DEDENTERS = ("return", "pass", "raise", "break", "continue")


def complete(
    code: str,
    cursor_pos: int | None,
    namespace: dict[str, Any],
    magic_names: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Jupyter ``complete_reply`` content for ``code`` with the cursor at ``cursor_pos``."""
    if cursor_pos is None:
        cursor_pos = len(code)
    before = code[:cursor_pos]
    line = before.rsplit("\n", 1)[-1]
    magic = _MAGIC_PREFIX.match(line)
    if magic and magic_names is not None:
        return _complete_magic(magic.group(1), magic.group(2), cursor_pos, magic_names)
    try:
        matches, start, kinds = _jedi(code, cursor_pos, namespace)
    except Exception:  # jedi absent or confused: the standard library still helps
        matches, start = _rlcompleter(before, namespace)
        kinds = [_kind_of(m, namespace) for m in matches]
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": start,
        "cursor_end": cursor_pos,
        "metadata": {_TYPES_KEY: _typed(matches, kinds, start, cursor_pos)},
    }


#: The completion metadata key JupyterLab reads to show each match's kind.
_TYPES_KEY = "_jupyter_types_experimental"


def _typed(matches: list[str], kinds: list[str], start: int, end: int) -> list[dict[str, Any]]:
    return [
        {"start": start, "end": end, "text": m, "type": k, "signature": ""}
        for m, k in zip(matches, kinds, strict=True)
    ]


def _kind_of(match: str, namespace: dict[str, Any]) -> str:
    """The kind of a completed name (what jedi calls it), looked up in ``namespace``."""
    import builtins
    import keyword

    if keyword.iskeyword(match):
        return "keyword"
    head, *rest = match.split(".")
    obj = namespace.get(head, getattr(builtins, head, None))
    try:
        for part in rest:
            obj = getattr(obj, part)
    except Exception:
        return "<unknown>"
    if isinstance(obj, type):
        return "class"
    if type(obj).__name__ == "module":
        return "module"
    if callable(obj):
        return "function"
    return "instance" if obj is not None else "<unknown>"


def _complete_magic(
    percents: str, prefix: str, cursor_pos: int, names: dict[str, list[str]]
) -> dict[str, Any]:
    matches = [] if percents == "%%" else ["%" + n for n in names["line"] if n.startswith(prefix)]
    matches += ["%%" + n for n in names["cell"] if n.startswith(prefix)]
    start = cursor_pos - len(prefix) - len(percents)
    kind = ["magic"] * len(matches)
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": start,
        "cursor_end": cursor_pos,
        "metadata": {_TYPES_KEY: _typed(matches, kind, start, cursor_pos)},
    }


def _jedi(
    code: str, cursor_pos: int, namespace: dict[str, Any]
) -> tuple[list[str], int, list[str]]:
    import jedi

    before = code[:cursor_pos]
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1)
    completions = jedi.Interpreter(code, [namespace]).complete(line, column)
    # Each completion replaces what was typed of it: name minus the part still to complete.
    starts = [cursor_pos - (len(c.name) - len(c.complete)) for c in completions]
    if not starts:
        return [], cursor_pos, []
    start = Counter(starts).most_common(1)[0][0]
    chosen = [c for c, s in zip(completions, starts, strict=True) if s == start]
    return [c.name for c in chosen], start, [c.type for c in chosen]


def _rlcompleter(before: str, namespace: dict[str, Any]) -> tuple[list[str], int]:
    import rlcompleter

    text = _WORD.search(before).group()  # type: ignore[union-attr]
    completer = rlcompleter.Completer(namespace)
    matches: list[str] = []
    for state in range(1000):
        match = completer.complete(text, state)
        if match is None:
            break
        matches.append(match.rstrip("("))
    return list(dict.fromkeys(matches)), len(before) - len(text)


# ------------------------------------------------------------------ is_complete


def input_status(code: str) -> dict[str, str]:
    """``{"status": "complete"|"incomplete"|"invalid", "indent": ...}`` for ``code``."""
    if not code.strip():
        return {"status": "complete"}
    if split_cell_magic(code) is not None:
        if re.search(r"\n[ \t]*\n[ \t]*$", code):
            return {"status": "complete"}
        return {"status": "incomplete", "indent": ""}
    source = transform_cell(code)
    if source.rstrip(" \t").endswith("\\"):
        return {"status": "incomplete", "indent": ""}
    import codeop
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = codeop.compile_command(source, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError, MemoryError):
        return {"status": "invalid"}
    if compiled is None:
        return {"status": "incomplete", "indent": _guess_indent(source)}
    if re.search(r"\n[ \t]*\n[ \t]*$", source):
        return {"status": "complete"}
    block_indent = _open_block_indent(source)
    if block_indent is not None:
        return {"status": "incomplete", "indent": _adjust(source, block_indent)}
    return {"status": "complete"}


def _last_line(source: str) -> str:
    lines = [line for line in source.split("\n") if line.strip()]
    return lines[-1] if lines else ""


def _guess_indent(source: str) -> str:
    last = _last_line(source)
    indent = last[: len(last) - len(last.lstrip())]
    if last.split("#", 1)[0].rstrip().endswith(":"):
        indent += "    "
    return indent


def _adjust(source: str, indent: str) -> str:
    """Dedent after ``return``/``pass``/... which end a block's last statement."""
    words = _last_line(source).split()
    if words and words[0] in _DEDENTERS:
        return indent[:-4] if len(indent) >= 4 else ""
    return indent


def _open_block_indent(source: str) -> str | None:
    """The indentation of the block ``source`` ends inside, or None at top level."""
    import io
    import tokenize

    stack: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source + "\n").readline):
            if tok.type == tokenize.INDENT:
                stack.append(tok.string)
            elif tok.type == tokenize.DEDENT:
                # Dedents emitted at the end of input close blocks that were still open.
                if tok.start[0] > source.count("\n") + 1:
                    break
                stack.pop()
    except (tokenize.TokenError, IndentationError):
        return None
    return stack[-1] if stack else None
