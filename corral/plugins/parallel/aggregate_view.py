"""Load balancing over several controllers: :class:`AggregateView`.

Placing: each task goes to the controller whose engines hold the fewest of this view's
unfinished tasks each (ties: the first), counting a task from submission to its result. A
controller takes at most ``window`` unfinished tasks per engine; the rest wait in the view,
in order, and go out in bursts to whichever controller frees room first. So the shared
backlog lives in the aggregate and every controller's engines pull from it.

Moving: a task already sent to a controller whose engines are all busy (a long task ahead
of it) is moved to a controller with an idle engine when the view holds nothing else to
give that engine. The view asks the busy controller's engines to abort the newest of its
tasks there, as many as the other has idle engines, and each engine answers which of them
it had started already (engine/started.py). A task no engine had started can never start
there any more: it is sent again to the idle controller at once, and the aborted copy's
late reply is ignored. A task reported started stays; if its reply then says aborted after
all (the engine's check won the race), it is sent again then. So a moved task runs exactly
once: never twice (only a copy that cannot run is replaced) and never lost (a copy that
might run is waited for).

Threads: replies arrive in the member clients' I/O threads, which only count and decide;
sending (tasks and abort requests) is done by this view's own pump thread.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aggregate import AggregateClient

__all__ = ["DEFAULT_WINDOW", "AggregateView", "HeldResult"]

#: Unfinished tasks per engine a controller is given before the rest wait in the view:
#: the task scheduler's own prefetch bound (queues.DEFAULT_HWM), so an engine never idles
#: for want of work in its controller while the view holds some.
DEFAULT_WINDOW = 128
#: Seconds a view's pump thread waits with nothing to send or move before it ends (a view
#: used once and forgotten must not keep a thread for the life of the process).
PUMP_IDLE = 5.0


class HeldResult(concurrent.futures.Future):  # type: ignore[type-arg]
    """The result of one task of the view: a future with ``get`` as the views' results
    have; ``sent`` is the member controller's result of its current copy (None while the
    task waits in the view), ``moves`` how often it was moved to another controller."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: Any = None
        self.moves = 0

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)

    @property
    def msg_ids(self) -> list[str]:
        return list(getattr(self.sent, "msg_ids", []))


