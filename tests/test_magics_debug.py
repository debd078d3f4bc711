"""%debug, %%debug and %pdb: pdb in a cell, its prompt answered through input()."""

from __future__ import annotations

import pytest
from interp_helpers import make_interpreter


@pytest.fixture()
def interp():
    interpreter, rec = make_interpreter()
    interpreter.rec = rec  # type: ignore[attr-defined]
    return interpreter


def answer(interp, *commands):
    """Answer pdb's prompts with ``commands``, in order; the prompts seen."""
    pending = list(commands)
    prompts: list[str] = []

    def handler(prompt, password):
        prompts.append(prompt)
        return pending.pop(0)

    interp.input_handler = handler
    return prompts


def test_debug_after_an_error_inspects_the_failing_frame(interp):
    interp.execute("def f():\n    secret = 42\n    return 1 / 0\nf()")
    prompts = answer(interp, "p secret", "where", "q")
    interp.rec.clear()
    result = interp.execute("%debug")
    assert result.status == "ok"
    out = interp.rec.stdout()
    assert "-> return 1 / 0" in out and "\n42\n" in out
    assert "interpreter.py" not in out  # `where` shows the user's frames only
    assert prompts == ["(Pdb) "] * 3


def test_debug_without_a_traceback_is_a_usage_error(interp, monkeypatch):
    monkeypatch.delattr("sys.last_traceback", raising=False)
    result = interp.execute("%debug")
    assert result.ename == "UsageError" and "nothing to debug" in result.evalue


def test_debug_steps_through_a_statement_and_a_cell(interp):
    answer(interp, "n", "p y", "c")
    interp.rec.clear()
    assert interp.execute("%%debug\ny = 5\nz = y + 1").status == "ok"
    assert "\n5\n" in interp.rec.stdout() and interp.user_ns["z"] == 6
    answer(interp, "c")
    assert interp.execute("%debug w = 7").status == "ok"
    assert interp.user_ns["w"] == 7


def test_pdb_starts_the_debugger_after_each_error(interp):
    out = interp.execute("%pdb on")
    assert interp.call_pdb and out.status == "ok"
    prompts = answer(interp, "p local_value", "q")
    interp.rec.clear()
    result = interp.execute("def g():\n    local_value = 'here'\n    raise ValueError\ng()")
    assert result.ename == "ValueError"
    assert "'here'" in interp.rec.stdout() and len(prompts) == 2
    interp.execute("%pdb")
    assert not interp.call_pdb
    prompts = answer(interp)
    interp.execute("1 / 0")
    assert prompts == []
