"""Child processes: starting them detached with their output in a private log, noticing
their end at once, quoting their last words; and whether a process is still alive.

Why one module: the kernel manager, the local and ssh launchers and ``corral cluster
start --daemon`` all start long-lived children the same way, and each way matters:

* **its own session** (a new process group on Windows, nothing in Windows mode on Linux:
  :func:`corral.core.compat.new_group_kwargs`), so a Ctrl-C at the terminal does not
  reach it and the whole group it forks can be signalled together;
* **stdin from /dev/null, stdout and stderr appended to one owner-only log**
  (:mod:`corral.core.private`: a log holds task output), whose size before the start is
  kept, so an error quotes only what this child wrote (:meth:`Spawned.output_tail`);
* **no inherited descriptors** (``close_fds``): a child holding a parent's socket or pipe
  would keep it open after the parent closed it;
* **a reaper thread** in ``Popen.wait()``, which returns the instant the child exits:
  a death is seen at once, not at the next poll.

``subprocess`` is imported on first use: engines and controllers import this module's
users at boot and never start a child themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

__all__ = ["TAIL_BYTES", "Spawned", "child_env", "corral_root", "process_alive", "tail"]

#: How much of a log an error message quotes.
TAIL_BYTES = 4000


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


def corral_root() -> str:
    """The directory that holds the ``corral`` package this process runs."""
    return str(Path(__file__).resolve().parents[2])


def child_env(extra: Mapping[str, str] | None = None, *, importable: bool = True) -> dict[str, str]:
    """This process's environment for a child, plus ``extra``.

    ``importable``: :func:`corral_root` first on ``PYTHONPATH`` (unless already there), so
    a child ``python -m corral...`` imports the same corral as this process, installed
    or not.
    """
    env = os.environ.copy()
    if importable:
        root = corral_root()
        paths = env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    env.update(extra or {})
    return env


def tail(path: Path | None, offset: int = 0, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``path`` written after ``offset``, as text; ``""`` if
    there is no such file. Used for error messages: show the cause, not just 'it died'."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, end - limit))
            data = fh.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


class Spawned:
    """One child started detached (see the module docstring), output in ``log_file``.

    ``stdin_pipe``: a pipe to the child's stdin instead of /dev/null (a control channel).
    ``capture``: stdout and stderr to a pipe (``popen.stdout``) instead of the log, which
    is still created and measured. ``new_session``: ``True`` always makes the child lead
    a new session on POSIX, even in Windows mode (a caller that kills by process group);
    ``None``, the platform's way (:func:`~corral.core.compat.new_group_kwargs`).

    Raises what ``Popen`` raises (``OSError``: no such program, not executable); nothing
    is left running then.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        stdin_pipe: bool = False,
        capture: bool = False,
        new_session: bool | None = None,
    ) -> None:
        import subprocess

        from corral.core import compat
        from corral.core.private import private_dir, private_file

        self.log_file = log_file
        self.exited = threading.Event()
        self.exit_code: int | None = None
        group: dict[str, Any] = (
            {"start_new_session": True} if new_session else compat.new_group_kwargs()
        )
        private_dir(log_file.parent)
        with os.fdopen(private_file(log_file), "ab") as fh:
            self.log_offset = fh.seek(0, os.SEEK_END)
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else fh,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                close_fds=True,
                **group,
            )
        self.pid = self.popen.pid

    def watch(self, on_exit: Callable[[Any], object] | None = None) -> None:
        """Start the reaper: when the child exits, ``exit_code`` is set, :meth:`reaped`
        runs, ``exited`` is set, then ``on_exit(self)`` is called (in the reaper thread)."""

        def reap() -> None:
            self.exit_code = self.popen.wait()
            self.reaped()
            self.exited.set()
            if on_exit is not None:
                on_exit(self)

        threading.Thread(target=reap, name=f"corral-reaper-{self.pid}", daemon=True).start()

    def reaped(self) -> None:
        """What a subclass cleans up as soon as the child has exited (nothing here)."""

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    def output_tail(self) -> str:
        """The last lines the child wrote to its log since it was started."""
        return tail(self.log_file, self.log_offset)
