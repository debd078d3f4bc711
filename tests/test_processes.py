"""corral.core.processes: the one way corral starts a long-lived child."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from corral.core import compat
from corral.core.processes import Spawned, child_env, corral_root, tail

TIMEOUT = 30.0

REPORT = """
import os, sys
print("pid", os.getpid(), "sid", os.getsid(0) if hasattr(os, "getsid") else -1, flush=True)
print("stdin", repr(sys.stdin.read()), flush=True)
fd = int(sys.argv[1])
try:
    os.fstat(fd)
    print("inherited", fd, flush=True)
except OSError:
    print("not inherited", fd, flush=True)
print("oops", file=sys.stderr, flush=True)
sys.exit(3)
"""


def test_a_child_runs_detached_logs_privately_and_is_reaped_at_once(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    log.parent.mkdir(mode=0o755)
    log.write_text("an earlier run\n")
    os.chmod(log, 0o644)
    read_end, write_end = os.pipe()  # a descriptor of the parent that must not leak
    os.set_inheritable(write_end, True)
    try:
        child = Spawned([sys.executable, "-c", REPORT, str(write_end)], log_file=log)
    finally:
        os.close(read_end)
        os.close(write_end)
    ended = threading.Event()
    seen: list[Spawned] = []
    child.watch(lambda proc: (seen.append(proc), ended.set()))
    assert ended.wait(TIMEOUT)
    assert child.exit_code == 3 and not child.running and seen == [child]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    out = child.output_tail()
    assert "an earlier run" not in out  # only what this child wrote
    assert "stdin ''" in out and "oops" in out
    assert f"not inherited {write_end}" in out
    fields = out.splitlines()[0].split()
    if compat.HAS_PROCESS_GROUPS:
        assert fields[1] == fields[3] == str(child.pid)  # leads its own session
    assert tail(log, 0).startswith("an earlier run")


def test_a_new_session_can_be_asked_for_whatever_the_mode(tmp_path: Path) -> None:
    child = Spawned(
        [sys.executable, "-c", REPORT, "99"], log_file=tmp_path / "c.log", new_session=True
    )
    child.watch()
    assert child.exited.wait(TIMEOUT)
    if hasattr(os, "getsid"):
        fields = child.output_tail().splitlines()[0].split()
        assert fields[1] == fields[3]


def test_a_program_that_does_not_exist_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Spawned([str(tmp_path / "no-such-program")], log_file=tmp_path / "x.log")


def test_stdin_pipe_and_captured_output(tmp_path: Path) -> None:
    child = Spawned(
        [sys.executable, "-c", "import sys; print(sys.stdin.readline().upper(), end='')"],
        log_file=tmp_path / "p.log",
        stdin_pipe=True,
        capture=True,
    )
    assert child.popen.stdin is not None and child.popen.stdout is not None
    child.popen.stdin.write(b"hello\n")
    child.popen.stdin.close()
    assert child.popen.stdout.read() == b"HELLO\n"
    assert child.popen.wait(TIMEOUT) == 0
    assert (tmp_path / "p.log").read_bytes() == b""  # the log exists, owner-only
    assert stat.S_IMODE((tmp_path / "p.log").stat().st_mode) == 0o600


def test_child_env_makes_this_corral_importable_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", corral_root()]))
    env = child_env({"EXTRA": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == ["/elsewhere", corral_root()]
    assert env["EXTRA"] == "1"
    monkeypatch.delenv("PYTHONPATH")
    assert child_env()["PYTHONPATH"] == corral_root()
    assert "PYTHONPATH" not in child_env(importable=False)
    assert (Path(corral_root()) / "corral" / "__init__.py").is_file()
