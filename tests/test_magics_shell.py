"""Shell magics: aliases (%ls, %cp...), %alias/%unalias, %sx/%system, %%!, package
managers, %set_env and the directory stack."""

from __future__ import annotations

import os
import sys

import pytest
from interp_helpers import make_interpreter

from corral.core import events
from corral.core.magics_shell import DEFAULT_ALIASES, conda_command, uv_command


@pytest.fixture()
def interp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # aliases and %pushd change files and the process's cwd
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral-dir"))
    interpreter, rec = make_interpreter()
    interpreter.rec = rec  # type: ignore[attr-defined]
    return interpreter


def run(interp, code):
    """Execute, fail loudly on error, and return (stdout text, shown results)."""
    interp.rec.clear()
    result = interp.execute(code)
    assert result.status == "ok", "\n".join(result.traceback)
    shown = [r["data"]["text/plain"] for r in interp.rec.of(events.EXECUTE_RESULT)]
    return interp.rec.stdout(), shown


def error(interp, code):
    result = interp.execute(code)
    assert result.status == "error"
    return result


def test_default_aliases_are_ipythons():
    assert set(DEFAULT_ALIASES) == {
        "mkdir", "rmdir", "mv", "rm", "cp", "cat", "ls", "ll", "lf", "lk", "ldir", "lx",
    }  # fmt: skip


def test_file_aliases_act_on_files(interp, tmp_path):
    run(interp, "%mkdir sub")
    assert (tmp_path / "sub").is_dir()
    (tmp_path / "a.txt").write_text("alpha\n")
    out, _ = run(interp, "%cat a.txt")
    assert out == "alpha\n"
    run(interp, "%cp a.txt sub/b.txt")
    assert (tmp_path / "sub" / "b.txt").read_text() == "alpha\n"
    run(interp, "%mv sub/b.txt sub/c.txt")
    assert (tmp_path / "sub" / "c.txt").exists() and not (tmp_path / "sub" / "b.txt").exists()
    out, _ = run(interp, "%ls sub")
    assert "c.txt" in out
    out, _ = run(interp, "%ll")
    assert "a.txt" in out and "sub" in out and "alpha" not in out
    run(interp, "%rm sub/c.txt")
    run(interp, "%rmdir sub")
    assert not (tmp_path / "sub").exists()


def test_listing_aliases_filter_by_kind(interp, tmp_path):
    (tmp_path / "plain.txt").write_text("")
    (tmp_path / "tool.sh").write_text("")
    (tmp_path / "tool.sh").chmod(0o755)
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "plain.txt")
    lf, _ = run(interp, "%lf")
    ldir, _ = run(interp, "%ldir")
    lk, _ = run(interp, "%lk")
    lx, _ = run(interp, "%lx")
    assert "plain.txt" in lf and "tool.sh" in lf and "folder" not in lf
    assert "folder" in ldir and "plain.txt" not in ldir
    assert "link" in lk and "tool.sh" not in lk
    assert "tool.sh" in lx and "plain.txt" not in lx


def test_alias_defines_lists_and_unalias_removes(interp):
    out, shown = run(interp, "%alias")
    assert out == "Total number of aliases: 12\n"
    assert "('ls', 'ls -F --color')" in shown[0] or sys.platform == "darwin"
    run(interp, "%alias parts echo first %s second %s")
    out, _ = run(interp, "%parts A B")
    assert out == "first A second B\n"
    assert error(interp, "%parts A").evalue == "Alias <parts> requires 2 arguments, 1 given."
    run(interp, "%alias bracket echo 'Input <%l>'")
    out, _ = run(interp, "%bracket hello world")
    assert out == "Input <hello world>\n"
    run(interp, "%alias greet echo hi")
    out, _ = run(interp, "%greet there")  # no %s or %l: arguments are appended
    assert out == "hi there\n"
    out, _ = run(interp, "%unalias parts")
    assert out == ""  # silent, as in IPython
    assert "not found" in error(interp, "%parts A B").evalue
    assert error(interp, "%alias time echo").ename == "UsageError"  # a magic, not an alias
    assert error(interp, "%unalias time").ename == "UsageError"


