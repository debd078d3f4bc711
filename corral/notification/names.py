"""Stable string names for senders and notification types, for the bridge's wire.

Inside one process the center matches senders by identity and types by equality, so any
object will do. Another process has none of those objects: what crosses the boundary must
be a name both sides agree on. This module holds the naming rules, kept apart from the
bridge so that every transport (the stdlib pipes here, ZeroMQ in ``corral.transports``)
names things the same way.

* A **sender** is named by :func:`sender_name`. Names are descriptive, not unique: two
  objects of one class share a name unless they carry a ``notification_name`` of their
  own. A sender that needs to be told apart in another process sets ``notification_name``.
* A **type** that is a string is its own name. Any other type (a class, an enum member, a
  sentinel) must be declared with :func:`declare_type` in *both* processes, under the same
  name: the receiving side resolves names only to objects it was told about, so a message
  can never make it import a module or build an object.

.. versionadded:: 0.1
"""

from __future__ import annotations

import enum
import threading
import types
from collections.abc import Hashable
from typing import Any

__all__ = [
    "TypeRegistry",
    "declare_type",
    "resolve_type",
    "sender_name",
    "shared_types",
    "type_name",
]


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def sender_name(sender: Any) -> str | None:
    """The stable string that stands for ``sender`` in another process.

    * ``None`` stays ``None`` (an anonymous notification stays anonymous);
    * a string is already a name and stays itself;
    * an object whose ``notification_name`` is a string uses it (set it on instances that
      must be told apart remotely, e.g. ``"engine-3"``);
    * a module is named by its ``__name__``; a class or function by ``module.qualname``;
    * any other object by ``module.qualname`` of its class, so instances of one class
      share a name.

    .. versionadded:: 0.1
    """
    if sender is None or sender.__class__ is str:
        return sender
    if isinstance(sender, str):
        return str(sender)  # a str subclass: send the plain value
    name = getattr(sender, "notification_name", None)
    if isinstance(name, str):
        return str(name)
    if isinstance(sender, types.ModuleType):
        return sender.__name__
    if isinstance(sender, (type, types.FunctionType, types.BuiltinFunctionType)):
        return _qualified(sender)
    return _qualified(type(sender))


def _default_type_name(obj: Hashable) -> str | None:
    """The name a type gets when declared without one, or None if there is no good one."""
    if isinstance(obj, enum.Enum):
        return f"{_qualified(type(obj))}.{obj.name}"
    if isinstance(obj, (type, types.FunctionType)):
        return _qualified(obj)
    return None


class TypeRegistry:
    """Two-way mapping between non-string notification types and their wire names.

    A process normally uses :data:`shared_types` (plugins declare their types into it
    through a hook); tests and embedders can keep a registry of their own and hand it to
    the bridge. Thread-safe: declarations may happen while other threads forward.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[Hashable, str] = {}
        self._objects: dict[str, Hashable] = {}

    def declare(self, obj: Hashable, name: str | None = None) -> str:
        """Give ``obj`` the wire name ``name`` (default: ``module.qualname``) and return it.

        Declaring the same object under the same name again is harmless, so a module can
        declare at import time. A name already taken by another object, or a second name
        for one object, is a ``ValueError``: silently rebinding would deliver notifications
        as the wrong type in the other process.
        """
        if isinstance(obj, str):
            raise TypeError(f"string notification types are their own names; got {obj!r}")
        try:
            hash(obj)
        except TypeError:
            raise TypeError(f"notification types must be hashable, got {obj!r}") from None
        if name is None:
            name = _default_type_name(obj)
            if name is None:
                raise TypeError(
                    f"notification type {obj!r} has no qualified name; "
                    f"declare it with an explicit name: declare_type(obj, name='...')"
                )
        elif not isinstance(name, str) or not name:
            raise TypeError(f"a notification type name must be a non-empty str, got {name!r}")
        with self._lock:
            old_name = self._names.get(obj)
            old_obj = self._objects.get(name, obj)
            if old_name is not None and old_name != name:
                raise ValueError(f"notification type {obj!r} is already declared as {old_name!r}")
            if old_obj is not obj and old_obj != obj:
                raise ValueError(f"the name {name!r} is already declared for {old_obj!r}")
            self._names[obj] = name
            self._objects[name] = obj
        return name

    def forget(self, obj: Hashable) -> None:
        """Withdraw a declaration (for plugins being unloaded, and tests)."""
        with self._lock:
            name = self._names.pop(obj, None)
            if name is not None:
                del self._objects[name]

    def name(self, obj: Hashable) -> str:
        """The wire name of type ``obj``: a string is itself, anything else as declared.

        Raises ``TypeError`` naming the type and how to declare it, so the mistake shows
        up at the sending side and not as a mystery drop in the other process.
        """
        if isinstance(obj, str):
            return str(obj)
        try:
            return self._names[obj]
        except (KeyError, TypeError):
            raise TypeError(
                f"notification type {obj!r} has no name for other processes; declare it in "
                f"both processes with corral.notification.names.declare_type({obj!r}, "
                f"name=...) (plugins: from their corral hook), or post a string type"
            ) from None

    def resolve(self, name: str) -> Hashable:
        """The object declared under ``name``; ``LookupError`` if this process has none."""
        try:
            return self._objects[name]
        except KeyError:
            raise LookupError(
                f"no notification type is declared as {name!r} in this process"
            ) from None

    def __contains__(self, obj: object) -> bool:
        try:
            return obj in self._names
        except TypeError:
            return False


#: The process-wide registry the bridge uses unless it is given another one.
shared_types = TypeRegistry()


def declare_type(obj: Hashable, name: str | None = None) -> str:
    """Declare a non-string notification type in :data:`shared_types`; see
    :meth:`TypeRegistry.declare`.

    .. versionadded:: 0.1
    """
    return shared_types.declare(obj, name)


def type_name(obj: Hashable) -> str:
    """The wire name of a notification type in :data:`shared_types`; see
    :meth:`TypeRegistry.name`.

    .. versionadded:: 0.1
    """
    return shared_types.name(obj)


def resolve_type(name: str) -> Hashable:
    """The type declared as ``name`` in :data:`shared_types`; see :meth:`TypeRegistry.resolve`.

    .. versionadded:: 0.1
    """
    return shared_types.resolve(name)
