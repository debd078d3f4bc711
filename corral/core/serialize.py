"""Zero-copy serialization of task functions, arguments and results.

Objects travel between client, controller and engines as a list of frames: frame 0 is a
pickle (protocol 5) and every further frame is an out-of-band buffer that pickle refers to.
The controller routes those frames without ever unpickling them, so a 1 GB array is never
copied on its way through.

How an object is pickled, and why:

* **The standard C pickler first.** It is the fastest pickler there is and handles almost
  every value a task carries. numpy arrays (and anything else whose ``__reduce_ex__(5)``
  returns a :class:`pickle.PickleBuffer`) hand their memory to ``buffer_callback``; buffers
  of at least ``threshold`` bytes become frames that are memoryviews onto the original
  memory, smaller ones stay inline.
* **cloudpickle only for what pickle would get wrong.** ``reducer_override`` sees every
  function and class; those that the receiving process could not import by name (lambdas,
  closures, anything defined in ``__main__`` or inside a function, modules registered with
  ``cloudpickle.register_pickle_by_value``) are pickled *by value* by cloudpickle, nested in
  the outer pickle and sharing its out-of-band buffers. cloudpickle is imported the first
  time that happens, so ``import corral`` stays cheap. Measured (``benchmarks/serialize.py``):
  on tiny task tuples a plain cloudpickle.Pickler is faster today (about 6 vs 8 us with an
  importable function, 20 vs 32 us with a lambda, because of the nested pickle); on large
  graphs of custom objects cloudpickle's per-object ``reducer_override`` costs ~2.5x.
* **Large bytes-likes out of band.** ``memoryview`` objects are caught by
  ``reducer_override``. Exact ``bytes`` and ``bytearray`` never reach ``reducer_override``
  (the C pickler fast-paths them), only ``persistent_id`` sees them, and ``persistent_id``
  costs a Python call for *every* object, ints and floats included (about 4x slower on a
  list of a million floats). So it is switched on only when needed: at once if a large
  bytes-like sits at the top of the value (or in its first levels, as apply arguments do);
  otherwise only if the first pickle came out larger than ``threshold`` *and* its memo shows
  a bytes-like object of at least ``threshold`` bytes, in which case the value is pickled
  again with ``persistent_id`` on.

Security: unpickling runs code named by the data. Only deserialize frames that came from a
peer you trust; the transport authenticates every message with HMAC before it gets here.
"""

from __future__ import annotations

import contextvars
import copyreg
import io
import logging
import pickle
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from corral.core.reducer_source import set_reducer_source, take_reducer_source
from corral.errors import CorralError

__all__ = [
    "DEFAULT_THRESHOLD",
    "DeserializationError",
    "Frame",
    "SerializationError",
    "deserialize",
    "Reducer",
    "pack_apply",
    "register_reducers",
    "registered_reducers",
    "serialize",
    "set_reducer_source",
    "unpack_apply",
]

#: Buffers of at least this many bytes travel as their own frame (the same size as
#: pickle's own frame target, so the two notions of "large" agree).
DEFAULT_THRESHOLD = 64 * 1024

#: What :func:`serialize` returns: the pickle first, then zero-copy views onto buffers.
Frame = bytes | memoryview | pickle.PickleBuffer

_PROTOCOL = 5
_BYTES_TYPES = (bytes, bytearray)
# How far the cheap pre-scan looks for large bytes-likes, and how wide a container it walks.
_SCAN_DEPTH = 3
_SCAN_WIDTH = 64


