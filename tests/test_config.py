"""Configuration: types, layering, and errors that name file, line, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.core.config import ConfigError, Option, Schema, env_name, load_config, render_ini
from corral.core.profiles import (
    ProfileNotFound,
    list_profiles,
    locate_profile,
    profile_dir,
)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "system.ini"))
    for name in list(__import__("os").environ):
        if name.startswith("CORRAL_KERNEL_"):
            monkeypatch.delenv(name)
    return tmp_path


def schema() -> Schema:
    return Schema(
        [
            Option("kernel", "ip", "127.0.0.1", "Address to bind."),
            Option("kernel", "heartbeat_interval", 1.0, "Seconds.", type="float", minimum=0.01),
            Option("kernel", "port_base", 0, "First port.", type="int", minimum=0, maximum=65535),
            Option("kernel", "autorestart", True, "Restart dead kernels.", type="bool"),
            Option(
                "kernel", "mode", "process", "How.", type="choice", choices=("process", "thread")
            ),
            Option("kernel", "extra", [], "Extra args.", type="list"),
            Option("kernel", "workdir", "~", "Where.", type="path"),
        ]
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults():
    config = load_config(schema(), environ={})
    assert config.get("kernel", "ip") == "127.0.0.1"
    assert config.get("kernel", "autorestart") is True
    assert config.source("kernel", "ip") == "default"


def test_layers_in_precedence_order(isolated_dirs):
    system = write(isolated_dirs / "system.ini", "[kernel]\nip = 10.0.0.1\nport_base = 1\n")
    profile = profile_dir("p")
    write(profile / "corral.ini", "[kernel]\nport_base = 2\nmode = thread\n")
    config = load_config(
        schema(),
        profile="p",
        system_file=system,
        environ={"CORRAL_KERNEL_MODE": "process", "CORRAL_KERNEL_AUTORESTART": "no"},
        overrides={"kernel.heartbeat_interval": 0.5, "kernel.autorestart": True},
    )
    assert config.get("kernel", "ip") == "10.0.0.1"  # system file
    assert config.get("kernel", "port_base") == 2  # profile beats system
    assert config.get("kernel", "mode") == "process"  # environment beats profile
    assert config.get("kernel", "autorestart") is True  # arguments beat environment
    assert config.get("kernel", "heartbeat_interval") == 0.5
    assert "system file" in config.source("kernel", "ip")
    assert config.source("kernel", "mode") == "environment variable CORRAL_KERNEL_MODE"


def test_value_types():
    config = load_config(
        schema(),
        environ={
            "CORRAL_KERNEL_EXTRA": "a, b,c",
            "CORRAL_KERNEL_WORKDIR": "~/x",
            "CORRAL_KERNEL_AUTORESTART": "Off",
        },
    )
    assert config.get("kernel", "extra") == ["a", "b", "c"]
    assert config.get("kernel", "workdir") == Path.home() / "x"
    assert config.get("kernel", "autorestart") is False
    assert config.section("kernel")["ip"] == "127.0.0.1"


def test_unknown_key_names_file_line_and_suggests(isolated_dirs):
    path = write(
        isolated_dirs / "p.ini", "# comment\n[kernel]\nip = 1.2.3.4\nheartbeat_intervl = 2\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(schema(), profile_file=path, environ={})
    message = str(error.value)
    assert f"{path}:4" in message
    assert "[kernel]" in message and "'heartbeat_intervl'" in message
    assert "did you mean 'heartbeat_interval'" in message


def test_unknown_section(isolated_dirs):
    path = write(isolated_dirs / "p.ini", "[kernl]\nip = 1\n")
    with pytest.raises(
        ConfigError, match=r"p.ini:1.*unknown section \[kernl\].*did you mean 'kernel'"
    ):
        load_config(schema(), profile_file=path, environ={})


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("port_base", "eighty", "an integer >= 0 and <= 65535"),
        ("port_base", "70000", "an integer >= 0 and <= 65535"),
        ("heartbeat_interval", "0", "a number >= 0.01"),
        ("autorestart", "maybe", "true or false"),
        ("mode", "threads", "one of process, thread"),
    ],
)
def test_bad_values_name_accepted_values(isolated_dirs, key, raw, expected):
    path = write(isolated_dirs / "p.ini", f"[kernel]\n\n{key} = {raw}\n")
    with pytest.raises(ConfigError) as error:
        load_config(schema(), profile_file=path, environ={})
    message = str(error.value)
    assert f"{path}:3" in message and f"[kernel] {key}" in message
    assert f"bad value {raw!r}" in message and expected in message


def test_bad_choice_suggests():
    with pytest.raises(ConfigError, match="did you mean 'thread'"):
        load_config(schema(), environ={"CORRAL_KERNEL_MODE": "threads"})


def test_bad_environment_key_is_named():
    with pytest.raises(ConfigError, match="CORRAL_KERNEL_IPP.*did you mean 'ip'"):
        load_config(schema(), environ={"CORRAL_KERNEL_IPP": "1"})


def test_bad_override_type():
    with pytest.raises(ConfigError, match="argument kernel.port_base.*bad value '\"1\"'"):
        load_config(schema(), environ={}, overrides={"kernel.port_base": '"1"'})
    with pytest.raises(ConfigError, match="bad value 'True'"):
        load_config(schema(), environ={}, overrides={"kernel.port_base": True})


def test_malformed_ini_file(isolated_dirs):
    path = write(isolated_dirs / "p.ini", "ip = 1\n")
    with pytest.raises(ConfigError, match="not a valid ini file"):
        load_config(schema(), profile_file=path, environ={})


def test_declaring_twice_fails():
    with pytest.raises(ValueError, match="declared twice"):
        Schema([Option("a", "b", 1, "x"), Option("a", "b", 2, "y")])


def test_render_ini_round_trips_every_default(isolated_dirs):
    text = render_ini(schema(), header=["hello"])
    assert text.startswith("# hello\n")
    for option in schema():
        assert f"# {option.key} = " in text
    # Uncommenting every line must give a valid file that yields the defaults.
    uncommented = "\n".join(
        line[2:] if " = " in line and line.startswith("# ") else line for line in text.splitlines()
    )
    path = write(isolated_dirs / "all.ini", uncommented)
    config = load_config(schema(), profile_file=path, environ={})
    assert config.get("kernel", "heartbeat_interval") == 1.0
    assert config.get("kernel", "mode") == "process"
    assert config.get("kernel", "extra") == []


def test_profiles(isolated_dirs):
    assert list_profiles() == []
    path = profile_dir("cluster-1")
    assert {p.name for p in path.iterdir()} >= {"security", "log", "run", "db"}
    assert (path / "security").stat().st_mode & 0o777 == 0o700
    assert list_profiles() == ["cluster-1"]
    assert locate_profile("cluster-1") == path
    with pytest.raises(ProfileNotFound, match="corral profile create nope"):
        locate_profile("nope")
    with pytest.raises(ValueError, match="profile name"):
        profile_dir("../escape")


def test_no_variable_corral_sets_for_its_processes_is_read_as_a_bad_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every ``CORRAL_*`` name in the code, set in the environment, either is an option
    or is left alone: an engine's monitor sets CORRAL_ENGINE_UUID, and the engine's
    configuration (its plugins) failed to load with "unknown key 'uuid' in [engine]"."""
    import re

    import corral
    from corral.core.config import PROCESS_VARIABLES
    from corral.plugins.manager import get_plugin_manager
    from corral.plugins.runtime import load_configuration

    root = Path(corral.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        names |= set(re.findall(r'"(CORRAL_[A-Z0-9_]+)"', path.read_text()))
    assert "CORRAL_ENGINE_UUID" in names  # the scan finds what it looks for
    manager = get_plugin_manager(profile=None)
    schema = load_configuration(manager, profile=None).schema
    options = {env_name(o.section, o.key) for s in schema.sections() for o in schema.options(s)}
    for name in sorted(names - options):
        monkeypatch.setenv(name, "1")
    load_configuration(manager, profile=None)  # raises ConfigError on a collision
    assert PROCESS_VARIABLES <= names, "a process variable nobody uses any more"
