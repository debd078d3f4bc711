"""No wrong answers: results are whole before any reply can reach them, and every function
a client ships runs in the engine's user namespace.

Both bugs once returned wrong values silently: a fast ``pull`` reply came back as a
1-tuple (the result's converter was set after the request had been sent), and functions
sent by ``map`` or ``push`` saw a private copy of the client's globals instead of the
engine's namespace. The pull tests force the fast reply (the client waits for each reply
before the submitting call returns), so they fail on the old code every time, not 1 run
in 4-8; a loop over real pulls covers the natural timing too.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from helpers import TIMEOUT
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import Client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def rc(cluster: LiveCluster) -> Client:
    return cluster.client


@pytest.fixture
def instant_replies(rc: Client) -> Iterator[None]:
    """Every submission returns only once its reply is in: the fastest possible reply."""
    original = rc._submit

    def submit_and_wait(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        done, _ = concurrent.futures.wait([result], timeout=TIMEOUT)
        assert done, "the reply never came"
        return result

    rc._submit = submit_and_wait  # type: ignore[method-assign]
    try:
        yield
    finally:
        del rc._submit


def test_pull_of_one_name_is_the_value_even_when_the_reply_is_instant(
    rc: Client, instant_replies: None
) -> None:
    view = rc[:]
    view.push({"c": 15}, block=True)
    assert view.pull("c", block=True) == [15, 15]
    assert rc[0].pull("c", block=True) == 15
    assert view["c"] == [15, 15]


def test_pull_of_several_names_is_a_list_even_when_the_reply_is_instant(
    rc: Client, instant_replies: None
) -> None:
    rc[:].push({"a": 1, "b": 2}, block=True)
    assert rc[0].pull(["a", "b"], block=True) == [1, 2]
    assert rc[:].pull(["a", "b"], block=True) == [[1, 2], [1, 2]]


@pytest.mark.parametrize("direct", [True, False, None])
def test_every_pull_path_converts_before_an_instant_reply(
    rc: Client, instant_replies: None, direct: bool | None
) -> None:
    rc[:].push({"z": -5}, block=True)
    assert rc[:].pull("z", block=True, direct=direct) == [-5, -5]
    assert rc[1].pull(["z"], block=True, direct=direct) == [-5]


def test_broadcast_pull_converts_before_an_instant_reply(rc: Client, instant_replies: None) -> None:
    view = rc.broadcast_view()
    view.push({"w": "x"}, block=True)
    assert view.pull("w", block=True) == ["x", "x"]


def test_map_result_knows_its_length_before_an_instant_reply(
    rc: Client, instant_replies: None
) -> None:
    result = rc.load_balanced_view().map(abs, range(-10, 0), block=False)
    assert len(result) == 10
    assert result.get(TIMEOUT) == list(range(10, 0, -1))


def test_many_real_pulls_never_return_tuples(rc: Client) -> None:
    view = rc[:]
    view.push({"c": 15, "f": abs}, block=True)
    for _ in range(200):
        assert view["c"] == [15, 15]
        assert rc[0]["f"] is abs


# ------------------------------------------------------------ the engine's namespace


# Functions as a script or notebook defines them: module level, in ``__main__``.


def shift(x: int) -> int:
    return x + offset  # noqa: F821 - defined on the engines only


def engine_id(_: int) -> Any:
    return id


def scaled(x: int) -> int:
    return x * factor  # noqa: F821 - pushed separately


def call_pushed() -> int:
    return scaled(2)


def helper() -> Any:
    return marker  # noqa: F821 - pushed separately


def outer() -> Any:
    return helper()


def call(fn: Any) -> Any:
    return fn()


def both() -> tuple[Any, Any]:
    return mine, only_here  # noqa: F821 - set by the test


for _function in (shift, engine_id, scaled, call_pushed, helper, outer, call, both):
    _function.__module__ = "__main__"


def test_a_mapped_function_sees_pushed_names(rc: Client) -> None:
    rc[:].push({"offset": 100}, block=True)
    assert rc.load_balanced_view().map_sync(shift, range(4)) == [100, 101, 102, 103]
    assert rc[:].map_sync(shift, range(4)) == [100, 101, 102, 103]


def test_a_scattered_name_shadows_a_builtin_in_mapped_functions(rc: Client) -> None:
    view = rc[:]
    view.scatter("id", [10, 20], flatten=True, block=True)
    try:
        assert sorted(view.map_sync(engine_id, range(2))) == [10, 20]
    finally:
        view.execute("del id", block=True)


def test_a_pushed_function_reads_the_engine_namespace(rc: Client) -> None:
    view = rc[:]
    view["scaled"] = scaled
    view["factor"] = 3
    view.execute("out = scaled(7)", block=True)
    assert view["out"] == [21, 21]
    assert view.apply_sync(call_pushed) == [6, 6]


def test_helpers_of_an_applied_function_see_the_engine_namespace(rc: Client) -> None:
    rc[:].push({"marker": "engine"}, block=True)
    assert rc[:].apply_sync(outer) == ["engine", "engine"]


def test_a_function_passed_as_an_argument_sees_the_engine_namespace(rc: Client) -> None:
    rc[:].push({"marker": 7}, block=True)
    assert rc[:].apply_sync(call, helper) == [7, 7]
    assert rc[:].apply_sync(call, fn=helper) == [7, 7]


def test_engine_names_win_over_shipped_globals_and_shipped_fill_the_gaps(rc: Client) -> None:
    rc[:].execute("mine = 'engine'", block=True)
    globals()["mine"] = "client"
    globals()["only_here"] = "shipped"
    try:
        assert rc[:].apply_sync(both) == [("engine", "shipped")] * 2
    finally:
        del globals()["mine"], globals()["only_here"]
