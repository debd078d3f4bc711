"""Code that a ``KeyboardInterrupt`` must not tear, declared by the code itself.

A server turns ``SIGINT`` into ``KeyboardInterrupt`` in the main thread while user code
runs. If the signal lands while that thread is inside the transport (user code printing:
a post, an output lock, a multipart send), raising there could leave half a message in a
socket or a lock held forever. So the server asks :func:`is_protected` about the frame the
signal interrupted, and re-sends the interrupt a moment later if it is protected.

Which code is protected is declared where that code lives, by :func:`protect` at import
(as :func:`corral.core.tracebacks.hide_from_tracebacks` is), so moving or renaming a file
moves its protection with it: no list of other layers' paths to keep in step.

The bus (:mod:`corral.notification`) imports nothing of corral, so it cannot declare
itself: this module, one layer above, protects it on its behalf, finding it without
importing it (a kernel's startup does not need the bus yet).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from types import FrameType

__all__ = ["is_protected", "protect", "protected_regions"]

#: Path prefixes (files, or directories ending in a separator). A tuple, because
#: ``str.startswith(tuple)`` is the whole cost of a check in the signal handler.
_regions: tuple[str, ...] = ()


def protect(path: str) -> None:
    """Declare the module ``path`` (a ``__file__``) or every file under a directory as a
    region a ``KeyboardInterrupt`` must not tear. Idempotent."""
    global _regions
    path = os.path.abspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "")  # "/a/b/" must not cover "/a/bc.py"
    if path not in _regions:
        _regions = (*_regions, path)


def is_protected(frame: FrameType | None) -> bool:
    """Whether the code running in ``frame`` (a signal handler's frame) is protected."""
    return frame is not None and frame.f_code.co_filename.startswith(_regions)


def protected_regions() -> tuple[str, ...]:
    """The regions declared so far (for tests and diagnostics)."""
    return _regions


def _bus_directory() -> str:
    spec = find_spec("corral.notification")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("corral.notification not found")
    return list(spec.submodule_search_locations)[0]


protect(_bus_directory())
