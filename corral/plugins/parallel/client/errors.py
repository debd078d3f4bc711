"""Exceptions a client raises for work that failed somewhere else.

An engine reports a failure as reply content (``ename``, ``evalue``, ``traceback``), never
as a pickled exception: the original exception class may not even exist in the client's
process, and unpickling what an engine sends would let a broken engine crash the client.
So every remote failure becomes a :class:`RemoteError` here, carrying the remote names and
the remote traceback as text, plus the id of the engine it happened on. The queues use the
same shape for their own failures (a dead engine, an unmet dependency), which map onto the
subclasses below so that callers can catch exactly what they can handle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.errors import CorralError

__all__ = [
    "CompositeError",
    "DataChannelLost",
    "DependencyTimeout",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "KernelError",
    "NoEnginesRegistered",
    "TaskRejectError",
    "RemoteError",
    "TaskAborted",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "error_from_content",
]

# Re-exported so ``from corral.plugins.parallel.client.errors import TimeoutError`` names
# the one class that ``get(timeout=...)`` raises (also concurrent.futures.TimeoutError).
TimeoutError = TimeoutError  # noqa: A001, PLW0127


class KernelError(CorralError):
    """The base of every error about work done elsewhere (ipyparallel's name).

    .. versionadded:: 0.1
    """


class RemoteError(KernelError):
    """An exception raised by user code (or the cluster) away from this process.

    ``str()`` shows the remote traceback, because that is where the bug is; ``ename`` and
    ``evalue`` are the remote exception's type name and message; ``engine_id`` is the
    engine that ran the task (None when the failure happened before any engine did).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: str | Sequence[str] = "",
        engine_id: int | None = None,
        *,
        msg_id: str | None = None,
        engine_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback if isinstance(traceback, str) else "\n".join(traceback)
        self.engine_id = engine_id
        self.msg_id = msg_id
        self._engine_info = dict(engine_info) if engine_info else None

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        head = f"{where}{self.ename}: {self.evalue}"
        frames = self._frames()
        return f"{head}\n{frames}" if frames else head

    def _frames(self) -> str:
        """The traceback, unless it only repeats the ``ename: evalue`` line shown above it.

        Failures the controller makes (an engine that died, no such engine) have no remote
        frames: their traceback is that one line, and printing it under the same line
        showed the sentence twice.
        """
        if self.traceback.strip() == f"{self.ename}: {self.evalue}".strip():
            return ""
        return self.traceback

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ename!r}, {self.evalue!r}, engine_id={self.engine_id})"

    @property
    def engine_info(self) -> dict[str, Any]:
        """What the engine said about itself, as ipyparallel's errors carry it:
        ``engine_id``, ``engine_uuid`` and ``method`` (``apply``, ``execute``...)."""
        info = getattr(self, "_engine_info", None)  # absent on errors pickled before 0.2
        if info:
            return dict(info)
        return {} if self.engine_id is None else {"engine_id": self.engine_id}

    def _label(self) -> str:
        return f"[engine {self.engine_id}]" if self.engine_id is not None else "[remote]"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """The remote traceback as lines, under a label naming the engine."""
        head = f"{self._label()} {self.ename}: {self.evalue}"
        if self.traceback and not self._frames():
            return [head]  # a failure without remote frames: the head says it all
        return [head, *(self.traceback or "No traceback available").splitlines()]

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing the local traceback (which only shows
        # where get() was called): the remote one is where the bug is.
        return self.render_traceback()

    def print_traceback(self, excid: int | None = None) -> None:
        """Print the remote traceback."""
        print("\n".join(self.render_traceback(excid)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only msg_id and the extra attributes survive pickling (results may be
        # pickled again, e.g. by a caller that forwards them).
        return _rebuild, (type(self), self.__dict__.copy())


def _rebuild(cls: type[RemoteError], state: dict[str, Any]) -> RemoteError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("ename"), state.get("evalue"))
    error.__dict__.update(state)
    return error


class EngineError(RemoteError):
    """The engine running (or about to run) a task died or went away.

    Raised from a queue's ``ename: "EngineError"`` reply, or locally when the hub announces
    that an engine died while this client still waited on it.

    .. versionadded:: 0.1
    """


class ControllerLost(CorralError, ConnectionError):
    """The cluster's controller went away: nothing pending will be answered through it.

    Raised by every result that was still pending and by every call that needs the
    controller, until :meth:`Client.reconnect` finds a controller restarted on the same
    cluster. Engines outlive their controller for a grace period and re-register with the
    new one, keeping their results: ``get_result(msg_id)`` after a reconnect fetches what
    finished meanwhile.

    .. versionadded:: 0.2
    """


class DataChannelLost(RemoteError, ConnectionError):
    """The connection to an engine's data socket broke while a direct ``push`` or
    ``pull`` sent on it waited for its reply.

    The client cannot know whether the request reached the engine, ran, or had its reply
    lost on the way; it is failed rather than left waiting (after the few heartbeat
    periods in which the hub would report the engine dead: an engine that died gives
    :class:`EngineError`), and not sent again
    (a push sent again could land after later work that changed the same names). A
    :class:`RemoteError` (it belongs to one engine's slot of a result) and a
    :class:`ConnectionError`; ``engine_id`` names the engine. Call again once the
    connection is back (the client reconnects by itself, and routes through the
    controller's queues meanwhile).

    .. versionadded:: 0.2
    """


class TaskAborted(RemoteError):
    """The task was aborted (:meth:`AsyncResult.abort`) before it ran.

    .. versionadded:: 0.1
    """


class NoEnginesRegistered(KernelError, RuntimeError):
    """There is no engine to send the work to (ipyparallel's name; a RuntimeError too,
    which an engineless map raised before).

    .. versionadded:: 0.1
    """


class TaskRejectError(KernelError):
    """A task was refused by the scheduler (ipyparallel's name; corral's scheduler
    fails tasks with :class:`UnmetDependency` or :class:`EngineError` instead).

    .. versionadded:: 0.1
    """


class TaskTimeout(RemoteError):
    """A task did not finish within its time limit (ipyparallel's name).

    .. versionadded:: 0.1
    """


class UnmetDependency(RemoteError):
    """A task's dependency is not met: a failed ``after``/``follow`` task, or a
    :func:`~.dependencies.require`/:func:`~.dependencies.depend` condition that does not
    hold on the engine.

    .. versionadded:: 0.1
    """


class ImpossibleDependency(UnmetDependency):
    """A dependency that can never be met (its task failed, or no engine can meet it).

    .. versionadded:: 0.1
    """


class DependencyTimeout(ImpossibleDependency, TaskTimeout):
    """A load-balanced task's ``after``/``follow`` dependencies were not met in time (or
    no engine that may run it came) within its ``timeout``.

    Also a :class:`TaskTimeout`, the class ipyparallel's scheduler raises for the same
    event, so ``except TaskTimeout`` written for ipyparallel catches it.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 also a :class:`TaskTimeout`.
    """


class InvalidDependency(ImpossibleDependency):
    """A dependency that names no task this cluster knows (or is malformed).

    .. versionadded:: 0.1
    """


class CompositeError(RemoteError):
    """Several tasks of one request failed (a map, a broadcast, a multi-engine apply).

    ``errors`` holds every :class:`RemoteError`, in task order; the exception itself looks
    like the first of them, so ``except RemoteError`` catches single and composite
    failures alike. :meth:`raise_exception` re-raises one of them.

    .. versionadded:: 0.1
    """

    #: How many tracebacks :meth:`render_traceback` draws (ipyparallel's default).
    tb_limit = 4

    def __init__(self, errors: Sequence[RemoteError]) -> None:
        if not errors:
            raise ValueError("CompositeError needs at least one error")
        first = errors[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_id)
        self.errors = list(errors)

    @property
    def elist(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """``[(ename, evalue, traceback, engine_info), ...]``: ipyparallel's shape."""
        return [(e.ename, e.evalue, e.traceback, e.engine_info) for e in self.errors]

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """Lines of the first :attr:`tb_limit` remote tracebacks, or of error ``excid``."""
        if excid is not None:
            try:
                return self.errors[excid].render_traceback()
            except IndexError:
                raise IndexError(f"an exception with index {excid} does not exist") from None
        lines = [f"{len(self.errors)} task(s) failed"]
        for error in self.errors[: self.tb_limit]:
            lines.extend(error.render_traceback())
            lines.append("")
        if len(self.errors) > self.tb_limit:
            lines.append(f"... {len(self.errors) - self.tb_limit} more exceptions ...")
        return lines

    @property
    def engine_ids(self) -> list[int | None]:
        """The engine of each error, in order."""
        return [e.engine_id for e in self.errors]

    def __str__(self) -> str:
        lines = [f"{len(self.errors)} task(s) failed:"]
        lines += [f"  [engine {e.engine_id}] {e.ename}: {e.evalue}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more")
        lines.append("first remote traceback:")
        lines.append(self.errors[0].traceback or "(none)")
        return "\n".join(lines)

    def raise_exception(self, excid: int = 0) -> None:
        """Raise the ``excid``-th error on its own."""
        try:
            error = self.errors[excid]
        except IndexError:
            raise IndexError(f"an exception with index {excid} does not exist") from None
        raise error


_BY_ENAME: dict[str, type[RemoteError]] = {
    "EngineError": EngineError,
    "DependencyTimeout": DependencyTimeout,
    "UnmetDependency": UnmetDependency,
    "TaskAborted": TaskAborted,
    "TaskTimeout": TaskTimeout,
    "ImpossibleDependency": ImpossibleDependency,
    "InvalidDependency": InvalidDependency,
}


#: What a request refused for altered buffers means, and what to do: the receiver only
#: knows a digest failed, which users read as corruption or an attack, while the usual
#: cause is theirs (an array changed while corral was still sending it, zero-copy).
ALTERED_REQUEST = (
    "The request's data changed after it was sent, so the engine refused it and the task "
    "did not run. Arrays are sent without copying: one modified before the send finished "
    "(after a push/apply/map with block=False) is caught this way. Wait until it has "
    "left (ar.wait_for_send()), or for the result (ar.get(), or block=True), before "
    "changing the array, or send a copy (a.copy())."
)


def error_from_content(
    content: Mapping[str, Any],
    engine_id: int | None = None,
    msg_id: str | None = None,
) -> RemoteError:
    """The exception a failed reply's content describes.

    ``status: "aborted"`` gives :class:`TaskAborted`; queue-made failures map onto their
    classes by ``ename``; everything else is a plain :class:`RemoteError`. The engine id
    is taken from ``content["engine_info"]`` when the caller does not know it.
    """
    info = content.get("engine_info") or {}
    if engine_id is None:
        engine_id = info.get("engine_id")
    if content.get("status") == "aborted":
        return TaskAborted(
            "TaskAborted", "the task was aborted before it ran", "", engine_id, msg_id=msg_id
        )
    ename = str(content.get("ename") or "RemoteError")
    evalue = str(content.get("evalue") or "")
    traceback = content.get("traceback") or ""
    if ename == "BuffersAltered":
        evalue, traceback = f"{evalue}. {ALTERED_REQUEST}", ""
    cls = _BY_ENAME.get(ename, RemoteError)
    return cls(ename, evalue, traceback, engine_id, msg_id=msg_id, engine_info=info or None)
