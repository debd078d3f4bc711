"""Run a callback right after a given module is first imported, without importing it.

Why: the kernel must give code written for IPython what it expects (``IPython.get_ipython``
returning a shell, ``comm.create_comm`` making working comms, matplotlib's inline backend)
while keeping its own start lean. Importing IPython, comm or matplotlib up front would
cost far more than the rest of startup, so instead a tiny finder on ``sys.meta_path``
watches for the first import of those modules and adapts them the moment user code (or a
library it uses) imports them.

The finder only answers for watched names; for every other import it returns None after
one dict lookup. For a watched module it finds the real spec with the other finders and
wraps its loader so the callbacks run once the module has executed; the module's
``__loader__`` and ``__spec__.loader`` are then restored to the real loader.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["before_import", "when_imported"]

log = logging.getLogger("corral.core.import_hooks")

Callback = Callable[[ModuleType], None]

_after: dict[str, list[Callback]] = {}
_before: dict[str, list[Callable[[], None]]] = {}
_lock = threading.RLock()


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _after.setdefault(name, []).append(callback)
            _install()
            return
    _run(callback, module)


def before_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` just before ``name`` is first executed (never if it already was)."""
    with _lock:
        if name in sys.modules:
            return
        _before.setdefault(name, []).append(callback)
        _install()


def _run(callback: Callback, module: ModuleType) -> None:
    try:
        callback(module)
    except Exception:  # an adapter must never break the user's import
        log.exception("post-import hook for %s failed", module.__name__)


class _Loader:
    """Wraps the real loader of a watched module; runs the callbacks after it executed."""

    def __init__(self, real: Any, name: str) -> None:
        self.real = real
        self.name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.real.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.real
        if module.__spec__ is not None:
            module.__spec__.loader = self.real
        self.real.exec_module(module)
        with _lock:
            callbacks = _after.pop(self.name, [])
        for callback in callbacks:
            _run(callback, module)


class _Finder:
    """The ``sys.meta_path`` entry: answers only for watched module names."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name not in _after and name not in _before:
            return None
        with _lock:
            befores = _before.pop(name, [])
        for callback in befores:
            try:
                callback()
            except Exception:
                log.exception("pre-import hook for %s failed", name)
        if name not in _after:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)  # type: ignore[assignment]
                return spec
        return None


_finder = _Finder()


def _install() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