class SerializationError(CorralError, TypeError):
    """An object could not be turned into frames.

    Raised by :func:`serialize` and :func:`pack_apply` in the caller's process, before
    anything is sent, so the mistake shows up where it was made rather than as a failure
    on a remote engine. ``argument`` names the failing apply argument: an ``int`` for a
    positional one, a ``str`` for a keyword, ``"func"`` for the function, ``None`` when not
    applicable.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, argument: int | str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class DeserializationError(SerializationError, ValueError):
    """Frames could not be turned back into an object: truncated, garbled or foreign.

    A ``ValueError`` as well, because the input (not its type) is wrong; the original error
    is chained as ``__cause__``.

    .. versionadded:: 0.1
    """


class _HasBuffer(Protocol):
    """A zmq.Frame-like object: exposes its memory as ``.buffer``."""

    @property
    def buffer(self) -> memoryview: ...


# --------------------------------------------------------------------------- pickling


class _Buffers:
    """Collects out-of-band buffers for one :func:`serialize` call.

    Shared by the outer pickler and any cloudpickle pickler nested inside it, so that all
    buffers land in one list in the order the unpickler will ask for them.
    """

    __slots__ = ("threshold", "frames")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.frames: list[Frame] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        # pickle's contract: a true return value means "serialize this one in-band".
        view = buffer.raw()
        if view.nbytes < self.threshold:
            return True
        self.frames.append(view)
        return False


def _pickles_by_reference(obj: Any) -> bool:
    """Whether a receiving process can import ``obj`` (a function or class) by name.

    Mirrors cloudpickle's own rule, so that we hand it exactly the objects it would pickle
    by value anyway.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or module_name == "__main__" or not qualname or "<" in qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is not None:
        registry = getattr(cloudpickle, "list_registry_pickle_by_value", lambda: ())()
        for name in registry:
            if module_name == name or module_name.startswith(name + "."):
                return False
    target: Any = module
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return False
    return target is obj


