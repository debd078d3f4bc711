"""Views: how work is addressed to engines.

* :class:`DirectView` names its engines: every apply runs on each of them, maps are cut
  into one block per engine, and the engines' namespaces can be read and written
  (push, pull, scatter, gather, ``view["x"]``).
* :class:`LoadBalancedView` lets the controller's scheduler pick an idle engine for each
  task; maps are cut into chunks that the scheduler spreads as engines free up.
* :class:`BroadcastView` sends one message that every target engine runs: the cheapest
  way to run the same thing everywhere on a large cluster.

Flags (``block``, ``targets``, ``retries``, ``timeout``, ``after``, ``follow``,
``label``) live on the view; :meth:`View.temp_flags` changes them for a ``with`` block
only. ``label`` names the view's tasks in the hub's task database, as ipyparallel's does:
``client.db_query({"label": "x"})`` finds them, ``ar.metadata["label"]`` says it.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import logging
import queue
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from corral.core.serialize import pack_apply, serialize

from .asyncresult import AsyncMapResult, AsyncResult, wait_all_sent
from .dependencies import Reference, dependency_field, dependent, with_references
from .errors import ControllerLost, NoEnginesRegistered, RemoteError
from .link import ClientLink
from .mapping import (
    IMapIterator,
    auto_chunksize,
    chunk_slices,
    iter_chunks,
    map_chunk,
    map_chunk_outcomes,
    partition_slices,
    resolve_length,
)
from .messages import encode_json
from .taskmeta import TaskMetadata

__all__ = ["BroadcastView", "DirectView", "LoadBalancedView", "View"]

if TYPE_CHECKING:
    import concurrent.futures

    from .client import Client

log = logging.getLogger("corral.plugins.parallel.client.views")

_FLAGS = ("block", "targets", "retries", "timeout", "after", "follow", "label", "track")
#: Pushes larger than this go over the engine's direct data path when it has one.
DATA_PATH_THRESHOLD = 1 << 20


def _take(seq: Sequence[Any], part: slice) -> Any:
    try:
        return seq[part]
    except TypeError:
        return list(seq)[part]


class View:
    """What all views share: flags, apply/map/imap, decorators, context managers.

    .. versionadded:: 0.1
    """

    #: Requests of this view are answered by every target under one msg_id.
    _broadcast = False
    #: ipyparallel's flag asking zmq to track zero-copy sends: corral always tracks the
    #: large buffers it sends without copying (``ar.wait_for_send()``, ``ar.sent``), so
    #: the flag is accepted and changes nothing.
    track = False

    def __init__(
        self,
        client: Client,
        targets: Any = None,
        *,
        block: bool | None = None,
        retries: int = 0,
        timeout: float | None = None,
        after: Any = None,
        follow: Any = None,
        label: Any = None,
    ) -> None:
        self.client = client
        #: What this view may ask of its client (see :mod:`.link`).
        self._link = ClientLink(client)
        self.targets = targets
        #: None: the client's ``block`` when the view is made (ipyparallel's default)
        self.block = bool(getattr(client, "block", False)) if block is None else block
        self.retries = retries
        self.timeout = timeout
        self.after = after
        self.follow = follow
        #: The tasks' label in the hub's records (any JSON value; None: no label).
        self.label = label
        self._md_cache: dict[tuple[Any, ...], bytes] = {}

    # ---------------------------------------------------------------- flags

    def set_flags(self, **flags: Any) -> View:
        """Set view flags (``block``, ``targets``, ``retries``, ``timeout``, ``after``,
        ``follow``, ``label``, ``track``); unknown names raise ``KeyError``. Returns the
        view, as ipyparallel's does, so a call can follow: ``view.set_flags(...).map(...)``.
        """
        for name, value in flags.items():
            if name not in _FLAGS:
                raise KeyError(f"unknown view flag {name!r}; flags are {_FLAGS}")
            setattr(self, name, value)
        return self

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[View]:
        """Flags changed for the ``with`` block, restored after (also on error)."""
        saved = {name: getattr(self, name) for name in flags if name in _FLAGS}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _metadata(self, targets: list[int] | None = None, avoid: int | None = None) -> bytes:
        """The request metadata, JSON-encoded; cached while the flags stay the same.
        ``avoid``: an engine a load-balanced task should go to only if no other may."""
        after, follow, label = self.after, self.follow, self.label
        if after is None and follow is None and (label is None or type(label) is str):
            key = (
                None if targets is None else tuple(targets),
                self.retries,
                self.timeout,
                avoid,
                label,
            )
            cached = self._md_cache.get(key)
            if cached is not None:
                return cached
        else:
            key = None
        metadata = {
            "targets": targets,
            "after": dependency_field(after),
            "follow": dependency_field(follow),
            "retries": int(self.retries or 0),
            "timeout": self.timeout,
        }
        if self._broadcast:  # one msg_id, one reply per target (what get_result relies on)
            metadata["broadcast"] = True
        if avoid is not None:
            metadata["avoid"] = [avoid]
        if label is not None:
            metadata["label"] = label
        encoded = encode_json(metadata)
        if key is not None:
            if len(self._md_cache) > 64:
                self._md_cache.clear()
            self._md_cache[key] = encoded
        return encoded

    def _maybe_block(self, result: AsyncResult, block: bool | None) -> Any:
        if self.block if block is None else block:
            return result.get()
        return result

    def _on(self, targets: Any) -> Any:
        """This view, or a copy aimed at ``targets`` (ipyparallel's ``targets=`` argument
        on push, pull, execute, ...): the view's own flags stay as they are."""
        return self if targets is None else self._copy_with(targets=targets)

    def _labelled(self, label: Any) -> Any:
        """This view, or a copy whose tasks carry ``label`` (ipyparallel's ``label=``
        argument on map, execute and run): the view's own flags stay as they are."""
        return self if label is None else self._copy_with(label=label)

    def _copy_with(self, **flags: Any) -> Any:
        """A copy of this view with ``flags`` set (its metadata cache not shared)."""
        other = copy.copy(self)
        for name, value in flags.items():
            setattr(other, name, value)
        other._md_cache = {}
        return other

    def __len__(self) -> int:
        """How many engines the view addresses (all live engines for ``"all"``/None)."""
        resolved = self._link.resolve_targets(self.targets)
        return 1 if isinstance(resolved, int) else len(resolved)

    def __bool__(self) -> bool:
        # A view is a view even while it has no engines (len() would say 0).
        return True

    @property
    def executor(self) -> Any:
        """A :class:`concurrent.futures.Executor` submitting to this view."""
        from .executor import ClusterExecutor

        return ClusterExecutor(self)

    # ---------------------------------------------------------------- apply

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submit ``f(*args, **kwargs)``; an :class:`AsyncResult` at once. (``f`` is
        positional-only, so the function may itself take a keyword named ``f``.)"""
        raise NotImplementedError

    def apply(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``apply_sync`` when the view's ``block`` flag is set, else ``apply_async``."""
        if self.block:
            return self.apply_sync(f, *args, **kwargs)
        return self.apply_async(f, *args, **kwargs)

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``f(*args, **kwargs)`` and wait for the result."""
        return self.apply_async(f, *args, **kwargs).get()

    # ---------------------------------------------------------------- map

    def map_async(
        self,
        f: Callable[..., Any],
        *sequences: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        label: Any = None,
        track: bool | None = None,
    ) -> AsyncMapResult:
        """``map(f, *sequences)`` on the cluster; iterate it ordered or as completed.

        ``return_exceptions=True`` runs every element whatever the others of its chunk
        did, and ``get()`` and iteration give each failed element's :class:`RemoteError`
        in its place instead of raising.
        """
        raise NotImplementedError

    def map(
        self,
        f: Callable[..., Any],
        *sequences: Iterable[Any],
        block: bool | None = None,
        ordered: bool = True,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        label: Any = None,
        track: bool | None = None,
    ) -> Any:
        """``map_sync`` when blocking, else ``map_async``.

        Sequences may be iterators or generators (they are read into lists first; use
        :meth:`imap` for long or infinite ones). ``return_exceptions=True`` puts each
        failed element's :class:`RemoteError` in the result instead of raising.
        ``label``: the tasks' label (default: the view's ``label`` flag). ``track`` is
        ipyparallel's: corral always tracks its zero-copy sends (see :attr:`track`).
        """
        result = self._labelled(label).map_async(
            f, *sequences, ordered=ordered, chunksize=chunksize, return_exceptions=return_exceptions
        )
        return self._maybe_block(result, block)

    def map_sync(
        self,
        f: Callable[..., Any],
        *sequences: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        label: Any = None,
        track: bool | None = None,
    ) -> list[Any]:
        """The list ``[f(*xs) for xs in zip(*sequences)]``, computed on the cluster."""
        result = self._labelled(label).map_async(
            f, *sequences, ordered=ordered, chunksize=chunksize, return_exceptions=return_exceptions
        )
        return result.get()  # type: ignore[no-any-return]

    def _map_chunks(
        self,
        channel: str,
        f: Callable[..., Any],
        sequences: Sequence[Sequence[Any]],
        slices: list[slice],
        targets: list[int | None],
        metadata: dict[str, Any] | bytes,
        ordered: bool,
        length: int,
        return_exceptions: bool = False,
    ) -> AsyncMapResult:
        """Send ``map_chunk(f, *columns[slice])`` for each slice to its target
        (``map_chunk_outcomes`` with ``return_exceptions``: each element on its own)."""
        routes = []
        checked = f if isinstance(f, dependent) else None  # @require / @depend
        shipped = self._link.shipped(f if checked is None else checked.f)
        runner = map_chunk_outcomes if return_exceptions else map_chunk
        for part, target in zip(slices, targets, strict=True):
            columns = [_take(seq, part) for seq in sequences]
            if isinstance(f, Reference):  # the engine's own function: resolved there
                buffers = pack_apply(*with_references(runner, (shipped, *columns), None))
            elif checked is not None:  # checked on the engine before the chunk runs
                buffers = pack_apply(*checked._checked(runner, (shipped, *columns), None, 0))
            else:
                buffers = pack_apply(runner, (shipped, *columns))
            ident = None if target is None else self._link.engine_ident(target)
            routes.append((target, ident, buffers))

        sizes = [part.stop - part.start for part in slices]

        def factory(client: Client, msg_ids: list[str], **kw: Any) -> AsyncMapResult:
            return AsyncMapResult(
                client, msg_ids, ordered=ordered, length=length, chunk_sizes=sizes, **kw
            )

        result = self._link.submit(
            channel,
            "apply_request",
            None,
            metadata,
            routes,
            fname=getattr(f, "__name__", "") or "",
            single=False,
            result_factory=factory,
        )
        assert isinstance(result, AsyncMapResult)
        result._return_exceptions = return_exceptions
        return result

    def imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        ordered: bool = True,
        max_in_flight: int | None = None,
        chunksize: int = 1,
        timeout: float | None = None,
        *,
        max_outstanding: int | None = None,
        return_exceptions: bool = False,
    ) -> IMapIterator:
        """Lazily map ``func`` over ``iterable`` (which may be infinite).

        Items are pulled from ``iterable`` only as results are consumed: at most
        ``max_in_flight`` tasks (of ``chunksize`` items each) are submitted and not yet
        yielded, so memory and queue depth stay bounded. ``ordered=False`` yields results
        as they complete. ``timeout`` (seconds from this call) bounds the whole iteration
        (``TimeoutError``), as in :meth:`concurrent.futures.Executor.map`.
        ``max_outstanding`` is ipyparallel's name for ``max_in_flight``;
        ``return_exceptions=True`` yields a failed item's :class:`RemoteError` instead of
        raising it.
        """
        if max_outstanding is not None:
            if max_in_flight is not None and max_in_flight != max_outstanding:
                raise TypeError("give max_in_flight or max_outstanding, not both")
            max_in_flight = max_outstanding
        if max_in_flight is None:
            max_in_flight = max(8, 4 * max(1, len(self.client.ids)))
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        size = max_in_flight
        return IMapIterator(
            lambda cancelled: self._imap(
                func, iterable, ordered, size, chunksize, deadline, return_exceptions, cancelled
            )
        )

    def _submit_one(self, func: Callable[..., Any], args: tuple[Any, ...]) -> AsyncResult:
        """One task of an imap (a view decides where it goes)."""
        return self.apply_async(func, *args)

    def _imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        ordered: bool,
        max_in_flight: int,
        chunksize: int,
        deadline: float | None = None,
        return_exceptions: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Any]:
        if chunksize > 1:
            runner = map_chunk_outcomes if return_exceptions else map_chunk
            tasks: Iterator[tuple[Any, ...]] = (
                (runner, func, chunk) for chunk in iter_chunks(iterable, chunksize)
            )
        else:
            tasks = ((func, item) for item in iterable)

        def submit(task: tuple[Any, ...]) -> AsyncResult:
            result = self._submit_one(task[0], task[1:])
            if chunksize > 1:
                result._chunk_len = len(task[2])  # type: ignore[attr-defined]
            return result

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        def values(result: AsyncResult) -> list[Any]:
            try:
                value = result.get(remaining())
            except RemoteError as error:
                if not return_exceptions:
                    raise
                if chunksize > 1 and isinstance(result._values[0], list):
                    return list(result._values[0])  # each element's value or error
                return [error] * (result._chunk_len if chunksize > 1 else 1)  # type: ignore[attr-defined]
            return value if chunksize > 1 else [value]

        exhausted = False
        if ordered:
            window: deque[AsyncResult] = deque()
            while True:
                while not exhausted and len(window) < max_in_flight:
                    if cancelled():
                        exhausted = True
                        break
                    try:
                        window.append(submit(next(tasks)))
                    except StopIteration:
                        exhausted = True
                if not window:
                    return
                yield from values(window.popleft())
        else:
            finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
            in_flight = 0
            while True:
                while not exhausted and in_flight < max_in_flight:
                    if cancelled():
                        exhausted = True
                        break
                    try:
                        result = submit(next(tasks))
                    except StopIteration:
                        exhausted = True
                        break
                    result.add_done_callback(finished.put)
                    in_flight += 1
                if in_flight == 0:
                    return
                try:
                    done = finished.get(timeout=remaining())
                except queue.Empty:
                    raise TimeoutError("imap: no result within the timeout") from None
                in_flight -= 1
                yield from values(done)

    # ---------------------------------------------------------------- decorators

    def remote(self, block: bool | None = None) -> Callable[[Callable[..., Any]], Any]:
        """Decorator: calling the function runs it on this view (see RemoteFunction)."""
        from .remote import RemoteFunction

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(self, f, block=block)

        return decorate

    def parallel(
        self, block: bool | None = None, chunksize: int | None = None, ordered: bool = True
    ) -> Callable[[Callable[..., Any]], Any]:
        """Decorator: calling the function maps it over its arguments on this view."""
        from .remote import ParallelFunction

        def decorate(f: Callable[..., Any]) -> ParallelFunction:
            return ParallelFunction(self, f, block=block, chunksize=chunksize, ordered=ordered)

        return decorate

    # ---------------------------------------------------------------- misc

    def wait(self, jobs: Any = None, timeout: float | None = None) -> bool:
        """Wait for results (AsyncResults, msg_ids; None: everything this client has
        outstanding) for up to ``timeout`` seconds (None or -1: forever); whether all
        are done."""
        return self.client.wait(jobs, -1 if timeout is None else timeout)

    def abort(
        self, jobs: Any = None, targets: Any = None, block: bool | None = None
    ) -> concurrent.futures.Future[None] | None:
        """Abort queued tasks of one or several results (or msg_ids; None: the unfinished
        tasks this client sent through views of this kind, direct or load-balanced) on
        this view's engines (or ``targets``), as ipyparallel's ``view.abort()``:
        ``rc[0].abort()`` leaves engine 1's queue and load-balanced tasks alone.
        Waits for the engines' acknowledgement, unless ``block=False`` (a future)."""
        if targets is None:
            targets = self.targets
        if jobs is None:
            jobs = self._link.outstanding_results(direct=isinstance(self, DirectView))
        return self.client.abort(jobs, targets, block)

    @property
    def outstanding(self) -> set[str]:
        """msg_ids this client is still waiting for (the client's, as views share it)."""
        return self.client.outstanding

    @property
    def history(self) -> list[str]:
        """msg_ids this client submitted (see :attr:`Client.history`)."""
        return self.client.history

    @property
    def results(self) -> Any:
        """The client's :attr:`Client.results` (views share it, as in ipyparallel)."""
        return self.client.results

    @property
    def metadata(self) -> Any:
        """The client's :attr:`Client.metadata`."""
        return self.client.metadata

    def get_result(self, jobs: Any = None, block: bool | None = None, owner: bool = False) -> Any:
        """:meth:`Client.get_result` (None: the last task submitted)."""
        return self.client.get_result(-1 if jobs is None else jobs, block=block, owner=owner)

    def purge_results(self, jobs: Any = None, targets: Any = None) -> int:
        """:meth:`Client.purge_results`."""
        return self.client.purge_results(jobs, targets)

    def shutdown(
        self, targets: Any = None, restart: bool = False, hub: bool = False, block: Any = None
    ) -> Any:
        """Stop this view's engines (``hub=True``: the whole cluster)."""
        ids = self._link.resolve_targets(self.targets if targets is None else targets)
        return self.client.shutdown(ids, restart=restart, hub=hub, block=block)

    def spin(self) -> None:
        """Nothing to do: corral's I/O thread always receives."""

    def register_joblib_backend(self, name: str = "corral", make_default: bool = False) -> None:
        """Register a joblib backend named ``name`` that runs on this view (see
        :func:`~.defaults.register_joblib_backend`)."""
        from .joblib_backend import register

        view = (
            self
            if isinstance(self, LoadBalancedView)
            else self.client.load_balanced_view(self.targets)
        )  # a direct view would run every batch on each of its engines
        register(name, make_default, view=view)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict[Any, Any]:
        return self.client.queue_status(self.targets if targets is None else targets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.targets!r}>"


def _warn_no_engines() -> None:
    """Log (once per client while it has none: see :class:`.link.ClientLink`) that
    load-balanced work waits for an engine; not an error, engines may still be starting."""
    log.warning(
        "no engines registered: load-balanced tasks wait until one registers "
        "(get(timeout=...) bounds the wait)"
    )


def _own_engine(link: ClientLink) -> int | None:
    """The id, among the client's engines, of the engine running in this process (None
    outside an engine, or for a client of another cluster).

    A task running on an engine that submits load-balanced tasks and waits for them
    would deadlock if one were queued behind it on its own engine: such tasks carry
    ``avoid``, and the scheduler sends them there only if no other engine may run them
    (controller/queues.py, TaskScheduler). Looked up without importing the engine.
    """
    bound = sys.modules.get("corral.plugins.parallel.engine.bound")
    engine = getattr(bound, "_current", None)
    if engine is None:
        return None
    return link.engine_id_of(engine.uuid)


class LoadBalancedView(View):
    """Tasks go to whichever engine the scheduler finds free.

    ``retries``: resubmit if the task's engine dies, or to an engine that has not run
    it if the task raised (the error stands once every eligible engine has);
    ``after``/``follow``: results (or msg_ids) the task must wait for / run beside;
    ``timeout``: seconds the dependencies may take before ``DependencyTimeout``.

    .. versionadded:: 0.1
    """

    def _lb_metadata(self) -> bytes:
        self._link.warn_once_without_engines(_warn_no_engines)
        targets = self.targets
        if targets is not None and targets != "all":
            resolved = self._link.resolve_targets(targets)
            targets = [resolved] if isinstance(resolved, int) else resolved
        else:
            targets = None
        return self._metadata(targets, _own_engine(self._link))

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._link.apply("task", f, args, kwargs, self._lb_metadata(), (None,))

    def map_async(
        self,
        f: Callable[..., Any],
        *sequences: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        label: Any = None,
        track: bool | None = None,
    ) -> AsyncMapResult:
        if label is not None:
            return self._labelled(label).map_async(  # type: ignore[no-any-return]
                f, *sequences, ordered=ordered, chunksize=chunksize,
                return_exceptions=return_exceptions,
            )  # fmt: skip
        sequences = _sized(sequences)
        length = resolve_length(sequences)
        if chunksize is None:
            chunksize = auto_chunksize(length, len(self.client.ids))
        slices = chunk_slices(length, chunksize)
        return self._map_chunks(
            "task",
            f,
            sequences,
            slices,
            [None] * len(slices),
            self._lb_metadata(),
            ordered,
            length,
            return_exceptions,
        )


