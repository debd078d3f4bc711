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
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from corral.core.serialize import deserialize

from .errors import CompositeError, EngineError, RemoteError, error_from_content

if TYPE_CHECKING:
    from .messages import Parsed

__all__ = ["AsyncMapResult", "AsyncResult", "as_completed"]

_OUTPUT_TYPES = ("display_data", "execute_result", "error", "update_display_data")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# Guards the lazy creation of metadata dicts (I/O thread vs readers); held for
# microseconds, so one lock for all results is enough.
_md_lock = threading.Lock()


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
    md["started"] = reply_md.get("started")
    md["completed"] = reply_md.get("completed")
    md["status"] = content.get("status", "ok")
    md["received"] = datetime.fromtimestamp(received, timezone.utc)
    md["reply_content"] = content
    # Engines count the iopub messages a task published; with none, no ``idle`` follows.
    # A dead engine says nothing more either.
    if reply_md.get("outputs") == 0 or content.get("ename") == "EngineError":
        md["outputs_ready"] = True


def new_metadata(submitted: datetime | None = None) -> dict[str, Any]:
    """The metadata of one task before anything is known about it."""
    return {
        "msg_id": None,
        "engine_id": None,
        "engine_uuid": None,
        "status": None,
        "submitted": submitted,
        "started": None,
        "completed": None,
        "received": None,
        "stdout": "",
        "stderr": "",
        "outputs": [],
        "execute_result": None,
        "error": None,
        "outputs_ready": False,
    }


class AsyncResult(concurrent.futures.Future):  # type: ignore[type-arg]
    """The pending result of one request (one or more tasks).

    ``get()`` returns the value (one value for a single task, a list otherwise) or raises
    :class:`RemoteError` (:class:`CompositeError` when several tasks of the request
    failed). Never constructed by users: views return it.

    .. versionadded:: 0.1
    """

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
        self._errors: list[RemoteError | None] = [None] * count
        self._md: list[dict[str, Any] | None] = [None] * count
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
        if count == 0:
            self.set_result([] if not single else None)

    # ------------------------------------------------------------- I/O thread side

    def _slot(self, msg_id: str, engine_id: int | None) -> int | None:
        """The slot a message about ``msg_id`` (from ``engine_id``) belongs to."""
        return self._slot_of.get(msg_id)

    def _metadata_slot(self, index: int) -> dict[str, Any]:
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
        if error is None:
            self._values[index] = value
        else:
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
                self._errors[index] = error  # type: ignore[assignment]
                done_slots[index] = True
                self._completed_order.append(index)
        self._remaining = 0
        try:
            self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass  # finished or cancelled meanwhile
        self._notify()

    def _slot_done(self, index: int) -> None:
        self._done_slots[index] = True
        self._completed_order.append(index)
        self._remaining -= 1
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
                self.set_exception(CompositeError(errors))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user meanwhile
        # Done callbacks run once, and a done future calls new ones at once; kept, they
        # would tie this result to whoever registered them (a combined result holding
        # this one: a cycle only the cyclic GC frees, and with it the value, a pulled
        # 100 MB array say). Future keeps them by default, so drop them here.
        self._done_callbacks = []

    def _final_value(self) -> Any:
        return self._values[0] if self._single else list(self._values)

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
            md[name] += content.get("text", "")
        elif msg_type == "status":
            state = content.get("execution_state")
            if state == "busy" and md["started"] is None:
                md["started"] = msg.header.get("date")
            elif state == "idle":
                md["outputs_ready"] = True
                self._notify()
        elif msg_type in _OUTPUT_TYPES:
            md["outputs"].append({"msg_type": msg_type, **content})
            if msg_type == "execute_result":
                md["execute_result"] = content
            elif msg_type == "error":
                md["error"] = content

    def _outputs_done(self) -> bool:
        return all(self._metadata_slot(i)["outputs_ready"] for i in range(len(self._md)))

    def _progress_condition(self) -> threading.Condition:
        if self._progress is None:
            self._progress = threading.Condition()
        return self._progress

    # ------------------------------------------------------------------ user side

    def get(self, timeout: float | None = None) -> Any:
        """The result; waits up to ``timeout`` seconds (raises :class:`TimeoutError`)."""
        return self.result(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """As :meth:`concurrent.futures.Future.result`; a timeout's ``TimeoutError`` says
        which tasks it waited for, and that no engine is registered if none is."""
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._timeout_message(timeout)) from None

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

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until ready (or ``timeout``); whether it is ready. Never raises."""
        done, _ = concurrent.futures.wait([self], timeout)
        return bool(done)

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
        """How many tasks have finished."""
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
        return super().cancel()

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
        md = self.metadata
        return md["stdout"] if isinstance(md, dict) else [m["stdout"] for m in md]

    @property
    def stderr(self) -> Any:
        md = self.metadata
        return md["stderr"] if isinstance(md, dict) else [m["stderr"] for m in md]

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

    def display_outputs(self, timeout: float = 5.0, file: IO[str] | None = None) -> None:
        """Print each task's stdout, stderr and rich outputs, labelled by engine."""
        self.wait(timeout)
        self.wait_for_output(timeout)
        out = file or sys.stdout
        for md in (self._metadata_slot(i) for i in range(len(self._md))):
            engine = md["engine_id"]
            if md["stdout"]:
                out.write(f"[stdout:{engine}] {md['stdout']}")
                if not md["stdout"].endswith("\n"):
                    out.write("\n")
            if md["stderr"]:
                err = file or sys.stderr
                err.write(f"[stderr:{engine}] {md['stderr']}")
                if not md["stderr"].endswith("\n"):
                    err.write("\n")
            for output in md["outputs"]:
                data = output.get("data") or {}
                text = data.get("text/plain")
                if text is not None:
                    label = "Out" if output["msg_type"] == "execute_result" else "Display"
                    out.write(f"[{label}:{engine}] {text}\n")
                elif output["msg_type"] == "error":
                    out.write(f"[error:{engine}] {output.get('ename')}: {output.get('evalue')}\n")
        out.flush()

    def wait_interactive(
        self, interval: float = 0.1, timeout: float | None = None, file: IO[str] | None = None
    ) -> None:
        """Wait with a tqdm progress bar of finished tasks (on stderr by default)."""
        from tqdm.auto import tqdm

        total = len(self._done_slots)
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=total, desc=self.fname or "tasks", unit="task", file=file) as bar:
            while True:
                done = self.wait(interval)
                bar.update(self.progress - bar.n)
                if done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break

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
                    cond.wait_for(lambda p=position: self._done_slots[p])
                    index = position
                else:
                    cond.wait_for(lambda p=position: len(self._completed_order) > p)
                    index = self._completed_order[position]
            error = self._errors[index]
            if error is not None:
                raise error
            yield from self._slot_items(index)

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.progress}/{len(self)} tasks"
        return f"<{type(self).__name__} {self.fname or ''}: {state}>"


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
        **kw: Any,
    ):
        self.ordered = ordered
        self._length = length
        super().__init__(client, msg_ids, single=False, **kw)

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

    def _metadata_slot(self, index: int) -> dict[str, Any]:
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


