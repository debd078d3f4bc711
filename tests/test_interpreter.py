"""Interpreter.execute: counter, Out/_ semantics, notifications, streams, errors, stdin."""

from __future__ import annotations

import sys
import threading

import pytest
from interp_helpers import make_interpreter

from corral.core import events
from corral.core.interpreter import ExecutionResult, StdinNotImplementedError


def test_execute_posts_started_result_finished_in_order():
    interp, rec = make_interpreter()
    result = interp.execute("1 + 1")
    assert result == ExecutionResult("ok", 1)
    assert rec.types() == [events.EXECUTE_STARTED, events.EXECUTE_RESULT, events.EXECUTE_FINISHED]
    assert all(sender is interp for _, sender, _ in rec.seen)
    started, res, finished = (info for _, _, info in rec.seen)
    assert started == {"code": "1 + 1", "execution_count": 1, "silent": False}
    assert res == {"execution_count": 1, "data": {"text/plain": "2"}, "metadata": {}}
    assert finished == {"execution_count": 1, "status": "ok"}


def test_counter_out_underscores_and_in():
    interp, _ = make_interpreter()
    assert interp.execution_count == 1
    interp.execute("10")
    interp.execute("x = 5")  # no value: Out has no entry 2, _ unchanged
    interp.execute("20")
    interp.execute("30")
    ns = interp.user_ns
    assert interp.execution_count == 5
    assert ns["Out"] == {1: 10, 3: 20, 4: 30}
    assert (ns["_"], ns["__"], ns["___"]) == (30, 20, 10)
    assert ns["_1"] == 10 and ns["_4"] == 30 and "_2" not in ns
    assert ns["In"] == ["", "10", "x = 5", "20", "30"]
    # As IPython: while cell N runs (and until the next), `_i` is cell N-1.
    assert ns["_i"] == "20" and ns["_ii"] == "x = 5" and ns["_i2"] == "x = 5"
    assert ns["_i4"] == "30"


def test_multi_statement_cell_shows_only_last_expression():
    interp, rec = make_interpreter()
    interp.execute("a = 2\na * 3\nb = a + 1\nb * 10")
    assert [r["data"]["text/plain"] for r in rec.of(events.EXECUTE_RESULT)] == ["30"]
    assert interp.user_ns["b"] == 3


def test_none_and_semicolon_produce_no_result():
    interp, rec = make_interpreter()
    interp.execute("None")
    interp.execute("1 + 1;")
    interp.execute("1 + 1;  # quiet")
    assert rec.of(events.EXECUTE_RESULT) == []
    assert interp.execution_count == 4


def test_silent_runs_without_result_history_or_count():
    interp, rec = make_interpreter()
    result = interp.execute("y = 7\nprint('x')\ny", silent=True)
    assert result.status == "ok" and result.execution_count == 1
    assert interp.user_ns["y"] == 7
    assert rec.of(events.EXECUTE_RESULT) == []
    assert rec.stdout() == "x\n"
    assert rec.of(events.EXECUTE_STARTED)[0]["silent"] is True
    assert interp.execution_count == 1
    assert interp.history("tail") == []
    assert interp.user_ns["Out"] == {}


def test_store_history_false_keeps_count_and_history():
    interp, rec = make_interpreter()
    result = interp.execute("41 + 1", store_history=False)
    assert rec.of(events.EXECUTE_RESULT)[0]["data"]["text/plain"] == "42"
    assert result.execution_count == 1
    assert interp.execution_count == 1
    assert interp.history("tail") == []
    assert interp.user_ns["Out"] == {}
    interp.execute("1")
    assert interp.history("tail") == [(interp.history_manager.session_id, 1, "1")]


def test_user_expressions_ok_and_error():
    interp, _ = make_interpreter()
    result = interp.execute("z = 4", user_expressions={"sq": "z * z", "bad": "1/0"})
    assert result.user_expressions["sq"] == {
        "status": "ok",
        "data": {"text/plain": "16"},
        "metadata": {},
    }
    bad = result.user_expressions["bad"]
    assert bad["status"] == "error" and bad["ename"] == "ZeroDivisionError"


