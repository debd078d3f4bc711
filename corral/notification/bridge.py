"""The bridge: forward chosen notifications to another process and re-post them there.

A :class:`BridgeSender` observes a center and sends each chosen notification through a
:class:`BridgeTransport`; a :class:`BridgeReceiver` in the other process takes them off the
transport and posts them into its own center. Observers over there cannot tell a bridged
notification from a local one, except that the sender is a string name
(:func:`~corral.notification.names.sender_name`) and ``info`` holds plain JSON values.

Why it is built this way:

* The wire format is JSON from the standard library: this package imports nothing of corral
  and nothing from outside, and what crosses processes must not be able to run code on the
  receiving side (so no pickle). Types that are not strings travel by declared name
  (:mod:`corral.notification.names`) and resolve only to objects declared in the receiver.
* ``info`` is validated *before* anything is sent, and a message is one ``send`` call, so
  a notification that cannot be carried raises :class:`BridgeError` in the posting process,
  naming the key, and nothing (not half a message) reaches the other side.
* The transport is an interface of three methods (:class:`BridgeTransport`). This
  package holds only the interface and :class:`InProcessTransport` (a queue pair, for
  tests and threads): sockets belong to the transport layer, which implements it twice —
  :class:`corral.transports.pipe.PipeTransport` (``multiprocessing.connection``, an
  authenticated Unix socket in a private directory) and
  :class:`corral.transports.zmq.bridge.ZmqBridgeTransport` (ZeroMQ over tcp or ipc,
  every message signed, across hosts).
* Receiving never trusts the other side: malformed messages are logged and dropped, and
  the receiver carries on.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol, runtime_checkable

from corral.errors import CorralError
from corral.notification.center import NotificationCenter, shared_center
from corral.notification.names import TypeRegistry, sender_name, shared_types

__all__ = [
    "BridgeError",
    "BridgeReceiver",
    "BridgeSender",
    "BridgeTransport",
    "InProcessTransport",
    "decode_notification",
    "encode_notification",
    "repost",
]

log = logging.getLogger("corral.notification.bridge")

#: Version of the message layout; a receiver drops messages of any other version.
WIRE_VERSION = 1
_FIELDS = frozenset({"v", "type", "declared", "sender", "info"})


class BridgeError(CorralError, TypeError):
    """A notification cannot cross the bridge: its type has no name or its info is not JSON.

    A ``TypeError`` because the caller passed a value of the wrong kind; raised in the
    sending process, where the mistake can still be fixed.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------- codec


