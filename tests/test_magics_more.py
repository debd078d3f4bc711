"""Display settings (%precision, %pprint, %doctest_mode), namespace (%xdel,
%reset_selective), introspection (%pinfo, %pdef, %psearch...), history (%recall, %rerun,
%save, %macro), %tb, %prun, the reporting magics, and the %%file/%%HTML/%%SVG spellings."""

from __future__ import annotations

import pstats

import pytest
from interp_helpers import make_interpreter

from corral.core import display, events, magics_more


@pytest.fixture()
def interp():
    interpreter, rec = make_interpreter()
    interpreter.rec = rec  # type: ignore[attr-defined]
    yield interpreter
    # %precision and %pprint set how this process formats results: leave it as found.
    magics_more._state.update(float_format=None, pretty=True, doctest=None)
    magics_more._apply_plain_options(interpreter)


def run(interp, code):
    """Execute, fail loudly on error, and return (result, stdout text, shown results)."""
    interp.rec.clear()
    result = interp.execute(code)
    assert result.status == "ok", "\n".join(result.traceback)
    shown = [r["data"]["text/plain"] for r in interp.rec.of(events.EXECUTE_RESULT)]
    return result, interp.rec.stdout(), shown


def page(result):
    [text] = [p["data"]["text/plain"] for p in result.payload if p["source"] == "page"]
    return text


def test_precision_formats_floats_as_ipython_does(interp):
    assert run(interp, "%precision 3")[2] == ["'%.3f'"]
    assert run(interp, "3.14159")[2] == ["3.142"]
    assert run(interp, "[1.23456, (2.5555,), {'k': 0.5}]")[2] == ["[1.235, (2.555,), {'k': 0.500}]"]
    assert run(interp, "%precision %e")[2] == ["'%e'"]
    assert run(interp, "3.14159")[2] == ["3.141590e+00"]
    assert run(interp, "%precision")[2] == ["'%r'"]
    assert run(interp, "3.14159")[2] == ["3.14159"]
    assert interp.execute("%precision x").ename == "UsageError"
    assert interp.execute("%precision %q").ename == "UsageError"


def test_precision_sets_numpy_print_options(interp):
    numpy = pytest.importorskip("numpy")
    saved = numpy.get_printoptions()
    try:
        run(interp, "import numpy as np\n%precision 2")
        assert run(interp, "np.array([1.23456])")[2] == ["array([1.23])"]
        run(interp, "%precision")
        assert numpy.get_printoptions()["precision"] == 8
    finally:
        numpy.set_printoptions(**saved)


def test_pprint_toggles_pretty_printing(interp):
    _, out, _ = run(interp, "%pprint")
    assert out == "Pretty printing has been turned OFF\n"
    long = "{'key': [" + ", ".join(["1"] * 40) + "]}"
    assert run(interp, "{'key': [1] * 40}")[2] == [long]  # one line: plain repr
    _, out, _ = run(interp, "%pprint")
    assert out == "Pretty printing has been turned ON\n"
    assert "\n" in run(interp, "{'key': [1] * 40}")[2][0]


def test_doctest_mode_toggles_plain_output_and_tracebacks(interp):
    _, out, _ = run(interp, "%doctest_mode")
    assert out == "Exception reporting mode: Plain\nDoctest mode is: ON\n"
    assert interp.xmode == "Plain" and not display._pretty
    _, out, _ = run(interp, "%doctest_mode")
    assert out == "Exception reporting mode: Context\nDoctest mode is: OFF\n"
    assert interp.xmode == "Context" and display._pretty


def test_colors_switches_traceback_colour(interp):
    interp.colors = True
    run(interp, "%colors nocolor")
    assert interp.colors is False
    assert "\x1b[" not in "".join(interp.execute("1/0").traceback)
    run(interp, "%colors linux")
    assert interp.colors is True
    assert interp.execute("%colors").ename == "UsageError"


def test_xdel_removes_the_name_and_corrals_references(interp):
    run(interp, "big = [1, 2]")
    run(interp, "big")
    count = interp.execution_count - 1
    assert interp.user_ns["Out"][count] == [1, 2]
    run(interp, "%xdel big")
    ns = interp.user_ns
    assert "big" not in ns and count not in ns["Out"] and f"_{count}" not in ns
    assert ns["_"] == ""
    _, out, _ = run(interp, "%xdel nothing")
    assert out == "NameError: name 'nothing' is not defined\n"