def test_top_level_await():
    interp, rec = make_interpreter()
    interp.execute("import asyncio\nasync def f():\n    await asyncio.sleep(0)\n    return 9")
    result = interp.execute("await f()")
    assert result.status == "ok"
    assert rec.of(events.EXECUTE_RESULT)[-1]["data"]["text/plain"] == "9"


def test_cells_run_inside_a_running_event_loop():
    """As under ipykernel: any cell sees a running loop, its tasks live on across cells,
    ``asyncio.run`` fails there, and context variables a cell sets outlive it."""
    interp, rec = make_interpreter()
    assert interp.execute("import asyncio\nasyncio.get_running_loop().is_running()").status == "ok"
    assert rec.of(events.EXECUTE_RESULT)[-1]["data"]["text/plain"] == "True"
    assert interp.execute("t = asyncio.create_task(asyncio.sleep(0, result=5))").status == "ok"
    assert interp.execute("await t").status == "ok"
    assert rec.of(events.EXECUTE_RESULT)[-1]["data"]["text/plain"] == "5"
    failed = interp.execute(
        "c = asyncio.sleep(0)\ntry:\n    asyncio.run(c)\nfinally:\n    c.close()"
    )
    assert (failed.ename, failed.evalue) == (
        "RuntimeError",
        "asyncio.run() cannot be called from a running event loop",
    )
    interp.execute("import contextvars\nv = contextvars.ContextVar('v')\nv.set(1);")
    assert interp.execute("v.get()").status == "ok"
    assert rec.of(events.EXECUTE_RESULT)[-1]["data"]["text/plain"] == "1"


def test_an_interrupt_in_the_loop_stops_the_awaiting_cell():
    """A KeyboardInterrupt that lands in asyncio's loop (the cell waits) ends the cell
    with a traceback into the cell, and the loop serves the next cell."""
    interp, _ = make_interpreter()
    interp.execute("import asyncio, signal, threading")
    main = "threading.main_thread().ident"  # the signal must wake the loop's select()
    code = f"threading.Timer(0.2, signal.pthread_kill, ({main}, signal.SIGINT)).start()\n"
    code += "await asyncio.sleep(30)"
    stopped = interp.execute(code)
    assert stopped.ename == "KeyboardInterrupt"
    assert any("await asyncio.sleep(30)" in line for line in stopped.traceback)
    assert interp.execute("await asyncio.sleep(0)").status == "ok"


def test_future_import_persists_across_cells():
    interp, _ = make_interpreter()
    interp.execute("from __future__ import annotations")
    interp.execute("def g(x: Undefined) -> None: pass")
    assert interp.user_ns["g"].__annotations__["x"] == "Undefined"


# ------------------------------------------------------------------ streams


def test_stream_posts_each_write_as_it_happens():
    interp, rec = make_interpreter()
    seen_before_result = []

    def watch(type, sender, **info):  # noqa: A002
        if type == events.STREAM:
            seen_before_result.append(info["text"])

    interp.center.add_observer(watch, events.STREAM)
    interp.execute("import sys\nprint('a')\nsys.stderr.write('e')\nprint('b', end='')")
    streams = rec.of(events.STREAM)
    assert [(s["name"], s["text"]) for s in streams] == [
        ("stdout", "a"),
        ("stdout", "\n"),
        ("stderr", "e"),
        ("stdout", "b"),
    ]
    assert seen_before_result == ["a", "\n", "e", "b"]


def test_streams_restored_after_execute():
    interp, _ = make_interpreter()
    before = sys.stdout, sys.stderr
    interp.execute("print('x')")
    interp.execute("1/0")
    assert (sys.stdout, sys.stderr) == before


def test_hundred_thousand_prints_arrive_in_order():
    interp, rec = make_interpreter()
    interp.execute("for i in range(100_000):\n    print(i)")
    lines = rec.stdout().splitlines()
    assert len(lines) == 100_000
    assert lines == [str(i) for i in range(100_000)]


