"""ipyparallel's ``ipyparallel.error`` module, for scripts that import it by that path.

``from ipyparallel.error import CompositeError`` becomes ``from corral.error import
CompositeError`` (and ``ipp.error.RemoteError`` works after ``import corral as ipp``).
The classes are corral's own (:mod:`corral.plugins.parallel.client.errors`); this module
only adds ipyparallel's helper functions and two names corral has no separate class for:

* ``IPythonError`` is :class:`KernelError`, the root of every error about remote work
  (ipyparallel puts one more class above it that nothing else raises);
* :class:`AlreadyDisplayedError` is what ``%px`` raises when the remote errors were
  already shown with the cell's outputs.

.. versionadded:: 0.2
"""

from __future__ import annotations

import sys
import traceback as _traceback
from collections.abc import Iterable, Mapping
from typing import Any

from corral.plugins.parallel.client.errors import (
    CompositeError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    KernelError,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
    TimeoutError,
    UnmetDependency,
    error_from_content,
)

__all__ = [
    "AlreadyDisplayedError",
    "CompositeError",
    "DependencyTimeout",
    "EngineError",
    "IPythonError",
    "ImpossibleDependency",
    "InvalidDependency",
    "KernelError",
    "NoEnginesRegistered",
    "RemoteError",
    "TaskAborted",
    "TaskRejectError",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "collect_exceptions",
    "unwrap_exception",
    "wrap_exception",
]

#: ipyparallel's root class; in corral the root of remote-work errors is KernelError.
IPythonError = KernelError


class AlreadyDisplayedError(RemoteError):
    """Remote errors that were already displayed (``%px`` shows them with the outputs).

    Wraps the original :class:`RemoteError` (or :class:`CompositeError`) as ``original``.

    .. versionadded:: 0.2
    """

    def __init__(self, original: RemoteError) -> None:
        super().__init__(original.ename, original.evalue, original.traceback, original.engine_id)
        self.original = original
        self.errors = getattr(original, "errors", [original])

    def __str__(self) -> str:
        count = len(self.errors)
        return f"{count} error{'s' if count != 1 else ''} already displayed"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        return [str(self)]


def collect_exceptions(results: Mapping[Any, Any] | Iterable[Any], method: str = "") -> Any:
    """``results`` unchanged if none is a :class:`RemoteError`, else raise them all as one
    :class:`CompositeError` (one error alone is raised as itself, as ipyparallel does
    since 7.0)."""
    values = list(results.values()) if isinstance(results, Mapping) else list(results)
    errors: list[RemoteError] = []
    for value in values:
        if isinstance(value, CompositeError):
            errors.extend(value.errors)
        elif isinstance(value, RemoteError):
            errors.append(value)
    if not errors:
        return results
    if len(errors) == 1:
        raise errors[0]
    raise CompositeError(errors)


def wrap_exception(engine_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The exception being handled, as a failed reply's content (``ename``, ``evalue``,
    ``traceback`` as a list of lines, ``engine_info``)."""
    etype, evalue, tb = sys.exc_info()
    if etype is None:
        raise RuntimeError("wrap_exception() is called while handling an exception")
    return {
        "status": "error",
        "ename": etype.__name__,
        "evalue": str(evalue),
        "traceback": _traceback.format_exception(etype, evalue, tb),
        "engine_info": dict(engine_info or {}),
    }


def unwrap_exception(content: Mapping[str, Any]) -> RemoteError:
    """The :class:`RemoteError` (or subclass) a failed reply's content describes."""
    return error_from_content(content)
