"""Built-in plugin: the ``%px`` family of magics in corral's own kernel.

The magics run on all engines of ``Client()`` (connected at the first ``%px``) until a
view is activated with ``view.activate()``; see :mod:`.client.magics`.
"""

from __future__ import annotations

from typing import Any

from corral.plugins.markers import hookimpl


@hookimpl
def corral_add_magics(registry: Any) -> None:
    from .client.defaults import default_direct_view
    from .client.magics import ParallelMagics, register_corral

    register_corral(registry, ParallelMagics(None, view_factory=default_direct_view))
