"""Profiles: cluster directories holding a profile's config, keys, logs, pid files and data.

A profile ``NAME`` lives in ``$CORRAL_DIR/profile_NAME`` (``CORRAL_DIR`` defaults to
``~/.corral``) and holds ``corral.ini``, ``security/`` (0700: connection files and keys),
``log/``, ``run/`` (pid files) and ``db/`` (history and task databases).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from corral.core.private import private_dir
from corral.errors import CorralError

__all__ = ["base_dir", "profile_dir", "list_profiles", "locate_profile", "ProfileNotFound"]

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Every one owner-only: logs hold task output, db/ pickled results, security/ keys.
_SUBDIRS = ("security", "log", "run", "db")


class ProfileNotFound(CorralError, LookupError):
    """Raised when a profile is asked for by name but does not exist."""


def base_dir() -> Path:
    """The directory holding every profile: ``$CORRAL_DIR`` or ``~/.corral``."""
    configured = os.environ.get("CORRAL_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".corral"


def _check_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise ValueError(f"profile name {name!r} may hold only letters, digits, '_', '.' and '-'")
    return name


def profile_dir(name: str = "default", *, create: bool = True) -> Path:
    """The directory of profile ``name``, created with its subdirectories when missing.

    ``security/`` is always (re)set to mode 0700 because it holds signing keys.
    """
    path = base_dir() / f"profile_{_check_name(name)}"
    if not create:
        if not path.is_dir():
            raise ProfileNotFound(
                f"no profile {name!r} in {base_dir()} (create it with `corral profile create "
                f"{name}`)"
            )
        return path
    private_dir(path)
    for sub in _SUBDIRS:
        private_dir(path / sub)
    return path


def list_profiles() -> list[str]:
    """Names of the profiles that exist, sorted."""
    root = base_dir()
    if not root.is_dir():
        return []
    return sorted(p.name[len("profile_") :] for p in root.glob("profile_*") if p.is_dir())


def locate_profile(name: str = "default") -> Path:
    """The directory of an existing profile; :class:`ProfileNotFound` if there is none."""
    return profile_dir(name, create=False)
