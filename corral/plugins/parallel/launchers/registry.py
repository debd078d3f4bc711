"""Launchers by name: what the ``corral_launchers`` hook registered.

Apart from :mod:`.base` because looking names up needs the built-in plugin
(:mod:`.builtin`), which imports the launchers, which import :mod:`.base`: kept in one
module, that was an import cycle. Here the arrows run one way: registry -> builtin ->
launchers -> base.
"""

from __future__ import annotations

from typing import Any

from corral.plugins.parallel.launchers.base import ControllerLauncher, EngineSetLauncher

__all__ = ["LauncherPair", "canonical_name", "get_launchers", "known_launchers"]

LauncherPair = tuple[type[ControllerLauncher], type[EngineSetLauncher]]


def _registered(use_plugins: bool) -> dict[str, LauncherPair]:
    """Every launcher the ``corral_launchers`` hook returns (later plugins cannot take a
    name an earlier one registered: the first registration of a name wins)."""
    known: dict[str, LauncherPair] = {}
    if use_plugins:
        from corral.plugins.manager import get_plugin_manager

        results = get_plugin_manager().hook.corral_launchers()
        # pluggy calls the last registered plugin first; built-ins registered first.
        mappings = list(reversed(results))
    else:
        from corral.plugins.parallel.launchers import builtin

        mappings = [builtin.corral_launchers()]
    for mapping in mappings:
        for name, pair in (mapping or {}).items():
            known.setdefault(name, pair)
    return known


def _check_pair(name: str, pair: Any) -> LauncherPair:
    ok = (
        isinstance(pair, tuple)
        and len(pair) == 2
        and isinstance(pair[0], type)
        and issubclass(pair[0], ControllerLauncher)
        and isinstance(pair[1], type)
        and issubclass(pair[1], EngineSetLauncher)
    )
    if not ok:
        raise ValueError(
            f"launcher {name!r} is registered as {pair!r}; corral_launchers must map a name "
            "to (ControllerLauncher subclass, EngineSetLauncher subclass)"
        )
    return pair


def canonical_name(name: str) -> str:
    """``name`` as registered when only its case differs: ipyparallel takes launcher
    names in any case (``engines="MPI"``, ``"Slurm"``), so scripts spell them that way.
    A name registered exactly as given wins; other names come back unchanged (and fail
    in :func:`get_launchers`, listing the known ones)."""
    from corral.plugins.parallel.launchers.builtin import BUILTIN_NAMES

    if name in BUILTIN_NAMES:
        return name
    lowered = name.lower()
    if lowered in BUILTIN_NAMES:
        return lowered
    known = _registered(use_plugins=True)
    if name in known:
        return name
    matches = [k for k in known if k.lower() == lowered]
    return matches[0] if len(matches) == 1 else name


def known_launchers() -> dict[str, LauncherPair]:
    """Every registered launcher, by name (built-in ones and those of plugins)."""
    return _registered(use_plugins=True)


def get_launchers(name: str) -> LauncherPair:
    """The (controller, engine set) launcher classes registered under ``name`` through the
    ``corral_launchers`` hook. Unknown names fail listing the known ones.

    A built-in name is answered by the built-in plugin's hook implementation directly
    while no plugin manager has been built in this process: loading every installed
    plugin costs tens of milliseconds a script that only wants ``Cluster(n=4)`` need not
    pay. Any other name asks every plugin.
    """
    from corral.plugins import manager as plugin_manager
    from corral.plugins.parallel.launchers.builtin import BUILTIN_NAMES

    name = canonical_name(name)
    use_plugins = name not in BUILTIN_NAMES or plugin_manager._manager is not None
    known = _registered(use_plugins)
    if name not in known:
        raise ValueError(f"unknown launcher {name!r}; known launchers: {', '.join(sorted(known))}")
    return _check_pair(name, known[name])
