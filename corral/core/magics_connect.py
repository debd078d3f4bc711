"""``%connect_info`` and ``%qtconsole``: attach another frontend to the running kernel.

Notebook users attach a console to their notebook's kernel (to poke at its state while a
cell runs, or to get a terminal on it) with these two magics, as IPython's kernel offers
them. Both read what the serving process put on the interpreter: ``interpreter.kernel``
(set by the Jupyter server that serves it) with its ``info`` (the connection info) and
``connection_file``. An interpreter that no server serves (a script, a cluster engine
that is not bound as a kernel) has nothing to connect to and says so; the cluster
engine's plugin replaces both magics with versions that bind the engine first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from corral.core.magics import UsageError

__all__ = ["connect_info_magic", "connection_of", "qtconsole_magic", "register_connect_magics"]


def connection_of(interpreter: Any) -> tuple[dict[str, Any], str | None]:
    """The connection info (as a connection file holds it) and the file's path of the
    kernel serving ``interpreter``; :class:`UsageError` when none serves it."""
    kernel = getattr(interpreter, "kernel", None)
    info = getattr(kernel, "info", None)
    if info is None:
        raise UsageError(
            "this interpreter is not served as a Jupyter kernel, so there is nothing to "
            "connect to (start it as a kernel: `corral kernel`, or bind a cluster engine "
            "with bind_kernel())"
        )
    as_dict = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    path = getattr(kernel, "connection_file", None)
    return as_dict, (str(path) if path else None)


def connect_info_magic(interp: Any, line: str) -> None:
    """Print this kernel's connection information and how to attach a console to it
    (``jupyter console --existing FILE``, ``corral console --existing FILE``)."""
    info, path = connection_of(interp)
    print(json.dumps(info, indent=1))
    print()
    if path is None:
        print("Save the JSON above to a file; attach a console to this kernel with:")
        print("    jupyter console --existing <that file>")
        return
    print("Attach a console to this kernel with:")
    print(f"    jupyter console --existing {path}")
    print(f"    corral console --existing {path}")
    name = os.path.basename(path)
    print("or, on this machine, by the file's name alone (looked up in Jupyter's runtime")
    print(f"directory): jupyter console --existing {name}")


def qtconsole_magic(interp: Any, line: str) -> subprocess.Popen[bytes]:
    """Open a Qt console attached to this kernel (``jupyter qtconsole --existing``);
    extra arguments go to it. The console runs on the kernel's machine."""
    info, path = connection_of(interp)
    if path is None:
        raise UsageError("this kernel has no connection file for a Qt console to read")
    command = shutil.which("jupyter-qtconsole")
    if command is None:
        raise UsageError(
            "the Qt console is not installed here (pip install qtconsole); "
            f"or attach a terminal console: jupyter console --existing {path}"
        )
    args = [command, f"--existing={path}", *line.split()]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, close_fds=sys.platform != "win32")


def register_connect_magics(registry: Any) -> None:
    registry.register_line("connect_info", connect_info_magic)
    registry.register_line("qtconsole", qtconsole_magic)
