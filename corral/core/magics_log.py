"""``%logstart`` and its family: keep a session's inputs (and outputs) in a Python file.

The log is written by observing the interpreter's notifications (``EXECUTE_RESULT`` for
outputs, ``EXECUTE_FINISHED`` for the input of each cell), so the interpreter itself
knows nothing of logging and pays nothing while no log is active.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any, TextIO

from corral.core.builtin_magics import parse_options
from corral.core.events import EXECUTE_FINISHED, EXECUTE_RESULT
from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["register_log_magics"]

hide_from_tracebacks(__file__)

_MODES = ("append", "backup", "global", "over", "rotate")


class _Log:
    """One interpreter's active log: the file, its options, and the output seen so far."""

    def __init__(
        self, interp: Any, path: Path, mode: str, output: bool, raw: bool, stamp: bool
    ) -> None:
        self.interp = interp
        self.path, self.mode = path, mode
        self.output, self.raw, self.stamp = output, raw, stamp
        self.active = True
        self.results: dict[int, str] = {}
        self.file: TextIO = _open(path, mode)

    def write_input(self, source: str) -> None:
        if self.stamp:
            self.file.write(time.strftime("# %a, %d %b %Y %H:%M:%S\n"))
        self.file.write(source.rstrip("\n") + "\n")

    def on_result(self, type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        if self.active and self.output:
            self.results[info["execution_count"]] = info["data"].get("text/plain", "")

    def on_finished(self, type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        count = info["execution_count"]
        if not self.active:
            return
        rows = self.interp.history_manager.range(0, count, count + 1, raw=self.raw)
        for _, _, source in rows:
            self.write_input(str(source))
        result = self.results.pop(count, None)
        if result is not None:
            self.file.write("".join(f"#[Out]# {line}\n" for line in result.splitlines()))
        self.file.flush()

    def close(self) -> None:
        center = self.interp.center
        center.remove_observer(self.on_result, EXECUTE_RESULT, self.interp)
        center.remove_observer(self.on_finished, EXECUTE_FINISHED, self.interp)
        self.file.close()


_logs: weakref.WeakKeyDictionary[Any, _Log] = weakref.WeakKeyDictionary()


def _open(path: Path, mode: str) -> TextIO:
    """The log file opened for ``mode``: an existing file is kept as ``NAME~`` (backup),
    ``NAME.N~`` (rotate), overwritten (over) or appended to (append, global)."""
    if path.exists() and mode == "backup":
        path.replace(path.with_name(path.name + "~"))
    elif path.exists() and mode == "rotate":
        number = 1
        while path.with_name(f"{path.name}.{number:03d}~").exists():
            number += 1
        path.replace(path.with_name(f"{path.name}.{number:03d}~"))
    appending = mode in ("append", "global") and path.exists()
    file = open(path, "a" if appending else "w", encoding="utf-8")  # noqa: SIM115 - kept open
    if not appending:
        file.write("# corral log file\n\n")
    return file


def _state_text(log: _Log) -> str:
    return (
        f"Filename       : {log.path}\n"
        f"Mode           : {log.mode}\n"
        f"Output logging : {log.output}\n"
        f"Raw input log  : {log.raw}\n"
        f"Timestamping   : {log.stamp}\n"
        f"State          : {'active' if log.active else 'temporarily suspended'}"
    )


def logstart_magic(interp: Any, line: str) -> None:
    """Log this session's inputs to a file: ``%logstart [-o] [-r] [-t] [-q] [FILE [MODE]]``.

    FILE defaults to ``ipython_log.py``; MODE is ``backup`` (an existing file becomes
    ``FILE~``, the default), ``append``, ``over``, ``rotate`` (``FILE.001~``...) or
    ``global`` (appends to FILE in your home directory). The inputs so far are written
    first. ``-o`` logs results as ``#[Out]#`` comments, ``-r`` logs inputs as typed
    (magics included) rather than as the Python that ran, ``-t`` timestamps each input,
    ``-q`` prints nothing.
    """
    if interp in _logs:
        raise UsageError(f"Log file already active: {_logs[interp].path}")
    opts, rest = parse_options(line, "ortq")
    words = rest.split()
    if len(words) > 2:
        raise UsageError("usage: %logstart [-o] [-r] [-t] [-q] [FILE [MODE]]")
    name = words[0] if words else "ipython_log.py"
    mode = words[1] if len(words) == 2 else "backup"
    if mode not in _MODES:
        raise UsageError(f"%logstart: mode must be one of {', '.join(_MODES)}, not {mode!r}")
    path = Path(name).expanduser()
    if mode == "global":
        path = Path.home() / path.name
    log = _Log(interp, path, mode, "o" in opts, "r" in opts, "t" in opts)
    running = interp.execution_count
    for _, number, source in interp.history_manager.range(0, 1, raw=log.raw):
        if number != running:  # this very cell is logged when it finishes
            log.write_input(str(source))
    log.file.flush()
    interp.center.add_observer(log.on_result, EXECUTE_RESULT, interp)
    interp.center.add_observer(log.on_finished, EXECUTE_FINISHED, interp)
    _logs[interp] = log
    if "q" not in opts:
        print("Activating auto-logging. Current session state plus future input saved.")
        print(_state_text(log))


def _active(interp: Any) -> _Log:
    log = _logs.get(interp)
    if log is None:
        raise UsageError("Logging has not been activated (use %logstart).")
    return log


def logstop_magic(interp: Any, line: str) -> None:
    """Stop logging and close the log file (``%logstart`` may then start another)."""
    _active(interp).close()
    del _logs[interp]


def logoff_magic(interp: Any, line: str) -> None:
    """Suspend logging until ``%logon``."""
    log = _active(interp)
    log.active = False
    print("Switching logging OFF")


def logon_magic(interp: Any, line: str) -> None:
    """Resume logging suspended by ``%logoff``."""
    log = _active(interp)
    log.active = True
    print("Switching logging ON")


def logstate_magic(interp: Any, line: str) -> None:
    """Show the log file and its options."""
    log = _logs.get(interp)
    print(_state_text(log) if log is not None else "Logging has not been activated.")


def register_log_magics(registry: MagicsRegistry) -> None:
    """Add ``%logstart``, ``%logstop``, ``%logoff``, ``%logon`` and ``%logstate``."""
    for name, func in (
        ("logstart", logstart_magic),
        ("logstop", logstop_magic),
        ("logoff", logoff_magic),
        ("logon", logon_magic),
        ("logstate", logstate_magic),
    ):
        registry.register_line(name, func)
