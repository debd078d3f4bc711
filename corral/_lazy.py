"""Lazy re-exports: a package names its public API in one table and imports each name on
first use.

``import corral`` (and the ``plugins`` and ``client`` packages) must stay cheap for the
processes that need only part of the API, kernels and engines above all; so their
``__init__`` modules hold a table ``{name: module}`` and hand it to :func:`lazy_exports`
for their ``__getattr__`` and ``__dir__`` (PEP 562). Editors and type checkers see the same
names through imports under ``if TYPE_CHECKING:`` next to the table.

This module imports nothing of corral, so any layer may use it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], *, also: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, resolving each name of ``exports`` from
    its module (absolute, or relative to ``package``) on first access. The value is then
    stored in the package's namespace, so the next access costs a plain lookup. ``also``
    adds names defined in the package itself to ``__dir__``.
    """
    names = sorted({*exports, *also})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__
