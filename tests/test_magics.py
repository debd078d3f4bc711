"""Magics: the registry, input transformation, every built-in magic, and shell escapes."""

from __future__ import annotations

import os

import pytest
from interp_helpers import make_interpreter

from corral.core import events
from corral.core.magics import MagicsRegistry, UsageError, transform_cell


@pytest.fixture()
def interp():
    interpreter, rec = make_interpreter()
    interpreter.rec = rec  # type: ignore[attr-defined]
    return interpreter


def run(interp, code, **kwargs):
    """Execute, fail loudly on error, and return (result, stdout text, results)."""
    interp.rec.clear()
    result = interp.execute(code, **kwargs)
    assert result.status == "ok", "\n".join(result.traceback)
    shown = [r["data"]["text/plain"] for r in interp.rec.of(events.EXECUTE_RESULT)]
    return result, interp.rec.stdout(), shown


# ------------------------------------------------------------------ registry


def test_registry_register_lookup_names_and_decorators():
    registry = MagicsRegistry()
    registry.register_line("hello", lambda interp, line: f"hi {line}")

    @registry.register_cell("shout")
    def shout(interp, line, cell):
        return cell.upper()

    assert registry.line("hello")(None, "you") == "hi you"
    assert registry.cell("shout") is shout
    assert registry.line("shout") is None and registry.cell("nope") is None
    assert registry.names() == {"line": ["hello"], "cell": ["shout"]}
    with pytest.raises(ValueError):
        registry.register_line("bad name", lambda i, line: None)


def test_plugin_magics_results_become_cell_values(interp):
    interp.magics.register_line("double", lambda it, line: int(line) * 2)
    interp.magics.register_cell("lines", lambda it, line, cell: (line, cell.splitlines()))
    assert run(interp, "%double 21")[2] == ["42"]
    assert run(interp, "x = %double 5\nx + 1")[2] == ["11"]
    assert run(interp, "%%lines arg\na\nb")[2] == ["('arg', ['a', 'b'])"]
    assert interp.user_ns["Out"][3] == ("arg", ["a", "b"])


def test_line_magic_receives_interpreter(interp):
    seen = []
    interp.magics.register_line("who_am_i", lambda it, line: seen.append(it))
    run(interp, "%who_am_i")
    assert seen == [interp]


def test_unknown_magics_are_usage_errors(interp):
    result = interp.execute("%nosuchmagic arg")
    assert (result.status, result.ename) == ("error", "UsageError")
    assert result.traceback == ["UsageError: Line magic function `%nosuchmagic` not found."]
    assert interp.rec.of(events.ERROR)[0]["ename"] == "UsageError"
    result = interp.execute("%%nosuchcell\nbody")
    assert result.ename == "UsageError" and "%%nosuchcell" in result.evalue
    assert "cell magic" in interp.execute("%writefile x").evalue


def test_transform_cell_rules():
    assert transform_cell("%time x") == "__corral__.line_magic('time', 'x')"
    assert transform_cell("  y = %pwd") == "  y = __corral__.line_magic('pwd', '')"
    assert transform_cell("!ls -l") == "__corral__.system('ls -l')"
    assert transform_cell("out = !ls") == "out = __corral__.getoutput('ls')"
    assert transform_cell("a?") == "__corral__.help('a', 0)"
    assert transform_cell("??a.b") == "__corral__.help('a.b', 1)"
    untouched = "x = 5 % 2\ny = x != 3\ns = '''\n%notmagic\n'''\nz = (1,\n%2)"
    assert transform_cell(untouched) == untouched
    two = "for i in range(2):\n    %time i\n"
    assert transform_cell(two).count("\n") == two.count("\n")


def test_magic_inside_block_and_line_numbers_kept(interp):
    interp.magics.register_line("boom", lambda it, line: 1 / 0)
    run(interp, "seen = []\nfor i in range(3):\n    here = %pwd\n    seen.append(here)\n")
    assert interp.user_ns["seen"] == [os.getcwd()] * 3
    result = interp.execute("x = 1\n%boom\n")
    assert "----> 2 %boom" in "\n".join(result.traceback)


# ------------------------------------------------------------------ timing


def test_time_line_magic_returns_value_and_prints_times(interp):
    _, out, shown = run(interp, "%time sum(range(10))")
    assert "CPU times: user" in out and "Wall time:" in out
    assert shown == ["45"]
    # CPU time finer than os.times()'s 10 ms clock ticks (which read 0 or 10 ms here).
    interp.user_ns["t"] = __import__("time")
    _, out, _ = run(
        interp, "%%time\nend = t.thread_time() + 0.003\nwhile t.thread_time() < end:\n    pass"
    )
    total = out.split("total: ")[1].split("\n")[0]
    assert total.endswith(" ms") and 2.5 <= float(total.split()[0]) < 9.5, out


