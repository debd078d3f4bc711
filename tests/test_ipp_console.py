"""The %px family in ``corral console``: ``%autopx`` (the console's kernel turns every cell
into ``%%px`` until ``%autopx`` again) and Ctrl-C reaching the engines. A real console
(pseudo-terminal), kernel, controller and engines; every step waits for printed text,
never for time to pass."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from parallel_client_harness import LiveCluster

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent

LAUNCHER = """
import sys
import corral.frontends.plugin as plugin
from corral.plugins.manager import get_plugin_manager
manager = get_plugin_manager()
if not manager.has_plugin("corral.frontends.plugin"):
    manager.register(plugin, name="corral.frontends.plugin")
from corral.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    cluster = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True, profile="default")
    yield cluster
    cluster.stop()


@pytest.fixture
def console(live: LiveCluster) -> Iterator[Any]:
    env = dict(os.environ)
    env["CORRAL_DIR"] = str(live.corral_dir)  # the kernel's Client() finds this cluster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"
    env["TERM"] = "xterm"
    child = pexpect.spawn(
        sys.executable,
        ["-c", LAUNCHER, "console", "--simple-prompt"],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_autopx_runs_every_cell_on_the_engines(console: Any, live: LiveCluster) -> None:
    pids = sorted(e.pid for e in live.client.engines.values())
    console.expect(r"In \[1\]: ")
    console.sendline("import os; here = os.getpid()")
    console.expect(r"In \[2\]: ")
    console.sendline("%autopx")
    console.expect("%autopx enabled")
    console.expect(r"In \[3\]: ")
    console.sendline("import os; print('pid', os.getpid())")
    console.expect(r"\[stdout:(\d)\] pid (\d+)")
    seen = {int(console.match.group(2))}
    console.expect(r"\[stdout:(\d)\] pid (\d+)")
    seen.add(int(console.match.group(2)))
    assert sorted(seen) == pids  # the cell ran on both engines, not in the kernel
    console.expect(r"In \[4\]: ")
    console.sendline("1/0")
    console.expect("ZeroDivisionError")  # remote errors show while autopx is on
    console.expect(r"In \[5\]: ")
    console.sendline("%autopx")
    console.expect("%autopx disabled")
    console.expect(r"In \[6\]: ")
    console.sendline("os.getpid() == here")
    console.expect(r"Out\[6\]: True")  # back to running in the kernel


def test_ctrl_c_during_px_reaches_the_engines(console: Any, live: LiveCluster) -> None:
    console.expect(r"In \[1\]: ")
    console.sendline("%px import time; print('sleeping', flush=True); time.sleep(120)")
    console.expect(r"\[stdout:\d\] sleeping")
    console.expect(r"\[stdout:\d\] sleeping")  # both engines run it
    console.sendintr()  # Ctrl-C: the console interrupts the kernel, %px signals the engines
    console.expect("KeyboardInterrupt")
    console.expect(r"In \[\d+\]: ")
    console.sendline("%px print('alive')")  # the engines survived and are idle again
    console.expect(r"\[stdout:\d\] alive")
    console.expect(r"\[stdout:\d\] alive")