class _Task:
    """One task of the view and where its current copy is."""

    __slots__ = ("args", "f", "k", "kwargs", "moving", "result", "sent")

    def __init__(self, f: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.f, self.args, self.kwargs = f, args, kwargs
        self.result = HeldResult()
        self.k = -1
        self.sent: Any = None
        self.moving = False


def _aborted(result: Any) -> bool:
    """Whether a member's result says the task was aborted before it ran."""
    if result.cancelled():
        return False
    error = result.exception()
    return error is not None and getattr(error, "ename", "") == "TaskAborted"


class AggregateView:
    """Load balancing over several controllers (see the module docstring).

    .. versionadded:: 0.2
    """

    def __init__(self, aggregate: AggregateClient, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window!r}")
        self.aggregate = aggregate
        self.window = window
        count = len(aggregate.clients)
        self.views = [client.load_balanced_view() for client in aggregate.clients]
        self.outstanding = [0] * count
        #: Per controller, its unfinished tasks in the order sent (newest last).
        self.queued: list[dict[int, _Task]] = [{} for _ in range(count)]
        #: Per controller, its tasks being asked to abort (not counted as movable again).
        self.moving = [0] * count
        self.held: deque[_Task] = deque()
        #: Tasks moved so far (each sent again to another controller).
        self.moved = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closed = False
        self._steal = False
        self._pump: threading.Thread | None = None

    # ------------------------------------------------------------ placing

    def _engines(self, k: int) -> int:
        return len(self.aggregate.clients[k])

    def _pick(self, refill: bool = False) -> int | None:
        """The controller with the fewest unfinished tasks per engine, among those with
        room in their window (for ``refill``: room for a quarter of it, so held tasks go
        out in bursts that travel batched, not one per finished task); None when none."""
        best, best_share = None, float("inf")
        for k, waiting in enumerate(self.outstanding):
            engines = max(1, self._engines(k))
            room = self.window * engines - waiting
            if room < (max(1, self.window // 4) * engines if refill else 1):
                continue
            share = (waiting + 1) / engines
            if share < best_share:
                best, best_share = k, share
        return best

    def _send(self, k: int, task: _Task) -> None:
        """Send ``task`` to controller ``k`` (counted and queued there already)."""
        try:
            sent = self.views[k].apply_async(task.f, *task.args, **task.kwargs)
        except BaseException as exc:
            with self._room:
                self.outstanding[k] -= 1
                self.queued[k].pop(id(task), None)
            task.result.set_exception(exc)
            return
        with self._room:
            task.sent = sent
        task.result.sent = sent
        sent.add_done_callback(lambda r, t=task: self._finished(t, r))

    def _place(self, k: int, task: _Task) -> None:
        """Count ``task`` at ``k`` (under the lock)."""
        self.outstanding[k] += 1
        task.k = k
        task.sent = None
        task.moving = False
        self.queued[k][id(task)] = task

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HeldResult:
        task = _Task(f, args, kwargs)
        with self._room:
            if self._closed:
                raise RuntimeError("the view is closed")
            self._start_pump()  # also moves tasks, so it runs whether any is held or not
            k = None if self.held else self._pick()  # nobody jumps the queue
            if k is None:
                self.held.append(task)
                self._wake()
                return task.result
            self._place(k, task)
        self._send(k, task)
        return task.result

    # ------------------------------------------------------------ replies (I/O threads)

    def _forget(self, task: _Task) -> None:
        """``task`` no longer counts at its controller (under the lock)."""
        k = task.k
        self.outstanding[k] -= 1
        self.queued[k].pop(id(task), None)
        if task.moving:
            self.moving[k] -= 1

    def _finished(self, task: _Task, result: Any) -> None:
        with self._room:
            if task.sent is not result:
                return  # the late reply of a copy replaced by a move: it never ran
            again = task.moving and _aborted(result)
            self._forget(task)
            if again:  # aborted for a move before it could start: send it again
                task.sent = None
                self.held.appendleft(task)
                self._wake()
            elif self.held:
                if self._pick(refill=True) is not None:
                    self._wake()
            elif self._stealable():
                self._steal = True
                self._wake()
        if not again:
            _settle(task.result, result)

    def _stealable(self) -> bool:
        """Some controller has an idle engine while another holds tasks not running."""
        idle = surplus = False
        for k, waiting in enumerate(self.outstanding):
            engines = self._engines(k)
            if waiting < engines:
                idle = True
            elif waiting - self.moving[k] > engines:
                surplus = True
        return idle and surplus

    def _steal_plan(self) -> list[tuple[int, list[_Task]]]:
        """Tasks to move (under the lock): from each controller with more unfinished
        tasks than engines, its newest not already moving, as many as the others have
        idle engines."""
        idle = sum(max(0, self._engines(k) - waiting) for k, waiting in enumerate(self.outstanding))
        plan: list[tuple[int, list[_Task]]] = []
        for k, waiting in enumerate(self.outstanding):
            surplus = waiting - self.moving[k] - self._engines(k)
            if idle <= 0 or surplus <= 0:
                continue
            chosen: list[_Task] = []
            for task in reversed(self.queued[k].values()):
                if len(chosen) >= min(idle, surplus):
                    break
                if not task.moving and task.sent is not None:
                    task.moving = True
                    chosen.append(task)
            self.moving[k] += len(chosen)
            idle -= len(chosen)
            if chosen:
                plan.append((k, chosen))
        return plan

    def _ask_to_abort(self, k: int, tasks: list[_Task]) -> None:
        """Abort ``tasks`` at controller ``k`` (pump thread); move those no engine had
        started when the answers are in."""
        client = self.aggregate.clients[k]
        copies = {task.sent.msg_ids[0]: task for task in tasks}
        futures = client._control("abort_request", {"msg_ids": list(copies)}, client.ids)
        left = [len(futures)]
        lock = threading.Lock()

        def answered(_: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            started: set[str] = set()
            for future in futures:
                reply = None if future.exception() else future.result()
                listed = None if reply is None else reply.content.get("started")
                if not isinstance(listed, list):
                    return  # an engine that cannot say: every task waits for its reply
                started.update(listed)
            with self._room:
                for msg_id, task in copies.items():
                    if msg_id in started or task.sent is None or task.sent.msg_ids[0] != msg_id:
                        continue  # may run there, or already settled / sent again
                    self._forget(task)
                    task.sent = None
                    task.result.moves += 1
                    self.moved += 1
                    self.held.appendleft(task)
                self._wake()

        if not futures:
            return
        for future in futures:
            future.add_done_callback(answered)

    # ------------------------------------------------------------ the pump thread

    def _wake(self) -> None:
        """Wake the pump (under the lock), starting it again if it ended while idle."""
        self._start_pump()
        self._room.notify()

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = threading.Thread(target=self._run_pump, name="corral-shards", daemon=True)
            self._pump.start()

    def _run_pump(self) -> None:
        """Send held tasks, oldest first, as controllers make room, and ask busy
        controllers to give up tasks an idle one could run."""
        while True:
            with self._room:
                while not self._closed and not self._steal:
                    if self.held and self._pick(refill=True) is not None:
                        break
                    if (
                        not self._room.wait(PUMP_IDLE)
                        and not self.held
                        and not any(self.outstanding)
                    ):
                        self._pump = None  # nothing to do: the next task starts another
                        return
                if self._closed:
                    return
                plan: list[tuple[int, list[_Task]]] = []
                if self._steal:
                    self._steal = False
                    if not self.held:
                        plan = self._steal_plan()
                burst: list[tuple[int, _Task]] = []
                while self.held:
                    k = self._pick()
                    if k is None:
                        break
                    task = self.held.popleft()
                    self._place(k, task)
                    burst.append((k, task))
            for k, task in burst:
                self._send(k, task)
            for k, tasks in plan:
                self._ask_to_abort(k, tasks)

    def close(self) -> None:
        """Stop sending held tasks (they are cancelled)."""
        with self._room:
            self._closed = True
            while self.held:
                self.held.popleft().result.cancel()
            self._room.notify_all()

    # ------------------------------------------------------------ the view's API

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(f, *args, **kwargs).get()

    def map_async(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        """One task per item, each placed as :meth:`apply_async` places it."""
        return [self.apply_async(f, *items) for items in zip(*sequences, strict=False)]

    def map_sync(self, f: Callable[..., Any], *sequences: Iterable[Any]) -> list[Any]:
        return [result.get() for result in self.map_async(f, *sequences)]


def _settle(held: HeldResult, result: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
    """Pass a sent task's outcome on to the result its caller holds."""
    if held.done():
        return
    if result.cancelled():
        held.cancel()
        return
    exc = result.exception()
    if exc is not None:
        held.set_exception(exc)
    else:
        held.set_result(result.result())
