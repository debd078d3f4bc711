"""An engine's plugins: loaded once at start, as a kernel loads them.

Why: an engine runs user code like a kernel does, so what plugins give a kernel they
should give an engine: their configuration (``corral_configure``, where a plugin
subscribes to the notification center, registers reducers...), and request types of
their own (``corral_engine_request_handlers``, the engine's counterpart of the kernel's
``corral_request_handlers``: see :mod:`corral.plugins.hookspecs`).

When: in a thread started by :meth:`Engine.start <.engine.Engine.start>` once the engine
is registered, so it runs beside the engine's first tasks instead of before them.
Finding entry points, importing the plugins' modules and reading the configuration take
some 170 ms of CPU (more on a busy host), a fifth of a cluster's start; a kernel loads its
plugins off its startup path for the same reason. Waiting for them before the first task
made the first task of a fresh cluster ~50% later; now only a message of a type the
engine does not serve (a plugin's, maybe) waits for the loader (``Engine._unknown``,
through ``RequestServer.late_handler``), and
the engine's own requests never do. So what ``corral_configure`` sets up (observers, ...)
may miss the first tasks of an engine. Never per message: plugins' handlers go into the
engine's dispatch table, a dictionary lookup like the engine's own (a dict store while
the main thread may read it: one operation under the GIL). A plugin that fails to load
is logged and the engine serves without it (as a kernel does).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["load_plugins", "start_loading"]

log = logging.getLogger("corral.parallel.engine")


def load_plugins(engine: Engine, profile: str | None) -> list[str]:
    """Load the plugins of ``profile``, configure them, install the request types they
    serve on ``engine``; returns those types (none if loading failed)."""
    try:
        from corral.plugins.manager import get_plugin_manager
        from corral.plugins.runtime import load_configuration

        manager = get_plugin_manager(profile=profile)
        config = load_configuration(manager, profile=profile)
        manager.hook.corral_configure(config=config)
        added: list[str] = []
        for tables in manager.hook.corral_engine_request_handlers(engine=engine):
            for channel, handlers in (tables or {}).items():
                added += engine.core.add(channel, handlers)
    except Exception:
        log.exception("plugins could not be loaded; the engine runs without them")
        return []
    return added


def start_loading(engine: Engine, profile: str) -> threading.Thread:
    """:func:`load_plugins` in a thread of its own, started."""
    thread = threading.Thread(
        target=load_plugins, args=(engine, profile), name="corral-engine-plugins", daemon=True
    )
    thread.start()
    return thread
