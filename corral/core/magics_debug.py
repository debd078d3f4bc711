"""``%debug``, ``%%debug`` and ``%pdb``: Python's pdb in a cell, talking through ``input()``.

While a cell runs, ``input()`` asks the frontend (an ``input_request``), so pdb's prompt
appears in the notebook as ``input()``'s does and each command is typed there. The
frames of corral that ran the cell are cut from the traceback first, so ``where`` and
``up`` show only the user's code. For breakpoints in a frontend's debugger panel, the
kernel's DAP debugger is the tool; this is the terminal-style one IPython offers.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from corral.core.magics import MagicsRegistry, UsageError, switch_arg
from corral.core.tracebacks import hide_from_tracebacks, is_hidden_frame

__all__ = ["post_mortem", "register_debug_magics"]

hide_from_tracebacks(__file__)


def _user_part(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame that is the user's (corral's are skipped)."""
    first = tb
    while first is not None and is_hidden_frame(first.tb_frame):
        first = first.tb_next
    return first or tb


def post_mortem(tb: TracebackType | None) -> None:
    """Start pdb at the frame where ``tb``'s exception was raised."""
    import pdb

    debugger = pdb.Pdb()
    debugger.reset()
    debugger.interaction(None, _user_part(tb))


def debug_magic(interp: Any, line: str, cell: str | None = None) -> None:
    """Debug with pdb: ``%debug`` after an error inspects where it was raised (post
    mortem); ``%debug STATEMENT`` or a ``%%debug`` cell steps through that code.

    Type pdb's commands at its prompt (``p x``, ``up``, ``where``, ``c``, ``q``).
    """
    import pdb

    from corral.core.magics import transform_cell

    code = cell if cell is not None else line
    if not code.strip():
        tb = getattr(sys, "last_traceback", None)
        if tb is None:
            raise UsageError("No traceback has been produced, nothing to debug.")
        post_mortem(tb)
        return
    import linecache

    print("NOTE: Enter 'c' at the (Pdb) prompt to continue execution.")
    source = transform_cell(code)
    linecache.cache["<debug>"] = (len(source), None, source.splitlines(True), "<debug>")
    compiled = compile(source, "<debug>", "exec")
    pdb.Pdb().run(compiled, interp.user_ns)


def debug_cell(interp: Any, line: str, cell: str) -> None:
    """Step through the cell with pdb (see ``%debug``)."""
    debug_magic(interp, line, cell)


def pdb_magic(interp: Any, line: str) -> None:
    """Start pdb after every error automatically: ``%pdb on|off`` (``%pdb`` toggles)."""
    interp.call_pdb = switch_arg(interp.call_pdb, line, "pdb")
    print(f"Automatic pdb calling has been turned {'ON' if interp.call_pdb else 'OFF'}")


def register_debug_magics(registry: MagicsRegistry) -> None:
    """Add ``%debug``, ``%%debug`` and ``%pdb``."""
    registry.register_line("debug", debug_magic)
    registry.register_cell("debug", debug_cell)
    registry.register_line("pdb", pdb_magic)