def test_time_cell_magic(interp):
    _, out, shown = run(interp, "%%time\nq = 6\nq * 7")
    assert "Wall time" in out and shown == ["42"] and interp.user_ns["q"] == 6


def test_time_and_timeit_over_another_cell_magic(interp, tmp_path):
    """IPython runs a cell magic under %%time (``%%time`` over ``%%px`` in ipyparallel's
    docs); corral compiled its ``%%`` line as Python: a SyntaxError."""
    timed, repeated = tmp_path / "timed.txt", tmp_path / "repeated.txt"
    _, out, _ = run(interp, f"%%time\n%%writefile {timed}\nhello\n")
    assert "Wall time" in out and timed.read_text() == "hello\n"
    _, out, _ = run(interp, f"%%timeit -n1 -r1\n%%writefile {repeated}\nagain\n")
    assert "per loop" in out and repeated.read_text() == "again\n"


def test_a_cell_magic_name_and_a_question_mark_is_help(interp, tmp_path, monkeypatch):
    """``%%writefile?`` alone asks for help (it ran %%writefile with ``?`` as its
    argument, writing a file named ``?``)."""
    monkeypatch.chdir(tmp_path)
    result, _, _ = run(interp, "%%writefile?")
    assert [p["source"] for p in result.payload] == ["page"]
    assert "writefile" in result.payload[0]["data"]["text/plain"].lower()
    assert list(tmp_path.iterdir()) == []


def test_timeit_with_options(interp):
    _, out, shown = run(interp, "%timeit -n 5 -r 3 x = 1 + 1")
    assert "(mean ± std. dev. of 3 runs, 5 loops each)" in out
    assert out.count("\n") == 1  # one line, as IPython prints it
    assert shown == []
    _, out, shown = run(interp, "res = %timeit -q -o -n 2 -r 2 pass")
    assert out == ""
    res = interp.user_ns["res"]
    assert (res.loops, res.repeat, len(res.all_runs)) == (2, 2, 2)
    assert res.best <= res.average <= res.worst


def test_times_use_greek_mu():
    from corral.core.builtin_magics import format_time

    assert format_time(5e-6) == "5 \u03bcs"


def test_timeit_chooses_loops_itself(interp):
    _, out, _ = run(interp, "%timeit -r 1 -o pass")
    res = interp.user_ns["Out"][1]
    assert res.loops >= 1000  # `pass` is fast: many loops were needed to fill 0.2 s
    assert f"{res.loops} loops each" in out


def test_timeit_cell_uses_line_as_setup(interp):
    _, out, _ = run(interp, "%%timeit -n 3 -r 2 data = list(range(50))\nsorted(data)")
    assert "3 loops each" in out
    assert "data" not in interp.user_ns  # setup ran inside timeit, not in the namespace


def test_timeit_usage_errors(interp):
    assert interp.execute("%timeit -n x pass").ename == "UsageError"
    assert interp.execute("%timeit").ename == "UsageError"
    assert interp.execute("%timeit -z pass").ename == "UsageError"


# ------------------------------------------------------------------ files