def _describe(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_json(value: Any, path: str, active: set[int]) -> str | None:
    """Why ``value`` (found at ``path``) cannot travel as JSON unchanged, or None if it can.

    Stricter than ``json.dumps``, which silently turns ``{1: x}`` into ``{"1": x}``: a
    key that would arrive as something else is refused. Tuples are allowed and arrive as
    lists, because that is the one lossy conversion users expect from JSON.
    """
    if value is None or isinstance(value, (str, int, float)):
        return None
    if isinstance(value, (list, tuple, dict)):
        if id(value) in active:
            return f"{path} refers back to itself, which JSON cannot carry"
        active.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        return (
                            f"{path} has the key {key!r} of type {_describe(key)}; "
                            f"JSON object keys must be str"
                        )
                    problem = _check_json(item, f"{path}[{key!r}]", active)
                    if problem:
                        return problem
            else:
                for index, item in enumerate(value):
                    problem = _check_json(item, f"{path}[{index}]", active)
                    if problem:
                        return problem
        finally:
            active.discard(id(value))
        return None
    return f"{path} is a {_describe(value)}, which JSON cannot carry"


def encode_notification(
    type: Hashable,  # noqa: A002
    sender: Any,
    info: dict[str, Any],
    registry: TypeRegistry = shared_types,
) -> bytes:
    """One notification as one wire message (UTF-8 JSON).

    Raises :class:`BridgeError` when the type has no wire name or ``info`` holds anything
    but ``None``, ``bool``, ``int``, ``float``, ``str``, lists/tuples and str-keyed dicts
    of those; the message names the notification and the offending key.
    """
    try:
        name = registry.name(type)
    except TypeError as exc:
        raise BridgeError(str(exc)) from None
    sname = sender_name(sender)
    try:
        problem = _check_json(info, "info", set())
    except RecursionError:
        problem = "info is nested too deeply for JSON"
    if problem:
        raise BridgeError(
            f"cannot forward notification {name!r} from {sname!r}: {problem}; "
            f"convert it to str, int, float, bool, None, lists or str-keyed dicts first"
        )
    message = {
        "v": WIRE_VERSION,
        "type": name,
        "declared": not isinstance(type, str),
        "sender": sname,
        "info": info,
    }
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def decode_notification(
    data: bytes, registry: TypeRegistry = shared_types
) -> tuple[Hashable, str | None, dict[str, Any]]:
    """``(type, sender, info)`` from one wire message.

    Raises ``ValueError`` (with the reason) for anything that is not exactly a message
    :func:`encode_notification` could have produced, and ``LookupError`` for a declared
    type this process does not know.
    """
    try:
        message = json.loads(data)
    except RecursionError:
        raise ValueError("message nested too deeply") from None
    if not isinstance(message, dict):
        raise ValueError(f"message is a JSON {type(message).__name__}, not an object")
    if message.keys() != _FIELDS:
        raise ValueError(f"message has fields {sorted(message)}, expected {sorted(_FIELDS)}")
    version, name, declared = message["v"], message["type"], message["declared"]
    sender, info = message["sender"], message["info"]
    if version != WIRE_VERSION or isinstance(version, bool):
        raise ValueError(f"message version {version!r} is not {WIRE_VERSION}")
    if not isinstance(name, str) or not isinstance(declared, bool):
        raise ValueError("message type must be a string and declared a boolean")
    if sender is not None and not isinstance(sender, str):
        raise ValueError(f"message sender must be a string or null, got {sender!r}")
    if not isinstance(info, dict):
        raise ValueError(f"message info must be an object, got {info!r}")
    return (registry.resolve(name) if declared else name), sender, info


# ------------------------------------------------------------------- transports


@runtime_checkable
class BridgeTransport(Protocol):
    """Moves whole messages (bytes) to one peer and back.

    ``send`` delivers one message atomically and in order, or raises ``OSError``.
    ``recv(timeout)`` returns the next message, or ``None`` when ``timeout`` seconds pass
    without one (``None`` waits for ever, ``0`` only looks); it raises ``EOFError`` once the
    peer has gone away (after every message it sent) or this end was closed. ``close`` may
    be called from any thread and more than once, and wakes a ``recv`` blocked on this end.

    .. versionadded:: 0.1
    """

    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float | None) -> bytes | None: ...

    def close(self) -> None: ...


_EOF = object()


