"""Whether a process is still alive, as watchers of a parent process need to know."""

from __future__ import annotations

import os

__all__ = ["process_alive"]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; a zombie (exited, not yet reaped) counts as gone.

    ``os.kill(pid, 0)`` alone says a zombie exists, so a kernel or engine watching a
    frontend that died would wait for as long as nobody reaps it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # Linux: a zombie has exited, whatever kill() says.
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill() is all we know