def as_completed(
    results: Iterable[AsyncResult], timeout: float | None = None
) -> Iterator[AsyncResult]:
    """Yield results as they finish (any order); ``TimeoutError`` after ``timeout``.

    .. versionadded:: 0.1
    """
    yield from concurrent.futures.as_completed(list(results), timeout)


def reply_outcome(
    content: dict[str, Any],
    buffers: Sequence[Any],
    engine_id: int | None,
    msg_id: str,
    convert: Callable[[Any], Any] | None = None,
) -> tuple[Any, RemoteError | None]:
    """``(value, None)`` or ``(None, error)`` for one reply: the one rule for replies that
    come through the queues (:class:`AsyncResult`) and over an engine's local socket."""
    if content.get("status", "ok") != "ok":
        return None, error_from_content(content, engine_id, msg_id)
    if not buffers:
        return None, None
    try:
        value = deserialize(buffers)
        return (value if convert is None else convert(value)), None
    except Exception as exc:  # a result this process cannot load
        return None, RemoteError(type(exc).__name__, str(exc), "", engine_id, msg_id=msg_id)


def engine_death_error(engine_id: int, msg_id: str | None = None) -> EngineError:
    """The error a task gets when the hub says its engine died before replying."""
    return EngineError(
        "EngineError",
        f"engine {engine_id} died before the task finished",
        "",
        engine_id,
        msg_id=msg_id,
    )


#: A callable run by the I/O thread when a result completes (used by maps and imap).
DoneCallback = Callable[[AsyncResult], None]