def _rebuild_memoryview(buffer: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    """Give a memoryview back its format and shape (falls back to plain bytes)."""
    view = memoryview(buffer)
    if view.format == fmt and view.shape == shape:
        return view
    try:
        return view.cast("B").cast(fmt, shape)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return view.cast("B")


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    """Pickle a memoryview as a PickleBuffer, so a large one goes out of band."""
    fmt, shape = view.format, tuple(view.shape or ())
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return _rebuild_memoryview, (pickle.PickleBuffer(view), fmt, shape)


def _reduce_module(module: types.ModuleType) -> tuple[Any, ...] | None:
    """Modules by name when importable (pickle refuses them outright)."""
    name = module.__name__
    if name != "__main__" and sys.modules.get(name) is module:
        import importlib

        return importlib.import_module, (name,)
    return None


class _PersistentBytes:
    """Mixin: send large ``bytes``/``bytearray`` out of band via ``persistent_id``.

    The persistent id is ``(kind, nbytes, PickleBuffer)``; pickle saves it like any value,
    so the PickleBuffer reaches ``buffer_callback`` and becomes a frame. A second reference
    to the same object becomes ``("ref", n)`` so it is neither sent twice nor split in two.
    """

    _threshold: int
    _seen: dict[int, int]
    _keep: list[Any]

    def persistent_id(self, obj: Any) -> Any:
        cls = type(obj)
        if (cls is bytes or cls is bytearray) and len(obj) >= self._threshold:
            index = self._seen.get(id(obj))
            if index is not None:
                return ("ref", index)
            self._seen[id(obj)] = len(self._keep)
            self._keep.append(obj)  # keeps id(obj) unique for this pickle
            return ("b" if cls is bytes else "ba", len(obj), pickle.PickleBuffer(obj))
        return None


class _FastPickler(pickle.Pickler):
    """The standard C pickler plus the few objects it cannot (or must not) handle itself."""

    def __init__(self, file: Any, buffers: _Buffers) -> None:
        super().__init__(file, protocol=_PROTOCOL, buffer_callback=buffers)
        self._buffers = buffers
        self._threshold = buffers.threshold

    def reducer_override(self, obj: Any) -> Any:
        # Called for functions, classes and non-builtin instances only (never for ints,
        # str, bytes, list, dict...), so this costs little on ordinary data.
        if isinstance(obj, type):
            if obj.__module__ == "builtins" or _pickles_by_reference(obj):
                return NotImplemented
            return _reduce_by_value(obj, self._buffers)
        cls = type(obj)
        if cls is types.FunctionType:
            if _pickles_by_reference(obj):
                return NotImplemented
            return _reduce_by_value(obj, self._buffers)
        if cls is memoryview:
            return _reduce_memoryview(obj)
        if cls is types.ModuleType:
            return _reduce_module(obj) or _reduce_by_value(obj, self._buffers)
        return NotImplemented


class _BytesPickler(_PersistentBytes, _FastPickler):
    """The fast pickler with large ``bytes``/``bytearray`` sent out of band."""

    def __init__(self, file: Any, buffers: _Buffers) -> None:
        super().__init__(file, buffers)
        self._seen = {}
        self._keep = []


# ------------------------------------------------------------------ reducers from plugins

#: ``reduce(obj) -> (callable, args)``, as for :mod:`copyreg`: the receiving process calls
#: ``callable(*args)``, so ``callable`` must be importable there.
Reducer = Callable[[Any], tuple[Any, ...]]

_reducers: dict[type, Reducer] = {}
_copyreg_size = 0  # len(copyreg.dispatch_table) when the table was built


def register_reducers(reducers: Mapping[type, Reducer]) -> None:
    """Pickle instances of each type (exactly that type, as :mod:`copyreg` does) with its
    reducer. The plugins' ``corral_serializers`` hook lands here.

    The table goes on the fast pickler as its ``dispatch_table``, merged with
    :mod:`copyreg`'s, so the C pickler consults it at the cost it already pays for
    copyreg's; with nothing registered the pickler is untouched.

    .. versionadded:: 0.1
    """
    for cls, reduce in reducers.items():
        if not isinstance(cls, type) or not callable(reduce):
            raise TypeError(f"a reducer maps a type to a callable, not {cls!r} to {reduce!r}")
    _reducers.update(reducers)
    _install_table()


def _install_table() -> None:
    global _copyreg_size
    _copyreg_size = len(copyreg.dispatch_table)
    _FastPickler.dispatch_table = {**copyreg.dispatch_table, **_reducers}


def _refresh_table() -> None:
    """Merge what ``copyreg.pickle`` registered since the table was built (a library
    imported later, say): a pickler with its own ``dispatch_table`` no longer reads
    copyreg's. One ``len`` per :func:`serialize`, and only once reducers exist."""
    if _reducers and len(copyreg.dispatch_table) != _copyreg_size:
        _install_table()


def registered_reducers() -> dict[type, Reducer]:
    """A copy of the reducers registered so far."""
    return dict(_reducers)


def _reducers_from_source() -> bool:
    """Ask the source once; True if it brought reducers (so pickling is worth retrying)."""
    source = take_reducer_source()
    if source is None:
        return False
    try:
        found = dict(source())
    except Exception:
        logging.getLogger("corral.serialize").exception("cannot load plugin serializers")
        return False
    if found:
        register_reducers(found)
    return bool(found)


_cloud_classes: tuple[type, type] | None = None


def _cloud_picklers() -> tuple[type, type]:
    """cloudpickle picklers with our buffer handling; cloudpickle is imported here.

    Returns ``(plain, with_bytes)`` like :class:`_FastPickler` and :class:`_BytesPickler`:
    ``persistent_id`` runs for every object (a code object alone holds dozens), so it is
    only switched on when a large bytes-like is known to be inside.
    """
    global _cloud_classes
    if _cloud_classes is None:
        import cloudpickle

        class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def __init__(self, file: Any, buffers: _Buffers) -> None:
                super().__init__(file, protocol=_PROTOCOL, buffer_callback=buffers)
                self._threshold = buffers.threshold

            def reducer_override(self, obj: Any) -> Any:
                cls = type(obj)
                if cls is memoryview:
                    return _reduce_memoryview(obj)
                if cls is io.TextIOWrapper:
                    # cloudpickle would quietly send the file's contents as a StringIO; an
                    # open file means nothing on another machine, so refuse as pickle does.
                    raise TypeError(f"cannot pickle '{cls.__module__}.{cls.__qualname__}' object")
                return super().reducer_override(obj)

        class _CloudBytesPickler(_PersistentBytes, _CloudPickler):
            def __init__(self, file: Any, buffers: _Buffers) -> None:
                super().__init__(file, buffers)
                self._seen = {}
                self._keep = []

        _cloud_classes = (_CloudPickler, _CloudBytesPickler)
    return _cloud_classes


def _reduce_by_value(obj: Any, buffers: _Buffers) -> tuple[Any, ...]:
    """Pickle ``obj`` with cloudpickle, nested in the outer pickle.

    The nested pickler shares ``buffers``, so anything large a closure captured still goes
    out of band; at load time :func:`_load_by_value` draws from the same buffer iterator.
    Classes pickled this way keep their identity across nested pickles (cloudpickle tracks
    them by a per-class id), so instances and the class itself agree on the engine.
    """
    return _load_by_value, (_pickle_into(obj, buffers, *_cloud_picklers()),)


def _large_bytes_near_top(obj: Any, threshold: int, depth: int = _SCAN_DEPTH) -> bool:
    """Cheap look for large bytes-likes where they usually are: results and arguments.

    Walks only builtin containers of at most ``_SCAN_WIDTH`` items, ``depth`` levels down,
    so it costs well under a microsecond on a task tuple; anything it misses is caught
    (more slowly) by :func:`_memo_has_large_bytes`.
    """
    cls = type(obj)
    if cls is bytes or cls is bytearray:
        return len(obj) >= threshold
    if cls is tuple or cls is list:
        items: Any = obj
    elif cls is dict:
        items = obj.values()
    else:
        return False
    if depth == 0 or len(items) > _SCAN_WIDTH:
        return False
    for item in items:
        cls = type(item)
        if cls is bytes or cls is bytearray:
            if len(item) >= threshold:
                return True
        elif (cls is tuple or cls is list or cls is dict) and depth > 1:
            if _large_bytes_near_top(item, threshold, depth - 1):
                return True
    return False


def _memo_has_large_bytes(pickler: pickle.Pickler, threshold: int) -> bool:
    """Whether a pickle inlined a bytes-like of at least ``threshold`` bytes.

    Pickle memoizes every bytes and bytearray it writes; counting types runs in C, so the
    Python-level look at lengths only happens when there are bytes-likes at all.
    """
    try:
        entries = pickler.memo.copy().values()
    except AttributeError:  # a pickler without a memo proxy: assume the worst
        return True
    objects = list(map(itemgetter(1), entries))
    seen_types = set(map(type, objects))
    if bytes not in seen_types and bytearray not in seen_types:
        return False
    return any(type(o) in _BYTES_TYPES and len(o) >= threshold for o in objects)


def _pickle_into(obj: Any, buffers: _Buffers, plain: type, with_bytes: type) -> bytes:
    """Pickle ``obj``, appending its out-of-band buffers to ``buffers``; return the pickle.

    ``plain`` pickles without ``persistent_id`` (fast); ``with_bytes`` also sends large
    ``bytes``/``bytearray`` out of band. The plain pickle is redone with ``with_bytes``
    only if it came out large and its memo shows a large bytes-like inside.
    """
    threshold = buffers.threshold
    start = len(buffers.frames)
    file = io.BytesIO()
    if _large_bytes_near_top(obj, threshold):
        with_bytes(file, buffers).dump(obj)
        return file.getvalue()
    pickler = plain(file, buffers)
    pickler.dump(obj)
    if file.tell() >= threshold and _memo_has_large_bytes(pickler, threshold):
        del buffers.frames[start:]
        file = io.BytesIO()
        with_bytes(file, buffers).dump(obj)
    return file.getvalue()


def _dump(obj: Any, threshold: int) -> list[Frame]:
    """Pickle ``obj`` into frames; raises whatever pickle raises."""
    if _reducers:
        _refresh_table()
    buffers = _Buffers(threshold)
    head = _pickle_into(obj, buffers, _FastPickler, _BytesPickler)
    return [head, *buffers.frames]


def _dump_rescue(obj: Any, threshold: int) -> list[Frame]:
    """Second chance for what the standard pickler refused (dict views, loggers...)."""
    buffers = _Buffers(threshold)
    head = _pickle_into(obj, buffers, *_cloud_picklers())
    return [head, *buffers.frames]


def _check_threshold(threshold: int) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative int, not {threshold!r}")


def _try_serialize(obj: Any, threshold: int) -> list[Frame]:
    """Serialize, or raise the underlying pickling exception (unwrapped)."""
    try:
        return _dump(obj, threshold)
    except (pickle.PicklingError, TypeError, AttributeError):
        pass
    if _reducers_from_source():  # plugins' serializers, loaded on this first need
        try:
            return _dump(obj, threshold)
        except (pickle.PicklingError, TypeError, AttributeError):
            pass
    # Something the standard pickler refuses outright; cloudpickle knows a few more types.
    return _dump_rescue(obj, threshold)


def serialize(obj: Any, *, threshold: int = DEFAULT_THRESHOLD) -> list[Frame]:
    """Turn ``obj`` into frames: ``[pickle, buffer, buffer, ...]``.

    Buffers of at least ``threshold`` bytes (numpy arrays, ``bytes``, ``bytearray``,
    ``memoryview``, anything pickled through :class:`pickle.PickleBuffer`) become frames of
    their own, as memoryviews onto the original memory: nothing is copied, so the caller must
    not modify the object until the frames are sent. Smaller ones stay inside frame 0.

    :raises SerializationError: ``obj`` (or something inside it) cannot be pickled.

    .. versionadded:: 0.1
    """
    _check_threshold(threshold)
    cls = type(obj)
    if cls in _ATOMIC or (cls is bytes and len(obj) < threshold):
        return [pickle.dumps(obj, _PROTOCOL)]
    try:
        return _try_serialize(obj, threshold)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {_describe(obj)}: {type(exc).__name__}: {exc}"
        ) from exc


