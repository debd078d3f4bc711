"""The options and notification types of corral's core."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from corral.core.config import Schema
from corral.core.events import INTERPRETER_TYPES
from corral.plugins.markers import hookimpl

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@hookimpl
def corral_add_options(schema: Schema) -> None:
    from corral.transports.zmq.kernel_options import KERNEL_OPTIONS

    for option in KERNEL_OPTIONS:  # [kernel]: every kernel's settings, engines included
        schema.add(option)
    schema.add_option(
        "security",
        "encryption",
        "none",
        "Cluster traffic: none (connections authenticated by the cluster key, messages\n"
        "signed, not encrypted) or curve (every cluster socket encrypted with CurveZMQ).\n"
        "See docs/security.md.",
        type="choice",
        choices=["none", "curve"],
    )
    schema.add_option(
        "core",
        "log_level",
        "warning",
        "How much corral logs to stderr.",
        type="choice",
        choices=LOG_LEVELS,
    )
    schema.add_option(
        "plugins",
        "disable",
        [],
        "Plugins not to load, by the name `corral plugins` shows\n"
        "(also: the CORRAL_DISABLE_PLUGINS environment variable).",
        type="list",
    )


@hookimpl
def corral_notification_types() -> Iterable[Hashable]:
    return INTERPRETER_TYPES
