"""History magics: ``%recall``, ``%rerun``, ``%save``, ``%macro`` and ``%notebook``.

Ranges are read as ``%history`` reads them (``4``, ``1-3``, ``~1/2``); a name of a
string or a macro stands for its text. Inputs that were ``%%`` cells run again as cells.
"""

from __future__ import annotations

from typing import Any

from corral.core.builtin_magics import parse_options
from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["Macro", "register_history_magics", "run_inputs"]

hide_from_tracebacks(__file__)


def _history_source(interp: Any, spec: str) -> list[str]:
    """The inputs named by history ranges (``4``, ``1-3``, ``~1/2``), or those of the
    named variables (a string, or a macro), in order."""
    from corral.core.builtin_magics import _ranges

    hm = interp.history_manager
    sources: list[str] = []
    for token in spec.split():
        value = interp.user_ns.get(token)
        if isinstance(value, Macro):
            sources += value.parts
        elif isinstance(value, str) and not token[0].isdigit():
            sources.append(value)
        else:
            rows = [r for s, a, b in _ranges(token) for r in hm.range(s, a, b)]
            sources += [str(entry) for _, _, entry in rows]
    return sources


def _last_inputs(interp: Any, count: int) -> list[str]:
    """The last ``count`` inputs before the running cell."""
    inputs = [text for text in interp.user_ns.get("In", [])[1 : interp.execution_count]]
    return [text for text in inputs if text][-count:] if count else []


def recall_magic(interp: Any, line: str) -> None:
    """Put earlier input in the next cell to edit: ``%recall [RANGE]`` (default: the last)."""
    arg = line.strip()
    sources = _history_source(interp, arg) if arg else _last_inputs(interp, 1)
    if not sources:
        raise UsageError("%recall: no input found")
    interp.add_payload({"source": "set_next_input", "text": "\n".join(sources), "replace": False})


def rerun_magic(interp: Any, line: str) -> Any:
    """Run earlier input again: ``%rerun [RANGE]``, ``%rerun -l N`` (the last N inputs);
    ``%rerun`` alone reruns the previous cell."""
    opts, rest = parse_options(line, "l:g:")
    if "l" in opts:
        sources = _last_inputs(interp, int(opts["l"]))
    elif "g" in opts:
        hm = interp.history_manager
        rows = hm.search(f"*{opts['g']}*", None, False)
        running = (hm.session_id, interp.execution_count)
        sources = [str(r[2]) for r in rows if r[:2] != running and "%rerun" not in str(r[2])][-1:]
    elif rest:
        sources = _history_source(interp, rest)
    else:
        sources = _last_inputs(interp, 1)
    if not sources:
        print("No lines in history match specification")
        return None
    print(f"=== Executing: ===\n{chr(10).join(sources)}\n=== Output: ===")
    return run_inputs(interp, sources, "<rerun>")


def save_magic(interp: Any, line: str) -> None:
    """Save input history to a file: ``%save [-a] [-f] FILE RANGE...`` (``.py`` is added
    when FILE has no extension; ``-a`` appends; RANGE may name a string or macro)."""
    from pathlib import Path

    opts, rest = parse_options(line, "afr")
    filename, _, spec = rest.partition(" ")
    if not filename or not spec.strip():
        raise UsageError("usage: %save [-a] FILE RANGE...")
    path = Path(filename).expanduser()
    if not path.suffix:
        path = path.with_suffix(".py")
    sources = _history_source(interp, spec)
    if not sources:
        raise UsageError(f"%save: no input found for {spec.strip()!r}")
    text = "\n".join(sources) + "\n"
    with open(path, "a" if "a" in opts else "w", encoding="utf-8") as f:
        if "a" not in opts:
            f.write("# coding: utf-8\n")
        f.write(text)
    verb = "appended to" if "a" in opts else "written to"
    print(f"The following commands were {verb} file `{path}`:\n{text}", end="")


def run_inputs(interp: Any, sources: list[str], filename: str) -> Any:
    """Run earlier inputs in turn, each as the cell it was (``%%`` cells included); the
    value of the last."""
    from corral.core.magics import split_cell_magic

    value = None
    for source in sources:
        magic_cell = split_cell_magic(source)
        if magic_cell is not None:
            name, line, body = magic_cell
            value = interp.magics.call_cell(interp, name, line, body)
        else:
            value = interp.run_source(source, filename=filename)
    return value


class Macro:
    """Inputs saved by ``%macro``: typing the macro's name alone in a cell runs them again.

    The interpreter runs a Macro that would become a cell's result instead of showing it,
    as IPython does; ``%save`` and ``%macro`` accept it as a range.
    """

    def __init__(self, code: str, parts: list[str] | None = None) -> None:
        self.value = code if code.endswith("\n") else code + "\n"
        self.parts = parts if parts is not None else [code]

    def run(self, interp: Any) -> Any:
        """Run the saved inputs in ``interp``; the last one's value."""
        return run_inputs(interp, self.parts, "<macro>")

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Macro({self.value!r})"

    def __add__(self, other: Macro | str) -> Macro:
        more = other.parts if isinstance(other, Macro) else [str(other)]
        return Macro(self.value + str(other), [*self.parts, *more])


def macro_magic(interp: Any, line: str) -> None:
    """Save inputs to run again by name: ``%macro [-q] NAME RANGE...``, then ``NAME``."""
    opts, rest = parse_options(line, "qr")
    name, _, spec = rest.partition(" ")
    if not name.isidentifier() or not spec.strip():
        raise UsageError("usage: %macro [-q] NAME RANGE...")
    sources = _history_source(interp, spec)
    macro = Macro("\n".join(sources), sources)
    interp.user_ns[name] = macro
    if "q" not in opts:
        print(f"Macro `{name}` created. To execute, type its name (without quotes).")
        print(f"=== Macro contents: ===\n{macro.value}", end="")


def notebook_magic(interp: Any, line: str) -> None:
    """Export this session's inputs (and their results as text) to a notebook file:
    ``%notebook FILE.ipynb``.

    Written as nbformat 4.5 JSON directly: importing nbformat costs seconds.
    """
    import json
    import uuid
    from pathlib import Path

    target = line.strip()
    if not target:
        raise UsageError("usage: %notebook FILE.ipynb")
    cells = []
    for _, number, (source, output) in interp.history_manager.range(0, 1, output=True):
        if number == interp.execution_count:  # this %notebook line itself
            continue
        outputs = []
        if output is not None:
            outputs.append(
                {
                    "output_type": "execute_result",
                    "data": {"text/plain": output},
                    "execution_count": number,
                    "metadata": {},
                }
            )
        cells.append(
            {
                "cell_type": "code",
                "execution_count": number,
                "id": uuid.uuid4().hex[:8],
                "metadata": {},
                "outputs": outputs,
                "source": source,
            }
        )
    notebook = {
        "cells": cells,
        "metadata": {"language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    Path(target).expanduser().write_text(json.dumps(notebook, indent=1) + "\n")


def register_history_magics(registry: MagicsRegistry) -> None:
    """Add these magics to ``registry``."""
    for name, func in (
        ("recall", recall_magic),
        ("rep", recall_magic),
        ("rerun", rerun_magic),
        ("save", save_magic),
        ("macro", macro_magic),
        ("notebook", notebook_magic),
    ):
        registry.register_line(name, func)
