"""The task core shared by engines and kernels (``engine/tasks.py``), with no sockets."""

from __future__ import annotations

import operator
import threading
from contextlib import nullcontext
from typing import Any

import pytest

from corral.core.serialize import deserialize, pack_apply, serialize
from corral.plugins.parallel.engine.tasks import ABORT_KEEP, Tasks
from corral.transports.zmq.requests import InterruptGuard


class Around:
    """A context that records whether the guard was armed inside it."""

    def __init__(self, guard: InterruptGuard) -> None:
        self.guard = guard
        self.entered = self.exited = False

    def __enter__(self) -> None:
        assert not self.guard.executing
        self.entered = True

    def __exit__(self, *exc: object) -> None:
        assert not self.guard.executing  # disarmed before the context exits
        self.exited = True


#: The guard of the test running (functions are pickled by reference: they read this).
GUARD = InterruptGuard()


def armed() -> bool:
    return GUARD.executing


def test_call_returns_the_result_frames_with_the_guard_armed_only_in_the_call() -> None:
    guard, tasks = GUARD, Tasks({})
    around = Around(guard)
    frames, error = tasks.call(pack_apply(armed), guard, around)
    assert error is None and deserialize(frames) is True
    assert around.entered and around.exited and not guard.executing


def test_call_reports_errors_of_the_call_of_unpacking_and_of_pickling() -> None:
    guard, tasks = InterruptGuard(), Tasks({})
    frames, error = tasks.call(pack_apply(operator.truediv, (1, 0)), guard, nullcontext())
    assert frames is None and error is not None
    assert error["status"] == "error" and error["ename"] == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in error["traceback"])

    _, error = tasks.call(serialize("not an apply"), guard, nullcontext())
    assert error is not None and error["ename"] == "DeserializationError"

    _, error = tasks.call(pack_apply(threading.Lock), guard, nullcontext())
    assert error is not None and error["ename"] in ("SerializationError", "TypeError")


def test_a_keyboard_interrupt_in_the_call_is_the_tasks_error() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    guard, tasks = InterruptGuard(), Tasks({})
    around = Around(guard)
    _, error = tasks.call(pack_apply(interrupted), guard, around)
    assert error is not None and error["ename"] == "KeyboardInterrupt"
    assert around.exited and not guard.executing


def test_push_pull_clear_on_one_namespace() -> None:
    class Interpreter:
        def __init__(self, ns: dict[str, Any]) -> None:
            self.ns = ns

        def reset_namespace(self) -> None:
            self.ns.clear()

    ns: dict[str, Any] = {}
    tasks = Tasks(ns)
    assert sorted(tasks.push({}, serialize({"a": 1, "b": 2}))) == ["a", "b"]
    keys, frames = tasks.pull({"keys": ["b", "a"]})
    assert keys == ["b", "a"] and deserialize(frames) == (2, 1)
    with pytest.raises(KeyError, match="'c' is not defined"):
        tasks.pull({"keys": ["c"]})
    with pytest.raises(TypeError):
        tasks.pull({"keys": "a"})
    tasks.clear(Interpreter(ns))
    assert ns == {}


def test_abort_names_requests_answered_once() -> None:
    tasks = Tasks({})
    tasks.abort({"msg_ids": ["m1", "m2"]})
    assert tasks.take_aborted("m1") and not tasks.take_aborted("m1")
    assert not tasks.take_aborted("m3") and tasks.take_aborted("m2")
    with pytest.raises(TypeError, match="msg_ids"):
        tasks.abort({"msg_ids": "m1"})


def test_aborts_for_tasks_that_never_come_are_forgotten_oldest_first() -> None:
    """A view aborts on every engine of its targets, so most aborted ids never reach a
    given engine: they must not pile up for its life."""
    tasks = Tasks({})
    tasks.abort({"msg_ids": ["first"]})
    for start in range(0, 3 * ABORT_KEEP, 4096):
        tasks.abort({"msg_ids": [f"m{i}" for i in range(start, start + 4096)]})
    assert len(tasks.aborted) <= ABORT_KEEP + ABORT_KEEP // 64
    assert not tasks.take_aborted("first")  # the oldest went first
    newest = f"m{3 * ABORT_KEEP - 1}"
    assert tasks.take_aborted(newest) and not tasks.take_aborted(newest)


def test_a_shipped_main_function_runs_in_the_namespace() -> None:
    def read_x() -> Any:
        return x  # noqa: F821 - defined by the namespace, not here

    read_x.__module__ = "__main__"  # as if shipped from a client's script
    ns: dict[str, Any] = {"x": 41}
    guard, tasks = InterruptGuard(), Tasks(ns)
    frames, error = tasks.call(pack_apply(read_x), guard, nullcontext())
    assert error is None and deserialize(frames) == 41