#: What tasks return most often (None, numbers, text), which the C pickler writes by
#: itself, byte for byte as the full pickler would: nothing in them can go out of band
#: or meet a reducer. Setting that pickler up (a subclass, a buffer callback, a look for
#: large bytes) cost ~15 times the pickling of such a value, once per task and reply.
_ATOMIC = frozenset({type(None), bool, int, float, complex, str})


def _describe(obj: Any) -> str:
    cls = type(obj)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return f"object of type {name!r}"


# ------------------------------------------------------------------------- unpickling

# The buffer iterator of the deserialize() call in progress, for nested by-value pickles.
_current_buffers: contextvars.ContextVar[Iterator[Any] | None] = contextvars.ContextVar(
    "corral_serialize_buffers", default=None
)


class _Unpickler(pickle.Unpickler):
    """Unpickler that resolves the persistent ids written by :class:`_PersistentBytes`.

    No Python ``__init__``: most payloads carry no persistent id, so the list of loaded ones
    is made on first use and construction stays at C speed.
    """

    _loaded: list[Any]

    def persistent_load(self, pid: Any) -> Any:
        try:
            loaded = self._loaded
        except AttributeError:
            loaded = self._loaded = []
        if pid[0] == "ref":
            return loaded[pid[1]]
        kind, size, buffer = pid
        view = memoryview(buffer)
        if view.nbytes != size:
            raise DeserializationError(f"buffer frame holds {view.nbytes} bytes, expected {size}")
        if kind == "b":
            value: Any = _owner_if_whole(buffer, view, bytes) or bytes(view)
        elif kind == "ba":
            value = _owner_if_whole(buffer, view, bytearray) or bytearray(view)
        else:
            raise DeserializationError(f"unknown persistent id kind {kind!r}")
        loaded.append(value)
        return value


