"""The ``corral kernel`` subcommands (``corral kernel install``)."""

from __future__ import annotations

import argparse

from corral.plugins.markers import hookimpl


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from corral.transports.zmq.kernelspec import add_kernel_cli

    add_kernel_cli(subparsers)
