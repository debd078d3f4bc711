"""What ``obj?``, ``obj??`` and ``inspect_request`` show: signature, docstring, source, file.

Objects are found by walking a dotted name through the namespace with ``getattr``; no
user expression is evaluated, so asking about ``f(x).y`` never calls ``f``.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

__all__ = ["find_object", "info_text", "name_at"]

_MISSING = object()
_DOTTED = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*")
_STRING_FORM_LIMIT = 200


def find_object(name: str, namespace: dict[str, Any]) -> tuple[bool, Any]:
    """``(True, obj)`` for a dotted name found in ``namespace`` or builtins, else (False, None)."""
    first, *rest = name.split(".")
    obj = namespace.get(first, _MISSING)
    if obj is _MISSING:
        obj = getattr(builtins, first, _MISSING)
    for part in rest:
        if obj is _MISSING:
            break
        try:
            obj = getattr(obj, part, _MISSING)
        except Exception:
            obj = _MISSING
    return (False, None) if obj is _MISSING else (True, obj)


def name_at(code: str, cursor_pos: int | None = None) -> str:
    """The dotted name under or just before the cursor; inside ``f(a, |`` it is ``f``."""
    if cursor_pos is None:
        cursor_pos = len(code)
    for match in _DOTTED.finditer(code):
        if match.start() <= cursor_pos <= match.end():
            return match.group()
    # Not on a name: the callee of the innermost unclosed call before the cursor.
    depth = 0
    before = code[:cursor_pos]
    for i in range(len(before) - 1, -1, -1):
        ch = before[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                callee = re.search(r"[A-Za-z_][\w.]*$", before[:i].rstrip())
                return callee.group() if callee else ""
            depth -= 1
    return ""


def _signature(obj: Any) -> str | None:
    import inspect

    if not callable(obj):
        return None
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None


def _class_file(cls: type) -> str | None:
    """Where a class was defined, from its functions' code.

    ``inspect`` looks classes up through their module, which for a class typed into a cell
    is ``__main__``: the wrong file. The code of its methods knows the right one.
    """
    for value in vars(cls).values():
        func = getattr(value, "__func__", value)
        code = getattr(func, "__code__", None)
        if code is not None:
            filename: str = code.co_filename
            return filename
    return None


def _class_source(cls: type) -> str | None:
    import ast
    import linecache

    filename = _class_file(cls)
    lines = linecache.getlines(filename) if filename else []
    if not lines:
        return None
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return None
    found = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__
    ]
    if not found:
        return None
    node = found[-1]  # the latest definition is the one that is live
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return "".join(lines[first - 1 : node.end_lineno])


def _source(obj: Any) -> str | None:
    import inspect

    if inspect.isclass(obj) and _class_file(obj):
        return _class_source(obj)
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError):
        return None


def _file(obj: Any) -> str | None:
    import inspect

    from corral.core.tracebacks import cell_label

    if inspect.isclass(obj) and _class_file(obj):
        filename = _class_file(obj)
    else:
        try:
            filename = inspect.getsourcefile(obj) or inspect.getfile(obj)
        except TypeError:
            return None
    return cell_label(filename or "") or filename


def info_text(obj: Any, name: str, detail_level: int = 0) -> str:
    """Plain text about ``obj``; ``detail_level`` 1 shows its source instead of the docstring."""
    import inspect

    fields: list[tuple[str, str]] = []
    signature = _signature(obj)
    if signature is not None:
        fields.append(("Signature", f"{name}{signature}"))
    if not callable(obj) or inspect.isclass(obj) is False and not inspect.isroutine(obj):
        form = repr(obj)
        if len(form) > _STRING_FORM_LIMIT:
            form = form[: _STRING_FORM_LIMIT - 3] + "..."
        fields.append(("String form", form))
    source = _source(obj) if detail_level >= 1 else None
    if source is not None:
        fields.append(("Source", "\n" + source.rstrip("\n")))
    else:
        doc = inspect.getdoc(obj)
        fields.append(("Docstring", "\n" + doc if doc and "\n" in doc else doc or "<no docstring>"))
    filename = _file(obj)
    if filename:
        fields.append(("File", filename))
    fields.append(("Type", type(obj).__name__))
    width = max(len(label) for label, _ in fields) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in fields)