class InProcessTransport:
    """One end of a queue pair: a transport between threads of one process.

    Useful for tests and to put a thread behind the same interface as a process.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._peer: InProcessTransport | None = None
        self._closed = False
        self._eof = False

    @classmethod
    def pair(cls) -> tuple[InProcessTransport, InProcessTransport]:
        """Two connected ends: what one sends, the other receives."""
        a, b = cls(), cls()
        a._peer, b._peer = b, a
        return a, b

    def send(self, data: bytes) -> None:
        peer = self._peer
        if self._closed or peer is None:
            raise OSError("transport is closed")
        if peer._closed:
            raise BrokenPipeError("the other end of the transport is closed")
        peer._inbox.put(bytes(data))

    def recv(self, timeout: float | None) -> bytes | None:
        if self._eof:
            raise EOFError("transport is closed")
        try:
            if timeout is not None and timeout <= 0:
                item = self._inbox.get_nowait()
            else:
                item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _EOF:
            self._eof = True
            raise EOFError("transport is closed")
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_EOF)  # wakes our own blocked recv
        if self._peer is not None:
            self._peer._inbox.put(_EOF)  # the peer reads what we sent, then EOF

    def __enter__(self) -> InProcessTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------- loop prevention

# The notification a receiver is re-posting right now, per thread. A sender skips exactly
# that notification (same type, sender object and info values), so a bridge that forwards
# everything does not echo what came from the other side, while notifications that
# observers post *in reaction* (in the same thread) still go out.
_reposting = threading.local()


def _is_reposted(type: Hashable, sender: Any, info: dict[str, Any]) -> bool:  # noqa: A002
    frame = getattr(_reposting, "frame", None)
    if frame is None:
        return False
    ftype, fsender, finfo = frame
    return (
        sender is fsender
        and type == ftype
        and len(info) == len(finfo)
        and all(key in info and info[key] is value for key, value in finfo.items())
    )


def repost(
    data: bytes, center: NotificationCenter = shared_center, registry: TypeRegistry = shared_types
) -> None:
    """Post one wire message into ``center``, marked as re-posted (no sender echoes it).

    What a :class:`BridgeReceiver` does per message, for a process that already reads the
    transport in a loop of its own (a client's I/O thread). Raises like
    :func:`decode_notification`; nothing is posted then.
    """
    type_, sender, info = decode_notification(data, registry)
    previous = getattr(_reposting, "frame", None)
    _reposting.frame = (type_, sender, info)
    try:
        center.post(type_, sender, **info)
    finally:
        _reposting.frame = previous


# ------------------------------------------------------------------ the bridge


class BridgeSender:
    """Forwards chosen notifications from ``center`` through ``transport``.

    ``types`` lists the notification types to forward; ``None`` forwards every type that
    has a wire name (string types, and declared ones; other types are skipped with one
    warning each). Listed types must have a name, or the constructor raises
    :class:`BridgeError`.

    Notifications that a :class:`BridgeReceiver` in this process is re-posting are not sent
    on, so two bridges in opposite directions do not echo each other; pass ``relay=True`` to
    forward them too (a hub passing notifications from one process on to another).
    ``sender`` (None: any) forwards only what that object posts: a component whose
    transport is one thread's socket forwards its own posts, never another thread's.

    When a forwarded notification cannot be encoded, the observer raises
    :class:`BridgeError` inside ``post``: a strict center re-raises it to the poster, the
    default center logs it with its traceback. Either way nothing is sent. Use
    :meth:`forward` to get the error directly.

    The observer is held strongly (unlike a bound method), so a sender nobody refers to
    keeps forwarding until :meth:`close`. The transport belongs to the caller.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        transport: BridgeTransport,
        center: NotificationCenter = shared_center,
        types: Iterable[Hashable] | None = None,
        *,
        relay: bool = False,
        registry: TypeRegistry = shared_types,
        sender: Any = None,
    ) -> None:
        self.transport = transport
        self.center = center
        self.relay = relay
        self.sender = sender
        self.registry = registry
        #: How many notifications have been sent.
        self.sent = 0
        self._lock = threading.Lock()
        self._closed = False
        self._warned: set[Hashable] = set()
        self.types: tuple[Hashable, ...] | None = None if types is None else tuple(types)
        for type_ in self.types or ():
            try:
                registry.name(type_)
            except TypeError as exc:
                raise BridgeError(str(exc)) from None
        # A closure, not a bound method: the center would hold a method only weakly.
        self._observer = self._make_observer()
        for type_ in self.types if self.types is not None else (None,):
            center.add_observer(self._observer, type_, sender)

    def _make_observer(self) -> Callable[..., None]:
        def forward_posted(type: Hashable, sender: Any, /, **info: Any) -> None:  # noqa: A002
            if self._closed or (not self.relay and _is_reposted(type, sender, info)):
                return
            if self.types is None and not isinstance(type, str) and type not in self.registry:
                if type not in self._warned:
                    self._warned.add(type)
                    log.warning("not forwarding notification type %r: it has no wire name", type)
                return
            self._send(encode_notification(type, sender, info, self.registry))

        return forward_posted

    def forward(self, type: Hashable, sender: Any, /, **info: Any) -> None:  # noqa: A002
        """Send one notification now, whether or not it is posted; raises
        :class:`BridgeError` if it cannot be encoded, ``OSError`` if it cannot be sent."""
        if self._closed:
            raise OSError("bridge sender is closed")
        self._send(encode_notification(type, sender, info, self.registry))

    def _send(self, data: bytes) -> None:
        with self._lock:  # one message at a time, whichever threads post
            self.transport.send(data)
            self.sent += 1

    def close(self) -> None:
        """Stop forwarding (the transport stays open; its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        for type_ in self.types if self.types is not None else (None,):
            self.center.remove_observer(self._observer, type_, self.sender)

    def __enter__(self) -> BridgeSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BridgeReceiver:
    """Receives notifications from ``transport`` and posts them into ``center``.

    With ``start=True`` (the default) a daemon thread does this until :meth:`close` or until
    the other end goes away; observers then run in that thread. With ``start=False``, call
    :meth:`pump` from a thread of your own (single-threaded programs, tests).

    Messages that are not valid notifications, or name a type not declared in
    ``registry``, are logged, counted in :attr:`dropped` and skipped.

    .. versionadded:: 0.1
    """

    #: How often the thread looks at its stop flag if the transport cannot be woken.
    poll_interval = 0.2

    def __init__(
        self,
        transport: BridgeTransport,
        center: NotificationCenter = shared_center,
        *,
        registry: TypeRegistry = shared_types,
        start: bool = True,
    ) -> None:
        self.transport = transport
        self.center = center
        self.registry = registry
        #: Notifications posted into the center.
        self.received = 0
        #: Messages dropped as malformed or of an unknown type.
        self.dropped = 0
        #: Set when receiving has ended: closed, or the other end went away.
        self.stopped = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name="corral-bridge-receiver", daemon=True
            )
            self._thread.start()

    def pump(self, timeout: float | None = 0.0) -> int:
        """Wait up to ``timeout`` seconds for a message, then handle it and every message
        already waiting; return how many notifications were posted.

        An observer's exception propagates if the center is strict. When the other end has
        gone away, :attr:`stopped` is set and the count so far is returned.
        """
        if self._thread is not None:
            raise RuntimeError("this receiver runs its own thread; pump() would race it")
        posted = 0
        wait_for: float | None = timeout
        while not self.stopped.is_set():
            try:
                data = self.transport.recv(wait_for)
            except EOFError:
                self.stopped.set()
                break
            if data is None:
                break
            posted += self._handle(data)
            wait_for = 0.0
        return posted

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = self.transport.recv(self.poll_interval)
                except EOFError:
                    break
                except OSError as exc:
                    if not self._stop.is_set():
                        log.warning("bridge receiver stops: %s", exc)
                    break
                if data is None:
                    continue
                try:
                    self._handle(data)
                except Exception:  # a strict center re-raised; this thread must go on
                    log.exception("observer of a bridged notification raised")
        finally:
            self.stopped.set()

    def _handle(self, data: bytes) -> int:
        try:
            repost(data, self.center, self.registry)
        except (ValueError, LookupError) as exc:
            self.dropped += 1
            log.warning("bridge dropped a message (%s): %.200r", exc, data)
            return 0
        self.received += 1
        return 1

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop receiving and wait (up to ``timeout``) for the thread to end.

        The transport stays open: close it afterwards (closing it first also stops the
        thread, since ``recv`` then raises ``EOFError``).
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            self.stopped.set()

    def __enter__(self) -> BridgeReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
