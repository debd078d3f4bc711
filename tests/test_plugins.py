"""Plugins: a real third-party distribution on the path is discovered and its hooks run;
broken plugins are named with their distribution and the rest still works."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral.plugins import get_plugin_manager, reset_plugin_manager
from corral.plugins.runtime import declared_notification_types, load_configuration

REPO = Path(__file__).resolve().parents[1]

GOOD_PLUGIN = '''
"""A third-party corral plugin, as a user would write it."""
from corral.notification import shared_center
from corral.plugins import hookimpl

GREETED = "demo.greeted"


@hookimpl
def corral_add_options(schema):
    schema.add_option("demo", "greeting", "hello", "What the hello command says.")


@hookimpl
def corral_notification_types():
    return [GREETED]


def _hello(args, config):
    text = config.get("demo", "greeting")
    shared_center.post(GREETED, "demo-plugin", text=text)
    print(text, args.who)
    return 0


@hookimpl
def corral_add_commands(subparsers):
    parser = subparsers.add_parser("hello", help="say hello")
    parser.add_argument("who")
    parser.set_defaults(run=_hello)


@hookimpl
def corral_add_magics(registry):
    registry.register_line("greet", lambda interpreter, line: f"greetings, {line}")


def corral_configure(config):  # unmarked corral_* functions are hooks too
    shared_center.add_observer(
        lambda type, sender, **info: print("observed", type, sender, info["text"]), GREETED
    )
'''

BAD_SIGNATURE_PLUGIN = """
from corral.plugins import hookimpl

@hookimpl
def corral_configure(config, not_a_hook_argument):
    pass
"""

UNKNOWN_HOOK_PLUGIN = """
def corral_configur(config):
    pass
