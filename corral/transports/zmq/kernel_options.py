"""The ``[kernel]`` section of ``corral.ini``: settings of every kernel, engines included.

Why here, in ``transports``: an engine is the same kernel plus the parallel plugin, so
what a profile says about "the kernel" (lines to run at start, the directory to start
in) must reach a Jupyter kernel and every engine alike. The options are declared once,
as :class:`~corral.core.config.Option` objects this module owns; the built-in core
plugin adds them to the schema (``corral_add_options``), and the cluster turns them into
engine command-line flags with :func:`engine_args`. This module imports nothing from
``corral.plugins``: layers point down.

``[kernel]``::

    exec_lines = import numpy as np, np.set_printoptions(precision=3)
    working_dir = ~/work
    heartbeat_interval = 1.0   # KernelManager: seconds between heartbeats
    restart_limit = 5          # KernelManager: automatic restarts within a minute
    autorestart = true         # KernelManager: restart a kernel that died
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from corral.core.config import Option

__all__ = ["KERNEL_OPTIONS", "apply_startup", "engine_args", "startup_from_args"]

log = logging.getLogger("corral.kernel")

KERNEL_OPTIONS: tuple[Option, ...] = (
    Option(
        "kernel",
        "exec_lines",
        [],
        "Python lines each kernel and engine runs in its namespace when it starts\n"
        "(imports, settings), in order; a failing line is logged and the rest still run.",
        type="list",
    ),
    Option(
        "kernel",
        "working_dir",
        "",
        "Directory each kernel and engine starts in (~ is expanded); empty: the directory\n"
        "it was launched from. On other hosts (ssh, batch) the path is theirs.",
    ),
    Option(
        "kernel",
        "heartbeat_interval",
        1.0,
        "Seconds between the heartbeats a KernelManager sends its kernel.",
        type="float",
        minimum=0.05,
    ),
    Option(
        "kernel",
        "restart_limit",
        5,
        "Automatic restarts a KernelManager allows within a minute.",
        type="int",
        minimum=0,
    ),
    Option(
        "kernel",
        "autorestart",
        True,
        "Whether a KernelManager restarts a kernel that died.",
        type="bool",
    ),
)


def engine_args(settings: Mapping[str, Any]) -> list[str]:
    """Engine command-line flags for the ``[kernel]`` ``settings`` that engines honour
    (``exec_lines``, ``working_dir``); the rest concern a KernelManager only."""
    argv: list[str] = []
    for line in settings.get("exec_lines") or []:
        argv += ["--exec-line", str(line)]
    if settings.get("working_dir"):
        argv += ["--working-dir", str(settings["working_dir"])]
    return argv


def startup_from_args(exec_lines: Sequence[str] | None, working_dir: str | None) -> dict:
    """What :func:`apply_startup` takes, from the engine's parsed flags."""
    return {"exec_lines": list(exec_lines or []), "working_dir": working_dir or ""}


def apply_startup(
    namespace: dict[str, Any], exec_lines: Iterable[str], working_dir: str
) -> list[str]:
    """Change to ``working_dir`` and run ``exec_lines`` in ``namespace``; the errors, as
    text (also logged), so a bad line in a profile is visible but does not stop a kernel.

    :raises OSError: ``working_dir`` does not exist: starting elsewhere silently would
        run the user's code on the wrong files.
    """
    if working_dir:
        os.chdir(os.path.expanduser(working_dir))
    errors = []
    for line in exec_lines:
        try:
            exec(compile(line, "<[kernel] exec_lines>", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # a profile's typo must not keep the kernel from starting
            text = f"[kernel] exec_lines: {line!r} failed: {type(exc).__name__}: {exc}"
            log.error("%s", text)
            errors.append(text)
    return errors
