"""A third-party launcher distribution, installed on the path with an entry point, is found
through the ``corral_launchers`` hook and starts a real cluster; its options come from
the profile's corral.ini like the built-in launchers' do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral.plugins import get_plugin_manager, hookspecs
from corral.plugins.parallel.launchers.registry import get_launchers, known_launchers

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "data" / "toy_launcher" / "corral_toy_launcher.py"


@pytest.fixture
def toy_site(tmp_path) -> Path:
    """A site directory where the toy distribution is installed (module + dist-info)."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TOY, site)
    info = site / "corral_toy_launcher-0.3.dist-info"
    info.mkdir()
    metadata = "Metadata-Version: 2.1\nName: corral-toy-launcher\nVersion: 0.3\n"
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text("[corral]\ntoy = corral_toy_launcher\n")
    (info / "RECORD").write_text("")
    return site


def run_python(site: Path, tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "CORRAL_DIR": str(tmp_path / "corral"),
        "CORRAL_SYSTEM_INI": str(tmp_path / "none.ini"),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def test_hook_is_declared_and_builtins_register_through_it():
    assert hasattr(hookspecs, "corral_launchers")
    manager = get_plugin_manager()
    registered = [m for m in manager.hook.corral_launchers() if m]
    names = {name for mapping in registered for name in mapping}
    assert {"local", "ssh", "mpi", "slurm", "pbs"} <= names
    assert set(known_launchers()) >= {"local", "ssh", "mpi", "slurm", "pbs"}
    assert get_launchers("ssh")[1].remote is True


def test_third_party_launcher_starts_a_cluster(toy_site, tmp_path):
    result = run_python(
        toy_site,
        tmp_path,
        """
        import corral
        from corral.core.profiles import profile_dir

        ini = profile_dir("toys") / "corral.ini"
        ini.write_text("[cluster]\\nengines = toy\\nn = 2\\n[launcher:toy]\\ngreeting = ahoy\\n")
        cluster = corral.Cluster(profile="toys", controller_mode="threads")
        print("launcher", type(cluster._new_engine_set(1)).__name__)
        with cluster as rc:
            greet = lambda: __import__("os").environ.get("TOY_GREETING")  # noqa: E731
            print("greetings", sorted(map(str, rc[:].apply_sync(greet))))
        # Keyword arguments reach the plugin's own section too, and are checked.
        try:
            corral.Cluster(profile="toys", greting="x")
        except ValueError as error:
            print("error", error)
        """,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "launcher ToyEngineSetLauncher" in result.stdout
    assert "greetings ['ahoy', 'ahoy']" in result.stdout
    assert "unknown option 'greting'" in result.stdout
    assert "greeting (launcher:toy)" in result.stdout


def test_plugins_command_lists_the_launcher_hook(toy_site, tmp_path):
    result = run_python(
        toy_site,
        tmp_path,
        """
        import sys
        from corral.cli import main
        sys.exit(main(["plugins"]))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "corral-toy-launcher" in result.stdout
    assert "corral_launchers" in result.stdout
    assert "FAILED" not in result.stderr


def test_unknown_launcher_in_profile_names_the_installed_ones(toy_site, tmp_path):
    result = run_python(
        toy_site,
        tmp_path,
        """
        import corral
        from corral.core.profiles import profile_dir

        (profile_dir("p") / "corral.ini").write_text("[cluster]\\nengines = tyo\\n")
        try:
            corral.Cluster(profile="p")
        except ValueError as error:
            print(error)
        """,
    )
    assert "corral.ini:2" in result.stdout
    assert "unknown launcher 'tyo'" in result.stdout and "toy" in result.stdout