def test_reset_selective_deletes_matching_names(interp):
    run(interp, "a = 1\nab = 2\nb = 3")
    run(interp, "%reset_selective -f ^a")
    ns = interp.user_ns
    assert "a" not in ns and "ab" not in ns and ns["b"] == 3
    assert "In" in ns and "__corral__" in ns  # the interpreter's own names stay
    assert interp.execute("%reset_selective").ename == "UsageError"


def test_pinfo_family(interp):
    run(interp, 'def f(a, b=2):\n    """Add things."""\n    return a\nalpha = 1\nalps = "s"')
    text = page(run(interp, "%pinfo f")[0])
    assert "Signature: f(a, b=2)" in text and "Add things." in text
    assert "return a" in page(run(interp, "%pinfo2 f")[0])
    assert run(interp, "%pdef f")[1] == " f(a, b=2)\n"
    assert run(interp, "%pdef alpha")[1] == "Object is not callable.\n"
    assert run(interp, "%pdoc f")[1] == "Docstring:\n    Add things.\n"
    assert run(interp, "%psearch al*")[1] == "alpha\nalps\n"
    assert run(interp, "%psearch al* int")[1] == "alpha\n"
    assert run(interp, "%psearch -i AL*")[1] == "alpha\nalps\n"
    assert "pstats.Stats.sort_stats" in run(interp, "import pstats\n%psearch pstats.Stats.sort*")[1]
    assert "class Stats" in page(run(interp, "%pfile pstats.Stats")[0])
    assert interp.execute("%pdef missing").ename == "UsageError"


def test_recall_rerun_save_and_macro(interp, tmp_path):
    run(interp, "counter = 0")
    run(interp, "counter += 1\ncounter")  # cell 2
    result, _, _ = run(interp, "%recall 2")
    assert result.payload == [
        {"source": "set_next_input", "text": "counter += 1\ncounter", "replace": False}
    ]
    _, out, shown = run(interp, "%rerun 2")
    assert out == "=== Executing: ===\ncounter += 1\ncounter\n=== Output: ===\n"
    assert shown == ["2"]
    _, out, shown = run(interp, "%rerun")  # the previous cell: the %rerun 2 itself
    assert shown == ["3"]
    run(interp, "%%sx\necho from a cell magic")  # cell 6
    _, _, shown = run(interp, "%rerun 6")
    assert shown == ["['from a cell magic']"]
    _, out, _ = run(interp, "%macro bump 2")
    assert out.startswith("Macro `bump` created. To execute, type its name (without quotes).")
    assert run(interp, "bump")[2] == ["4"]  # a bare macro name runs it
    assert interp.user_ns["counter"] == 4
    target = tmp_path / "saved"
    _, out, _ = run(interp, f"%save {target} 1-2")
    saved = (tmp_path / "saved.py").read_text()
    assert saved == "# coding: utf-8\ncounter = 0\ncounter += 1\ncounter\n"
    assert out.startswith(f"The following commands were written to file `{target}.py`:")
    run(interp, f"%save -a {target} bump")
    assert (tmp_path / "saved.py").read_text() == saved + "counter += 1\ncounter\n"


def test_tb_shows_the_last_traceback_again(interp):
    interp.execute("def broken():\n    return 1 / 0")
    interp.execute("broken()")
    _, out, _ = run(interp, "%tb")
    assert "ZeroDivisionError: division by zero" in out and "broken" in out
    assert run(interp, "%tb minimal")[1].strip() == "ZeroDivisionError: division by zero"


def test_prun_pages_pstats_table(interp):
    run(interp, "def work(n):\n    return sum(range(n))")
    result, _, _ = run(interp, "%prun -l 3 work(1000)")
    table = page(result)
    assert "function calls in" in table and "Ordered by: internal time" in table
    assert "List reduced from" in table and "due to restriction <3>" in table
    assert "(work)" in table
    result, _, _ = run(interp, "%%prun -s cumulative -q\nx = work(10)")
    assert result.payload == [] and interp.user_ns["x"] == 45
    run(interp, "stats = %prun -r -q work(5)")
    assert isinstance(interp.user_ns["stats"], pstats.Stats)
    assert interp.execute("%prun").ename == "UsageError"
    assert interp.execute("%prun -z x").ename == "UsageError"


