"""Pickle a by-value function once, not once per task.

A function defined in ``__main__`` (or a lambda, or a closure) cannot be imported by an
engine, so cloudpickle sends its code and the globals it uses; that costs ~20 us, more
than everything else a client does for a no-op task. Submitting the same function ten
thousand times should not pay it ten thousand times.

Caching is only safe when the pickle cannot go stale, because cloudpickle snapshots the
*current* values of the globals a function uses. So a function is cached only if it has
no closure and every global it names is, at each call, the very same object as when it
was pickled and of a kind that cannot change behind our back: modules, classes and
functions importable by name, builtins, and immutable scalars. Anything else (a list, a
dict, a helper defined in ``__main__``, a closure cell) is pickled afresh every time,
exactly as without the cache.

The cached pickle travels as a tiny stand-in object whose ``__reduce__`` hands back the
stored bytes, so the engine unpickles the function as usual: the format on the wire is
unchanged.
"""

from __future__ import annotations

import linecache
import re
import sys
import types
from collections.abc import Callable
from typing import Any

from corral.core import serialize

__all__ = ["FunctionCache", "attach_source"]

_MAX_ENTRIES = 256


class _Pickled:
    """Stands in for a function in an apply request; unpickles as the function."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pack_apply checks callable()
        raise TypeError("a pickled stand-in is not meant to be called locally")

    def __reduce__(self) -> tuple[Any, ...]:
        return serialize._load_by_value, (self.blob,)


def _names(code: types.CodeType) -> set[str]:
    """Global names a code object (and the code nested in it) may look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class _Entry:
    __slots__ = ("func", "names", "snapshot", "stand_in")

    def __init__(
        self, func: Any, names: tuple[str, ...], snapshot: tuple[int, ...], stand_in: _Pickled
    ) -> None:
        self.func = func  # keeps id(func) from being reused while cached
        self.names = names
        self.snapshot = snapshot
        self.stand_in = stand_in


class FunctionCache:
    """Hands out cached stand-ins for by-value functions whose pickle cannot go stale."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def lookup(self, func: Callable[..., Any]) -> Any:
        """``func`` itself, or a stand-in carrying its cached pickle."""
        if type(func) is not types.FunctionType:
            return func
        entry = self._entries.get(id(func))
        if entry is not None and entry.func is func:
            ns = func.__globals__
            current = tuple(id(ns.get(name, _MISSING)) for name in entry.names)
            if current == entry.snapshot:
                return entry.stand_in
            del self._entries[id(func)]
        return self._add(func)

    def _add(self, func: types.FunctionType) -> Any:
        if func.__module__ == "__main__" and "__corral_source__" not in func.__dict__:
            attach_source(func)
        if func.__closure__ or func.__defaults__ or func.__kwdefaults__:
            return func
        if serialize._pickles_by_reference(func):
            return func  # already cheap: pickled by name
        ns = func.__globals__
        names = tuple(sorted(n for n in _names(func.__code__) if n in ns))
        values = [ns[n] for n in names]
        if not all(serialize.stable_global(v) for v in values):
            return func
        try:
            frames = serialize.serialize(func)
        except serialize.SerializationError:
            return func  # let pack_apply report it, naming the argument
        if len(frames) != 1:
            return func  # out-of-band buffers cannot be replayed from a cache
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        stand_in = _Pickled(bytes(frames[0]))
        snapshot = tuple(id(v) for v in values)
        self._entries[id(func)] = _Entry(func, names, snapshot, stand_in)
        return stand_in


_MISSING = object()


def _line_range(code: types.CodeType) -> tuple[int, int]:
    numbers = [code.co_firstlineno]
    for one in _all_codes(code):
        numbers.extend(n for _, _, n in one.co_lines() if n is not None)
    return min(numbers), max(numbers)


def _all_codes(code: types.CodeType) -> list[types.CodeType]:
    out = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out.extend(_all_codes(const))
    return out


#: IPython's name for a terminal cell's code: ``<ipython-input-N-HASH>``.
_IPYTHON_INPUT = re.compile(r"^<ipython-input-(\d+)-[0-9a-f]+>$")


def _cell_filename(filename: str) -> str:
    """``<cell-N>`` (which engines show as ``Cell In[N]``, as IPython does here) for the
    file name of an IPython cell of this process, else ``filename``.

    A cell's code is named ``<ipython-input-N-HASH>`` in a terminal and a temporary file
    in ipykernel; only this process's IPython knows which cell such a file is, so the
    name is translated before it travels. IPython is consulted only if already imported.
    """
    match = _IPYTHON_INPUT.match(filename)
    if match:
        return f"<cell-{match.group(1)}>"
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    name_of = getattr(getattr(shell, "compile", None), "format_code_name", None)
    try:
        named = name_of(filename) if callable(name_of) else None  # ("Cell", "In[N]")
    except Exception:  # an IPython of another shape: keep the file name
        return filename
    number = re.fullmatch(r"In\[(\d+)\]", named[1]) if isinstance(named, tuple) else None
    return f"<cell-{number.group(1)}>" if number else filename


def attach_source(func: types.FunctionType, _depth: int = 0) -> None:
    """Give a ``__main__`` function (and the ``__main__`` helpers it calls) its own source
    lines, ``__corral_source__ = (filename, first line, lines)``, so that an engine's
    traceback can name the file (or notebook cell) and show the failing line: cloudpickle
    ships code without its file name. Done once per function object (the attribute
    stays), and only its own lines travel.
    """
    code = func.__code__
    filename = code.co_filename
    lines = linecache.getlines(filename)
    source = None
    if lines:
        first, last = _line_range(code)
        if 1 <= first <= last <= len(lines):
            source = (_cell_filename(filename), first, lines[first - 1 : last])
    try:
        func.__corral_source__ = source  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return
    if _depth > 0:
        return
    ns = func.__globals__
    for name in _names(code):
        helper = ns.get(name)
        if (
            type(helper) is types.FunctionType
            and helper.__module__ == "__main__"
            and "__corral_source__" not in helper.__dict__
        ):
            attach_source(helper, _depth + 1)