def test_alias_lines_expand_variables(interp):
    run(interp, "name = 'world'")
    out, _ = run(interp, "%alias say echo\n%say hello $name")
    assert out == "hello world\n"


def test_rehashx_makes_path_programs_aliases(interp, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "corral-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran with $1\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run(interp, "%rehashx")
    out, _ = run(interp, "%corral-test-tool x")
    assert out == "tool ran with x\n"
    assert interp.magics.line("time").__name__ == "time_magic"  # magics are kept


def test_sx_and_system_return_output_lines(interp):
    _, shown = run(interp, "%sx echo hi")
    assert shown == ["['hi']"]
    run(interp, "x = %system printf 'a\\nb\\n'")
    assert interp.user_ns["x"] == ["a", "b"]
    for spelling in ("%%sx", "%%system", "%%!"):
        _, shown = run(interp, f"{spelling}\necho one\necho two")
        assert shown == ["['one', 'two']"], spelling
    run(interp, "%sx exit 4")
    assert interp.user_ns["_exit_code"] == 4


def test_conda_command_targets_the_kernels_environment():
    command = conda_command("conda", "install numpy", "/opt/conda/bin/conda")
    assert command.split() == [
        "/opt/conda/bin/conda", "install", "--yes", "--prefix", sys.prefix, "numpy",
    ]  # fmt: skip
    assert conda_command("conda", "install -n other -y x", "conda").split() == [
        "conda", "install", "-n", "other", "-y", "x",
    ]  # fmt: skip
    assert conda_command("conda", "info", "conda") == "conda info"


def test_conda_outside_a_conda_environment_says_to_use_pip(interp, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    for tool in ("conda", "mamba", "micromamba"):
        result = error(interp, f"%{tool} install x")
        assert result.ename == "UsageError" and "%pip" in result.evalue


def test_conda_runs_the_tool_in_a_conda_environment(interp, monkeypatch, tmp_path):
    (tmp_path / "conda-meta").mkdir()
    (tmp_path / "conda-meta" / "history").write_text("")
    fake = tmp_path / "fake-conda"
    fake.write_text('#!/bin/sh\necho "conda got: $*"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("CONDA_EXE", str(fake))
    out, _ = run(interp, "%conda install pkg")
    assert f"conda got: install --yes --prefix {tmp_path} pkg" in out
    assert "restart the kernel" in out


def test_uv_pip_is_pointed_at_the_kernels_python(interp, monkeypatch):
    command = uv_command("pip install numpy")
    assert command.endswith(f"pip install --python {sys.executable} numpy")
    assert uv_command("pip install --python /x y").endswith("pip install --python /x y")
    assert uv_command("--version").endswith("--version")
    assert error(interp, "%uv").ename == "UsageError"


def test_set_env(interp, monkeypatch):
    monkeypatch.delenv("CORRAL_T1", raising=False)
    monkeypatch.delenv("CORRAL_T2", raising=False)
    out, _ = run(interp, "%set_env CORRAL_T1=one")
    assert out == "env: CORRAL_T1=one\n" and os.environ["CORRAL_T1"] == "one"
    run(interp, "%set_env CORRAL_T2 two words")
    assert os.environ["CORRAL_T2"] == "two words"
    assert error(interp, "%set_env").evalue == "usage is 'set_env var=val'"


def test_pushd_popd_dirs_dhist(interp, tmp_path):
    (tmp_path / "inner").mkdir()
    start = os.getcwd()
    _, shown = run(interp, "%dirs")
    assert shown == ["[]"]
    out, shown = run(interp, "%pushd inner")
    assert out == f"{tmp_path / 'inner'}\n" and shown == [repr([start])]
    assert os.getcwd() == str(tmp_path / "inner")
    out, _ = run(interp, "%popd")
    assert out == f"popd -> {start}\n" and os.getcwd() == start
    assert error(interp, "%popd").evalue == "%popd on empty stack"
    out, _ = run(interp, "%dhist")
    assert out.splitlines()[0] == "Directory history (kept in _dh)"
    assert f"{tmp_path / 'inner'}" in out


def test_bookmarks_are_kept_and_cd_and_pushd_follow_them(interp, tmp_path):
    (tmp_path / "deep").mkdir()
    run(interp, f"%bookmark place {tmp_path / 'deep'}")
    out, _ = run(interp, "%bookmark -l")
    assert f"place -> {tmp_path / 'deep'}" in out
    run(interp, "%cd place")
    assert os.getcwd() == str(tmp_path / "deep")
    run(interp, "%cd -b place")
    run(interp, f"%cd {tmp_path}\n%pushd place")
    assert os.getcwd() == str(tmp_path / "deep")
    fresh, _ = make_interpreter()  # another session reads the same file
    assert fresh.execute("%cd place").status == "ok"
    run(interp, "%bookmark -d place")
    out, _ = run(interp, "%bookmark -l")
    assert "place" not in out
    assert error(interp, "%bookmark -d place").ename == "UsageError"


def test_killbgscripts_reports(interp):
    out, _ = run(interp, "%killbgscripts")
    assert out == "All background processes were killed.\n"


def test_automagic_runs_a_bare_alias_or_magic_in_a_one_line_cell(interp, tmp_path):
    (tmp_path / "seen.txt").write_text("")
    out, _ = run(interp, "ls")
    assert "seen.txt" in out
    _, shown = run(interp, "pwd")
    assert shown == [repr(str(tmp_path))]
    out, _ = run(interp, "\ncat seen.txt\n")
    assert out == ""
    run(interp, "mkdir made")
    assert (tmp_path / "made").is_dir()


def test_automagic_leaves_python_alone(interp):
    from corral.core.magics import automagic

    def magic(name):
        return name in {"ls", "pwd", "time"}

    assert automagic("ls -la | head", magic) == "%ls -la | head"
    assert automagic("  pwd  ", magic) == "%pwd  "
    assert automagic("ls(1)", magic) == "%ls(1)"
    for python in ("ls = 3", "ls == 3", "ls, 2", "ls.x", "ls*2", "x = 1\npwd", "len 3", "ls?"):
        assert automagic(python, magic) is None, python
    run(interp, "ls = ['mine']")
    _, shown = run(interp, "ls")  # a variable hides the alias
    assert shown == ["['mine']"]
    assert run(interp, "del ls\nx = 1")[0] == ""
    result = interp.execute("x = 2\npwd")  # only one-line cells: this is Python
    assert result.ename == "NameError"


def test_automagic_can_be_turned_off(interp):
    out, _ = run(interp, "%automagic")
    assert out == "\nAutomagic is OFF, % prefix IS needed for line magics.\n"
    assert interp.execute("pwd").ename == "NameError"
    out, _ = run(interp, "%automagic on")
    assert out == "\nAutomagic is ON, % prefix IS NOT needed for line magics.\n"
    assert interp.execute("pwd").status == "ok"
    assert interp.execute("%automagic maybe").ename == "UsageError"


def test_cd_to_a_missing_folder_creates_no_profile(interp, tmp_path):
    assert interp.execute("%cd no-such-folder").ename == "UsageError"
    assert not (tmp_path / "corral-dir").exists()


def test_sc_captures_output_into_a_variable(interp):
    run(interp, "%sc text=printf 'a\\nb\\n'")
    assert interp.user_ns["text"] == "a\nb\n"
    out, _ = run(interp, "%sc -l -v lines=printf 'a\\nb\\n'")
    assert interp.user_ns["lines"] == ["a", "b"] and out == "lines ==\n['a', 'b']\n"
    _, shown = run(interp, "%sc echo hi")
    assert shown == ["'hi\\n'"]
    assert interp.execute("%sc 1x=echo").ename == "UsageError"
