"""Which of a cell's statements show their value: IPython's ``ast_node_interactivity``.

Notebooks written for ipykernel often start with
``InteractiveShell.ast_node_interactivity = "all"`` (or the same through ``%config``) so
that every expression of a cell shows its value, not only the last one. The interpreter
asks :func:`current_mode` before each cell and runs the cell in the :func:`steps` this
module cuts it into.

Modes, as IPython names them: ``last_expr`` (the default: a final expression shows),
``last`` (treated as ``last_expr``), ``all`` (every top-level expression shows, in order
with the cell's other output), ``none`` (nothing shows), ``last_expr_or_assign`` (a final
expression, or the value a final ``name = ...`` assigned).
"""

from __future__ import annotations

import ast
import sys

__all__ = ["DEFAULT", "MODES", "Step", "check_mode", "current_mode", "steps"]

MODES = ("all", "last", "last_expr", "none", "last_expr_or_assign")
DEFAULT = "last_expr"

#: ``("exec", statements)`` runs them; ``("show", expression)`` shows its value and goes
#: on; ``("value", expression)`` and ``("assigned", name)`` give the cell's result (last).
Step = tuple[str, object]


def check_mode(mode: str) -> str:
    """``mode`` if IPython knows it; ValueError (what a bad trait value raises) if not."""
    if mode not in MODES:
        raise ValueError(f"ast_node_interactivity must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def current_mode(own: str) -> str:
    """The mode for the next cell: the shell's own if it was set, else the one set on
    IPython's ``InteractiveShell`` class (the common idiom assigns it there, replacing
    the trait with a plain string), else the default. Imports nothing."""
    if own != DEFAULT:
        return own
    module = sys.modules.get("IPython.core.interactiveshell")
    if module is not None:
        value = vars(module.InteractiveShell).get("ast_node_interactivity")
        if isinstance(value, str) and value in MODES:
            return value
    return own


def _assigned_name(node: ast.stmt) -> str | None:
    """The name a statement ``x = ...`` / ``x += ...`` / ``x: T = ...`` binds, if one."""
    if isinstance(node, ast.Assign):
        targets = node.targets
        return targets[0].id if len(targets) == 1 and isinstance(targets[0], ast.Name) else None
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return node.target.id if isinstance(node.target, ast.Name) else None
    return None


def steps(body: list[ast.stmt], mode: str) -> list[Step]:
    """How to run a cell's top-level statements ``body`` under ``mode``."""
    if not body or mode == "none":
        return [("exec", body)]
    last = body[-1]
    if mode == "all":
        out: list[Step] = []
        pending: list[ast.stmt] = []
        for node in body[:-1]:
            if isinstance(node, ast.Expr):
                out += [("exec", pending), ("show", node.value)]
                pending = []
            else:
                pending.append(node)
        if isinstance(last, ast.Expr):
            return [*out, ("exec", pending), ("value", last.value)]
        return [*out, ("exec", [*pending, last])]
    if isinstance(last, ast.Expr):
        return [("exec", body[:-1]), ("value", last.value)]
    name = _assigned_name(last) if mode == "last_expr_or_assign" else None
    if name is not None:
        return [("exec", body), ("assigned", name)]
    return [("exec", body)]