def test_writefile_then_run_with_args(interp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, out, _ = run(
        interp,
        "%%writefile script.py\nimport sys\nargs = sys.argv[1:]\nseen = 'outer' in globals()\n"
        "print('running', __name__)",
    )
    assert out == "Writing script.py\n"
    _, out, _ = run(interp, "%%writefile -a script.py\nextra = 1")
    assert out == "Appending to script.py\n"
    assert (tmp_path / "script.py").read_text().endswith("extra = 1\n")
    _, out, _ = run(
        interp,
        "%%writefile script.py\nimport sys\nargs = sys.argv[1:]\n"
        "seen = 'outer' in globals()\nextra = 2\n",
    )
    assert out == "Overwriting script.py\n"
    interp.user_ns["outer"] = 1
    run(interp, "%run script.py a 'b c'")
    assert interp.user_ns["args"] == ["a", "b c"]
    assert interp.user_ns["seen"] is False  # fresh namespace...
    assert interp.user_ns["extra"] == 2  # ...merged back afterwards
    run(interp, "%run -i script.py")
    assert interp.user_ns["seen"] is True and interp.user_ns["args"] == []


def test_run_prints_and_reports_script_errors(interp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.py").write_text("print('hello from', __name__)\n")
    assert run(interp, "%run hello.py")[1] == "hello from __main__\n"
    (tmp_path / "bad.py").write_text("x = 1\nraise ValueError('in script')\n")
    result = interp.execute("%run bad.py")
    text = "\n".join(result.traceback)
    assert result.ename == "ValueError" and "bad.py:2" in text
    assert "builtin_magics.py" not in text and "interpreter.py" not in text
    assert interp.user_ns["x"] == 1
    assert interp.execute("%run missing.py").ename == "UsageError"


def test_load_returns_set_next_input_payload(interp, tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text("a = 1\nb = 2\n")
    result, _, _ = run(interp, f"%load {path}")
    assert result.payload == [
        {"source": "set_next_input", "text": f"# %load {path}\na = 1\nb = 2\n", "replace": True}
    ]
    run(interp, "def helper():\n    return 'me'")
    result, _, _ = run(interp, "%load helper")
    assert "return 'me'" in result.payload[0]["text"]
    assert interp.execute("%load").ename == "UsageError"


# ------------------------------------------------------------------ dirs and env


def test_cd_and_pwd(interp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    _, out, _ = run(interp, "%cd sub")
    assert os.getcwd() == str(tmp_path / "sub") and out == f"{tmp_path / 'sub'}\n"
    assert run(interp, "%pwd")[2] == [repr(str(tmp_path / "sub"))]
    run(interp, "%cd -")
    assert os.getcwd() == str(tmp_path)
    assert interp.execute("%cd does-not-exist").ename == "UsageError"
    assert os.getcwd() == str(tmp_path)


def test_env(interp, monkeypatch):
    monkeypatch.setenv("CORRAL_TEST_X", "old")
    _, out, _ = run(interp, "%env CORRAL_TEST_X=new")
    assert out == "env: CORRAL_TEST_X=new\n" and os.environ["CORRAL_TEST_X"] == "new"
    assert run(interp, "%env CORRAL_TEST_X")[2] == ["'new'"]
    run(interp, "everything = %env")
    assert interp.user_ns["everything"]["CORRAL_TEST_X"] == "new"
    assert interp.execute("%env CORRAL_TEST_UNSET_VARIABLE").ename == "UsageError"


# ------------------------------------------------------------------ namespace


def test_who_whos_and_reset(interp):
    assert run(interp, "%who")[1] == "Interactive namespace is empty.\n"
    run(interp, "alpha = 1\nbeta = 'two'\n_private = 3")
    assert run(interp, "%who")[1] == "alpha\tbeta\n"
    assert run(interp, "%who str")[1] == "beta\n"
    out = run(interp, "%whos")[1].splitlines()
    assert out[0].split() == ["Variable", "Type", "Data/Info"]
    assert out[2].split() == ["alpha", "int", "1"]
    assert out[3].split() == ["beta", "str", "'two'"]
    count = interp.execution_count
    run(interp, "%reset -f")
    assert "alpha" not in interp.user_ns and "display" in interp.user_ns
    assert interp.execution_count == count + 1  # %reset keeps the counter
    assert run(interp, "%who")[1] == "Interactive namespace is empty.\n"


# ------------------------------------------------------------------ history


def test_history_magic(interp):
    for code in ["a = 1", "b = 2", "a + b", "c = 'x'"]:
        run(interp, code)
    assert run(interp, "%history 1-3")[1] == "a = 1\nb = 2\na + b\n"
    assert run(interp, "%history -n 2 4")[1] == "2: b = 2\n4: c = 'x'\n"
    # The last lines before the running one, as IPython shows them.
    assert run(interp, "%history -l 2")[1] == "%history 1-3\n%history -n 2 4\n"
    assert run(interp, "%history -g a +")[1] == "3: a + b\n"
    assert run(interp, "%history -o 3")[1] == "a + b\n-> 3\n"
    out = run(interp, "%hist")[1]
    assert out.startswith("a = 1\nb = 2\n") and out.endswith("%hist\n")
    assert interp.execute("%history x-y").ename == "UsageError"


# ------------------------------------------------------------------ help magics


def test_lsmagic_and_magic(interp):
    out = run(interp, "%lsmagic")[1]
    assert "Available line magics:" in out and "%timeit" in out and "%%writefile" in out
    out = run(interp, "%magic")[1]
    assert "%run:" in out and "fresh namespace" in out and "%%writefile:" in out


# ------------------------------------------------------------------ shell


def test_shell_escape_streams_output(interp):
    _, out, shown = run(interp, "!echo hi")
    assert out == "hi\n" and shown == []
    interp.rec.clear()
    interp.execute("!echo oops 1>&2; exit 3")
    assert interp.rec.stderr() == "oops\n"
    assert interp.user_ns["_exit_code"] == 3


def test_shell_output_is_streamed_before_the_command_ends(interp, tmp_path):
    # The second echo waits for a file that only the observer creates on seeing the first
    # line: the command can only finish if its first line was posted while it ran.
    flag = tmp_path / "seen"

    def observer(type, sender, **info):  # noqa: A002
        if "first" in info.get("text", ""):
            flag.write_text("1")

    interp.center.add_observer(observer, events.STREAM)
    _, out, _ = run(interp, f"!echo first; while [ ! -e {flag} ]; do sleep 0.01; done; echo second")
    assert out == "first\nsecond\n"


def test_shell_capture_into_variable(interp):
    run(interp, "files = !printf 'a\\nb\\n'; echo err 1>&2")
    assert interp.user_ns["files"] == ["a", "b", "err"]


def test_usage_error_is_an_exception_class():
    assert issubclass(UsageError, Exception)


def test_var_expand_in_line_magics_and_shell(interp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # restored afterwards: %cd changes the process
    from corral.core.magics import var_expand

    assert var_expand("a {x + 1} $y $$ {{}} {nope} $nope", {"x": 1, "y": "Y"}) == (
        "a 2 Y $ {} {nope} $nope"
    )
    interp.user_ns["where"] = str(tmp_path)
    _, out, _ = run(interp, "%cd {where}\nimport os\nprint(os.getcwd())")
    assert out.strip().endswith(str(tmp_path))
    _, out, _ = run(interp, "def f(word):\n    !echo got $word\nf('it')")
    assert out.strip() == "got it"
    _, out, shown = run(interp, "%timeit -n 1 -r 1 {1: 2}")
    assert "per loop" in out  # %timeit's line is code: {...} is a dict, not expanded


def test_script_magics_feed_the_cell_to_a_program(interp):
    _, out, _ = run(interp, "%%script bash\necho from $0 script")
    assert out.strip() == "from bash script"
    _, out, _ = run(interp, "%%python3\nimport sys\nprint(sys.version_info[0])")
    assert out.strip() == "3"
    result = interp.execute("%%bash\nexit 3")
    assert result.status == "error" and "status 3" in result.evalue
    assert result.ename == "CalledProcessError"  # as IPython raises it: code catching it works
    result = interp.execute("%%script no-such-program-here\nx")
    assert result.status == "error" and result.ename == "UsageError"


def test_xmode_minimal_shows_only_the_error(interp):
    _, out, _ = run(interp, "%xmode Minimal")
    assert out.strip() == "Exception reporting mode: Minimal"
    result = interp.execute("def f():\n    1 / 0\nf()")
    assert result.traceback == ["ZeroDivisionError: division by zero"]
    run(interp, "%xmode Context")
    assert len(interp.execute("f()").traceback) > 1
    assert interp.execute("%xmode Loud").ename == "UsageError"


def test_who_ls_alias_magic_and_psource(interp):
    run(interp, "alpha = 1\nbeta = 'b'\ndef gamma():\n    return 3")
    _, _, shown = run(interp, "%who_ls")
    assert shown == ["['alpha', 'beta', 'gamma']"]
    _, out, _ = run(interp, "%alias_magic ti timeit")
    assert "Created `%ti` as an alias for `%timeit`." in out
    _, out, _ = run(interp, "%ti -n 1 -r 1 pass")
    assert "per loop" in out
    _, out, _ = run(interp, "%psource gamma")
    assert out == "def gamma():\n    return 3\n"


def test_a_user_bound_underscore_is_kept(interp):
    run(interp, "for _ in range(2):\n    pass")
    run(interp, "41 + 1")
    _, _, shown = run(interp, "_")
    assert shown == ["1"]  # the loop's `_`, as in IPython


def test_pip_runs_the_kernels_own_pip(interp):
    """%pip is ``python -m pip`` of the interpreter running the kernel, not whichever pip
    is first on PATH (the mistake ``!pip install`` makes in a venv's kernel)."""
    import sys

    _, out, _ = run(interp, "%pip --version")
    assert f"(python {sys.version_info[0]}.{sys.version_info[1]})" in out
    assert os.path.realpath(sys.prefix) in os.path.realpath(out.split(" from ")[1].split()[0])
    assert "restart the kernel" not in out  # only after install and uninstall
    assert interp.execute("%pip").ename == "UsageError"


def test_connect_info_without_a_kernel_says_there_is_nothing_to_connect_to(interp):
    for magic in ("%connect_info", "%qtconsole"):
        result = interp.execute(magic)
        assert result.ename == "UsageError", magic
        assert "not served as a Jupyter kernel" in result.evalue
        assert "bind_kernel()" in result.evalue  # what to do on a cluster engine