"""


def _dist(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[corral]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A site directory holding three installed distributions, one of them good."""
    site = tmp_path_factory.mktemp("site")
    (site / "corral_demo_plugin.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    _dist(site, "corral-demo-plugin", "1.2", {"demo": "corral_demo_plugin"})
    (site / "corral_bad_plugin.py").write_text(BAD_SIGNATURE_PLUGIN)
    (site / "corral_unknown_hook.py").write_text(UNKNOWN_HOOK_PLUGIN)
    _dist(
        site,
        "corral-broken-plugins",
        "0.1",
        {
            "missing": "corral_not_installed_module",
            "badsig": "corral_bad_plugin",
            "unknownhook": "corral_unknown_hook",
        },
    )
    return site


def run_corral(site: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k != "CORRAL_DISABLE_PLUGINS"}
    environment = {
        **inherited,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "CORRAL_DIR": str(tmp_path / "corral"),
        "CORRAL_SYSTEM_INI": str(tmp_path / "none.ini"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_plugins_command_lists_distribution_version_and_hooks(plugin_site, tmp_path):
    result = run_corral(plugin_site, tmp_path, "plugins")
    assert "demo  [corral-demo-plugin 1.2]" in result.stdout
    assert (
        "corral_add_commands, corral_add_magics, corral_add_options, corral_configure"
        in result.stdout
    )
    assert "corral.plugins.builtin.core" in result.stdout
    # The broken ones are named with their distribution, and the command says so.
    assert result.returncode == 1
    assert "'missing' from corral-broken-plugins 0.1" in result.stderr
    assert "corral_not_installed_module" in result.stderr
    assert "'badsig' from corral-broken-plugins 0.1" in result.stderr
    assert "not_a_hook_argument" in result.stderr
    assert "unknown hook(s) corral_configur" in result.stderr


def test_good_plugin_hooks_run_despite_broken_ones(plugin_site, tmp_path):
    result = run_corral(plugin_site, tmp_path, "hello", "world")
    assert result.returncode == 0, result.stderr
    # configure subscribed an observer; the command posted the plugin's notification type.
    assert result.stdout.splitlines() == [
        "observed demo.greeted demo-plugin hello",
        "hello world",
    ]


def test_plugin_option_is_configurable(plugin_site, tmp_path):
    result = run_corral(plugin_site, tmp_path, "hello", "x", CORRAL_DEMO_GREETING="bonjour")
    assert "bonjour x" in result.stdout
    bad = run_corral(plugin_site, tmp_path, "hello", "x", CORRAL_DEMO_GREETNG="bonjour")
    assert bad.returncode == 2
    assert "did you mean 'greeting'" in bad.stderr


def test_profile_create_lists_plugin_options(plugin_site, tmp_path):
    result = run_corral(plugin_site, tmp_path, "profile", "create", "mine")
    assert result.returncode == 0, result.stderr
    ini = Path(result.stdout.strip()) / "corral.ini"
    text = ini.read_text()
    assert "[demo]\n# What the hello command says." in text
    assert "# greeting = hello" in text
    assert "# log_level = warning" in text
    listed = run_corral(plugin_site, tmp_path, "profile", "list")
    assert listed.stdout.split() == ["mine"]
    located = run_corral(plugin_site, tmp_path, "profile", "locate", "mine")
    assert Path(located.stdout.strip()) == ini.parent


def test_plugin_blocked_by_environment(plugin_site, tmp_path):
    result = run_corral(plugin_site, tmp_path, "plugins", CORRAL_DISABLE_PLUGINS="demo,missing")
    assert "corral-demo-plugin" not in result.stdout
    assert "'missing'" not in result.stderr
    hello = run_corral(plugin_site, tmp_path, "hello", "x", CORRAL_DISABLE_PLUGINS="demo")
    assert hello.returncode == 2  # the subcommand is gone with its plugin


def test_plugin_blocked_by_profile_key(plugin_site, tmp_path):
    profile = tmp_path / "corral" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "corral.ini").write_text("[plugins]\ndisable = demo\n")
    result = run_corral(plugin_site, tmp_path, "plugins")
    assert "corral-demo-plugin" not in result.stdout
    config = run_corral(plugin_site, tmp_path, "config")
    assert "disable = ['demo']" in config.stdout


def test_in_process_discovery(plugin_site, monkeypatch, tmp_path):
    import importlib

    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    monkeypatch.delenv("CORRAL_DISABLE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    reset_plugin_manager()
    try:
        manager = get_plugin_manager()
        assert manager.has_plugin("demo")
        assert {f.name for f in manager.failures} == {"missing", "badsig", "unknownhook"}
        assert "demo.greeted" in declared_notification_types(manager)
        assert "execute.started" in declared_notification_types(manager)
        config = load_configuration(manager, profile=None)
        assert config.get("demo", "greeting") == "hello"
    finally:
        reset_plugin_manager()


def test_no_command_prints_help(tmp_path):
    result = run_corral(tmp_path, tmp_path)
    assert result.returncode == 2
    assert "plugins" in result.stdout and "profile" in result.stdout


def test_plugin_magic_runs_in_a_real_kernel(plugin_site, tmp_path):
    """A kernel loads plugins (in the background) and has their magics before it executes."""
    from corral.transports.zmq.manager import KernelManager

    env = {
        "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)]),
        "CORRAL_DIR": str(tmp_path / "corral"),
    }
    with KernelManager(profile="default", env=env, autorestart=False) as manager:
        client = manager.client()
        outputs = []
        reply = client.execute_interactive("%greet kernel", timeout=30, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        results = [
            m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"
        ]
        assert results == ["'greetings, kernel'"]
        client.close()


def test_subcommand_help_is_the_subcommands(tmp_path):
    result = run_corral(tmp_path, tmp_path, "profile", "create", "--help")
    assert result.returncode == 0
    assert "--force" in result.stdout


def test_kernelspecs_of_older_versions_still_load_plugins(plugin_site, tmp_path):
    """Kernelspecs written before ``corral.plugins.kernel_main`` existed start
    ``python -m corral.transports.zmq.kernel_main``: that module runs the plugins' entry
    point by name (it imports no plugins), so those kernels get their plugins' magics."""
    from corral.transports.zmq.kernel_main import KERNEL_MODULE
    from corral.transports.zmq.manager import KernelManager

    assert KERNEL_MODULE == "corral.plugins.kernel_main"
    env = {
        "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)]),
        "CORRAL_DIR": str(tmp_path / "corral"),
    }
    old = [sys.executable, "-m", "corral.transports.zmq.kernel_main", "-f", "{connection_file}"]
    with KernelManager(env=env, autorestart=False, kernel_cmd=old) as manager:
        client = manager.client()
        outputs = []
        reply = client.execute_interactive("%greet kernel", timeout=30, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok", reply["content"]
        results = [
            m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"
        ]
        assert results == ["'greetings, kernel'"]
        client.close()
