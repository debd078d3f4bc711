"""Which operating-system facilities corral may use, and the Windows-safe way otherwise.

Why a module: Windows has no ``fork``, no process groups or sessions, no ``killpg``, and
only SIGINT/SIGTERM (plus SIGBREAK) among signals. Code that starts, signals and cleans
up processes asks this module instead of testing ``sys.platform`` itself, so the Windows
code paths are a handful of functions that can be *run on Linux*:
``CORRAL_PLATFORM_COMPAT=windows`` selects them here (no fork, no process groups, no Unix
sockets, no POSIX-only signals), which is how CI exercises them without a Windows host.
What that mode cannot show (``CREATE_NEW_PROCESS_GROUP``, ``CTRL_BREAK_EVENT``, Windows'
own pipes and paths) is listed in docs/clusters.md.

Read once at import: the mode is a property of the process, set before it starts.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

__all__ = [
    "FORWARDED_SIGNALS",
    "HAS_FORK",
    "HAS_PROCESS_GROUPS",
    "HAS_UNIX_SOCKETS",
    "KILL",
    "STOP_SIGNALS",
    "TERMINATE",
    "WINDOWS",
    "WINDOWS_MODE",
    "new_group_kwargs",
    "signal_group",
    "signal_process",
]

#: The environment variable that selects the Windows code paths on any platform.
COMPAT_ENV = "CORRAL_PLATFORM_COMPAT"

#: Really on Windows.
WINDOWS = sys.platform == "win32"
#: On Windows, or pretending to be (``CORRAL_PLATFORM_COMPAT=windows``).
WINDOWS_MODE = WINDOWS or os.environ.get(COMPAT_ENV, "").strip().lower() == "windows"

HAS_FORK = hasattr(os, "fork") and not WINDOWS_MODE
HAS_PROCESS_GROUPS = hasattr(os, "killpg") and not WINDOWS_MODE
#: Not ``hasattr(socket, "AF_UNIX")``: importing socket would cost every monitor 1.5 ms,
#: and CPython offers AF_UNIX wherever it is POSIX.
HAS_UNIX_SOCKETS = os.name == "posix" and not WINDOWS_MODE

TERMINATE: int = signal.SIGTERM
#: Windows has no SIGKILL: ``Popen.kill()`` is TerminateProcess there.
KILL: int = getattr(signal, "SIGKILL", signal.SIGTERM)

if WINDOWS_MODE:
    FORWARDED_SIGNALS: tuple[int, ...] = (signal.SIGINT,)
    STOP_SIGNALS: tuple[int, ...] = (
        signal.SIGTERM,
        *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else []),
    )
else:
    FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def new_group_kwargs() -> dict[str, Any]:
    """``Popen`` keywords that make the child the head of its own group: a new session on
    POSIX, a new process group on Windows, nothing in Windows mode on Linux (where the
    Windows flag does not exist; the child is then found and signalled by pid)."""
    if WINDOWS:
        import subprocess

        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    if WINDOWS_MODE:
        return {}
    return {"start_new_session": True}


def signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the group led by ``pid`` (POSIX) or to ``pid`` itself and its
    descendants (Windows mode, through psutil); False if there was nobody left."""
    if HAS_PROCESS_GROUPS:
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    import psutil

    try:
        head = psutil.Process(pid)
        members = [head, *head.children(recursive=True)]
    except psutil.Error:
        return False
    for member in members:
        try:
            if signum == KILL:
                member.kill()
            elif signum == TERMINATE:
                member.terminate()
            else:
                member.send_signal(signum)
        except psutil.Error:
            pass
    return True


def signal_process(popen: Any, signum: int) -> None:
    """Send ``signum`` to a ``Popen`` child (and its group where there are groups).

    In Windows mode only what Windows can deliver: SIGTERM as ``terminate()``, SIGKILL as
    ``kill()``, SIGINT as SIGINT (``CTRL_BREAK_EVENT`` to the group on real Windows).
    """
    if popen.poll() is not None and not HAS_PROCESS_GROUPS:
        return
    if HAS_PROCESS_GROUPS:
        signal_group(popen.pid, signum)
        return
    try:
        if signum == KILL:
            popen.kill()
        elif signum == TERMINATE:
            popen.terminate()
        elif WINDOWS and signum == signal.SIGINT:
            popen.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            popen.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass
