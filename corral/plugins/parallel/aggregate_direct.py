"""Direct views over the engines of several controllers: :class:`AggregateDirectView`.

Why here and not in the views: a member controller only knows its own engines, by its own
ids. The aggregate view names engines by aggregate ids (:mod:`.aggregate`), splits each
request into one request per controller (one message to each, routed to that controller's
engines as any multi-engine request is), and puts the answers back together in the order
of its targets, so ``client[:].apply_sync(f)`` answers one value per engine of every
controller, as one controller's ``client[:]`` does.
"""

from __future__ import annotations

import concurrent.futures
import copy
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .client.asyncresult import wait_all_sent
from .client.errors import CompositeError, RemoteError

if TYPE_CHECKING:
    from .aggregate import AggregateClient

__all__ = ["AggregateDirectView", "AggregateResult"]

#: One member's share of a request: (controller index, its own engine ids, the
#: positions of those engines among the view's targets).
_Part = tuple[int, list[int], list[int]]


class AggregateResult(concurrent.futures.Future):  # type: ignore[type-arg]
    """The answers of several controllers' engines, as one result in target order:
    ``get()`` is a list (one value per engine), or one value for a one-engine view."""

    def __init__(
        self,
        parts: list[tuple[Any, list[int]]],
        count: int,
        single: bool,
        engine_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self._parts = parts
        self._count = count
        self._single = single
        #: the aggregate id of the engine at each position (errors are named by it)
        self._engine_ids = list(engine_ids) if engine_ids is not None else None
        #: one value per position, a RemoteError where that task failed (once done)
        self._values: list[Any] = [None] * count
        self._left = len(parts)
        self._lock = threading.Lock()
        if not parts:
            self.set_result(None if single else [])
        for result, _ in parts:
            result.add_done_callback(self._part_done)

    @property
    def msg_ids(self) -> list[str]:
        return [m for result, _ in self._parts for m in getattr(result, "msg_ids", [])]

    def split(self) -> tuple[Any, ...]:
        """The members' results, one per controller asked."""
        return tuple(result for result, _ in self._parts)

    def _part_done(self, _: Any) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        values = self._values
        for result, positions in self._parts:
            try:
                # every task's outcome, failures in place (not only the first failure)
                value = result.get(0, return_exceptions=True)
            except TypeError:  # a part without per-task outcomes (a chained map block)
                error = result.exception()
                value = [error] * len(positions) if error is not None else result.result()
            except Exception as exc:  # the whole part failed (its controller lost, ...)
                value = [exc] * len(positions)
            if len(positions) == 1 and not isinstance(value, list):
                value = [value]
            for position, item in zip(positions, value, strict=True):
                if isinstance(item, BaseException):
                    item = self._renamed(item, position)
                values[position] = item
        failed = [v for v in values if isinstance(v, RemoteError)]  # in target order
        others = [
            v for v in values if isinstance(v, BaseException) and not isinstance(v, RemoteError)
        ]
        if others:
            self.set_exception(others[0])
        elif failed:
            single = self._single and len(failed) == 1
            self.set_exception(failed[0] if single else CompositeError(failed))
        else:
            self.set_result(values[0] if self._single else list(values))

    def _renamed(self, error: BaseException, position: int) -> BaseException:
        """``error`` as the aggregate names its engine: a member's RemoteError says the
        engine's id at that controller, which is not the one the user addressed."""
        ids = self._engine_ids
        if not isinstance(error, RemoteError) or ids is None or isinstance(error, CompositeError):
            return error
        renamed = copy.copy(error)
        renamed.engine_id = ids[position]
        info = getattr(error, "_engine_info", None)
        if info:
            renamed._engine_info = {**info, "engine_id": ids[position]}
        return renamed

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """The values in target order; ``return_exceptions=True`` puts each failed task's
        error in its place instead of raising (as a direct view's result does)."""
        if not return_exceptions:
            return self.result(timeout)
        self.exception(timeout)  # waits; raises TimeoutError
        return self._values[0] if self._single else list(self._values)

    def ready(self) -> bool:
        return self.done()

    def successful(self) -> bool:
        return self.done() and self.exception() is None

    def wait(self, timeout: float | None = None) -> bool:
        concurrent.futures.wait([self], timeout)
        return self.done()

    def wait_for_send(self, timeout: float | None = None) -> bool:
        """Whether every member's data has left this process (waits ``timeout``)."""
        return wait_all_sent((result for result, _ in self._parts), timeout)

    @property
    def sent(self) -> bool:
        return all(result.sent for result, _ in self._parts)

    @property
    def stdout(self) -> list[Any]:
        """Each engine's output, in target order."""
        out: list[Any] = [""] * self._count
        for result, positions in self._parts:
            for position, text in zip(positions, result.stdout, strict=False):
                out[position] = text
        return out

    def abort(self) -> None:
        for result, _ in self._parts:
            result.abort()


class AggregateDirectView:
    """Work addressed to engines of several controllers, named by aggregate ids.

    ``targets``: one id (results are single values), a list of ids, or ``"all"`` (every
    engine of every controller live at the time of each call). ``block``: as a direct
    view's. Requests go to each controller at once; nothing orders the requests of two
    controllers against each other, as nothing orders two engines' of one controller.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        aggregate: AggregateClient,
        targets: Any = "all",
        block: bool = False,
        broadcast: bool = False,
    ) -> None:
        self.aggregate = aggregate
        self.targets = targets
        self.block = block
        #: Each controller's part goes through its broadcast view (one message copied to
        #: its engines by its broadcast scheduler) instead of its direct view.
        self.broadcast = broadcast

    def __repr__(self) -> str:
        kind = "broadcast" if self.broadcast else "direct"
        return f"<AggregateDirectView {kind} {self.targets!r}>"

    def __len__(self) -> int:
        return len(self._targets()[0])

    def _targets(self) -> tuple[list[int], bool]:
        targets = self.targets
        if targets is None or targets == "all":
            return self.aggregate.ids, False
        if isinstance(targets, int) and not isinstance(targets, bool):
            return [targets], True
        if isinstance(targets, slice):
            return self.aggregate.ids[targets], False
        return [int(t) for t in targets], False

    def _plan(self, targets: list[int]) -> list[_Part]:
        """Group the targets by controller, keeping each one's position."""
        live = set(self.aggregate.ids)
        unknown = [t for t in targets if t not in live]
        if unknown:
            raise ValueError(f"no engine with id {unknown}; live engines: {sorted(live)}")
        n = len(self.aggregate.clients)
        parts: dict[int, _Part] = {}
        for position, target in enumerate(targets):
            k = target % n
            part = parts.setdefault(k, (k, [], []))
            part[1].append(target // n)
            part[2].append(position)
        return list(parts.values())

    def _fan(self, call: Callable[[Any], Any], block: bool | None) -> Any:
        """``call(member view)`` on each controller holding targets, combined."""
        targets, single = self._targets()
        parts = []
        for k, local, positions in self._plan(targets):
            client = self.aggregate.clients[k]
            view = client.broadcast_view(local) if self.broadcast else client.direct_view(local)
            parts.append((call(view), positions))
        result = AggregateResult(parts, len(targets), single, targets)
        if self.block if block is None else block:
            return result.get()
        return result

    def _on(self, targets: Any) -> AggregateDirectView:
        if targets is None:
            return self
        return AggregateDirectView(self.aggregate, targets, self.block, self.broadcast)

    # ---------------------------------------------------------------- work

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._fan(lambda view: view.apply_async(f, *args, **kwargs), False)

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._fan(lambda view: view.apply_async(f, *args, **kwargs), True)

    def apply(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._fan(lambda view: view.apply_async(f, *args, **kwargs), None)

    def map_async(self, f: Callable[..., Any], *sequences: Sequence[Any]) -> Any:
        """``f`` over the sequences, one contiguous block per engine in target order (as
        a direct view's map); ``get()`` is the flat list of results, in order."""
        ids, _ = self._targets()
        if not ids:
            raise RuntimeError("no engines to map on")
        columns = [list(seq) for seq in sequences]
        length = min((len(c) for c in columns), default=0)
        base, extra = divmod(length, len(ids))
        parts, start = [], 0
        for position, target in enumerate(ids):
            end = start + base + (1 if position < extra else 0)
            block = [column[start:end] for column in columns]
            parts.append(
                (_listed(self.aggregate[target].apply_async(_map_block, f, block)), [position])
            )
            start = end
        return _Chained(AggregateResult(parts, len(ids), False), _concatenate)

    def map_sync(self, f: Callable[..., Any], *sequences: Sequence[Any]) -> list[Any]:
        return self.map_async(f, *sequences).get()  # type: ignore[no-any-return]

    def map(
        self, f: Callable[..., Any], *sequences: Sequence[Any], block: bool | None = None
    ) -> Any:
        result = self.map_async(f, *sequences)
        return result.get() if (self.block if block is None else block) else result

    def execute(
        self, code: str, silent: bool = False, targets: Any = None, block: bool | None = None
    ) -> Any:
        """Run ``code`` in each engine's namespace (``block=True`` waits and raises the
        remote error)."""
        view = self._on(targets)
        return view._fan(lambda member: member.execute(code, silent, block=False), block)

    # ---------------------------------------------------------------- namespaces

    def push(
        self, namespace: dict[str, Any], targets: Any = None, block: bool | None = None
    ) -> Any:
        """Bind the names of ``namespace`` on each engine."""
        if not isinstance(namespace, dict):
            raise TypeError("push takes a dict of names to values")
        view = self._on(targets)
        return view._fan(lambda member: member.push(namespace, block=False), block)

    def pull(
        self, names: str | Sequence[str], targets: Any = None, block: bool | None = None
    ) -> Any:
        """The values of ``names`` on each engine."""
        view = self._on(targets)
        return view._fan(lambda member: member.pull(names, block=False), block)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        return self.pull(name, block=True)

    def update(self, namespace: dict[str, Any]) -> None:
        self.push(namespace, block=True)

    def get(self, name: str) -> Any:
        return self.pull(name, block=True)

    def scatter(
        self, name: str, seq: Sequence[Any], targets: Any = None, block: bool | None = None
    ) -> Any:
        """Partition ``seq`` across the engines in target order: engine ``i`` gets block
        ``i`` as ``name`` (contiguous blocks, as a direct view's ``scatter``)."""
        view = self._on(targets)
        ids, _ = view._targets()
        items = list(seq)
        base, extra = divmod(len(items), max(1, len(ids)))
        bounds, start = [], 0
        for index in range(len(ids)):
            end = start + base + (1 if index < extra else 0)
            bounds.append((start, end))
            start = end
        chunks = {t: items[a:b] for t, (a, b) in zip(ids, bounds, strict=True)}
        parts = [
            (self.aggregate[t].push({name: chunk}, block=False), [pos])
            for pos, (t, chunk) in enumerate(chunks.items())
        ]
        result = AggregateResult([(_listed(r), p) for r, p in parts], len(ids), False)
        return result.get() if (self.block if block is None else block) else result

    def gather(self, name: str, targets: Any = None, block: bool | None = None) -> Any:
        """``name`` from every engine, concatenated in target order (the inverse of
        :meth:`scatter`)."""
        result = _Chained(self._on(targets).pull(name, block=False), _concatenate)
        return result.get() if (self.block if block is None else block) else result

    def clear(self, targets: Any = None, block: bool | None = None) -> None:
        """Reset the namespaces of the engines (waits for every controller's engines)."""
        view = self._on(targets)
        ids, _ = view._targets()
        for k, local, _ in view._plan(ids):
            view.aggregate.clients[k].clear(local, block=True)


class _Chained(concurrent.futures.Future):  # type: ignore[type-arg]
    """Another result's value passed through ``transform``, with its ids and output."""

    def __init__(self, result: Any, transform: Callable[[Any], Any]) -> None:
        super().__init__()
        self.msg_ids = list(getattr(result, "msg_ids", []))
        self._inner = result
        self._transform = transform
        result.add_done_callback(self._done)

    def _done(self, result: Any) -> None:
        error = result.exception()
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(self._transform(result.result()))

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)

    @property
    def stdout(self) -> Any:
        return self._inner.stdout

    def abort(self) -> None:
        self._inner.abort()


def _map_block(f: Callable[..., Any], block: list[list[Any]]) -> list[Any]:
    """On the engine: ``f`` over one engine's block of the map's sequences."""
    return list(map(f, *block))


def _listed(result: Any) -> _Chained:
    """A one-engine result seen as a one-item list (a part of an AggregateResult)."""
    return _Chained(result, lambda value: [value])


def _concatenate(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        out.extend(value if isinstance(value, (list, tuple)) else [value])
    return out
