"""The ``corral`` command. Its subcommands come from plugins (built-in ones included)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from corral.core.config import ConfigError
from corral.core.profiles import ProfileNotFound, base_dir, list_profiles


def _parser(*, add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Interactive and parallel computing in Python.",
        add_help=add_help,
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("CORRAL_PROFILE", "default"),
        help="profile (cluster directory) to use; default: %(default)s",
    )
    parser.add_argument("--log-level", help="override [core] log_level")
    return parser


def _profile_usable(args: argparse.Namespace) -> bool:
    """A named profile must exist (a typo must not silently make a new, empty one); the
    default profile is created on first use, and `corral profile ...` manages profiles."""
    if args.profile == "default" or getattr(args, "command", None) == "profile":
        return True
    return (base_dir() / f"profile_{args.profile}").is_dir()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``corral`` command; returns the exit code."""
    from corral.plugins.manager import get_plugin_manager
    from corral.plugins.runtime import load_configuration

    argv = list(sys.argv[1:] if argv is None else argv)
    # Only --profile matters before plugins load; help waits for their subcommands.
    early, _ = _parser(add_help=False).parse_known_args(argv)
    manager = get_plugin_manager(profile=early.profile)

    parser = _parser()
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    manager.hook.corral_add_commands(subparsers=subparsers)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2

    if not _profile_usable(args):
        print(
            f"corral: no profile {args.profile!r} in {base_dir()}; create it with "
            f"`corral profile create {args.profile}` (existing: "
            f"{', '.join(list_profiles()) or 'none'})",
            file=sys.stderr,
        )
        return 2
    overrides = {"core.log_level": args.log_level} if args.log_level else {}
    try:
        config = load_configuration(manager, profile=args.profile, overrides=overrides)
    except ConfigError as error:
        print(f"corral: configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.get("core", "log_level").upper(),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    manager.hook.corral_configure(config=config)
    try:
        status = args.run(args, config) or 0
        sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
        return status
    except (ProfileNotFound, ConfigError) as error:
        print(f"corral: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    finally:
        manager.hook.corral_unconfigure(config=config)


def _reader_gone() -> int:
    """Whoever read our output stopped (``corral cluster start --daemon | head -1``, for
    the cluster id the first line gives): end as a Unix tool killed by SIGPIPE does,
    with status 141 and no traceback. What was done (a cluster started) stands.
    Standard output is pointed at /dev/null so that the interpreter's last flush of it
    does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
