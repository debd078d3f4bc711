"""The built-in plugin that registers the load-balancing policies of
:mod:`.controller.policies` through ``corral_schedulers``, exactly as a third-party
distribution registers its own. Lookup by name is
:func:`~.controller.policies.get_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.plugins.parallel.controller.policies import POLICIES, Policy

__all__ = ["corral_schedulers"]


def corral_schedulers() -> Mapping[str, Policy]:
    return POLICIES
