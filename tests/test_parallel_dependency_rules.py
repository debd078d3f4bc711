"""The scheduler's dependency rules as pure functions (ipyparallel's Dependency semantics)."""

from __future__ import annotations

import pytest

from corral.plugins.parallel.client.dependencies import Dependency, dependency_field
from corral.plugins.parallel.controller.dependencies import (
    EMPTY,
    FAILED,
    IMPOSSIBLE,
    MET,
    PENDING,
    SUCCEEDED,
    UNKNOWN,
    WAITING,
    Spec,
    parse,
    state,
)


def test_parse_reads_ids_lists_and_flagged_dicts() -> None:
    assert parse(None) is EMPTY and parse([]) is EMPTY and parse(42) is EMPTY
    assert parse("a") == Spec(("a",))
    assert parse(["a", 3, "b"]) == Spec(("a", "b"))
    flagged = parse({"dependencies": ["a"], "all": False, "success": False, "failure": True})
    assert flagged == Spec(("a",), all=False, success=False, failure=True)
    assert not flagged.plain and parse(["a"]).plain
    assert parse({"dependencies": ["a"], "all": "yes"}) == Spec(("a",))  # bad flags: defaults


@pytest.mark.parametrize(
    ("spec", "outcomes", "expected"),
    [
        (Spec(("a", "b")), [SUCCEEDED, SUCCEEDED], MET),
        (Spec(("a", "b")), [SUCCEEDED, PENDING], WAITING),
        (Spec(("a", "b")), [FAILED, PENDING], IMPOSSIBLE),  # all: one refusal is enough
        (Spec(("a",)), [UNKNOWN], MET),  # forgotten or never seen counts as met
        (Spec(("a", "b"), all=False), [FAILED, PENDING], WAITING),
        (Spec(("a", "b"), all=False), [FAILED, SUCCEEDED], MET),
        (Spec(("a", "b"), all=False), [FAILED, FAILED], IMPOSSIBLE),
        (Spec(("a",), success=False, failure=True), [FAILED], MET),
        (Spec(("a",), success=False, failure=True), [SUCCEEDED], IMPOSSIBLE),
        (Spec(("a", "b"), failure=True), [FAILED, SUCCEEDED], MET),
        (Spec(()), [], MET),
    ],
)
def test_state(spec: Spec, outcomes: list[int], expected: str) -> None:
    assert state(spec, outcomes) == expected


def test_client_dependency_check_unreachable_and_metadata() -> None:
    dep = Dependency(["a", "b"], all=False)
    assert not dep.check(["x"], ["a"]) and not dep.unreachable(["x"], ["a"])
    assert dep.check(["b"], ["a"])
    assert dep.unreachable([], ["a", "b"])
    assert dependency_field(dep) == {
        "dependencies": ["a", "b"],
        "all": False,
        "success": True,
        "failure": False,
    }
    assert dependency_field(Dependency(["a"])) == ["a"]  # the defaults travel as plain ids
    assert dependency_field(None) == []
    with pytest.raises(ValueError, match="never met"):
        Dependency(["a"], success=False, failure=False)