def _owner_if_whole(buffer: Any, view: memoryview, cls: type[bytes | bytearray]) -> Any:
    """The frame itself when it already is a whole ``cls`` object: zero copy."""
    if type(buffer) is cls:
        return buffer
    owner = view.obj
    if type(owner) is cls and len(owner) == view.nbytes:
        return owner
    return None


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, frozenset)


def stable_global(value: Any) -> bool:
    """Whether a global a function names cannot change behind a pickle of it: immutable
    scalars, modules, builtins, and classes and functions importable by name. What may
    be pickled once and reused (the client's function cache, the loaded-function cache
    below) must name only such globals."""
    if isinstance(value, _IMMUTABLE):
        return True
    if isinstance(value, (types.ModuleType, types.BuiltinFunctionType)):
        return True
    if isinstance(value, (type, types.FunctionType)):
        return _pickles_by_reference(value)
    return False


class _CountingIterator:
    """Counts what a nested load draws from the enclosing buffers."""

    __slots__ = ("inner", "taken")

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner = inner
        self.taken = 0

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        value = next(self.inner)
        self.taken += 1
        return value


#: Functions loaded by value, by their pickle: an engine receiving the same function for
#: every task of a map unpickles its code once, not per task (most of a no-op task's
#: cost on the engine). Only functions a later load could not tell apart are kept, as
#: private templates: each load gets a new function with its own copy of the globals,
#: as an unpickled one would have.
_loaded_functions: dict[bytes, types.FunctionType] = {}
_LOADED_FUNCTIONS_MAX = 256


