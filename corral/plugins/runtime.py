"""Turning loaded plugins into a resolved configuration: the one sequence every entry point
(the ``corral`` command, a kernel, an engine) goes through."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import pluggy

from corral.core.config import Config, Schema, load_config
from corral.notification.names import declare_type


def build_schema(manager: pluggy.PluginManager) -> Schema:
    """Every option declared by every loaded plugin (built-ins included)."""
    schema = Schema()
    manager.hook.corral_add_options(schema=schema)
    return schema


def load_configuration(
    manager: pluggy.PluginManager,
    *,
    profile: str | None = "default",
    overrides: Mapping[str, Any] | None = None,
    **files: Any,
) -> Config:
    """Resolve the configuration against the plugins' schema (see :func:`load_config`)."""
    return load_config(build_schema(manager), profile=profile, overrides=overrides, **files)


def declared_notification_types(manager: pluggy.PluginManager) -> list[Hashable]:
    """Every notification type the loaded plugins say they post, without duplicates.

    Types that are not strings are declared to the bridge's type registry on the way, so
    they can cross processes under their stable names.
    """
    declared: list[Hashable] = []
    for types in manager.hook.corral_notification_types():
        declared.extend(types or ())
    unique = list(dict.fromkeys(declared))
    for notification_type in unique:
        if not isinstance(notification_type, str):
            declare_type(notification_type)
    return unique
