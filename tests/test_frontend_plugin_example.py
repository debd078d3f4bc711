"""The "frontend as a plugin" example of docs/frontends.md runs as documented.

The example lives in docs/examples/frontend_plugin.py; the guide quotes it verbatim, which
the first test checks, so the code readers copy is the code that was run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "frontend_plugin.py"
GUIDE = REPO / "docs" / "frontends.md"

#: Registers the example as a plugin (as its entry point would) and runs ``corral``.
LAUNCHER = f"""
import sys
sys.path.insert(0, {str(EXAMPLE.parent)!r})
import frontend_plugin
from corral.plugins.manager import get_plugin_manager
get_plugin_manager().register(frontend_plugin, name="hello-kernel-example")
from corral.cli import main
sys.exit(main())
"""


def test_guide_quotes_the_example_verbatim() -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert EXAMPLE.read_text() in blocks


def test_example_runs_code_and_reports_a_crash(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["CORRAL_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cells = ["print('before')", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    cells.append("print('after', 6 * 7)")
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "hello-kernel", *cells],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "before"
    assert lines[1].startswith("[kernel.died] ") and "SIGKILL" in lines[1]
    assert lines[2].startswith("[kernel.restarted] ")
    assert lines[3] == "after 42"


@pytest.mark.parametrize("command", ["console", "run"])
def test_builtin_frontends_are_commands_of_the_same_kind(command: str) -> None:
    """The built-in frontends plugin adds its commands through the same hook."""
    import argparse

    from corral.frontends import plugin as frontends

    parser = argparse.ArgumentParser()
    frontends.corral_add_commands(subparsers=parser.add_subparsers(dest="command"))
    args = parser.parse_args([command, "-"] if command == "run" else [command])
    assert callable(args.run)
