"""``python -m corral.plugins.parallel.engine --file CLUSTER_FILE [--log-level LEVEL]``.

Runs one engine until a shutdown request (exit status 0), SIGTERM (0), a refused or
unanswered registration (1), the loss of the process named by ``CORRAL_PARENT_PID`` (1),
or of the controller when none came back within the grace period (1). Logs go to stderr,
which launchers redirect to a log file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the engine process."""
    parser = argparse.ArgumentParser(
        prog="python -m corral.plugins.parallel.engine",
        description="Run a corral engine that joins the cluster described by a cluster file.",
    )
    parser.add_argument("--file", "-f", required=True, help="the cluster file (JSON)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CORRAL_ENGINE_LOG_LEVEL", "warning"),
        help="debug, info, warning (default) or error",
    )
    parser.add_argument("--ip", default=None, help="controller address (default: the file's)")
    parser.add_argument(
        "--profile",
        default=None,
        help="the corral profile whose plugins the engine loads (default: the profile the "
        "cluster file is in, else $CORRAL_PROFILE, else 'default')",
    )
    parser.add_argument(
        "--hub-timeout",
        type=float,
        default=None,
        help="seconds without a heartbeat before the engine exits (default 10 x hb_period)",
    )
    parser.add_argument(
        "--controller-grace",
        type=float,
        default=None,
        help="seconds to wait for a lost controller to be restarted before exiting "
        "(default: the cluster file's controller_grace, CORRAL_CONTROLLER_GRACE, or 60)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the registration reply (default 30)",
    )
    # [kernel] settings of the profile (corral/transports/zmq/kernel_options.py).
    parser.add_argument(
        "--exec-line",
        action="append",
        default=[],
        help="a Python line to run in the namespace at start (repeatable)",
    )
    parser.add_argument("--working-dir", default=None, help="directory to start in")
    return parser.parse_args(argv)


def plugin_profile(explicit: str | None, cluster_file: str) -> str:
    """The profile whose plugins an engine loads: the one asked for, else the one its
    cluster file belongs to (``<base>/profile_<name>/security/cluster-<id>.json``: the
    cluster's own), else ``$CORRAL_PROFILE``, else ``default``."""
    if explicit:
        return explicit
    security = Path(cluster_file).resolve().parent
    if security.name == "security" and security.parent.name.startswith("profile_"):
        return security.parent.name.removeprefix("profile_")
    return os.environ.get("CORRAL_PROFILE") or "default"


def main(argv: list[str] | None = None) -> int:
    """Run an engine; returns the exit status."""
    args = parse_args(argv)
    from corral.transports.zmq.server import import_from_working_directory, log_to_stderr

    log_to_stderr(args.log_level, "engine")
    import_from_working_directory()
    from corral.plugins.parallel.engine.engine import Engine, EngineJoinError

    try:
        engine = Engine.from_file(
            args.file,
            ip=args.ip,
            hub_timeout=args.hub_timeout,
            registration_timeout=args.timeout,
            controller_grace=args.controller_grace,
            # Under a monitor: the uuid it chose, so it can name this engine to the hub.
            uuid=os.environ.get("CORRAL_ENGINE_UUID") or None,
            plugins=plugin_profile(args.profile, args.file),
        )
    except (OSError, ValueError, EngineJoinError) as exc:
        logging.getLogger("corral.parallel.engine").error("cannot start: %s", exc)
        return 1
    if args.exec_line or args.working_dir:
        from corral.transports.zmq.kernel_options import apply_startup

        try:
            apply_startup(engine.user_ns, args.exec_line, args.working_dir or "")
        except OSError as exc:
            logging.getLogger("corral.parallel.engine").error(
                "cannot start: [kernel] working_dir: %s", exc
            )
            return 1
    return engine.run()


if __name__ == "__main__":
    sys.exit(main())