class DirectView(View):
    """Work addressed to named engines; also reads and writes their namespaces.

    ``targets`` is one engine id (results are single values), a list of ids (results are
    lists, one per engine) or ``"all"`` (every engine live at the time of each call).

    .. versionadded:: 0.1
    """

    def __init__(self, client: Client, targets: Any = "all", **flags: Any) -> None:
        super().__init__(client, targets, **flags)

    def _targets(self) -> tuple[list[int], bool]:
        """``(engine ids, single)``: single when the view names one engine by int."""
        resolved = self._link.resolve_targets(self.targets)
        if isinstance(resolved, int):
            return [resolved], True
        if not resolved:
            self._no_engines()
        return resolved, False

    def _no_engines(self) -> None:
        """A call on no engine at all: an error when the client has none (ipyparallel's
        NoEnginesRegistered), rather than an empty answer that looks like success."""
        if not self._link.has_engines:
            raise NoEnginesRegistered(
                "no engines are registered with this client yet: "
                "Client.wait_for_engines(n) waits for them"
            )

    def _mux_metadata(self, targets: list[int]) -> bytes:
        """The metadata of requests sent one per engine on the mux: without the list of
        all targets when there are several (each request names its engine; the list in
        each of N requests made a call's bytes, and the hub's records, grow as N
        squared)."""
        return self._metadata(targets if len(targets) == 1 else None)

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        targets, single = self._targets()
        return self._link.apply(
            "mux", f, args, kwargs, self._mux_metadata(targets), targets, single=single
        )

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``f(*args, **kwargs)`` and wait. On one engine of this host, the call goes
        over the engine's Unix socket from this thread (see :class:`Client`)."""
        targets, single = self._targets()
        if single and self.label is None:  # a labelled task is the hub's to record
            return self._link.apply_wait(f, args, kwargs, self._metadata(targets), targets[0])
        return self.apply_async(f, *args, **kwargs).get()

    def map_async(
        self,
        f: Callable[..., Any],
        *sequences: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        label: Any = None,
        track: bool | None = None,
    ) -> AsyncMapResult:
        """Scatter the sequences across the view's engines (one contiguous block each,
        or ``chunksize`` chunks dealt round-robin) and map ``f`` over each block."""
        if label is not None:
            return self._labelled(label).map_async(  # type: ignore[no-any-return]
                f, *sequences, ordered=ordered, chunksize=chunksize,
                return_exceptions=return_exceptions,
            )  # fmt: skip
        targets, _ = self._targets()
        if not targets:
            raise NoEnginesRegistered("no engines to map on")
        sequences = _sized(sequences)
        length = resolve_length(sequences)
        if chunksize is None:
            slices = partition_slices(length, len(targets))
            chosen: list[int | None] = list(targets)
        else:
            slices = chunk_slices(length, chunksize)
            chosen = [targets[i % len(targets)] for i in range(len(slices))]
        return self._map_chunks(
            "mux",
            f,
            sequences,
            slices,
            chosen,
            self._mux_metadata(targets),
            ordered,
            length,
            return_exceptions,
        )

    def _submit_one(self, func: Callable[..., Any], args: tuple[Any, ...]) -> AsyncResult:
        targets, _ = self._targets()
        if not targets:
            raise RuntimeError("no engines")
        self._rr = getattr(self, "_rr", -1) + 1
        target = targets[self._rr % len(targets)]
        return self._link.apply("mux", func, args, None, self._metadata([target]), [target])

    # ---------------------------------------------------------------- code

    def execute(
        self,
        code: str,
        silent: bool = False,
        targets: Any = None,
        block: bool | None = None,
        label: Any = None,
    ) -> AsyncResult:
        """Run ``code`` in each engine's namespace; an :class:`AsyncResult` either way.

        As in ipyparallel, ``block=True`` waits (raising the remote error if the code
        failed) and still returns the result: ``ar.get()`` gives
        :class:`ExecuteReply` objects (``.execute_result``, ``.execution_count``),
        ``ar.stdout``, ``ar.execute_result`` and ``ar.display_outputs()`` the output.
        ``label``: the tasks' label (default: the view's ``label`` flag).
        """
        if targets is not None or label is not None:
            view = self._on(targets)._labelled(label)
            return view.execute(code, silent, block=block)  # type: ignore[no-any-return]
        targets, single = self._targets()
        content = _execute_content(code, silent)
        result = self._link.submit(
            "mux",
            "execute_request",
            content,
            self._mux_metadata(targets),
            self._link.routes(targets, ()),
            fname="execute",
            single=single,
        )
        return _finish_execute(self, result, block)

    def run(
        self,
        filename: str | Path,
        targets: Any = None,
        block: bool | None = None,
        label: Any = None,
    ) -> AsyncResult:
        """Execute the file's code (read here) on each engine."""
        code = Path(filename).read_text(encoding="utf-8")
        return self.execute(code, targets=targets, block=block, label=label)

    # ---------------------------------------------------------------- namespaces

    def push(
        self,
        ns: dict[str, Any],
        targets: Any = None,
        block: bool | None = None,
        track: bool | None = None,
    ) -> Any:
        """Bind the names of ``ns`` on each engine (``track``: see :attr:`track`).

        Small payloads are queued on the mux, in order with the engine's other requests.
        Payloads over :data:`DATA_PATH_THRESHOLD` go straight to each engine's data path
        (one hop instead of two); the engine applies them between tasks, possibly before
        tasks still queued for it, so wait for earlier work first if that matters.
        """
        if not isinstance(ns, dict):
            raise TypeError("push takes a dict of names to values")
        if targets is not None:
            return self._on(targets).push(ns, block=block)
        targets, single = self._targets()
        frames = serialize(ns)
        size = sum(memoryview(f).nbytes for f in frames)
        content = {"keys": list(ns)}
        client, link = self.client, self._link
        if size > DATA_PATH_THRESHOLD:
            channels = link.data_channels(targets)
            if targets and all(channels):
                parts = [
                    link.submit(ch, "push_request", content, None, [(t, None, frames)])  # type: ignore[arg-type]
                    for t, ch in zip(targets, channels, strict=True)
                ]
                return self._maybe_block(_combine(client, parts, single, "push"), block)
        result = link.submit(
            "mux",
            "push_request",
            content,
            self._mux_metadata(targets),
            link.routes(targets, frames),
            fname="push",
            single=single,
        )
        return self._maybe_block(result, block)

    def pull(
        self,
        names: str | Sequence[str],
        targets: Any = None,
        block: bool | None = None,
        direct: bool | None = None,
    ) -> Any:
        """The values of ``names`` on each engine (a str gives one value per engine).

        A name may be a dotted path (``"a.b"``: attribute ``b`` of the engine's ``a``).

        The request is queued on the mux, in order with earlier work; the engine answers
        inline, or, for values over the data-path threshold, says so and the values come
        from its data path (one hop). ``direct=True`` goes to the data path at once
        (skipping the queue), ``direct=False`` never uses it.
        """
        if targets is not None:
            return self._on(targets).pull(names, block=block, direct=direct)
        keys = [names] if isinstance(names, str) else list(names)
        if any("." in key for key in keys):
            return self._pull_dotted(names, keys, block)
        targets, single = self._targets()
        convert = _unpack_one if isinstance(names, str) else list
        client, link = self.client, self._link
        parts: list[AsyncResult] = []
        channels = [None] * len(targets) if direct is False else link.data_channels(targets)
        for target, channel in zip(targets, channels, strict=True):
            if channel is not None and direct:
                part = link.submit(
                    channel,
                    "pull_request",
                    {"keys": keys},
                    None,
                    [(target, None, ())],
                    convert=convert,
                )
            elif channel is not None:
                metadata = self._metadata([target])
                part = _StagedPull(client, metadata, target, channel, keys, convert)
            else:
                part = link.submit(
                    "mux",
                    "pull_request",
                    {"keys": keys},
                    self._metadata([target]),
                    link.routes([target], ()),
                    fname="pull",
                    convert=convert,
                )
            parts.append(part)
        return self._maybe_block(_combine(client, parts, single, "pull"), block)

    def _pull_dotted(self, names: Any, keys: list[str], block: bool | None) -> Any:
        """Pull attribute paths (``"a.b"``): looked up on the engine, in its namespace."""
        for key in keys:
            if not all(part.isidentifier() for part in key.split(".")):
                raise NameError(f"{key!r} is not a name or a dotted path of names")
        targets, single = self._targets()
        convert = _unpack_one if isinstance(names, str) else list

        def factory(client: Client, msg_ids: list[str], **kw: Any) -> AsyncResult:
            # The conversion is in place before anything is sent: a reply can arrive
            # (in the I/O thread) before _apply returns.
            return AsyncResult(client, msg_ids, **{**kw, "convert": convert})

        result = self._link.apply(
            "mux",
            _pull_paths,
            (keys,),
            None,
            self._mux_metadata(targets),
            targets,
            single=single,
            result_factory=factory,
        )
        result.fname = "pull"
        return self._maybe_block(result, block)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        return self.pull(name, block=True)

    def update(self, namespace: dict[str, Any]) -> None:
        self.push(namespace, block=True)

    def get(self, name: str) -> Any:
        return self.pull(name, block=True)

    def scatter(
        self,
        key: str,
        seq: Sequence[Any],
        dist: str = "b",
        flatten: bool = False,
        targets: Any = None,
        block: bool | None = None,
        track: bool | None = None,
    ) -> Any:
        """Partition ``seq`` across the engines: engine ``i`` gets block ``i`` as ``key``.

        ``flatten=True`` binds a lone element instead of a one-element block. ``dist``
        must be ``"b"`` (contiguous blocks, ipyparallel's default and only useful value).
        ``track``: see :attr:`track`.
        """
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        if targets is not None:
            return self._on(targets).scatter(key, seq, flatten=flatten, block=block)
        if not hasattr(seq, "__len__"):
            seq = list(seq)
        targets, _ = self._targets()
        slices = partition_slices(len(seq), len(targets))
        client = self.client
        parts = []
        for target, part in zip(targets, slices, strict=True):
            chunk = _take(seq, part)
            if flatten and len(chunk) == 1:
                chunk = chunk[0]
            view = DirectView(client, target)
            parts.append(view.push({key: chunk}, block=False))
        result = _combine(client, parts, False, "scatter")
        if self.block if block is None else block:
            result.wait()  # ipyparallel's blocking scatter returns None, as a push does
            result.get()  # raises what an engine raised
            return None
        return result

    def gather(
        self, key: str, dist: str = "b", targets: Any = None, block: bool | None = None
    ) -> Any:
        """Concatenate ``key`` from every engine (the inverse of :meth:`scatter`); not
        blocking, an :class:`AsyncMapResult`."""
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        if targets is not None:
            return self._on(targets).gather(key, block=block)
        targets, _ = self._targets()
        parts = [DirectView(self.client, t).pull(key, block=False) for t in targets]
        result = _CombinedMap(self.client, parts, False, "gather", True)
        return self._maybe_block(result, block)

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Reset the engines' namespaces; a future at once with ``block=False``."""
        ids, _ = self._on(targets)._targets()
        return self.client.clear(ids, block=block)

    def activate(self, suffix: str = "") -> None:
        """Make ``%px{suffix}``, ``%%px{suffix}``, ``%autopx{suffix}``,
        ``%pxresult{suffix}`` and ``%pxconfig{suffix}`` run on this view, in IPython (or
        corral's kernel). Several views can be active under different suffixes. Returns
        None, as ipyparallel's does (a notebook cell ending with it shows nothing)."""
        from .magics import activate

        activate(self, suffix)

    @property
    def importer(self) -> Any:
        """``with view.importer: import numpy``: ``sync_imports(local=True)`` (ipyparallel)."""
        return self.sync_imports(True)

    def use_cloudpickle(self) -> Any:
        """Accepted for ipyparallel code; changes nothing. corral already sends by value
        (with cloudpickle) whatever plain pickle would get wrong: lambdas, closures,
        functions and classes defined in ``__main__``."""
        return self.apply(_noop)

    def use_dill(self) -> Any:
        """Accepted for ipyparallel code; changes nothing. What people switch to dill
        for (lambdas, closures, interactively defined functions) corral already sends by
        value with cloudpickle, and dill is not a dependency (see :meth:`use_cloudpickle`).

        .. versionchanged:: 0.2 a no-op (raised ``NotImplementedError``, which stopped
           notebooks that call it out of habit).
        """
        return self.apply(_noop)

    def use_pickle(self) -> Any:
        """Accepted for ipyparallel code; changes nothing (see :meth:`use_cloudpickle`)."""
        return self.apply(_noop)

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports in the ``with`` block happen here (if ``local``) and on the engines.

        ::

            with view.sync_imports():
                import numpy
        """
        recorded: list[tuple[str, tuple[str, ...]]] = []
        real_import = builtins.__import__
        depth = [0]

        def hook(
            name: str,
            globals: Any = None,
            locals: Any = None,
            fromlist: Any = (),
            level: int = 0,
        ) -> Any:
            if depth[0] == 0 and level == 0:
                recorded.append((name, tuple(fromlist or ())))
            if not local and depth[0] == 0:
                module = types.ModuleType(name)
                for attr in fromlist or ():
                    setattr(module, attr, None)
                return module
            depth[0] += 1
            try:
                return real_import(name, globals, locals, fromlist, level)
            finally:
                depth[0] -= 1

        builtins.__import__ = hook
        try:
            yield
        finally:
            builtins.__import__ = real_import
        lines = []
        for name, fromlist in recorded:
            if fromlist:
                lines.append(f"from {name} import {', '.join(fromlist)}")
            else:
                lines.append(f"import {name}")
        if lines:
            if not quiet:
                print(f"importing {', '.join(n for n, _ in recorded)} on engine(s)")
            self.execute("\n".join(lines), block=True)


class BroadcastView(DirectView):
    """One message for all targets: the broadcast scheduler copies it to each engine.

    Applies, executes, pushes and pulls cost one client message however many engines
    there are; results are lists in target order. Maps scatter like a DirectView's.

    .. versionadded:: 0.1
    """

    _broadcast = True

    def __init__(self, client: Client, targets: Any = None, **flags: Any) -> None:
        super().__init__(client, targets, **flags)

    def _targets(self) -> tuple[list[int], bool]:
        targets = self.targets
        resolved = self._link.resolve_targets(targets)
        if isinstance(resolved, int):
            return [resolved], False
        if not resolved:
            self._no_engines()
        # Each engine once: one message runs once per engine (the scheduler sends each
        # engine one copy), so ``targets=[0, 0]`` waited for ever for a second reply.
        return list(dict.fromkeys(resolved)), False

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        targets, _ = self._targets()
        buffers = pack_apply(self._link.shipped(f), args, kwargs)
        return self._link.broadcast(
            "apply_request",
            None,
            buffers,
            self._metadata(targets),
            targets,
            fname=getattr(f, "__name__", "") or "",
        )

    def execute(
        self,
        code: str,
        silent: bool = False,
        targets: Any = None,
        block: bool | None = None,
        label: Any = None,
    ) -> AsyncResult:
        if targets is not None or label is not None:
            view = self._on(targets)._labelled(label)
            return view.execute(code, silent, block=block)  # type: ignore[no-any-return]
        targets, _ = self._targets()
        content = _execute_content(code, silent)
        result = self._link.broadcast(
            "execute_request", content, (), self._metadata(targets), targets, fname="execute"
        )
        return _finish_execute(self, result, block)

    def push(
        self,
        ns: dict[str, Any],
        targets: Any = None,
        block: bool | None = None,
        track: bool | None = None,
    ) -> Any:
        if targets is not None:
            return self._on(targets).push(ns, block=block)
        targets, _ = self._targets()
        result = self._link.broadcast(
            "push_request",
            {"keys": list(ns)},
            serialize(ns),
            self._metadata(targets),
            targets,
            fname="push",
        )
        return self._maybe_block(result, block)

    def pull(
        self,
        names: str | Sequence[str],
        targets: Any = None,
        block: bool | None = None,
        direct: bool | None = None,
    ) -> Any:
        if targets is not None:
            return self._on(targets).pull(names, block=block, direct=direct)
        keys = [names] if isinstance(names, str) else list(names)
        if any("." in key for key in keys):
            return self._pull_dotted(names, keys, block)
        targets, _ = self._targets()
        result = self._link.broadcast(
            "pull_request",
            {"keys": keys},
            (),
            self._metadata(targets),
            targets,
            fname="pull",
            convert=_unpack_one if isinstance(names, str) else list,
        )
        return self._maybe_block(result, block)


# ------------------------------------------------------------------ composite results


class _Combined(AsyncResult):
    """A result made of other results (one per engine), e.g. a multi-engine pull."""

    def __init__(
        self, client: Client, parts: list[AsyncResult], single: bool, fname: str, gather: bool
    ) -> None:
        msg_ids = [m for p in parts for m in p.msg_ids]
        super().__init__(client, msg_ids, fname=fname, single=single, slots=len(parts))
        self._parts = parts
        self._gather = gather
        # Parts finish in the I/O thread, or here in the caller's thread when one is done
        # before its callback is added: slot bookkeeping must not interleave.
        self._parts_lock = threading.Lock()
        for index, part in enumerate(parts):

            def part_done(p: AsyncResult, i: int = index) -> None:
                self._part_done(i, p)

            part.add_done_callback(part_done)

    def split(self) -> tuple[AsyncResult, ...]:
        """The results this one combines, one per engine."""
        return tuple(self._parts)

    def wait_for_send(self, timeout: float | None = None) -> bool:
        """Whether every part's data has left this process (waits ``timeout``)."""
        return wait_all_sent(self._parts, timeout)

    @property
    def sent(self) -> bool:
        return all(part.sent for part in self._parts)

    def _part_of(self, msg_id: str) -> AsyncResult:
        for part in self._parts:
            if msg_id in part.msg_ids:
                return part._part_of(msg_id)
        return self

    def _part_done(self, index: int, part: AsyncResult) -> None:
        with self._parts_lock:
            self._record_part(index, part)

    def _record_part(self, index: int, part: AsyncResult) -> None:
        if self._done_slots[index]:
            return
        error = part.exception() if not part.cancelled() else None
        if isinstance(error, ControllerLost):
            self._abandon(error)
            return
        if error is not None:
            from .errors import RemoteError

            self._errors[index] = (
                error
                if isinstance(error, RemoteError)
                else RemoteError(type(error).__name__, str(error))
            )
        else:
            self._values[index] = part.result()
        metadata = part.metadata
        self._md[index] = metadata if isinstance(metadata, TaskMetadata) else None
        self._slot_done(index)

    def _final_value(self) -> Any:
        if not self._gather:
            return super()._final_value()
        values = list(self._values)
        np = sys.modules.get("numpy")
        if np is not None and values and all(isinstance(v, np.ndarray) for v in values):
            return np.concatenate(values)
        out: list[Any] = []
        for value in values:
            out.extend(value if isinstance(value, (list, tuple)) else [value])
        return out

    def _pending_msg_ids(self) -> list[str]:
        return [m for p in self._parts if not p.done() for m in p._pending_msg_ids()]

    def abort(self) -> None:
        for part in self._parts:
            part.abort()

    def interrupt(self) -> None:
        for part in self._parts:
            part.interrupt()

    def _outputs_done(self) -> bool:
        return all(p._outputs_done() for p in self._parts)


class _CombinedMap(_Combined, AsyncMapResult):
    """A gather: the engines' parts joined into one sequence, as a map's result is."""

    def _slot_items(self, index: int) -> list[Any]:
        value = self._values[index]
        return list(value) if isinstance(value, (list, tuple)) else [value]


def _combine(
    client: Client, parts: list[AsyncResult], single: bool, fname: str, gather: bool = False
) -> AsyncResult:
    if single and len(parts) == 1:
        return parts[0]
    return _Combined(client, parts, single, fname, gather)


def _unpack_one(values: Any) -> Any:
    return values[0]


def _sized(sequences: Sequence[Iterable[Any]]) -> tuple[Sequence[Any], ...]:
    """The map's sequences, with iterators and generators read into lists (ipyparallel's
    map takes them too); sequences with a length are used as they are."""
    # One with a length is taken to be a sequence: the chunks slice it.
    return tuple(
        cast("Sequence[Any]", seq) if hasattr(seq, "__len__") else list(seq) for seq in sequences
    )


def _make_pull_probe() -> Callable[[list[str], int], tuple[bool, Any]]:
    """The first step of a pull, shipped by value and run in the engine's namespace.

    Engines run functions from ``__main__`` with the user namespace as their globals, so
    ``globals()`` here *is* that namespace. The probe uses builtins only, so it brings no
    names of its own into it. It returns the values when they are small, else only says
    they are large (and the client fetches them over the data path).
    """

    def corral_pull_probe(keys: list[str], limit: int) -> tuple[bool, Any]:
        ns = globals()
        values = []
        size = 0
        for key in keys:
            if key not in ns:
                raise NameError(f"name {key!r} is not defined on this engine")
            value = ns[key]
            values.append(value)
            nbytes = getattr(value, "nbytes", None)
            if isinstance(nbytes, int):
                size += nbytes
            elif isinstance(value, (bytes, bytearray)):
                size += len(value)
        if size > limit:
            return False, None
        return True, tuple(values)

    corral_pull_probe.__module__ = "__main__"
    corral_pull_probe.__qualname__ = "corral_pull_probe"
    return corral_pull_probe


