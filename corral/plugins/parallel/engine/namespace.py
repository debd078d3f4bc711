"""Functions shipped from a client's ``__main__`` run in the engine's user namespace.

cloudpickle ships a function defined interactively (in a script, a notebook cell, a
lambda) with a private globals dict holding only the names it used, as they were on the
client. Engines follow ipyparallel's rule instead: such a function sees the engine's user
namespace, so names pushed or executed there win and ``global x`` assigns an engine
variable. The shipped globals fill only the gaps (a helper, an import, a constant the
engine lacks), entering the namespace; a later shipment may refresh such a name as long
as nobody on the engine rebound it since.

The rule holds wherever a function arrives, not only for the function of an ``apply``:
the function a ``map`` ships as an argument of its chunk runner, functions passed as
arguments, pushed with ``view['f'] = f`` or sent over the data path, and helpers a
shipped function calls (which came along in its private globals). One class applies it
so that no entry point can forget it.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["Adopter"]

_MISSING = object()
_FunctionType = types.FunctionType


class Adopter:
    """Rebinds client ``__main__`` functions to one engine namespace.

    ``injected`` remembers which names a shipment brought in, so that a later shipment
    refreshes them but never overwrites a name the engine's own code set.
    """

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.injected: dict[str, Any] = {}

    def foreign(self, value: Any) -> bool:
        """Whether ``value`` is a client ``__main__`` function not yet bound here."""
        return (
            type(value) is _FunctionType
            and value.__module__ == "__main__"
            and value.__globals__ is not self.namespace
        )

    def function(self, func: types.FunctionType) -> types.FunctionType:
        """``func`` bound to the namespace (``func`` itself if it already is)."""
        if not self.foreign(func):
            return func
        return self._rebind(func, {})

    def value(self, value: Any) -> Any:
        """``value``, rebound if it is a foreign function (for pushed values)."""
        return self._rebind(value, {}) if self.foreign(value) else value

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Top-level arguments rebound (a map ships its function as one)."""
        foreign = self.foreign
        if any(foreign(a) for a in args):
            memo: dict[int, types.FunctionType] = {}
            args = tuple(self._rebind(a, memo) if foreign(a) else a for a in args)
        if kwargs and any(foreign(v) for v in kwargs.values()):
            memo = {}
            kwargs = {k: self._rebind(v, memo) if foreign(v) else v for k, v in kwargs.items()}
        return args, kwargs

    def _rebind(
        self, func: types.FunctionType, memo: dict[int, types.FunctionType]
    ) -> types.FunctionType:
        """A copy of ``func`` whose globals are the namespace; its shipped globals fill
        the gaps, foreign helpers among them rebound too (``memo`` ends recursion)."""
        done = memo.get(id(func))
        if done is not None:
            return done
        ns = self.namespace
        injected = self.injected
        replacement = types.FunctionType(
            func.__code__, ns, func.__name__, func.__defaults__, func.__closure__
        )
        memo[id(func)] = replacement
        replacement.__kwdefaults__ = func.__kwdefaults__
        replacement.__qualname__ = func.__qualname__
        replacement.__doc__ = func.__doc__
        replacement.__module__ = "__main__"
        if func.__dict__:
            replacement.__dict__.update(func.__dict__)
        for name, value in func.__globals__.items():
            if name[:2] == "__":
                continue
            current = ns.get(name, _MISSING)
            if current is _MISSING or current is injected.get(name, _MISSING):
                if self.foreign(value):
                    value = self._rebind(value, memo)
                ns[name] = value
                injected[name] = value
        return replacement
