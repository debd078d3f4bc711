"""Files and directories only their owner can read, whatever the process umask.

A cluster's profile holds pickled task results (the task database), logs with task
output, and the keys. A umask of 000 (some shared accounts and container images set it)
would make all of that world-readable if corral relied on the umask, so every path
corral creates goes through these helpers: created with the private mode from the start
(no window in which another user could open it) and ``chmod``-ed to it afterwards, since
``mkdir``/``open`` modes are filtered through the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "make_missing_dirs",
    "private_dir",
    "private_file",
    "private_parent",
    "runtime_dir",
    "write_private",
]

#: Directories: the owner may list, enter and create; nobody else anything.
DIR_MODE = 0o700
#: Files: the owner may read and write; nobody else anything.
FILE_MODE = 0o600


def make_missing_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create ``path`` and its missing parents with ``mode`` (not filtered by the umask:
    each is chmod-ed after it is made); existing ones stay as they are."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as an owner-only directory (created with its missing parents, which get
    the same mode; an existing ``path`` is tightened)."""
    path = Path(path)
    make_missing_dirs(path)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, DIR_MODE)
    return path


def private_parent(path: str | os.PathLike[str]) -> Path:
    """The directory of the file ``path``, what is missing of it created owner-only.

    Unlike :func:`private_dir`, an existing directory is left as it is: a file the user
    names may go into their working directory or a shared one. A directory corral makes
    for it (``Path.mkdir(parents=True)`` follows the umask: 0777 under ``umask 000``)
    would let another user replace the file, a key file among them, with their own.
    """
    parent = Path(path).parent
    make_missing_dirs(parent)
    return parent


def private_file(path: str | os.PathLike[str], mode: str = "ab") -> int:
    """An owner-only file opened for appending (``"ab"``) or truncated writing (``"wb"``):
    its file descriptor. The file's directory must exist."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to an owner-only file, replacing what was there."""
    with os.fdopen(private_file(path, "wb"), "wb") as fh:
        fh.write(text.encode("utf-8"))


def runtime_dir() -> Path:
    """``<tmp>/corral-<uid>``: the owner-only directory for sockets (created 0700).

    Refused (``PermissionError``) if another user owns it or it is open to others: they
    could otherwise replace a socket with their own. The same directory holds engines'
    same-host sockets and kernels' ipc sockets.
    """
    import stat

    base = "/tmp"
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value and os.path.isdir(value):
            base = value
            break
    root = Path(base) / f"corral-{os.getuid()}"
    try:
        os.mkdir(root, DIR_MODE)
    except FileExistsError:
        pass
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{root} is not a directory owned by this user")
    if info.st_mode & 0o077:
        raise PermissionError(f"{root} is open to other users (mode {info.st_mode & 0o777:o})")
    return root
