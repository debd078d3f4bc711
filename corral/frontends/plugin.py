"""The ``corral console`` and ``corral run`` subcommands, added as any plugin would add them.

The frontends are imported only when their command runs, so ``corral --help`` and every
other subcommand start without loading prompt_toolkit or a kernel client.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from corral.plugins.markers import hookimpl

#: Exit status for a kernel that could not be started or reached.
EXIT_NO_KERNEL = 2


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    console = subparsers.add_parser(
        "console",
        help="a terminal console on a new kernel, or on a running one with --existing",
        description="Interactive terminal frontend. Ctrl-C interrupts a running cell or "
        "clears the line; Ctrl-D quits (shutting down the kernel only if the console "
        "started it).",
    )
    console.add_argument(
        "--existing",
        metavar="CONNECTION_FILE",
        help="connect to the kernel of this connection file (a path, or a name in the "
        "profile's security directory) and leave it running on exit",
    )
    console.add_argument(
        "--simple-prompt",
        action="store_true",
        help="read lines with plain input() (no editing or completion; scriptable); "
        "the default when stdin is not a terminal",
    )
    console.set_defaults(run=_run_console)

    run = subparsers.add_parser(
        "run",
        help="run a file (or stdin) in a kernel, streaming its output",
        description="Run FILE (or code from stdin with '-') in a new kernel, or in a running "
        "one with --existing, printing output as it arrives. Exit status: 0 when the code "
        "ran, 1 when it raised, 124 when --timeout ran out.",
    )
    run.add_argument("file", metavar="FILE", help="Python file to run, or '-' for stdin")
    # REMAINDER, so the script's own options (``-v``, ``--flag``) reach it untouched.
    run.add_argument(
        "script_args",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="arguments for the file: its sys.argv[1:], as with `python FILE ARG...`",
    )
    run.add_argument(
        "--existing",
        metavar="CONNECTION_FILE",
        help="run in the kernel of this connection file (a path, or a name in the profile's "
        "security directory); it keeps running afterwards",
    )
    run.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="give up after S seconds"
    )
    run.add_argument("--html", action="store_true", help="write the output as HTML (editors)")
    run.set_defaults(run=_run_run)


def _run_console(args: argparse.Namespace, config: Any) -> int:
    from corral.frontends.console import run_console

    return _guarded(
        lambda: run_console(
            existing=args.existing, simple_prompt=args.simple_prompt, profile=args.profile
        )
    )


def _run_run(args: argparse.Namespace, config: Any) -> int:
    from corral.frontends.run import run_command

    return _guarded(lambda: run_command(args, config))


def _guarded(start: Any) -> int:
    """Run a frontend; a kernel that cannot be found or started is one line, not a trace."""
    from corral.transports.zmq.client import MessageTimeout
    from corral.transports.zmq.manager import KernelStartError

    try:
        return int(start() or 0)
    except (FileNotFoundError, KernelStartError, MessageTimeout) as error:
        print(f"corral: {error}", file=sys.stderr)
        return EXIT_NO_KERNEL
