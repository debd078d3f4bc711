"""The ``corral_serializers`` hook, wired into :mod:`corral.core.serialize`.

``core`` knows no plugins, so the reducers come down to it: registered at once when a
process configures its plugins (:func:`corral_configure`, this module being a built-in
plugin), or, in clients and engines, through the source :func:`plugin_reducers` that
:mod:`corral.plugins.parallel` hands to
:func:`~corral.core.reducer_source.set_reducer_source` and that is only asked when an
object first fails to pickle. Neither imports the serializer before it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.core.serialize import Reducer

__all__ = ["corral_configure", "plugin_reducers"]


def plugin_reducers() -> dict[type, Reducer]:
    """Every plugin's reducers; for a type two plugins claim, the first registered wins."""
    from corral.plugins.manager import get_plugin_manager

    merged: dict[type, Reducer] = {}
    # pluggy calls the last registered plugin first; built-ins registered first.
    for mapping in reversed(get_plugin_manager().hook.corral_serializers()):
        for cls, reduce in (mapping or {}).items():
            merged.setdefault(cls, reduce)
    return merged


def corral_configure(config: Any) -> None:
    """Plugins are loaded in this process anyway: register their reducers now."""
    reducers = plugin_reducers()
    if reducers:
        from corral.core.serialize import register_reducers

        register_reducers(reducers)