_pull_probe = _make_pull_probe()


def _finish_execute(view: View, result: AsyncResult, block: bool | None) -> AsyncResult:
    """ipyparallel's execute: the result object always; with ``block``, waited for first
    (raising what the code raised)."""
    result._execute = True
    if view.block if block is None else block:
        result.get()
    return result


def _noop() -> None:
    return None


def _make_path_puller() -> Callable[[list[str]], tuple[Any, ...]]:
    """Pull attribute paths, shipped by value and run in the engine's namespace (as the
    pull probe is): ``"a.b"`` is ``b`` of the engine's ``a``."""

    def corral_pull_paths(keys: list[str]) -> tuple[Any, ...]:
        ns = globals()
        values = []
        for key in keys:
            head, *rest = key.split(".")
            if head not in ns:
                raise NameError(f"name {head!r} is not defined on this engine")
            value = ns[head]
            for attr in rest:
                value = getattr(value, attr)
            values.append(value)
        return tuple(values)

    corral_pull_paths.__module__ = "__main__"
    corral_pull_paths.__qualname__ = "corral_pull_paths"
    return corral_pull_paths


_pull_paths = _make_path_puller()


def _execute_content(code: str, silent: bool) -> dict[str, Any]:
    """An execute_request for engines: no stdin (nobody would answer).

    ``store_history`` is the protocol's default (``not silent``), as ipyparallel sends it:
    only a stored cell is numbered, so without it every result, ``Out[engine:N]`` and
    ``Cell In[N]`` of a traceback said 1. The engine's history manager keeps nothing;
    ``In``/``Out``/``_N`` in its namespace are what IPython's engines keep too.
    """
    return {
        "code": code,
        "silent": silent,
        "store_history": not silent,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


class _StagedPull(AsyncResult):
    """Pull from one engine: a probe queued on the mux (in order with earlier work)
    returns small values itself; large ones then come over the engine's data path.
    """

    def __init__(
        self,
        client: Client,
        metadata: dict[str, Any] | bytes,
        target: int,
        channel: str,
        keys: list[str],
        convert: Callable[[Any], Any],
    ) -> None:
        super().__init__(client, [], single=True, slots=1, fname="pull", convert=convert)
        self._keys = keys
        self._target = target
        self._channel = channel
        self._link = ClientLink(client)
        first = self._link.apply(
            "mux", _pull_probe, (keys, DATA_PATH_THRESHOLD), None, metadata, [target]
        )
        self._stage: AsyncResult = first
        self.msg_ids = list(first.msg_ids)
        first.add_done_callback(self._first_done)

    def _first_done(self, first: AsyncResult) -> None:
        error = first.exception()
        if error is not None:
            self._fail(error)
            return
        inline, values = first.result()
        if inline:
            self._deliver(values)
            return
        second = self._link.submit(
            self._channel, "pull_request", {"keys": self._keys}, None, [(self._target, None, ())]
        )
        self._stage = second
        self.msg_ids = self.msg_ids + list(second.msg_ids)
        second.add_done_callback(self._second_done)

    def _second_done(self, second: AsyncResult) -> None:
        error = second.exception()
        if error is not None:
            self._fail(error)
        else:
            self._deliver(second.result())

    def _deliver(self, values: Any) -> None:
        self._values[0] = self._convert(values) if self._convert is not None else values
        self._slot_done(0)

    def _fail(self, error: BaseException) -> None:
        from .errors import RemoteError

        if isinstance(error, ControllerLost):
            self._abandon(error)
            return
        if not isinstance(error, RemoteError):
            error = RemoteError(type(error).__name__, str(error))
        self._errors[0] = error
        self._slot_done(0)

    def _pending_msg_ids(self) -> list[str]:
        return [] if self.done() else self._stage._pending_msg_ids()

    def _running_engines(self) -> set[int]:
        return set() if self.done() else {self._target}

    @property
    def metadata(self) -> Any:
        return self._stage.metadata
