"""The process's plugin manager: built-in plugins and every installed ``corral`` entry point.

Built-in plugins register through the same hooks as third-party ones, so nothing in corral
has a private way in. A plugin that fails to import, or implements a hook with the wrong
signature or an unknown name, is reported with its name and distribution and left out;
corral starts with the others.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import logging
import os
import threading
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from corral.plugins import hookspecs
from corral.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME

__all__ = [
    "BUILTIN_PLUGINS",
    "CorralPluginManager",
    "PluginFailure",
    "disabled_plugins",
    "get_plugin_manager",
    "reset_plugin_manager",
]

log = logging.getLogger("corral.plugins")

#: Modules registered as plugins in every process, in this order. Named, not imported: the
#: frontends' plugin module lives in ``corral.frontends`` (the layer above this one), and
#: is imported only when the manager registers it, as an entry point would be (pytest keeps
#: its built-in plugins the same way). The import-linter contract sees no arrow up.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "corral.plugins.builtin.core",
    "corral.plugins.builtin.commands",
    "corral.plugins.parallel.commands",
    "corral.plugins.parallel.magics_plugin",
    "corral.plugins.parallel.kernel_requests",
    "corral.plugins.parallel.launchers.builtin",
    "corral.plugins.parallel.schedulers",
    "corral.plugins.serializers",
    "corral.plugins.builtin.kernel",
    "corral.frontends.plugin",
)


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str
    version: str
    error: str
    traceback: str = ""

    def describe(self) -> str:
        dist = f" from {self.distribution} {self.version}" if self.distribution else ""
        return f"plugin {self.name!r}{dist} failed to load: {self.error}"


class CorralPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers failed plugins and where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.origins: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """Take ``corral_*`` functions even without ``@hookimpl``, as pytest does."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("corral_"):
            method = getattr(plugin, name, None)
            if callable(method) and not isinstance(method, type):
                return {}
        return opts

    def register_checked(
        self, plugin: Any, name: str, distribution: str = "", version: str = ""
    ) -> bool:
        """Register ``plugin``, or record why it cannot be; never raises for a bad plugin."""
        unknown = [
            attr
            for attr in dir(plugin)
            if attr.startswith("corral_")
            and self.parse_hookimpl_opts(plugin, attr) is not None
            and not hasattr(hookspecs, attr)
        ]
        if unknown:
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("corral_")))
            self._fail(
                name,
                distribution,
                version,
                f"implements unknown hook(s) {', '.join(unknown)}; corral's hooks are {known}",
            )
            return False
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            self._fail(name, distribution, version, f"invalid hook implementation: {error}")
            return False
        except ValueError as error:  # already registered, or blocked
            self._fail(name, distribution, version, str(error))
            return False
        self.origins[name] = (distribution, version)
        return True

    def _fail(
        self, name: str, distribution: str, version: str, error: str, trace: str = ""
    ) -> None:
        failure = PluginFailure(name, distribution, version, error, trace)
        self.failures.append(failure)
        log.error("%s", failure.describe())

    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            if self.is_blocked(module_name):
                continue
            module = importlib.import_module(module_name)
            self.register_checked(module, module_name, "corral", _corral_version())

    def load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(entry_point, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            version = dist.version if dist is not None else ""
            if self.is_blocked(entry_point.name) or self.has_plugin(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:
                self._fail(
                    entry_point.name,
                    dist_name,
                    version,
                    f"cannot import {entry_point.value}: {type(error).__name__}: {error}",
                    traceback.format_exc(),
                )
                continue
            self.register_checked(plugin, entry_point.name, dist_name, version)

    def describe(self) -> list[dict[str, Any]]:
        """Each loaded plugin with its distribution, version and implemented hooks."""
        rows = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self.origins.get(name, ("", ""))
            hooks = sorted(caller.name for caller in self.get_hookcallers(plugin) or ())
            rows.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
        return rows


def _corral_version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def disabled_plugins(
    profile: str | None = "default", environ: dict[str, str] | None = None
) -> list[str]:
    """Plugin names blocked by ``CORRAL_DISABLE_PLUGINS`` or the ``[plugins] disable`` key.

    Read before plugins load (their options are not declared yet), so this looks at the
    raw key in the system and profile files; the full configuration validates it later.
    """
    from corral.core.config import system_config_path
    from corral.core.profiles import base_dir

    names: list[str] = []
    files = [system_config_path()]
    if profile is not None:
        files.append(base_dir() / f"profile_{profile}" / "corral.ini")
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error:
            continue  # reported with file and line by the full configuration load
        names += _split(parser.get("plugins", "disable", fallback=""))
    env = os.environ if environ is None else environ
    names += _split(env.get("CORRAL_PLUGINS_DISABLE", ""))
    names += _split(env.get("CORRAL_DISABLE_PLUGINS", ""))
    return list(dict.fromkeys(names))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


_manager: CorralPluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager(
    *, profile: str | None = "default", disabled: Iterable[str] | None = None
) -> CorralPluginManager:
    """The process's plugin manager, built on first use.

    ``disabled`` defaults to :func:`disabled_plugins` of ``profile``.
    """
    global _manager
    with _manager_lock:
        if _manager is None:
            manager = CorralPluginManager()
            blocked = disabled_plugins(profile) if disabled is None else list(disabled)
            for name in blocked:
                manager.set_blocked(name)
            manager.load_builtins()
            manager.load_entry_points()
            _manager = manager
        return _manager


def reset_plugin_manager() -> None:
    """Forget the process's manager so the next call rebuilds it (tests, reloads)."""
    global _manager
    with _manager_lock:
        _manager = None