def test_writes_from_other_threads_during_execution():
    interp, rec = make_interpreter()
    code = (
        "import threading\n"
        "def work(n):\n"
        "    for i in range(200):\n"
        "        print(f'{n}:{i}')\n"
        "ts = [threading.Thread(target=work, args=(n,)) for n in range(4)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
    )
    interp.execute(code)
    lines = rec.stdout().splitlines()
    assert sorted(lines) == sorted(f"{n}:{i}" for n in range(4) for i in range(200))
    for n in range(4):  # each thread's own lines stay in order
        mine = [line for line in lines if line.startswith(f"{n}:")]
        assert mine == [f"{n}:{i}" for i in range(200)]


def test_stream_posts_from_threads_never_interleave_observer_calls():
    interp, _ = make_interpreter()
    active = []
    overlaps = []

    def observer(type, sender, **info):  # noqa: A002
        active.append(1)
        if len(active) > 1:
            overlaps.append(True)
        active.pop()

    interp.center.add_observer(observer, events.STREAM)
    interp.execute(
        "import threading\n"
        "ts = [threading.Thread(target=lambda: [print(i) for i in range(500)]) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts];"
    )
    assert overlaps == []
    assert threading.active_count() >= 1


# ------------------------------------------------------------------ errors


def test_error_reports_ename_evalue_and_trimmed_traceback():
    interp, rec = make_interpreter()
    result = interp.execute("def f():\n    return 1/0\n\nf()")
    assert result.status == "error"
    assert (result.ename, result.evalue) == ("ZeroDivisionError", "division by zero")
    assert result.execution_count == 1 and interp.execution_count == 2
    error = rec.of(events.ERROR)[0]
    assert error["traceback"] == result.traceback
    text = "\n".join(result.traceback)
    assert "Cell In[1], line 4" in text
    assert "Cell In[1], line 2, in f()" in text
    assert "----> 2     return 1/0" in text
    assert "interpreter.py" not in text and "corral/core" not in text
    assert result.traceback[-1] == "ZeroDivisionError: division by zero"
    assert rec.of(events.EXECUTE_FINISHED) == [{"execution_count": 1, "status": "error"}]
    assert rec.types()[-1] == events.EXECUTE_FINISHED


def test_an_error_that_renders_itself_is_shown_its_own_way():
    """IPython's ``_render_traceback_``: a remote error shows the engine's traceback, not
    the local frames where its result was waited for; a renderer that fails or returns
    something else leaves the usual traceback."""
    interp, _ = make_interpreter()
    code = (
        "class Remote(Exception):\n"
        "    def _render_traceback_(self):\n"
        "        return ['[engine 0] ZeroDivisionError: division by zero', '  remote frame']\n"
        "def wait():\n"
        "    raise Remote('x')\n"
        "wait()"
    )
    result = interp.execute(code)
    assert result.ename == "Remote"
    assert result.traceback == ["[engine 0] ZeroDivisionError: division by zero", "  remote frame"]
    broken = interp.execute(
        "class Broken(Exception):\n"
        "    def _render_traceback_(self):\n"
        "        return 1/0\n"
        "raise Broken('y')"
    )
    assert broken.traceback[-1] == "Broken: y"
    assert any("Traceback (most recent call last)" in line for line in broken.traceback)


def test_corral_frames_between_user_frames_are_hidden():
    """An error raised by an observer a print passes through: the user's cell and observer
    show, the center's and the stream's frames do not."""
    interp, _ = make_interpreter()
    interp.user_ns["center"] = interp.center
    code = (
        "def loud(type, sender, **info):\n"
        "    raise ValueError('observer saw ' + info['text'])\n"
        "center.add_observer(loud, 'stream')\n"
        "print('x')"
    )
    result = interp.execute(code)
    text = "\n".join(result.traceback)
    assert result.ename == "ValueError"
    assert (
        "Cell In[1], line 4" in text and "Cell In[1], line 2, in loud(type, sender, **info)" in text
    )
    assert "center.py" not in text and "iostreams.py" not in text


