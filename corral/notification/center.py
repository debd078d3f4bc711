"""The notification center: synchronous, typed notifications with O(1) dispatch.

Observers register a callback for one notification type or all (``None``) and for one
sender or all (``None``). ``post(type, sender, **info)`` calls every matching observer
as ``callback(type, sender, **info)``, in registration order.

Why it is built this way:

* Posting must be nearly free when nobody listens, because the interpreter posts on every
  write to stdout. So all the work happens when observers are added or removed: the center
  keeps a *route* per type with the merged, ordered observer tuples already computed, and a
  post is one dict lookup plus a loop over a tuple. A center with no observers at all swaps
  ``post`` for a do-nothing function, so it costs the same as calling an empty function.
* The commonest observed case, one function observing a type from every sender, has a dict
  of its own that ``post`` consults first: a hit is one lookup and the call, with no class
  tests (the unavoidable cost left is re-packing ``**info`` for the observer).
* Observers are added while other threads post: routes are replaced or mutated with single
  atomic dict/attribute stores under a writer lock, and readers only ever see complete
  tuples, so posting takes no lock.
* Bound methods are held weakly so a frontend object that goes away stops being called;
  plain functions (including lambdas) are held strongly so they are never lost silently.
* A sender-specific registration keeps the sender alive if it cannot be weakly referenced,
  and is dropped the moment a weakly referenced sender dies, so a recycled ``id()`` can
  never match a stale registration.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any

__all__ = ["NotificationCenter", "Observer", "shared_center"]

log = logging.getLogger("corral.notification")

#: An observer is called as ``callback(type, sender, **info)``.
Observer = Callable[..., Any]

# A registration as the hot path sees it: (function, weakref-to-self or None).
_Entry = tuple[Callable[..., Any], "weakref.ref[Any] | None"]
_Cell = tuple[_Entry, ...]


def _sender_key(sender: Any) -> Hashable:
    """Senders are matched by identity; strings by value, because they are names."""
    return sender if sender.__class__ is str else id(sender)


def _post_to_nobody(type: Hashable, sender: Any, /, **info: Any) -> None:
    """``post`` of a center without any observer: nothing to look up, nothing to do."""


class _Registration:
    """One ``add_observer`` call: what was registered, and in which order."""

    __slots__ = ("seq", "entry", "type", "skey")

    def __init__(self, seq: int, entry: _Entry, type: Hashable, skey: Hashable) -> None:
        self.seq = seq
        self.entry = entry
        self.type = type
        self.skey = skey

    def holds(self, callback: Observer) -> bool:
        func, ref = self.entry
        if ref is None:
            return func is callback or func == callback
        return (
            isinstance(callback, types.MethodType)
            and callback.__func__ is func
            and ref() is callback.__self__
        )


class _Route:
    """Everything a post of one type needs: observers for all senders, and per sender."""

    __slots__ = ("all_senders", "by_sender")

    def __init__(self) -> None:
        self.all_senders: _Cell = ()
        self.by_sender: dict[Hashable, _Cell] | None = None


class NotificationCenter:
    """Delivers typed notifications from senders to observers, synchronously.

    ``strict=True`` re-raises an observer's exception from ``post`` (for tests); by default
    it is logged with its traceback and the remaining observers still run.

    .. versionadded:: 0.1
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._lock = threading.Lock()
        self._seq = itertools.count()
        # (type, sender key) -> registrations in order; None stands for "all".
        self._registrations: dict[tuple[Hashable, Hashable], list[_Registration]] = {}
        # Sender key -> (reference keeping or watching the sender, number of registrations).
        self._senders: dict[Hashable, list[Any]] = {}
        # Indexes so that no change scans every registration: registrations per type, and
        # the senders with registrations of their own per type.
        self._type_counts: dict[Hashable, int] = {}
        self._type_senders_index: dict[Hashable, set[Hashable]] = {}
        # What post reads: per type, the lone strongly held function observing it from every
        # sender in _direct; else in _routes the observer tuple when no sender has observers
        # of its own, or the _Route. _route_objects holds every _Route for maintenance.
        self._direct: dict[Hashable, Callable[..., Any]] = {}
        self._routes: dict[Hashable, _Cell | _Route] = {}
        self._any_type_route: Callable[..., Any] | _Cell | _Route | None = None
        self._route_objects: dict[Hashable, _Route] = {}
        self._any_type_object: _Route | None = None
        self._dead: deque[tuple[str, Any]] = deque()
        self._self_ref = weakref.ref(self)
        self.post = _post_to_nobody  # type: ignore[method-assign]

    # ------------------------------------------------------------------ posting

    def post(self, type: Hashable, sender: Any, /, **info: Any) -> None:  # noqa: A002
        """Call every observer of ``type`` from ``sender`` as ``callback(type, sender, **info)``.

        The cost is one dict lookup when nobody observes this type (or this sender), however
        many observers are registered for other types and senders.
        """
        func = self._direct.get(type)
        if func is not None:
            try:
                func(type, sender, **info)
            except Exception:
                self._observer_failed(func, type, sender)
            return
        cell = self._routes.get(type, self._any_type_route)
        if cell is None:
            return
        if cell.__class__ is _Route:
            cell = cell.by_sender.get(  # type: ignore[union-attr]
                sender if sender.__class__ is str else id(sender), cell.all_senders
            )
        elif cell.__class__ is not tuple:
            # One function observing every type (a bare _any_type_route).
            try:
                cell(type, sender, **info)  # type: ignore[operator]
            except Exception:
                self._observer_failed(cell, type, sender)  # type: ignore[arg-type]
            return
        for func, ref in cell:
            try:
                if ref is None:
                    func(type, sender, **info)
                else:
                    owner = ref()
                    if owner is not None:
                        func(owner, type, sender, **info)
            except Exception:
                self._observer_failed(func, type, sender)

    def _observer_failed(self, func: Callable[..., Any], type: Hashable, sender: Any) -> None:  # noqa: A002
        """Log (or, when strict, re-raise) the exception an observer just raised."""
        if self.strict:
            raise
        log.exception(
            "observer %r of %r from %r raised; the other observers still run", func, type, sender
        )

    def has_observers(self, type: Hashable, sender: Any = None) -> bool:  # noqa: A002
        """Whether a post of ``type`` (from ``sender``, or from some sender) reaches anyone.

        Posters use this to skip building expensive ``info`` nobody would read.
        """
        route = self._route_objects.get(type, self._any_type_object)
        if route is None:
            return False
        if sender is None:
            return bool(route.all_senders) or bool(route.by_sender)
        if route.by_sender is None:
            return bool(route.all_senders)
        return bool(route.by_sender.get(_sender_key(sender), route.all_senders))

    # ------------------------------------------------------------ registration

    def add_observer(
        self,
        callback: Observer,
        type: Hashable = None,  # noqa: A002
        sender: Any = None,
    ) -> Observer:
        """Register ``callback`` for ``type`` (None: all) from ``sender`` (None: all).

        Adding the same callback for the same type and sender twice registers it once.
        Returns ``callback`` so the call can be used inline.
        """
        if not callable(callback):
            raise TypeError(f"observer must be callable, got {callback!r}")
        try:
            hash(type)
        except TypeError:
            raise TypeError(
                f"notification type must be hashable (a string, class or constant), got {type!r}"
            ) from None
        entry = self._make_entry(callback)
        skey = None if sender is None else _sender_key(sender)
        with self._lock:
            regs = self._registrations.setdefault((type, skey), [])
            if any(reg.holds(callback) for reg in regs):
                return callback
            if skey is not None:
                self._hold_sender(skey, sender)
            regs.append(_Registration(next(self._seq), entry, type, skey))
            self._type_counts[type] = self._type_counts.get(type, 0) + 1
            if skey is not None:
                self._type_senders_index.setdefault(type, set()).add(skey)
            self._recompute(type, skey)
            self._unsilence()
        self._drain_dead()
        return callback

    def remove_observer(
        self,
        callback: Observer,
        type: Hashable = None,  # noqa: A002
        sender: Any = None,
    ) -> bool:
        """Unregister ``callback`` for exactly this ``type`` and ``sender``.

        Returns False when it was not registered that way (nothing changes then).
        """
        skey = None if sender is None else _sender_key(sender)
        with self._lock:
            regs = self._registrations.get((type, skey), [])
            found = next((reg for reg in regs if reg.holds(callback)), None)
            if found is not None:
                self._drop(found)
        self._drain_dead()
        return found is not None

    def observer(self, type: Hashable = None, sender: Any = None) -> Callable[[Observer], Observer]:  # noqa: A002
        """Decorator form of :meth:`add_observer`: ``@center.observer("stream")``."""

        def register(callback: Observer) -> Observer:
            return self.add_observer(callback, type, sender)

        return register

    def clear(self) -> None:
        """Remove every observer."""
        with self._lock:
            self._registrations.clear()
            self._type_counts.clear()
            self._type_senders_index.clear()
            self._senders.clear()
            self._direct.clear()
            self._routes.clear()
            self._route_objects.clear()
            self._any_type_route = None
            self._any_type_object = None
            self.post = _post_to_nobody  # type: ignore[method-assign]

    def observer_count(self) -> int:
        """How many registrations are live (for diagnostics and tests)."""
        return sum(len(regs) for regs in self._registrations.values())

    # -------------------------------------------------------------- internals

    def _unsilence(self) -> None:
        """Let the class's ``post`` serve again, once there is an observer to reach.

        ``del`` rather than ``self.__dict__.pop``: touching ``__dict__`` turns the instance's
        compact attribute storage into a real dict, which makes every ``self.`` lookup in
        ``post`` slower (CPython 3.11+).
        """
        try:
            del self.post
        except AttributeError:
            pass  # already unsilenced

    def _make_entry(self, callback: Observer) -> _Entry:
        if isinstance(callback, types.MethodType):
            owner = callback.__self__
            center_ref = self._self_ref
            func = callback.__func__

            def owner_died(_ref: Any) -> None:
                center = center_ref()
                if center is not None:
                    center._dead.append(("observer", _ref))
                    center._drain_dead()

            try:
                return (func, weakref.ref(owner, owner_died))
            except TypeError:
                pass  # an owner without weakref support is held strongly, like a function
        return (callback, None)

    def _hold_sender(self, skey: Hashable, sender: Any) -> None:
        held = self._senders.get(skey)
        if held is not None:
            held[1] += 1
            return
        center_ref = self._self_ref
        if sender.__class__ is str:
            keeper: Any = sender
        else:
            try:

                def sender_died(_ref: Any, skey: Hashable = skey) -> None:
                    center = center_ref()
                    if center is not None:
                        center._dead.append(("sender", skey))
                        center._drain_dead()

                keeper = weakref.ref(sender, sender_died)
            except TypeError:
                keeper = sender  # kept alive, so its id() cannot be reused meanwhile
        self._senders[skey] = [keeper, 1]

    def _drop(self, reg: _Registration) -> None:
        """Remove one registration; the caller holds the lock."""
        key = (reg.type, reg.skey)
        regs = self._registrations[key]
        regs.remove(reg)
        if not regs:
            del self._registrations[key]
            if reg.skey is not None:
                senders = self._type_senders_index[reg.type]
                senders.discard(reg.skey)
                if not senders:
                    del self._type_senders_index[reg.type]
        self._type_counts[reg.type] -= 1
        if not self._type_counts[reg.type]:
            del self._type_counts[reg.type]
        if reg.skey is not None:
            held = self._senders[reg.skey]
            held[1] -= 1
            if held[1] == 0:
                del self._senders[reg.skey]
        self._recompute(reg.type, reg.skey)
        if not self._registrations:
            self.post = _post_to_nobody  # type: ignore[method-assign]

    def _drain_dead(self) -> None:
        """Drop registrations whose owner or sender died.

        Weakref callbacks can fire inside a modification (garbage collection runs at any
        allocation), so they only queue the death; whoever can take the lock drains it.
        """
        while self._dead:
            if not self._lock.acquire(blocking=False):
                return  # the holder drains after releasing
            try:
                while self._dead:
                    kind, what = self._dead.popleft()
                    for reg in self._registrations_of_dead(kind, what):
                        self._drop(reg)
            finally:
                self._lock.release()

    def _registrations_of_dead(self, kind: str, what: Any) -> list[_Registration]:
        lists: Iterator[list[_Registration] | tuple[()]]
        if kind == "sender":
            lists = (
                self._registrations.get((rtype, what), ()) for rtype in list(self._type_counts)
            )
        else:
            lists = iter(list(self._registrations.values()))
        return [
            reg
            for regs in lists
            for reg in regs
            if (reg.entry[1] is what if kind == "observer" else reg.skey == what)
        ]

    def _cell(self, type: Hashable, skey: Hashable) -> _Cell:  # noqa: A002
        """The ordered observers a post of ``type`` from sender ``skey`` reaches."""
        sources = [(type, skey), (type, None), (None, skey), (None, None)]
        lists = [
            self._registrations.get(source, ())
            for source in dict.fromkeys(sources)  # drop duplicates when type or skey is None
        ]
        merged = heapq.merge(*lists, key=lambda reg: reg.seq)
        return tuple(reg.entry for reg in merged)

    def _type_senders(self, type: Hashable) -> set[Hashable]:  # noqa: A002
        """Senders with a registration of their own that a post of ``type`` must consider."""
        own = self._type_senders_index.get(type, set())
        return own | self._type_senders_index.get(None, set()) if type is not None else set(own)

    def _rebuild_route(self, type: Hashable) -> _Route | None:  # noqa: A002
        """Compute a route from scratch (used when a route appears or a wildcard changes)."""
        if type is not None and type not in self._type_counts:
            return None
        route = _Route()
        route.all_senders = self._cell(type, None)
        senders = self._type_senders(type)
        if senders:
            route.by_sender = {skey: self._cell(type, skey) for skey in senders}
        if not route.all_senders and not route.by_sender:
            return None
        return route

    def _recompute(self, type: Hashable, skey: Hashable) -> None:  # noqa: A002
        """Refresh the routes a change to registrations of (type, skey) affects."""
        if type is None:
            # A wildcard-type observer reaches every route.
            self._any_type_object = route = self._rebuild_route(None)
            self._any_type_route = _published(route)
            for rtype in list(self._route_objects):
                self._set_route(rtype, self._rebuild_route(rtype))
            return
        route = self._route_objects.get(type)
        if (
            route is not None
            and skey is not None
            and route.by_sender is not None
            and ((type, skey) in self._registrations or (None, skey) in self._registrations)
        ):
            # Only one sender's cell changes: one atomic dict store, readers never wait.
            route.by_sender[skey] = self._cell(type, skey)
            return
        self._set_route(type, self._rebuild_route(type))

    def _set_route(self, type: Hashable, route: _Route | None) -> None:  # noqa: A002
        """Publish ``type``'s route where post reads it.

        The new entry is stored before the old one is removed, so a concurrent post sees
        either the old observers or the new ones, never none.
        """
        if route is None:
            self._direct.pop(type, None)
            self._routes.pop(type, None)
            self._route_objects.pop(type, None)
            return
        self._route_objects[type] = route
        published = _published(route)
        if isinstance(published, (tuple, _Route)):
            self._routes[type] = published
            self._direct.pop(type, None)
        elif published is not None:
            self._direct[type] = published
            self._routes.pop(type, None)


def _published(route: _Route | None) -> Callable[..., Any] | _Cell | _Route | None:
    """What post reads for a route: the bare tuple when no sender has observers of its own,
    and the bare function when that tuple holds one strongly held function."""
    if route is None or route.by_sender:
        return route
    cell = route.all_senders
    if len(cell) == 1 and cell[0][1] is None:
        return cell[0][0]
    return cell


#: The process-wide center the interpreter, the transports and plugins post to.
shared_center = NotificationCenter()