#: The one function attribute a reusable function may carry: the source lines a client
#: attaches to a ``__main__`` function for remote tracebacks (client/funccache.py's
#: ``attach_source``: ``(filename, first line, [lines])`` or None). Every function of a
#: script or notebook carries it, so refusing it kept them all out of the cache.
_SOURCE_ATTR = "__corral_source__"


def _plain_source(attrs: dict[str, Any]) -> bool:
    """Whether a function's ``__dict__`` holds nothing but a well-formed source note."""
    if len(attrs) != 1 or _SOURCE_ATTR not in attrs:
        return False
    source = attrs[_SOURCE_ATTR]
    if source is None:
        return True
    return (
        type(source) is tuple
        and len(source) == 3
        and type(source[0]) is str
        and type(source[1]) is int
        and type(source[2]) is list
        and all(type(line) is str for line in source[2])
    )


def _reusable(obj: Any) -> bool:
    """A by-value function that is the same whenever its pickle is: no closure, no
    defaults, no attributes but its source note, only stable globals."""
    if type(obj) is not types.FunctionType:
        return False
    if obj.__closure__ or obj.__defaults__ or obj.__kwdefaults__:
        return False
    if obj.__dict__ and not _plain_source(obj.__dict__):
        return False
    return all(stable_global(value) for name, value in obj.__globals__.items() if name[:2] != "__")


def _copy_function(template: types.FunctionType) -> types.FunctionType:
    func = types.FunctionType(
        template.__code__, dict(template.__globals__), template.__name__, None, None
    )
    func.__qualname__ = template.__qualname__
    func.__module__ = template.__module__
    func.__doc__ = template.__doc__
    if template.__annotations__:
        func.__annotations__ = dict(template.__annotations__)
    if template.__dict__:  # the source note (_plain_source): its own list of lines
        source = template.__dict__[_SOURCE_ATTR]
        setattr(func, _SOURCE_ATTR, None if source is None else (*source[:2], list(source[2])))
    return func


def _load_by_value(data: bytes) -> Any:
    """Load a nested cloudpickle pickle, drawing buffers from the enclosing call."""
    template = _loaded_functions.get(data)
    if template is not None:
        return _copy_function(template)
    buffers = _current_buffers.get()
    counting = _CountingIterator(iter(()) if buffers is None else buffers)
    obj = _Unpickler(io.BytesIO(data), buffers=counting).load()
    if not counting.taken and _reusable(obj):
        if len(_loaded_functions) >= _LOADED_FUNCTIONS_MAX:
            try:  # another thread may be evicting too
                _loaded_functions.pop(next(iter(_loaded_functions)))
            except (KeyError, RuntimeError, StopIteration):
                pass
        _loaded_functions[bytes(data)] = _copy_function(obj)
    return obj


def _as_buffer(frame: Any) -> Any:
    """Accept bytes-likes and zmq.Frame-likes (``.buffer``) without copying."""
    if type(frame) in (bytes, bytearray, memoryview):
        return frame
    if isinstance(frame, pickle.PickleBuffer):
        return frame.raw()
    inner = getattr(frame, "buffer", None)
    if inner is not None and not isinstance(frame, (bytes, bytearray)):
        return inner
    try:
        return memoryview(frame)
    except TypeError:
        raise DeserializationError(
            f"frame of type {type(frame).__qualname__!r} exposes no buffer"
        ) from None


