"""Load-balancing policies by name: the built-in ones and those of ``corral_schedulers``.

This module is the built-in plugin that registers :mod:`.controller.policies` through the
hook, as a third-party distribution would register its own. :func:`find_policy` answers
a built-in name without loading plugins (the controller starts faster), and asks every
plugin for any other name.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.plugins.parallel.controller.policies import POLICIES, Policy

__all__ = ["corral_schedulers", "find_policy", "known_policies"]


def corral_schedulers() -> Mapping[str, Policy]:
    return POLICIES


def known_policies() -> dict[str, Policy]:
    """Every registered policy by name; the first registration of a name wins."""
    from corral.plugins.manager import get_plugin_manager

    known: dict[str, Policy] = {}
    # pluggy calls the last registered plugin first; built-ins registered first.
    for mapping in reversed(get_plugin_manager().hook.corral_schedulers()):
        for name, policy in (mapping or {}).items():
            known.setdefault(name, policy)
    return known


def find_policy(name: str) -> Policy | None:
    """The policy registered as ``name``, or None."""
    builtin = POLICIES.get(name)
    if builtin is not None:
        return builtin
    policy = known_policies().get(name)
    if policy is not None and not callable(policy):
        raise ValueError(f"scheduling policy {name!r} is registered as {policy!r}, not a function")
    return policy
