"""What ``apply``, ``push``, ``pull``, ``clear`` and ``abort`` mean, with no I/O.

Two servers answer these requests: the cluster engine (:mod:`.engine`, on its queues'
sockets, with its own fast wire) and any kernel that loaded the parallel plugin
(:mod:`corral.plugins.parallel.kernel_requests`, on the Jupyter shell and control
channels). Each keeps its own sockets, replies and SIGINT discipline around the call;
what a request *does* to the namespace is decided here, once, so the two cannot drift:
how shipped ``__main__`` functions are bound (:class:`.namespace.Adopter`), which names a
push sets and a pull returns (:mod:`.data`), what a clear forgets, which tasks an abort
cancels, and what an error reply says.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from corral.core.fifo import trim_oldest
from corral.transports.zmq.requests import InterruptGuard, error_content

from . import data as data_path
from .namespace import Adopter

__all__ = ["ABORT_KEEP", "Tasks"]

#: Aborted ids remembered. An abort names tasks this engine may never see (a view aborts
#: on every engine of its targets; the aggregate view at every controller), so without a
#: bound those ids would pile up for the engine's life. A task still on its way after
#: this many newer aborts would run instead of being answered "aborted".
ABORT_KEEP = 65536


class Tasks:
    """The parallel requests' effect on one user namespace (``namespace``).

    Made once per server; every method runs on the thread that runs user code, except
    :meth:`abort`, which the control thread calls while a task may run (it only adds to
    :attr:`aborted`, which the main thread reads with one truth test per task while it
    is empty, and under a lock otherwise).
    """

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        #: Binds functions shipped from a client's ``__main__`` to ``namespace``.
        self.adopter = Adopter(namespace)
        #: Ids of requests to answer ``aborted`` instead of running, when they come:
        #: insertion-ordered, the oldest forgotten past :data:`ABORT_KEEP`.
        self.aborted: dict[str, bool] = {}
        self._abort_lock = threading.Lock()
        #: The serializer's entry points, imported by :meth:`load` (the slow import an
        #: engine makes while its registration is on the way), or on first use.
        self.serialize: Callable[[Any], list[Any]] = self._load_and_serialize
        self._unpack_apply: Callable[[Any], Any] = self._load_and_unpack

    def load(self) -> None:
        """Import the serializer now (else the first task does)."""
        from corral.core.serialize import serialize, unpack_apply

        self.serialize = serialize
        self._unpack_apply = unpack_apply

    def _load_and_serialize(self, obj: Any) -> list[Any]:
        self.load()
        return self.serialize(obj)

    def _load_and_unpack(self, buffers: Any) -> Any:
        self.load()
        return self._unpack_apply(buffers)

    def unpack(self, buffers: Any) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """``(func, args, kwargs)`` of an ``apply_request``'s buffers, shipped functions
        bound to the namespace (the function, and those passed as arguments)."""
        func, args, kwargs = self._unpack_apply(buffers)
        adopter = self.adopter
        func = adopter.function(func)
        args, kwargs = adopter.arguments(args, kwargs)
        return func, args, kwargs

    def call(
        self, buffers: Any, guard: InterruptGuard, around: AbstractContextManager[Any]
    ) -> tuple[list[Any], None] | tuple[None, dict[str, Any]]:
        """Run an ``apply_request``: ``(result frames, None)``, or ``(None, error content)``
        if anything failed (unpacking, the call, pickling the result).

        The guard is armed for the call only, inside ``around`` (the engine releases its
        socket lock there, a kernel redirects output), so a ``KeyboardInterrupt`` lands
        in user code or not at all, and ``around`` always exits. A ``KeyboardInterrupt``
        in the call is the task's error, reported like any other.
        """
        func, args = None, ()
        try:
            func, args, kwargs = self.unpack(buffers)
            with around:
                guard.executing = True
                try:
                    result = func(*args, **kwargs)
                finally:
                    guard.executing = False
            return self.serialize(result), None
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt is the task's
            guard.executing = False
            # A shipped __main__ function's frames name their files (see .sources).
            return None, self.error(exc, func, args)

    def take_aborted(self, msg_id: str) -> bool:
        """Whether ``msg_id`` was aborted before it ran (and forget it: it is answered)."""
        aborted = self.aborted
        if aborted and msg_id in aborted:
            with self._abort_lock:
                return aborted.pop(msg_id, False)
        return False

    def abort(self, content: dict[str, Any]) -> list[str]:
        """An ``abort_request``: its ``msg_ids`` will be answered ``aborted`` if they come.
        Returns those ids.

        :raises TypeError: ``msg_ids`` is not a list of message ids.
        """
        ids = content.get("msg_ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise TypeError("abort_request 'msg_ids' must be a list of message ids")
        with self._abort_lock:
            aborted = self.aborted
            for msg_id in ids:
                aborted[msg_id] = True
            trim_oldest(aborted, ABORT_KEEP)
        return ids

    def push(self, content: dict[str, Any], buffers: Any) -> list[str]:
        """A ``push_request``: set the pushed names; returns them."""
        return data_path.push(self.namespace, content, buffers, self.adopter.value)

    def pull(self, content: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """A ``pull_request``: the names asked for and the frames of their values.

        :raises KeyError: a name is not defined (the message says which).
        """
        return data_path.pull(self.namespace, content)

    def clear(self, interpreter: Any) -> None:
        """A ``clear_request``: the interpreter's namespace reset, shipped names forgotten."""
        interpreter.reset_namespace()
        self.adopter.injected.clear()

    def error(
        self, exc: BaseException, func: Any = None, args: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """The ``status: error`` content for ``exc``; a shipped function's frames show its
        source (``func``, the functions among ``args`` and the namespace's; see
        :mod:`.sources`). ``args`` matter for maps: the task's function is the library's
        ``map_chunk`` and the user's function is its first argument."""
        content = error_content(exc)
        if func is not None:
            content["traceback"] = _annotate(content["traceback"], func, args, self.namespace)
        return content


def _annotate(
    traceback: list[str], func: Any, args: Sequence[Any], namespace: dict[str, Any]
) -> list[str]:
    try:
        from .sources import annotate

        passed = [a for a in args if type(a) is types.FunctionType]
        helpers = [v for v in namespace.values() if type(v) is types.FunctionType]
        return annotate(traceback, [func, *passed, *helpers])
    except Exception:  # never lose the error over its decoration
        return traceback