def test_prun_writes_dump_and_text_files(interp, tmp_path):
    dump, text = tmp_path / "out.prof", tmp_path / "out.txt"
    _, out, _ = run(interp, f"%prun -q -D {dump} -T {text} sum(range(10))")
    assert pstats.Stats(str(dump)).total_calls > 0
    assert "function calls in" in text.read_text()
    assert "*** Profile stats marshalled to file" in out


def test_autoawait_gui_report_what_corral_does(interp):
    _, out, _ = run(interp, "%autoawait")
    assert out == "IPython autoawait is `on`, and set to use `asyncio`\n"
    run(interp, "%autoawait asyncio")
    assert interp.execute("%autoawait trio").ename == "UsageError"
    run(interp, "%gui")
    result = interp.execute("%gui qt")
    assert result.ename == "UsageError" and "no GUI event loop" in result.evalue


def test_cell_magic_spellings(interp, tmp_path):
    _, out, _ = run(interp, f"%%file {tmp_path / 'f.txt'}\nhello")
    assert out == f"Writing {tmp_path / 'f.txt'}\n"
    assert (tmp_path / "f.txt").read_text() == "hello\n"
    run(interp, "%%HTML\n<b>x</b>")
    [html] = [d["data"] for d in interp.rec.of(events.DISPLAY_DATA)]
    run(interp, "%%SVG\n<svg/>")
    [svg] = [d["data"] for d in interp.rec.of(events.DISPLAY_DATA)]
    # The body as IPython hands it to the magic: with its final newline.
    assert html["text/html"] == "<b>x</b>\n" and svg["image/svg+xml"] == "<svg/>\n"


def test_precision_holds_when_ipython_formats_results(interp):
    pytest.importorskip("IPython")
    run(interp, "%precision 2")
    run(interp, "import IPython")  # from now on IPython's formatter makes text/plain
    assert run(interp, "[3.14159]")[2] == ["[3.14]"]
    run(interp, "%precision 4")
    assert run(interp, "3.14159")[2] == ["3.1416"]
    run(interp, "%pprint")
    assert run(interp, "3.14159")[2] == ["3.14159"]  # as in IPython: plain repr, no precision
    assert run(interp, "{'key': [1] * 40}")[2] == ["{'key': [" + ", ".join(["1"] * 40) + "]}"]


def test_page_pycat_quickref_and_loadpy(interp, tmp_path):
    run(interp, "data = {'k': list(range(3))}")
    assert page(run(interp, "%page data")[0]) == "{'k': [0, 1, 2]}"
    source = tmp_path / "shown.py"
    source.write_text("print('shown')\n")
    assert page(run(interp, f"%pycat {source}")[0]) == "print('shown')\n"
    assert interp.execute("%pycat /no/such/file").ename == "UsageError"
    reference = page(run(interp, "%quickref")[0])
    assert "%precision" in reference and "%%file" in reference
    result, _, _ = run(interp, f"%loadpy {source}")
    assert result.payload[0]["text"] == f"# %load {source}\nprint('shown')\n"


def test_python2_and_pypy_are_script_shortcuts(interp):
    for program in ("python2", "pypy"):
        doc = interp.magics.cell(program).__doc__
        assert f"run the cell with {program}" in doc


def test_notebook_exports_the_session(interp, tmp_path):
    import json

    run(interp, "value = 6 * 7")
    run(interp, "value")
    target = tmp_path / "session.ipynb"
    run(interp, f"%notebook {target}")
    nb = json.loads(target.read_text())
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert [c["source"] for c in nb["cells"]] == ["value = 6 * 7", "value"]
    assert nb["cells"][1]["outputs"][0]["data"]["text/plain"] == "42"
    assert interp.execute("%notebook").ename == "UsageError"


def test_autocall_stays_off(interp):
    assert run(interp, "%autocall 0")[1] == "Automatic calling is: OFF\n"
    assert interp.execute("%autocall 1").ename == "UsageError"