def test_frames_name_the_method_and_its_parameters():
    """As IPython shows them: ``in Class.method(self, a, *rest, key, **kw)``, never values."""
    interp, _ = make_interpreter()
    code = (
        "class Shape:\n"
        "    def area(self, scale, *rest, unit, **options):\n"
        "        return [1 / 0 for _ in range(1)]\n"
        "Shape().area(2, unit='m', colour='red')"
    )
    text = "\n".join(interp.execute(code).traceback)
    assert "Cell In[1], line 3, in Shape.area(self, scale, *rest, unit, **options)\n" in text
    # Before 3.12 the comprehension is a frame of its own: its hidden iterator argument
    # (.0) is not shown.
    assert "(.0)" not in text


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        ("last_expr", ["p", "2"]),
        ("last", ["p", "2"]),
        ("all", ["1", "p", "2"]),
        ("none", ["p"]),
        ("last_expr_or_assign", ["p", "2"]),
    ],
)
def test_ast_node_interactivity(mode: str, shown: list[str]) -> None:
    """Which expressions of a cell show their value, in order with the cell's prints."""
    interp, rec = make_interpreter()
    interp.ast_node_interactivity = mode
    interp.execute("1\nprint('p')\nx = 5\n2")
    seen = [
        info["data"]["text/plain"] if kind == events.EXECUTE_RESULT else info["text"].strip()
        for kind, _, info in rec.seen
        if kind == events.EXECUTE_RESULT or (kind == events.STREAM and info["text"].strip())
    ]
    assert seen == shown
    rec.clear()
    interp.execute("y = 7")  # a final assignment shows only under last_expr_or_assign
    values = [r["data"]["text/plain"] for r in rec.of(events.EXECUTE_RESULT)]
    assert values == (["7"] if mode == "last_expr_or_assign" else [])
    rec.clear()
    interp.execute("3\n4;")  # a final ';' still hides the last value
    values = [r["data"]["text/plain"] for r in rec.of(events.EXECUTE_RESULT)]
    assert values == (["3"] if mode == "all" else [])


def test_traceback_frame_without_line_number():
    """Python 3.11+ can report a frame's line as None (caught between two lines)."""
    import linecache

    from corral.core.tracebacks import _context

    lines = ["a = 1\n", "b = 2\n"]
    linecache.cache["<cell-lineless>"] = (len("".join(lines)), None, lines, "<cell-lineless>")
    assert _context("<cell-lineless>", 1, colors=False) != []
    assert _context("<cell-lineless>", None, colors=False) == []


