"""The ``corral plugins``, ``corral profile`` and ``corral config`` subcommands."""

from __future__ import annotations

import argparse
import sys

from corral.core.config import Config, render_ini
from corral.core.private import write_private
from corral.core.profiles import list_profiles, locate_profile, profile_dir
from corral.plugins.markers import hookimpl


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    plugins = subparsers.add_parser("plugins", help="list loaded plugins and their hooks")
    plugins.set_defaults(run=_run_plugins)

    profile = subparsers.add_parser("profile", help="create, list and locate profiles")
    actions = profile.add_subparsers(dest="profile_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a profile with a commented corral.ini")
    create.add_argument("name", nargs="?", default="default")
    create.add_argument("--force", action="store_true", help="overwrite an existing corral.ini")
    create.set_defaults(run=_run_profile_create)
    actions.add_parser("list", help="list profiles").set_defaults(run=_run_profile_list)
    locate = actions.add_parser("locate", help="print a profile's directory")
    locate.add_argument("name", nargs="?", default="default")
    locate.set_defaults(run=_run_profile_locate)

    config = subparsers.add_parser("config", help="show every option's value and its source")
    config.set_defaults(run=_run_config)


def _run_plugins(args: argparse.Namespace, config: Config) -> int:
    from corral.plugins.manager import get_plugin_manager

    manager = get_plugin_manager()
    for row in manager.describe():
        origin = f"{row['distribution']} {row['version']}".strip() or "(not installed)"
        print(f"{row['name']}  [{origin}]")
        print(f"    hooks: {', '.join(row['hooks']) or '(none)'}")
    for failure in manager.failures:
        print(f"FAILED {failure.describe()}", file=sys.stderr)
    return 1 if manager.failures else 0


def _run_profile_create(args: argparse.Namespace, config: Config) -> int:
    path = profile_dir(args.name)
    ini = path / "corral.ini"
    if ini.exists() and not args.force:
        print(f"{ini} exists; keeping it (use --force to overwrite)", file=sys.stderr)
        print(path)
        return 0
    header = [
        f"corral configuration for profile {args.name!r}.",
        "Every option is listed, commented out, with its default. Values here override",
        "the system file and are overridden by CORRAL_<SECTION>_<KEY> environment",
        "variables and command-line flags.",
    ]
    write_private(ini, render_ini(config.schema, header=header))  # whatever the umask
    print(path)
    return 0


def _run_profile_list(args: argparse.Namespace, config: Config) -> int:
    for name in list_profiles():
        print(name)
    return 0


def _run_profile_locate(args: argparse.Namespace, config: Config) -> int:
    print(locate_profile(args.name))
    return 0


def _run_config(args: argparse.Namespace, config: Config) -> int:
    for section in config.schema.sections():
        print(f"[{section}]")
        for option in config.schema.options(section):
            value = config.get(section, option.key)
            print(f"{option.key} = {value!r}    # from {config.source(section, option.key)}")
    return 0
