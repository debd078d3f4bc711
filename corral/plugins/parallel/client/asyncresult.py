"""Results of work submitted to a cluster: futures that fill in as replies arrive.

An :class:`AsyncResult` is a :class:`concurrent.futures.Future`, so it works with
``concurrent.futures.wait``/``as_completed`` and (through :func:`asyncio.wrap_future`)
with ``await``. One result may stand for several tasks (a map's chunks, one apply on many
engines, a broadcast): each task fills a *slot*, and the future completes once every slot
has. Slots are only written by the client's I/O thread, so they need no lock; readers
that want to follow progress slot by slot wait on a condition the I/O thread notifies.

Output that engines print while running a task (iopub ``stream``, ``display_data``, ...)
lands in the slot's metadata; it travels on another socket than the reply, so it can lag
behind it: :meth:`AsyncResult.wait_for_output` waits for each engine's ``idle`` status.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, cast

import zmq

from corral.core.serialize import deserialize

from .errors import (
    CompositeError,
    ControllerLost,
    EngineError,
    RemoteError,
    error_from_content,
)
from .mapping import ChunkOutcome
from .taskmeta import TaskMetadata, new_metadata

if TYPE_CHECKING:
    from .messages import Parsed

__all__ = [
    "ALL_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncMapResult",
    "AsyncResult",
    "ExecuteReply",
    "as_completed",
]

_OUTPUT_TYPES = ("display_data", "execute_result", "error", "update_display_data")


def _now() -> datetime:
    return datetime.now(timezone.utc)


#: ``return_when`` of :meth:`AsyncResult.get`: raise at the first failed task.
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
#: Accepted for ipyparallel code; ``get`` treats it as ``ALL_COMPLETED``, as ipyparallel.
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED


def as_datetime(value: Any) -> datetime | None:
    """A timestamp off the wire (ISO 8601 text) as an aware datetime; None stays None.

    Every timestamp of a result's metadata is a datetime, so they subtract and compare
    with each other (ipyparallel's users compute ``completed - started``).
    """
    if value is None or isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


# Guards the lazy creation of metadata dicts (I/O thread vs readers); held for
# microseconds, so one lock for all results is enough.
_md_lock = threading.Lock()
#: Guards the making of split() parts and the copy into each (I/O thread and caller).
_split_lock = threading.Lock()


def _apply_reply(
    md: dict[str, Any],
    reply_md: dict[str, Any],
    content: dict[str, Any],
    engine_id: int | None,
    received: float,
) -> None:
    """Copy what a reply says about its task into the task's metadata."""
    md["engine_id"] = engine_id
    md["engine_uuid"] = reply_md.get("engine_uuid")
    md["started"] = as_datetime(reply_md.get("started")) or md.get("started")
    md["completed"] = as_datetime(reply_md.get("completed"))
    md["status"] = content.get("status", "ok")
    md["received"] = datetime.fromtimestamp(received, timezone.utc)
    md["reply_content"] = content
    # Engines count the iopub messages a task published; with none, no ``idle`` follows.
    # A dead engine says nothing more either.
    # A reply the scheduler or the hub made (an abort, a dependency or timeout error)
    # names no count: no engine ran the task, so no output follows.
    if reply_md.get("outputs", 0) == 0 or content.get("ename") == "EngineError":
        md["outputs_ready"] = True


#: Seconds an execute's result() waits for output that trails its reply (bounded: the
#: output of an engine that died after replying never comes).
EXECUTE_OUTPUT_WAIT = 5.0

#: Metadata keys filled from iopub, which can trail a task's reply (see _settle_output).
_TRAILING = frozenset({"stdout", "stderr", "outputs", "execute_result", "data"})
#: The client's I/O thread (io.ClientIO), which must never wait for its own deliveries.
_IO_THREAD = "corral-client-io"


def wait_all_sent(results: Iterable[Any], timeout: float | None = None) -> bool:
    """``wait_for_send`` of each of ``results`` within one ``timeout``; whether all were
    sent (a result made of others waits for every part)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for result in results:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not result.wait_for_send(left):
            return False
    return True


def _decoded(value: Any) -> dict[str, Any]:
    """A request's metadata or content as sent (JSON bytes, or a dict), as a dict."""
    if isinstance(value, dict):
        return value
    if type(value) is not bytes:
        return {}
    try:
        decoded = json.loads(value)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _request_fields(request: tuple[Any, ...] | None) -> dict[str, Any]:
    """What ipyparallel's task metadata says of the request itself: ``label`` (the view
    flag), ``after`` and ``follow`` (dependencies), ``is_broadcast`` and, for an execute,
    ``execute_input`` (the code). Read from the request as sent when a task's metadata is
    first looked at, so sending a task costs nothing more."""
    fields: dict[str, Any] = {
        "label": None,
        "after": [],
        "follow": [],
        "is_broadcast": False,
        "execute_input": None,
    }
    if request is None:
        return fields
    channel, msg_type, content, metadata = request[:4]
    sent = _decoded(metadata)
    for key in ("label", "after", "follow"):
        if sent.get(key) is not None:
            fields[key] = sent[key]
    fields["is_broadcast"] = channel == "broadcast" or bool(sent.get("broadcast"))
    if msg_type == "execute_request":
        fields["execute_input"] = _decoded(content).get("code")
    return fields


class AsyncResult(concurrent.futures.Future):  # type: ignore[type-arg]
    """The pending result of one request (one or more tasks).

    ``get()`` returns the value (one value for a single task, a list otherwise) or raises
    :class:`RemoteError` (:class:`CompositeError` when several tasks of the request
    failed). Never constructed by users: views return it.

    ipyparallel's spellings work too: ``ar.get_dict()``, ``ar.get(return_exceptions=True)``,
    metadata as keys or attributes (``ar["engine_id"]``, ``ar.started``), ``ar.wall_time``,
    ``ar.serial_time``.

    .. versionadded:: 0.1
    """

    #: get() returns exceptions in place of values (``map(..., return_exceptions=True)``).
    _return_exceptions = False
    #: An execute request: values are :class:`ExecuteReply` objects.
    _execute = False
    _replies: Any = None  # execute's ExecuteReply objects, made on first result()
    #: One result per slot, made by split() on first use.
    _split_parts: tuple[_Part, ...] | None = None
    #: The request as sent, for Client.resubmit (set by the client when it sends one).
    _request: tuple[Any, ...] | None = None
    #: Wake waiters on every stream message too (set while %px streams output).
    _watch_streams = False

    if TYPE_CHECKING:
        # For the type checker only: Future calls a done callback with the future itself,
        # so a callback here gets this AsyncResult (Future's stub says just Future).
        def add_done_callback(self, fn: Callable[[AsyncResult], object]) -> None: ...

    def __init__(
        self,
        client: Any,
        msg_ids: list[str],
        *,
        fname: str = "",
        single: bool = True,
        targets: list[int] | None = None,
        slots: int | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self.msg_ids = msg_ids
        self.fname = fname
        self._single = single
        self._targets = targets
        count = len(msg_ids) if slots is None else slots
        self._submitted = time.time()
        self._values: list[Any] = [None] * count
        # RemoteError from the engines; _abandon stores the controller's loss for all.
        self._errors: list[BaseException | None] = [None] * count
        self._md: list[TaskMetadata | None] = [None] * count
        self._raw: list[tuple[Any, ...] | None] = [None] * count
        self._done_slots = [False] * count
        self._remaining = count
        self._completed_order: list[int] = []
        # Created on first need (iteration, wait_for_output), then notified by I/O.
        self._progress: threading.Condition | None = None
        self._slot_of = {msg_id: index for index, msg_id in enumerate(msg_ids)}
        #: Applied to each task's value as it arrives (pull unwraps its tuple). Set only
        #: here: a reply may arrive the moment the result is registered, so a result is
        #: complete before anyone can submit work for it (setting it later raced).
        self._convert = convert
        #: libzmq's hold on the large buffers sent zero-copy (see wait_for_send)
        self._trackers: list[zmq.MessageTracker] = []
        if count == 0:
            self.set_result([] if not single else None)

    # ------------------------------------------------------------- I/O thread side

    def _slot(self, msg_id: str, engine_id: int | None) -> int | None:
        """The slot a message about ``msg_id`` (from ``engine_id``) belongs to."""
        return self._slot_of.get(msg_id)

    def _metadata_slot(self, index: int) -> TaskMetadata:
        """The metadata dict of a slot, made on first use (most are never looked at)."""
        md = self._md[index]
        if md is not None:
            return md
        with _md_lock:
            md = self._md[index]
            if md is None:
                submitted = datetime.fromtimestamp(self._submitted, timezone.utc)
                md = new_metadata(submitted)
                ids = self.msg_ids
                md["msg_id"] = ids[index] if index < len(ids) else (ids[0] if ids else None)
                md.update(_request_fields(self._request))
                raw = self._raw[index]
                if raw is not None:
                    _apply_reply(md, *raw)
                self._md[index] = md
        return md

    def _on_reply(self, msg_id: str, msg: Parsed) -> bool:
        """Fill a slot from a reply (in the I/O thread); True once ``msg_id`` needs no more."""
        md = msg.metadata
        engine_id = md.get("engine_id")
        content = msg.content
        if engine_id is None:
            engine_id = (content.get("engine_info") or {}).get("engine_id")
        index = self._slot(msg_id, engine_id)
        if index is None or self._done_slots[index]:
            return self._msg_complete(msg_id)
        value, error = reply_outcome(content, msg.buffers, engine_id, msg_id, self._convert)
        self._values[index] = value  # with an error too: a chunk's per-element outcomes
        if error is not None:
            self._errors[index] = error
        raw = (md, content, engine_id, time.time())
        with _md_lock:
            slot_md = self._md[index]
            if slot_md is None:
                self._raw[index] = raw  # applied if anyone ever reads the metadata
        if slot_md is not None:
            _apply_reply(slot_md, *raw)
        self._slot_done(index)
        return self._msg_complete(msg_id)

    def _msg_complete(self, msg_id: str) -> bool:
        return True

    def _fail_slot(self, index: int, error: RemoteError) -> None:
        """Fail one slot locally (a dead engine the queues have not answered for yet)."""
        if self._done_slots[index]:
            return
        self._errors[index] = error
        md = self._metadata_slot(index)
        md["status"] = "error"
        md["engine_id"] = error.engine_id
        md["received"] = _now()
        md["outputs_ready"] = True
        self._slot_done(index)

    def _abandon(self, error: BaseException) -> None:
        """Fail every unfinished slot with ``error`` at once (the controller is gone):
        ``get()`` raises it, and iterators waiting on a slot wake and raise it too."""
        done_slots = self._done_slots
        for index, done in enumerate(done_slots):
            if not done:
                self._errors[index] = error
                done_slots[index] = True
                self._completed_order.append(index)
        self._remaining = 0
        for part in self._split_parts or ():
            part._from_parent()
        try:
            self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass  # finished or cancelled meanwhile
        self._notify()

    def _slot_done(self, index: int) -> None:
        self._done_slots[index] = True
        self._completed_order.append(index)
        self._remaining -= 1
        parts = self._split_parts
        if parts is not None:
            parts[index]._from_parent()
        if self._remaining == 0:
            self._finish()
        self._notify()

    def _notify(self) -> None:
        cond = self._progress
        if cond is not None:
            with cond:
                cond.notify_all()

    def _finish(self) -> None:
        errors = [e for e in self._errors if e is not None]
        try:
            if not errors:
                self.set_result(self._final_value())
            elif self._single and len(self._errors) == 1:
                self.set_exception(errors[0])
            else:
                # Only the engines' RemoteErrors get here: _abandon's error (the
                # controller's loss) fails the future itself and never calls _finish.
                self.set_exception(CompositeError(cast("list[RemoteError]", errors)))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user meanwhile
        # Done callbacks run once, and a done future calls new ones at once; kept, they
        # would tie this result to whoever registered them (a combined result holding
        # this one: a cycle only the cyclic GC frees, and with it the value, a pulled
        # 100 MB array say). Future keeps them by default, so drop them here.
        self._done_callbacks: list[Callable[[Any], object]] = []

    def _final_value(self) -> Any:
        if self._execute:
            return self._execute_replies()
        return self._values[0] if self._single else list(self._values)

    def _execute_replies(self) -> Any:
        replies = [
            ExecuteReply(self._metadata_slot(i), self._values[i]) for i in range(len(self._md))
        ]
        return replies[0] if self._single and len(replies) == 1 else replies

    def _on_iopub(self, msg_id: str, msg: Parsed) -> None:
        """Collect one iopub message whose parent is one of this result's tasks."""
        engine_id = msg.metadata.get("engine_id")
        index = self._slot(msg_id, engine_id)
        if index is None:
            return
        md = self._metadata_slot(index)
        msg_type = msg.header.get("msg_type")
        content = msg.content
        if engine_id is not None and md["engine_id"] is None:
            md["engine_id"] = engine_id
        if msg_type == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            md.append_stream(name, content.get("text", ""))
            if self._watch_streams:
                self._notify()
        elif msg_type == "status":
            state = content.get("execution_state")
            if state == "busy" and md["started"] is None:
                md["started"] = as_datetime(msg.header.get("date"))
            elif state == "idle":
                md["outputs_ready"] = True
                self._notify()
        elif msg_type == "data_message":  # corral.datapub.publish_data on the engine
            try:
                md["data"].update(deserialize(list(msg.buffers)))
            except Exception as exc:  # data this process cannot load: say so, go on
                md["data"]["_corral_error"] = f"{type(exc).__name__}: {exc}"
        elif msg_type in _OUTPUT_TYPES:
            # As in ipyparallel: ``outputs`` holds what was displayed; the cell's value
            # and its error have keys of their own (they come last, when they come).
            if msg_type == "execute_result":
                md["execute_result"] = content
            elif msg_type == "error":
                md["error"] = content
            else:
                md["outputs"].append({"msg_type": msg_type, **content})

    def _outputs_done(self) -> bool:
        return all(self._metadata_slot(i)["outputs_ready"] for i in range(len(self._md)))

    def _progress_condition(self) -> threading.Condition:
        if self._progress is None:
            self._progress = threading.Condition()
        return self._progress

    # ------------------------------------------------------------------ user side

    def get(
        self,
        timeout: float | None = None,
        return_exceptions: bool | None = None,
        return_when: Any = None,
    ) -> Any:
        """The result; waits up to ``timeout`` seconds (``None`` or ``-1``: forever; raises
        :class:`TimeoutError`).

        ``return_exceptions=True`` puts each failed task's :class:`RemoteError` where its
        value would be instead of raising. ``return_when=FIRST_EXCEPTION`` raises as soon
        as any task fails rather than after all have finished.
        """
        timeout = None if timeout is None or timeout < 0 else timeout
        if return_exceptions is None:
            return_exceptions = self._return_exceptions
        if return_when == FIRST_EXCEPTION and not self.done():
            cond = self._progress_condition()
            with cond:
                failed = cond.wait_for(
                    lambda: self.done() or any(e is not None for e in self._errors), timeout
                )
            if not failed:
                raise TimeoutError(f"{self!r} not ready within {timeout} s")
            if not self.done():
                first = next(e for e in self._errors if e is not None)
                if return_exceptions:
                    return first
                raise first
        if not return_exceptions:
            return self.result(timeout)
        try:
            return self.result(timeout)
        except RemoteError:
            return self._values_with_errors()

    def _slot_outcomes(self, index: int) -> list[Any]:
        """A slot's items, its error in place of the value where it failed."""
        error = self._errors[index]
        return self._slot_items(index) if error is None else [error]

    def _values_with_errors(self) -> Any:
        """Every task's value, or its error where it failed (for ``return_exceptions``)."""
        pairs = zip(self._values, self._errors, strict=True)
        values = [e if e is not None else v for v, e in pairs]
        return values[0] if self._single and len(values) == 1 else values

    def get_dict(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """The results as ``{engine_id: value}``.

        ``ValueError`` if one engine ran several of the tasks (a map, a load-balanced
        view), since the dict could not hold them all.
        """
        value = self.get(timeout, return_exceptions=return_exceptions)
        values = [value] if self._single and len(self._md) == 1 else list(value)
        engine_ids = self.engine_id
        if not isinstance(engine_ids, list):
            engine_ids = [engine_ids]
        if len(values) != len(engine_ids):
            raise ValueError(f"cannot key {len(values)} values by {len(engine_ids)} engines")
        out: dict[Any, Any] = {}
        for engine_id, item in zip(engine_ids, values, strict=True):
            if engine_id in out:
                count = engine_ids.count(engine_id)
                raise ValueError(f"cannot build a dict: {count} tasks ran on engine {engine_id}")
            out[engine_id] = item
        return out

    # ------------------------------------------------------- metadata as in ipyparallel

    def __getitem__(self, key: int | slice | str) -> Any:
        """``ar[i]``/``ar[a:b]``: values (the result must be ready); ``ar["key"]``: that
        metadata key, one value for a single task, else a list (need not be ready)."""
        if isinstance(key, str):
            if key in _TRAILING:
                self._settle_output()
            mds = [self._metadata_slot(i) for i in range(len(self._md))]
            if mds and key not in mds[0]:
                raise KeyError(key)
            values = [md[key] for md in mds]
            return values[0] if self._single and len(values) == 1 else values
        if isinstance(key, (int, slice)):
            if not self.done():
                raise TimeoutError(f"{self!r} is not ready")
            value = self.get(0, return_exceptions=self._return_exceptions)
            if self._single and len(self._md) == 1:
                raise TypeError("a single result has no items; use get()")
            return value[key]
        raise TypeError(f"result keys are int, slice or str, not {type(key).__name__}")

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not real attributes: metadata keys
        # (``ar.started``, ``ar.execute_result``, ``ar.outputs``, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except (KeyError, TimeoutError):
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            ) from None

    @staticmethod
    def timedelta(
        start: Any,
        end: Any,
        start_key: Callable[[list[Any]], Any] = min,
        end_key: Callable[[list[Any]], Any] = max,
    ) -> float:
        """Seconds from ``start`` to ``end``, as ipyparallel's ``AsyncResult.timedelta``:
        each a datetime, or several (a list, a tuple...) of which ``start_key`` picks the
        start (default: the earliest) and ``end_key`` the end (default: the latest)."""
        starts = [t for t in ([start] if isinstance(start, datetime) else start) if t is not None]
        ends = [t for t in ([end] if isinstance(end, datetime) else end) if t is not None]
        if not starts or not ends:
            raise ValueError("timestamps missing (the tasks have not finished?)")
        return float((end_key(ends) - start_key(starts)).total_seconds())

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        """One result of several (the inverse of :meth:`split`, ipyparallel 8): its
        value is the list of their tasks' values, in order; one result is returned as
        is. They must belong to the same client."""
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        if len(results) == 1:
            return results[0]
        client = results[0]._client
        if any(r._client is not client for r in results):
            raise ValueError("join takes results of one client")
        from .views import _Combined

        parts = [part for r in results for part in r.split()]
        return _Combined(client, parts, False, results[0].fname, False)

    def result_dict(self, timeout: float | None = None) -> Any:
        """ipyparallel's older name of :meth:`get_dict`."""
        return self.get_dict(timeout)

    @property
    def r(self) -> Any:
        """The value (waits): ipyparallel's shorthand for ``get()``."""
        return self.get()

    def wait_for_send(self, timeout: float | None = None) -> bool:
        """Wait until the request's data has left this process; whether it has.

        Large arrays are sent without a copy: libzmq reads them while it sends, after
        the view returned. Once this returns True the caller may change them (changed
        before, they reach the engine altered and the task is refused). Requests without
        large buffers were copied when sent: True at once. ``timeout`` in seconds (None:
        no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for tracker in self._trackers:
            if tracker.done:
                continue
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                tracker.wait(left)  # -1: no limit
            except zmq.NotDone:
                return False
        self._trackers = []  # all sent: nothing to hold on to
        return True

    @property
    def owner(self) -> bool:
        """Whether this result was made by this client's views (not fetched by msg_id)."""
        return self._request is not None

    def stream_output(self) -> Any:
        """A context manager printing the tasks' output as it arrives, while it is open
        (ipyparallel's ``with ar.stream_output(): ar.wait()``)."""
        import contextlib

        @contextlib.contextmanager
        def streaming() -> Iterator[None]:
            from .magics import Echo, ParallelMagics, in_ipython_kernel

            printer = ParallelMagics(None)
            # ipyparallel labels streamed output always, inline in a kernel
            printed = Echo(labelled=True, inline=in_ipython_kernel())
            stop = threading.Event()
            cond = self._progress_condition()
            self._watch_streams = True

            def pump() -> None:
                while not stop.is_set():
                    printer._print_streams(self, printed, final=False)
                    with cond:
                        cond.wait(0.1)

            thread = threading.Thread(target=pump, name="corral-stream-output", daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                self._notify()
                thread.join(5)
                self._watch_streams = False
                printer._print_streams(self, printed, final=self.done())

        return streaming()

    @property
    def sent(self) -> bool:
        """Whether the request's data has left this process (see :meth:`wait_for_send`)."""
        return all(tracker.done for tracker in self._trackers)

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last reply received (ready only)."""
        if not self.done():
            raise TimeoutError(f"{self!r} is not ready")
        mds = [self._metadata_slot(i) for i in range(len(self._md))]
        return self.timedelta([m["submitted"] for m in mds], [m["received"] for m in mds])

    @property
    def serial_time(self) -> float:
        """The sum of every task's run time on its engine (``completed - started``)."""
        if not self.done():
            raise TimeoutError(f"{self!r} is not ready")
        total = 0.0
        for index in range(len(self._md)):
            md = self._metadata_slot(index)
            if md["started"] is not None and md["completed"] is not None:
                total += (md["completed"] - md["started"]).total_seconds()
        return total

    def result(self, timeout: float | None = None) -> Any:
        """As :meth:`concurrent.futures.Future.result`; a timeout's ``TimeoutError`` says
        which tasks it waited for, and that no engine is registered if none is."""
        try:
            value = super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._timeout_message(timeout)) from None
        if self._execute:
            # An execute's output (its execute_result too) travels on iopub, apart from
            # the reply: wait a little for it, so ``execute(block=True)`` returns with the
            # ExecuteReplies complete.
            self._settle_output()
            # execute() marks its result after submitting, so a quick reply may have
            # finished it without the mark: the ExecuteReplies are made here, once.
            replies = self._replies
            if replies is None:
                replies = self._replies = self._execute_replies()
            return replies
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._timeout_message(timeout)) from None

    def _timeout_message(self, timeout: float | None) -> str:
        pending = self._pending_msg_ids()
        shown = ", ".join(pending[:5]) + (
            f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        )
        text = f"{len(pending)} task(s) not done after {timeout:g} s: {shown}"
        if not getattr(self._client, "_engines", True):
            text += "; no engines registered (tasks wait until one registers)"
        return text

    def wait(self, timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
        """Wait until ready (or ``timeout``; ``-1``/None: forever); whether it is ready.
        Never raises.

        With ``return_when=FIRST_COMPLETED`` or ``FIRST_EXCEPTION`` (ipyparallel 8), wait
        on the tasks one by one and return ``(done, not_done)``, sets of the results of
        :meth:`split`.
        """
        timeout = None if timeout is None or timeout < 0 else timeout
        if return_when != ALL_COMPLETED:
            done, not_done = concurrent.futures.wait(self.split(), timeout, return_when)
            return done, not_done
        done, _ = concurrent.futures.wait([self], timeout)
        return bool(done)

    def split(self) -> tuple[AsyncResult, ...]:
        """One result per task (per engine of a broadcast, per chunk of a map), each done
        when its task is, sharing this result's metadata (ipyparallel 8). For
        ``concurrent.futures.wait`` and friends, to act on partial results."""
        if len(self._done_slots) == 1:
            return (self,)
        parts = self._split_parts
        if parts is None:
            with _split_lock:
                parts = self._split_parts
                if parts is None:
                    made = tuple(_Part(self, i) for i in range(len(self._done_slots)))
                    self._split_parts = parts = made
            for index, part in enumerate(parts):
                if self._done_slots[index]:  # done before the parts existed
                    part._from_parent()
        return parts

    def _part_of(self, msg_id: str) -> AsyncResult:
        """The part of :meth:`split` for ``msg_id`` (this result if it has one task)."""
        index = self._slot_of.get(msg_id)
        if index is None or len(self.msg_ids) == 1:  # one task (a broadcast is one too)
            return self
        return self.split()[index]

    def ready(self) -> bool:
        """Whether every task has finished (successfully or not)."""
        return self.done()

    def successful(self) -> bool:
        """Whether every task succeeded; ``ValueError`` while not ready (as multiprocessing)."""
        if not self.done():
            raise ValueError(f"{self!r} is not ready")
        return not self.cancelled() and self.exception() is None

    @property
    def progress(self) -> int:
        """How many tasks have finished (for a map: elements, the unit ``len()`` counts)."""
        return len(self._completed_order)

    @property
    def elapsed(self) -> float:
        """Seconds since submission."""
        return time.time() - self._submitted

    def abort(self) -> None:
        """Ask the engines to drop this result's tasks that have not started yet.

        Returns once the engines have acknowledged. Those tasks then fail with
        :class:`TaskAborted`; tasks already running are not affected (see
        :meth:`interrupt`).
        """
        self._client._abort(self)

    def interrupt(self) -> None:
        """Send SIGINT to the engines running this result's unfinished tasks.

        The running task sees ``KeyboardInterrupt`` and fails with a :class:`RemoteError`.
        """
        self._client._interrupt(self)

    def cancel(self) -> bool:
        """Abort the tasks, then mark the future cancelled (False if already done)."""
        if self.done():
            return False
        self.abort()
        cancelled = super().cancel()
        if cancelled:
            # Tell waiters now: concurrent.futures.wait() and as_completed() count a
            # future as done once it is "cancelled and notified", which an executor does
            # when it would have run it; nothing else would, so they waited for ever.
            self.set_running_or_notify_cancel()
            for part in self._split_parts or ():
                if concurrent.futures.Future.cancel(part):  # their tasks went with this abort
                    concurrent.futures.Future.set_running_or_notify_cancel(part)
        return cancelled

    def _pending_msg_ids(self) -> list[str]:
        return [m for m in self.msg_ids if not self._done_slots[self._slot_of.get(m, 0)]]

    def _running_engines(self) -> set[int]:
        engines = set()
        for index, done in enumerate(self._done_slots):
            md = self._md[index]
            if not done and md is not None and md["engine_id"] is not None:
                engines.add(md["engine_id"])
        return engines

    @property
    def metadata(self) -> Any:
        """Per task: engine_id, submitted/started/completed/received, status, stdout, stderr,
        outputs. One dict for a single task, a list otherwise."""
        mds = [self._metadata_slot(i) for i in range(len(self._md))]
        return mds[0] if self._single and len(mds) == 1 else mds

    @property
    def engine_id(self) -> Any:
        md = self.metadata
        return md["engine_id"] if isinstance(md, dict) else [m["engine_id"] for m in md]

    @property
    def stdout(self) -> Any:
        """What the tasks printed; once they are done, all of it (see
        :meth:`_settle_output`)."""
        self._settle_output()
        md = self.metadata
        return md["stdout"] if isinstance(md, dict) else [m["stdout"] for m in md]

    @property
    def stderr(self) -> Any:
        """As :attr:`stdout`, for standard error."""
        self._settle_output()
        md = self.metadata
        return md["stderr"] if isinstance(md, dict) else [m["stderr"] for m in md]

    def _settle_output(self) -> None:
        """Once the tasks are done, wait (up to :data:`EXECUTE_OUTPUT_WAIT`) for output
        still on its way. Output travels on iopub, apart from the reply, so right after
        ``get()`` a task's last megabytes of text could still be in flight, and
        ``ar.stdout`` read then was cut short with nothing to say so. While the tasks
        run, what has arrived is returned at once (progress)."""
        if (
            self.done()
            and not self.cancelled()
            and not isinstance(self.exception(0), (ControllerLost, ConnectionAbortedError))
            and not self._outputs_done()
            and threading.current_thread().name != _IO_THREAD
        ):  # (cancelled, or its client lost or closed: no more output can come)
            self.wait_for_output(EXECUTE_OUTPUT_WAIT)

    def wait_for_output(self, timeout: float | None = None) -> bool:
        """Wait until every task's output has arrived (its engine went ``idle``).

        Output travels on iopub, apart from the reply, so it can trail the result by a
        moment. Returns whether all output is in.
        """
        cond = self._progress_condition()
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            while not self._outputs_done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                cond.wait(remaining)
        return True

    def display_outputs(
        self,
        groupby: str = "type",
        result_only: bool = False,
        timeout: float = 5.0,
        file: IO[str] | None = None,
    ) -> None:
        """Print each task's stdout, stderr and rich outputs, labelled by engine (a single
        task's output is printed as is): as ipyparallel's, a ``[stdout:0] `` line, then
        that engine's text as it was printed.

        ``groupby``, as ipyparallel's: ``"type"`` (the default) prints every task's
        stdout, then every stderr, then the outputs; ``"engine"`` prints each engine's
        output together, engine after engine (in engine order; an engine's tasks in
        submission order);
        ``"order"`` is ``"type"`` with the outputs collated: every task's first output,
        then every second one, and so on (each task making several plots, say).

        ``result_only=True``, as ipyparallel's, shows only the tasks' values
        (``execute_result``): no streams, displays or errors, which a streaming run
        already showed.
        """
        if groupby not in ("engine", "type", "order"):
            raise ValueError(f"groupby must be 'engine', 'type' or 'order', not {groupby!r}")
        self.wait(timeout)
        self.wait_for_output(timeout)
        out = file or sys.stdout
        err = file or sys.stderr
        rich = _RichOutputs.here() if file is None else None
        tasks = [self._metadata_slot(i) for i in range(len(self._md))]
        if result_only:
            tasks = [_value_only(md) for md in tasks]
        if self._single and len(tasks) == 1:  # one engine: as it was printed, unlabelled
            _print_single(tasks[0], out, err, rich)
            out.flush()
            return
        blocks = StreamBlocks()
        if groupby == "engine":
            tasks.sort(key=_engine_order)  # stable: an engine's tasks stay in order
            for md in tasks:
                _print_streams(md, "stdout", out, blocks)
                _print_streams(md, "stderr", err, blocks)
                for output in _shown(md):
                    _print_output(md, output, out, rich)
        else:
            for md in tasks:
                _print_streams(md, "stdout", out, blocks)
            for md in tasks:
                _print_streams(md, "stderr", err, blocks)
            shown = [(md, _shown(md)) for md in tasks]
            if groupby == "type":
                for md, outputs in shown:
                    for output in outputs:
                        _print_output(md, output, out, rich)
            else:
                for rank in range(max((len(outputs) for _, outputs in shown), default=0)):
                    for md, outputs in shown:
                        if rank < len(outputs):
                            _print_output(md, outputs[rank], out, rich)
        out.flush()

    def wait_interactive(
        self,
        interval: float = 0.1,
        timeout: float | None = -1,
        widget: bool | None = None,
        return_when: str = ALL_COMPLETED,
        file: IO[str] | None = None,
    ) -> None:
        """Wait with a tqdm progress bar of finished tasks (on stderr by default), for at
        most ``timeout`` seconds (``-1``/None: until done), as ipyparallel's.

        ``return_when=FIRST_COMPLETED`` or ``FIRST_EXCEPTION`` stops at the first task
        done, or failed. ``widget`` is accepted for ipyparallel code: ``tqdm.auto``
        already draws a widget in a notebook and text elsewhere.
        """
        from tqdm.auto import tqdm

        if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
            raise ValueError(f"unrecognized return_when={return_when!r}")
        total = len(self)  # the unit progress counts: tasks, or a map's elements
        forever = timeout is None or timeout < 0
        deadline = None if forever else time.monotonic() + cast(float, timeout)
        with tqdm(total=total, desc=self.fname or "tasks", unit="tasks", file=file) as bar:
            while True:
                done = self._waited_enough(interval, return_when)
                bar.update(self.progress - bar.n)
                if done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break

    def _waited_enough(self, interval: float, return_when: str) -> bool:
        """Wait up to ``interval`` seconds; whether :meth:`wait_interactive` may stop."""
        if return_when == ALL_COMPLETED:
            return bool(self.wait(interval))
        done, not_done = self.wait(interval, return_when)
        if not not_done:
            return True
        if return_when == FIRST_COMPLETED:
            return bool(done)
        return any(not d.cancelled() and d.exception() is not None for d in done)

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio  # only for awaiting: 35 ms of import otherwise

        return asyncio.wrap_future(self).__await__()

    # ---------------------------------------------------------------- iteration

    def _slot_items(self, index: int) -> list[Any]:
        return [self._values[index]]

    def __len__(self) -> int:
        return len(self._done_slots)

    def __iter__(self) -> Iterator[Any]:
        """The values in task order, each as soon as it (and those before it) is done."""
        return self._iter(ordered=True)

    def _iter(self, ordered: bool) -> Iterator[Any]:
        cond = self._progress_condition()
        total = len(self._done_slots)
        for position in range(total):
            with cond:
                if ordered:

                    def slot_done(p: int = position) -> bool:
                        return self._done_slots[p]

                    cond.wait_for(slot_done)
                    index = position
                else:

                    def completed(p: int = position) -> bool:
                        return len(self._completed_order) > p

                    cond.wait_for(completed)
                    index = self._completed_order[position]
            error = self._errors[index]
            if error is None:
                yield from self._slot_items(index)
            elif self._return_exceptions:
                yield from self._slot_outcomes(index)
            else:
                raise self._iteration_error(error)

    def _iteration_error(self, error: BaseException) -> BaseException:
        """What iterating raises for a failed task: the :class:`CompositeError` that
        ``get()`` raises for a request of several tasks (ipyparallel raises it either way,
        so ``except CompositeError`` around a loop over a map catches it)."""
        if self._single or not isinstance(error, RemoteError):
            return error
        if isinstance(error, CompositeError):
            return error
        return CompositeError([error])

    def __repr__(self) -> str:
        state = "finished" if self.done() else "pending"
        name = next(c.__name__ for c in type(self).__mro__ if not c.__name__.startswith("_"))
        return f"<{name}({self.fname or ''}): {state}>"


class _Part(AsyncResult):
    """One slot of another result, as :meth:`AsyncResult.split` hands it out: its
    metadata and progress condition are the parent's, its value is copied when the
    parent's slot is done."""

    def __init__(self, parent: AsyncResult, index: int) -> None:
        ids = parent.msg_ids
        msg_id = ids[index] if index < len(ids) else ids[0]
        targets = parent._targets
        target = [targets[index]] if targets is not None and index < len(targets) else None
        super().__init__(parent._client, [msg_id], fname=parent.fname, targets=target)
        self._parent = parent
        self._index = index
        self._submitted = parent._submitted
        self._execute = parent._execute
        self._return_exceptions = parent._return_exceptions
        self._md[0] = parent._metadata_slot(index)
        self._progress = parent._progress_condition()
        self._copied = False

    def _from_parent(self) -> None:
        with _split_lock:
            if self._copied:
                return
            self._copied = True
        parent, index = self._parent, self._index
        self._values[0] = parent._values[index]
        self._errors[0] = parent._errors[index]
        self._slot_done(0)

    def _pending_msg_ids(self) -> list[str]:
        return [] if self.done() else list(self.msg_ids)


class AsyncMapResult(AsyncResult):
    """The result of a map: one slot per chunk, one value per element.

    ``get()`` returns the flat list in input order; iterating yields elements as their
    chunks finish, in order (``ordered=True``, the default) or as completed.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        client: Any,
        msg_ids: list[str],
        *,
        ordered: bool = True,
        length: int | None = None,
        chunk_sizes: list[int] | None = None,
        **kw: Any,
    ):
        self.ordered = ordered
        self._length = length
        #: Elements per chunk (slot), when known: progress counts elements, as len() does.
        self._chunk_sizes = chunk_sizes
        kw.pop("single", None)
        super().__init__(client, msg_ids, single=False, **kw)

    @property
    def progress(self) -> int:
        """How many elements are done (``len()`` counts elements too)."""
        sizes = self._chunk_sizes
        if sizes is None:
            return len(self._completed_order)
        return sum(sizes[i] for i in list(self._completed_order))

    def _slot_outcomes(self, index: int) -> list[Any]:
        """A chunk's values, each failed element's error in its place; a chunk that
        failed as a whole (run without ``return_exceptions``, or lost with its engine)
        has its error for every element."""
        chunk, error = self._values[index], self._errors[index]
        if error is None or isinstance(chunk, list):
            return list(chunk or ())
        sizes = self._chunk_sizes
        return [error] * (sizes[index] if sizes is not None else 1)

    def _values_with_errors(self) -> Any:
        out: list[Any] = []
        for index in range(len(self._values)):
            out.extend(self._slot_outcomes(index))
        return out

    def _final_value(self) -> Any:
        out: list[Any] = []
        for chunk in self._values:
            out.extend(chunk)
        return out

    def _slot_items(self, index: int) -> list[Any]:
        return list(self._values[index] or ())

    def __len__(self) -> int:
        return self._length if self._length is not None else len(self._done_slots)

    def __iter__(self) -> Iterator[Any]:
        return self._iter(self.ordered)


class BroadcastResult(AsyncResult):
    """One request answered by several engines: one slot per target engine."""

    def __init__(self, client: Any, msg_id: str, targets: list[int], **kw: Any) -> None:
        self._target_slot = {engine: index for index, engine in enumerate(targets)}
        super().__init__(client, [msg_id], single=False, targets=targets, slots=len(targets), **kw)

    def _slot(self, msg_id: str, engine_id: int | None) -> int | None:
        if msg_id != self.msg_ids[0]:
            return None
        if engine_id is not None:
            return self._target_slot.get(engine_id)
        # A queue's own error reply about a target it does not know names no engine:
        # charge it to the first unanswered target the client does not know either.
        open_slots = [(e, i) for e, i in self._target_slot.items() if not self._done_slots[i]]
        live = self._client._engines
        for engine, index in open_slots:
            if engine not in live:
                return index
        return open_slots[0][1] if open_slots else None

    def _metadata_slot(self, index: int) -> TaskMetadata:
        md = super()._metadata_slot(index)
        if md["engine_id"] is None and self._targets is not None:
            md["engine_id"] = self._targets[index]
        return md

    def _msg_complete(self, msg_id: str) -> bool:
        return self._remaining == 0

    def _pending_msg_ids(self) -> list[str]:
        return [] if self.done() else list(self.msg_ids)

    def _running_engines(self) -> set[int]:
        return {e for e, i in self._target_slot.items() if not self._done_slots[i]}

    def _fail_engine(self, engine_id: int, error: RemoteError) -> None:
        index = self._target_slot.get(engine_id)
        if index is not None:
            self._fail_slot(index, error)


class ExecuteReply:
    """What one engine answered to an ``execute``: ipyparallel's ``ExecuteReply``.

    ``execute_result`` is the value of the cell's last expression as a display dict
    (``{"data": {"text/plain": ...}, ...}``) or None; ``execution_count`` and
    ``metadata`` as on the reply. It reads the task's metadata, so output that trails the
    reply shows up here once it arrives.

    .. versionadded:: 0.1
    """

    def __init__(self, metadata: dict[str, Any], value: Any = None) -> None:
        self.metadata = metadata
        self._value = value

    @property
    def execute_result(self) -> dict[str, Any] | None:
        return self.metadata.get("execute_result")  # type: ignore[no-any-return]

    @property
    def execution_count(self) -> int | None:
        result = self.execute_result
        if result is not None and result.get("execution_count") is not None:
            return int(result["execution_count"])
        content = self.metadata.get("reply_content") or {}
        count = content.get("execution_count")
        return int(count) if isinstance(count, int) else None

    @property
    def engine_id(self) -> int | None:
        return self.metadata.get("engine_id")  # type: ignore[no-any-return]

    def __getitem__(self, key: str) -> Any:
        return self.metadata[key]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.metadata[name]
        except KeyError:
            raise AttributeError(name) from None

    def _plain(self) -> str:
        result = self.execute_result
        if result is None:
            return ""
        return str((result.get("data") or {}).get("text/plain", ""))

    def __repr__(self) -> str:
        text = self._plain()
        prefix = f"Out[{self.engine_id}:{self.execution_count}]: "
        return prefix + text if text else f"<ExecuteReply[{self.execution_count}]>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        result = self.execute_result
        if result is None:
            return {"text/plain": repr(self)}
        data = dict(result.get("data") or {})
        data["text/plain"] = repr(self)
        return data

    def _repr_mime_(self, mime: str) -> Any:
        """The cell value's ``mime`` representation (with its metadata, if any), as
        ipyparallel's ``_repr_html_`` & co. return it; None if there is none."""
        result = self.execute_result
        if result is None:
            return None
        data = (result.get("data") or {}).get(mime)
        if data is None:
            return None
        metadata = (result.get("metadata") or {}).get(mime)
        return (data, metadata) if metadata else data

    def _repr_html_(self) -> Any:
        return self._repr_mime_("text/html")

    def _repr_latex_(self) -> Any:
        return self._repr_mime_("text/latex")

    def _repr_json_(self) -> Any:
        return self._repr_mime_("application/json")

    def _repr_javascript_(self) -> Any:
        return self._repr_mime_("application/javascript")

    def _repr_png_(self) -> Any:
        return self._repr_mime_("image/png")

    def _repr_jpeg_(self) -> Any:
        return self._repr_mime_("image/jpeg")

    def _repr_svg_(self) -> Any:
        return self._repr_mime_("image/svg+xml")

    def _repr_markdown_(self) -> Any:
        return self._repr_mime_("text/markdown")


def display_id_of(output: dict[str, Any]) -> str | None:
    """The id a display was shown under (``display(..., display_id=...)``), if any."""
    display_id = (output.get("transient") or {}).get("display_id")
    return display_id if isinstance(display_id, str) else None


def folded_outputs(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A task's displays as a frontend ends up showing them: an ``update_display_data``
    replaces, in place, what the task's earlier display of the same id showed, and adds
    no output (the engine's code updated one display; showing the old value, then the new
    one under it, is two outputs the user never made). An update of a display the task
    did not show (an earlier task's) stays, as an update, for the caller to forward."""
    folded: list[dict[str, Any]] = []
    shown_at: dict[str, list[int]] = {}
    for output in outputs:
        display_id = display_id_of(output)
        if output["msg_type"] == "update_display_data" and display_id in shown_at:
            for index in shown_at[display_id]:
                folded[index] = {**output, "msg_type": "display_data"}
            continue
        if output["msg_type"] == "display_data" and display_id is not None:
            shown_at.setdefault(display_id, []).append(len(folded))
        folded.append(output)
    return folded


def _shown(md: dict[str, Any]) -> list[dict[str, Any]]:
    """What a task showed, in order: its displays (updates folded in), then its value
    or its error."""
    shown = folded_outputs(md["outputs"])
    for kind in ("execute_result", "error"):
        content = md.get(kind)
        if content is not None:
            shown.append({"msg_type": kind, **content})
    return shown


def _value_only(md: TaskMetadata) -> TaskMetadata:
    """What ``display_outputs(result_only=True)`` shows of a task: its value alone."""
    shown = TaskMetadata({key: md[key] for key in md})
    shown.update(stdout="", stderr="", outputs=[], error=None)
    return shown


def _engine_order(md: dict[str, Any]) -> tuple[bool, int]:
    """Sort key: engines by id, a task no engine ran (failed before) last."""
    engine = md.get("engine_id")
    return (engine is None, engine if isinstance(engine, int) else 0)


class StreamBlocks:
    """Engines' stream text in ipyparallel's layout: a label line (``[stdout:0] ``) each
    time the engine or stream changes, the text as printed under it (lines unprefixed).

    One per display (a ``%px`` cell, a :meth:`AsyncResult.display_outputs` call): it
    remembers the last label, so text that continues the same engine's stream gets none,
    and whether the text so far ended a line, so a new label starts on a line of its own.
    ``inline``: the text starts on the label's line (``[stdout:0] hello``), as
    ipyparallel's ``%px`` shows streams in a kernel (a notebook, a console).
    """

    __slots__ = ("last", "at_line_start", "inline")

    def __init__(self, inline: bool = False) -> None:
        self.last = ""
        self.at_line_start = True
        self.inline = inline

    def write(self, text: str, label: str, out: IO[str]) -> None:
        """Write ``text`` under ``label`` (``""``: unlabelled, a single engine's way)."""
        if not text:
            return
        if label == self.last:
            label = ""
        elif label:
            self.last = label
        head = ""
        if label:  # at a line start; on a line of its own unless inline
            head = label if self.inline else f"{label}\n"
            if not self.at_line_start:
                head = f"\n{head}"
        self.at_line_start = text.endswith("\n")
        out.write(head + text)

    def end(self, out: IO[str]) -> None:
        """End the last line, if the text left one open."""
        if not self.at_line_start:
            out.write("\n")
            self.at_line_start = True


def _print_streams(md: dict[str, Any], stream: str, out: IO[str], blocks: StreamBlocks) -> None:
    """A task's ``stdout`` or ``stderr`` (if any) under its engine's label."""
    blocks.write(md[stream], f"[{stream}:{md['engine_id']}] ", out)
    blocks.end(out)


class _RichOutputs:
    """Shows a task's displays and values in the output area of the cell that asks (a
    notebook: HTML, images, a matplotlib figure made on an engine), as ipyparallel's
    ``display_outputs`` republishes them, rather than as their ``text/plain`` line."""

    __slots__ = ()

    @staticmethod
    def here() -> _RichOutputs | None:
        """One where displays reach a frontend (corral's interpreter, an IPython shell);
        None in a plain program, where :func:`corral.core.display.display` has nobody to
        show them to and text is all there is."""
        from corral.core.display import get_current

        if get_current() is not None:
            return _RichOutputs()
        ipython = sys.modules.get("IPython")
        if ipython is not None and ipython.get_ipython() is not None:  # type: ignore[attr-defined]
            return _RichOutputs()
        return None

    def show(self, md: dict[str, Any], output: dict[str, Any]) -> bool:
        """Show one display or value; False for what stays text (errors).

        A display keeps its engine's display id, so that the engine updating it later
        (from another task) updates it here too; such an update is forwarded as one."""
        from corral.core.display import display, update_display

        if output["msg_type"] == "execute_result":
            display(ExecuteReply(md))  # ``Out[0:3]: ...``, with its rich forms
            return True
        if output["msg_type"] not in ("display_data", "update_display_data"):
            return False
        data, metadata = output.get("data") or {}, output.get("metadata") or {}
        display_id = display_id_of(output)
        if output["msg_type"] == "update_display_data" and display_id is not None:
            update_display(data, display_id=display_id, raw=True, metadata=metadata)
        else:
            display(data, raw=True, metadata=metadata, display_id=display_id)
        return True

    @staticmethod
    def label(text: str) -> None:
        """An engine's label (``[output:0]``) as a display of its own, as ipyparallel
        shows it: as stream text, a frontend merges it into the stdout printed before."""
        from corral.core.display import display

        display({"text/plain": text}, raw=True)


def _print_output(
    md: dict[str, Any], output: dict[str, Any], out: IO[str], rich: _RichOutputs | None = None
) -> None:
    """One display, value or error a task showed, under its engine's label."""
    engine = md["engine_id"]
    text = (output.get("data") or {}).get("text/plain")
    if rich is not None and output["msg_type"] != "error":
        # A value's own prompt names its engine; an update adds no output to label.
        if output["msg_type"] == "display_data":
            out.flush()  # the text before, which takes another way to the frontend
            rich.label(f"[output:{engine}]")
        if rich.show(md, output):
            return
    if text is not None:
        label = "Out" if output["msg_type"] == "execute_result" else "Display"
        out.write(f"[{label}:{engine}] {text}\n")
    elif output["msg_type"] == "error":
        out.write(f"[error:{engine}] {output.get('ename')}: {output.get('evalue')}\n")


def _print_single(
    md: dict[str, Any], out: IO[str], err: IO[str], rich: _RichOutputs | None = None
) -> None:
    """One engine's output printed as it was printed there (ipyparallel's single result)."""
    if md["stdout"]:
        out.write(md["stdout"])
    if md["stderr"]:
        err.write(md["stderr"])
    for output in _shown(md):
        if rich is not None:
            out.flush()  # the text before the display, which takes another way out
            err.flush()
            if rich.show(md, output):
                continue
        text = (output.get("data") or {}).get("text/plain")
        if text is not None:
            out.write(f"{text}\n")
        elif output["msg_type"] == "error":
            out.write(f"{output.get('ename')}: {output.get('evalue')}\n")


def as_completed(
    results: Iterable[AsyncResult], timeout: float | None = None
) -> Iterator[AsyncResult]:
    """Yield results as they finish (any order); ``TimeoutError`` after ``timeout``.

    .. versionadded:: 0.1
    """
    # as_completed yields the futures it was given: AsyncResults here.
    yield from cast(
        "Iterator[AsyncResult]", concurrent.futures.as_completed(list(results), timeout)
    )


def reply_outcome(
    content: dict[str, Any],
    buffers: Sequence[Any],
    engine_id: int | None,
    msg_id: str,
    convert: Callable[[Any], Any] | None = None,
) -> tuple[Any, RemoteError | None]:
    """``(value, None)`` or ``(None, error)`` for one reply: the one rule for replies that
    come through the queues (:class:`AsyncResult`) and over an engine's local socket.

    A map chunk whose elements failed one by one (:class:`~.mapping.ChunkOutcome`) is
    both: its values with each failed element's error in place, and the first error."""
    if content.get("status", "ok") != "ok":
        return None, error_from_content(content, engine_id, msg_id)
    if not buffers:
        return None, None
    try:
        value = deserialize(buffers)
    except Exception as exc:  # a result this process cannot load
        return None, RemoteError(type(exc).__name__, str(exc), "", engine_id, msg_id=msg_id)
    if value.__class__ is ChunkOutcome:
        return _split_outcome(value, engine_id, msg_id)
    return (value if convert is None else convert(value)), None


def _split_outcome(
    outcome: ChunkOutcome, engine_id: int | None, msg_id: str
) -> tuple[list[Any], RemoteError]:
    """A chunk's values with a :class:`RemoteError` where each element failed, and the
    first of those (the chunk's error: ``get()`` raises, unless ``return_exceptions``)."""
    values = list(outcome.values)
    first: RemoteError | None = None
    for position in sorted(outcome.failures):
        error = error_from_content(outcome.failures[position], engine_id, msg_id)
        values[position] = error
        first = first or error
    assert first is not None  # an outcome is made only when something failed
    return values, first


def msg_ids_of(jobs: Any) -> list[str]:
    """msg_ids from a msg_id, an AsyncResult, or an iterable of either."""
    if jobs is None:
        return []
    if isinstance(jobs, str):
        return [jobs]
    if isinstance(jobs, AsyncResult):
        return list(jobs.msg_ids)
    out: list[str] = []
    for job in jobs:
        out.extend(msg_ids_of(job))
    return out


def engine_death_error(engine_id: int, msg_id: str | None = None, cause: str = "") -> EngineError:
    """The error a task gets when the hub says its engine died before replying; ``cause``
    is what the engine's monitor saw (a signal, the OOM killer, a memory limit, ...)."""
    why = f": {cause}" if cause else ""
    return EngineError(
        "EngineError",
        f"engine {engine_id} died before the task finished{why}",
        "",
        engine_id,
        msg_id=msg_id,
    )


#: A callable run by the I/O thread when a result completes (used by maps and imap).
DoneCallback = Callable[[AsyncResult], None]