def deserialize(frames: Sequence[Any]) -> Any:
    """Turn frames from :func:`serialize` back into the object.

    Frames may be ``bytes``, ``bytearray``, ``memoryview``, zmq.Frame-like objects with a
    ``.buffer`` or anything exposing the buffer protocol. Out-of-band buffers are not copied
    where the type allows it: a numpy array is a view onto its frame (writable if the frame
    is), and a large ``bytes``/``bytearray`` is the frame itself when the frame already is
    one. The object therefore keeps its frames alive and shares their memory.

    :raises DeserializationError: the frames are truncated, garbled, too few or too many, or
        name something the receiving process cannot import.

    .. versionadded:: 0.1
    """
    if isinstance(frames, (bytes, bytearray, memoryview)):
        raise DeserializationError("deserialize() takes a sequence of frames, not one buffer")
    if len(frames) == 1 and _current_buffers.get() is None:
        head = frames[0]
        if type(head) is bytes and head[:2] == b"\x80\x05":
            # One frame, no outer load in progress: no out-of-band buffer to hand out or
            # count, so the plain C unpickler does it all (a small task's request, most
            # replies), without the setup below. A persistent id here is refused by
            # pickle itself, as the full path refuses it for want of a buffer.
            try:
                return pickle.loads(head)
            except DeserializationError:
                raise
            except Exception as exc:
                raise DeserializationError(
                    f"cannot deserialize 1 frame(s): {type(exc).__name__}: {exc}"
                ) from exc
    buffers = [_as_buffer(frame) for frame in frames]
    if not buffers:
        raise DeserializationError("no frames to deserialize")
    head = buffers[0]
    if type(head) is not bytes:
        try:
            head = memoryview(head).cast("B")
        except (TypeError, ValueError) as exc:
            raise DeserializationError(f"first frame is not a flat buffer: {exc}") from exc
    if head[:2] != b"\x80\x05":
        raise DeserializationError("first frame is not a protocol 5 pickle")
    remaining = iter(buffers[1:])
    token = _current_buffers.set(remaining)
    try:
        obj = _Unpickler(io.BytesIO(head), buffers=remaining).load()
    except DeserializationError:
        raise
    except Exception as exc:
        raise DeserializationError(
            f"cannot deserialize {len(buffers)} frame(s): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _current_buffers.reset(token)
    unused = sum(1 for _ in remaining)
    if unused:
        raise DeserializationError(f"{unused} frame(s) left over after deserializing")
    return obj


# ---------------------------------------------------------------------------- apply


def pack_apply(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    threshold: int = DEFAULT_THRESHOLD,
) -> list[Frame]:
    """One message body for an apply request: ``func(*args, **kwargs)`` as frames.

    Everything is pickled in one pass (the cheapest way for the many small tasks of a
    ``map``); large buffers of any argument go out of band as in :func:`serialize`.

    :raises SerializationError: naming the function or the positional index / keyword of
        the argument that cannot be pickled, before anything is sent.

    .. versionadded:: 0.1
    """
    _check_threshold(threshold)
    if not callable(func):
        raise SerializationError(
            f"func must be callable, not {type(func).__qualname__!r}", argument="func"
        )
    args = tuple(args)
    kwargs = dict(kwargs or {})
    for key in kwargs:
        if not isinstance(key, str):
            raise SerializationError(f"keyword names must be str, not {key!r}", argument=key)
    try:
        return _try_serialize((func, args, kwargs), threshold)
    except Exception as exc:
        raise _apply_error(func, args, kwargs, threshold, exc) from exc


def _apply_error(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], threshold: int, exc: Exception
) -> SerializationError:
    """Find which part of an apply request failed (error path only, so it may be slow)."""
    parts: list[tuple[int | str, str, Any]] = [("func", "the function", func)]
    parts += [(i, f"positional argument {i}", arg) for i, arg in enumerate(args)]
    parts += [(key, f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for argument, label, value in parts:
        try:
            _try_serialize(value, threshold)
        except Exception as part_exc:
            return SerializationError(
                f"cannot serialize {label} ({_describe(value)}): "
                f"{type(part_exc).__name__}: {part_exc}",
                argument=argument,
            )
    return SerializationError(f"cannot serialize apply request: {type(exc).__name__}: {exc}")


def unpack_apply(
    frames: Sequence[Any],
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`pack_apply`: ``(func, args, kwargs)``.

    :raises DeserializationError: the frames do not hold an apply request.

    .. versionadded:: 0.1
    """
    request = deserialize(frames)
    if (
        type(request) is not tuple
        or len(request) != 3
        or not callable(request[0])
        or type(request[1]) is not tuple
        or type(request[2]) is not dict
    ):
        raise DeserializationError("frames do not hold an apply request (func, args, kwargs)")
    return request