def test_error_frames_in_other_files_and_chained_exceptions(tmp_path):
    interp, _ = make_interpreter()
    mod = tmp_path / "helper_mod_for_tb.py"
    mod.write_text("def boom():\n    raise ValueError('inner')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        result = interp.execute(
            "import helper_mod_for_tb\n"
            "try:\n"
            "    helper_mod_for_tb.boom()\n"
            "except ValueError as e:\n"
            "    raise KeyError('outer') from e\n"
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("helper_mod_for_tb", None)
    text = "\n".join(result.traceback)
    assert result.ename == "KeyError"
    assert f"File {mod}:2, in boom()" in text
    assert "ValueError: inner" in text
    assert "direct cause of the following exception" in text
    assert text.index("ValueError: inner") < text.index("KeyError: 'outer'")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11's")
def test_exception_group_shows_its_members():
    """What failed in an asyncio.TaskGroup is in the group's members, not its own line."""
    interp, _ = make_interpreter()
    result = interp.execute(
        "def fails(n):\n    raise ValueError(f'member {n}')\nerrors = []\n"
        "for n in (1, 2):\n    try:\n        fails(n)\n    except ValueError as e:\n"
        "        errors.append(e)\nraise ExceptionGroup('two failed', errors)"
    )
    text = "\n".join(result.traceback)
    assert (result.ename, result.evalue) == ("ExceptionGroup", "two failed (2 sub-exceptions)")
    assert text.index("two failed") < text.index("member 1") < text.index("member 2")
    assert "    | ----> 2     raise ValueError(f'member {n}')" in text


def test_error_cell_is_still_numbered_and_stored():
    interp, _ = make_interpreter()
    interp.execute("raise RuntimeError('x')")
    assert interp.execution_count == 2
    assert interp.user_ns["In"][1] == "raise RuntimeError('x')"


def test_syntax_error_is_reported_nicely():
    interp, rec = make_interpreter()
    result = interp.execute("x = 1\ny = (1,\n")
    assert result.status == "error" and result.ename == "SyntaxError"
    text = "\n".join(result.traceback)
    assert "Cell In[1], line 2" in text
    assert "y = (1," in text and "^" in text
    assert result.traceback[-1].endswith("SyntaxError: '(' was never closed")
    assert "interpreter.py" not in text
    assert "x" not in interp.user_ns  # nothing of the cell ran
    assert rec.of(events.ERROR)[0]["ename"] == "SyntaxError"


def test_keyboard_interrupt_in_user_code_is_an_error():
    interp, rec = make_interpreter()
    result = interp.execute("x = 1\nraise KeyboardInterrupt")
    assert result.status == "error" and result.ename == "KeyboardInterrupt"
    assert rec.of(events.ERROR)[0]["ename"] == "KeyboardInterrupt"
    assert rec.types()[-1] == events.EXECUTE_FINISHED


def test_sigint_during_user_code_is_reported():
    interp, _ = make_interpreter()
    result = interp.execute("import signal\nsignal.raise_signal(signal.SIGINT)\nafter = 1")
    assert result.ename == "KeyboardInterrupt"
    assert "after" not in interp.user_ns
    assert interp.execute("1").status == "ok"  # the interpreter carries on


def test_system_exit_does_not_leave_execute():
    interp, _ = make_interpreter()
    result = interp.execute("raise SystemExit(3)")
    assert result.status == "error" and result.ename == "SystemExit"


# ------------------------------------------------------------------ stdin


def test_input_and_getpass_route_to_handler():
    import builtins
    import getpass

    original = builtins.input, getpass.getpass
    interp, _ = make_interpreter()
    asked = []

    def handler(prompt, password):
        asked.append((prompt, password))
        return "secret" if password else "alice"

    interp.input_handler = handler
    result = interp.execute(
        "import getpass\nname = input('Name? ')\npw = getpass.getpass()\n(name, pw)"
    )
    assert result.status == "ok"
    assert asked == [("Name? ", False), ("Password: ", True)]
    assert (interp.user_ns["name"], interp.user_ns["pw"]) == ("alice", "secret")
    assert (builtins.input, getpass.getpass) == original  # restored afterwards


def test_input_without_handler_or_stdin_raises_stdin_not_implemented():
    interp, _ = make_interpreter()
    result = interp.execute("input('x')")
    assert result.ename == "StdinNotImplementedError"
    assert "stdin" in result.evalue
    assert "iostreams.py" not in "\n".join(result.traceback)
    assert issubclass(StdinNotImplementedError, RuntimeError)
    interp.input_handler = lambda prompt, password: "yes"
    assert interp.execute("input()", allow_stdin=False).ename == "StdinNotImplementedError"
    assert interp.execute("answer = input()").status == "ok"
    assert interp.user_ns["answer"] == "yes"


# ------------------------------------------------------------------ reset


def test_reset_clears_namespace_counter_and_starts_new_history_session():
    interp, _ = make_interpreter()
    interp.execute("a = 1")
    first = interp.history_manager.session_id
    interp.reset()
    assert "a" not in interp.user_ns
    assert interp.execution_count == 1
    assert interp.user_ns["Out"] == {} and interp.user_ns["In"] == [""]
    assert interp.history_manager.session_id == first + 1
    interp.execute("2")
    assert interp.user_ns["Out"] == {1: 2}


@pytest.mark.parametrize("name", ["display", "get_interpreter", "__corral__", "In", "Out"])
def test_namespace_helpers_present(name):
    interp, _ = make_interpreter()
    assert name in interp.user_ns


def test_get_interpreter_returns_the_running_interpreter():
    interp, rec = make_interpreter()
    interp.execute("get_interpreter() is get_interpreter()")
    interp.execute("me = get_interpreter()")
    assert interp.user_ns["me"] is interp
