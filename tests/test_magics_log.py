"""%logstart, %logstop, %logoff, %logon, %logstate: the session's inputs in a file."""

from __future__ import annotations

import pytest
from interp_helpers import make_interpreter


@pytest.fixture()
def interp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    interpreter, rec = make_interpreter()
    interpreter.rec = rec  # type: ignore[attr-defined]
    return interpreter


def ok(interp, code):
    interp.rec.clear()
    result = interp.execute(code)
    assert result.status == "ok", result.traceback
    return interp.rec.stdout()


def test_logstart_saves_past_and_future_inputs_and_outputs(interp, tmp_path):
    ok(interp, "a = 1")
    out = ok(interp, "%logstart -o -r session.py")
    assert out.startswith("Activating auto-logging. Current session state plus future input")
    assert "Filename       : session.py\nMode           : backup\nOutput logging : True" in out
    ok(interp, "a + 41")
    ok(interp, "%logoff")
    ok(interp, "hidden = 1")
    ok(interp, "%logon")
    ok(interp, "%logstop")
    ok(interp, "after = 1")
    lines = (tmp_path / "session.py").read_text().splitlines()
    assert lines == [
        "# corral log file",
        "",
        "a = 1",
        "%logstart -o -r session.py",
        "a + 41",
        "#[Out]# 42",
        "%logon",  # %logoff, what ran while off, and %logstop end outside the log
    ]


def test_logstart_logs_the_python_that_ran_and_modes(interp, tmp_path):
    (tmp_path / "ipython_log.py").write_text("old\n")
    ok(interp, "%logstart -q")
    assert (tmp_path / "ipython_log.py~").read_text() == "old\n"  # backup mode
    ok(interp, "%pwd")
    out = ok(interp, "%logstate")
    assert "Raw input log  : False" in out and "State          : active" in out
    ok(interp, "%logstop")
    assert "__corral__.line_magic('pwd', '')" in (tmp_path / "ipython_log.py").read_text()
    ok(interp, "%logstart -q ipython_log.py rotate")
    assert (tmp_path / "ipython_log.py.001~").exists()
    ok(interp, "%logstop")
    ok(interp, "%logstart -q -t ipython_log.py append")
    ok(interp, "x = 1")
    ok(interp, "%logstop")
    text = (tmp_path / "ipython_log.py").read_text()
    assert text.count("# corral log file") == 1 and "x = 1" in text and "\n# " in text


def test_log_usage_errors(interp):
    assert ok(interp, "%logstate") == "Logging has not been activated.\n"
    for magic in ("%logstop", "%logoff", "%logon"):
        assert interp.execute(magic).ename == "UsageError"
    ok(interp, "%logstart -q")
    assert interp.execute("%logstart").ename == "UsageError"  # already active
    assert interp.execute("%logstart x.py sideways").ename == "UsageError"
    ok(interp, "%logstop")
