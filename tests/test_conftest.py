"""What tests/conftest.py promises: the sandbox, the markers' file lists, SIGINT restored."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_FILES, SANDBOX_DIRS, SLOW_FILES

from corral.core import profiles

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PROBE = TESTS / "sigint_probe.py"

#: What a test file that starts processes contains; a file with none of these is fast.
STARTS_PROCESSES = re.compile(
    r"subprocess|Popen|multiprocessing|pexpect|Cluster\(|LiveCluster|KernelManager"
    r"|start_new_kernel|launch_kernel|os\.fork|mpiexec|start_kernel|spawn|nbclient"
    r"|^from helpers import|^from (jupyter|sshd|slurm|sge)_helpers|cluster_waits"
    r"|parallel_client_harness",
    re.MULTILINE,
)

#: A parent that ignores SIGINT, as some CI runners do, then runs its arguments.
IGNORING_PARENT = (
    "import signal,subprocess,sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "sys.exit(subprocess.call(sys.argv[1:]))"
)


def test_home_and_corral_dir_are_in_the_sandbox(sandbox_home: Path) -> None:
    if sys.platform != "win32":
        import pwd

        assert sandbox_home != Path(pwd.getpwuid(os.getuid()).pw_dir)  # the real home
    assert Path.home() == sandbox_home
    assert profiles.base_dir() == sandbox_home / ".corral"
    for name in SANDBOX_DIRS:
        assert Path(os.environ[name]).is_relative_to(sandbox_home), name


def test_a_test_fixture_still_overrides_corral_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    assert profiles.base_dir() == tmp_path


def test_the_marker_lists_name_existing_files() -> None:
    present = {path.name for path in TESTS.glob("test_*.py")}
    assert PROCESS_FILES <= present
    assert SLOW_FILES <= present


def test_every_file_that_starts_processes_is_marked() -> None:
    unmarked = [
        path.name
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name not in PROCESS_FILES
        and path.name != "test_door_coverage.py"  # names KernelManager in a string only
        and STARTS_PROCESSES.search(path.read_text())
    ]
    assert not unmarked, f"add to PROCESS_FILES in tests/conftest.py: {unmarked}"


def test_markers_are_applied(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("process") is not None  # this file is listed


def _under_ignoring_parent(*args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest with ``args`` as a CI runner that ignores SIGINT would start it."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(
        [sys.executable, "-c", IGNORING_PARENT, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal semantics")
def test_the_suite_is_immune_to_an_ignored_sigint() -> None:
    result = _under_ignoring_parent(str(PROBE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal semantics")
def test_a_suite_test_that_interrupts_passes_under_an_ignoring_parent() -> None:
    """One of the suite's own interrupt tests: Ctrl-C during %px reaches the engine.

    Without the conftest's handler the SIGINT it sends itself is ignored, the cell sleeps
    its 120 s to the end and succeeds, and the test fails.
    """
    pytest.importorskip("IPython")
    test = "tests/test_ipp_magics.py::test_progress_bar_and_interrupt"
    result = _under_ignoring_parent(test)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal semantics")
def test_without_the_conftest_the_probe_fails() -> None:
    """The probe is sensitive: the same run without tests/conftest.py fails both tests."""
    result = _under_ignoring_parent("--noconftest", str(PROBE))
    assert result.returncode != 0
    assert "2 failed" in result.stdout, result.stdout + result.stderr
