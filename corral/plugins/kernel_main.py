"""A kernel process with corral's plugins: ``python -m corral.plugins.kernel_main -f FILE``.

The server and its command line live in :mod:`corral.transports.zmq.kernel_main`; this
module adds what only the plugins layer may know (the plugin manager, the configuration,
the plugins' magics, the request types plugins serve) by handing the transport's
:func:`main` a loader. That keeps the arrow pointing down: the transports start plugins
they never import.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from corral.transports.zmq.kernel_main import main as serve

if TYPE_CHECKING:
    from corral.transports.zmq.kernel import KernelServer

__all__ = ["PluginLoader", "install_request_handlers", "main"]


class PluginLoader:
    """Loads plugins and their magics off the startup path, in a thread of its own.

    Finding entry points and resolving configuration takes tens of milliseconds of CPU,
    more than the rest of startup; a frontend's first kernel_info needs none of it, an
    execution may. So loading starts once the first request has been answered (or at the
    first execution, if that comes first), and executions wait for it to finish.
    """

    def __init__(self, server: KernelServer, profile: str) -> None:
        import threading

        self._server = server
        self._profile = profile
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import threading

        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._load, name="corral-plugin-loader", daemon=True
                )
                self._thread.start()

    def wait(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()

    def _load(self) -> None:
        log = logging.getLogger("corral.kernel")
        try:
            from corral.plugins.manager import get_plugin_manager
            from corral.plugins.runtime import load_configuration

            manager = get_plugin_manager(profile=self._profile)
            config = load_configuration(manager, profile=self._profile)
            manager.hook.corral_configure(config=config)
            install_request_handlers(manager, self._server)
            manager.hook.corral_add_magics(registry=self._server.interpreter.magics)
        except Exception:
            log.exception("plugins could not be loaded; the kernel runs without them")


def install_request_handlers(manager: Any, server: KernelServer) -> list[str]:
    """Ask the plugins once for the request types they serve (``corral_request_handlers``)
    and install them into ``server``'s dispatch tables; returns the types added.

    Configuration time only: after this, a plugin's request type is served like the
    kernel's own, by one dictionary lookup, with no hook call per message.
    """
    added: list[str] = []
    for tables in manager.hook.corral_request_handlers(server=server):
        for channel, handlers in (tables or {}).items():
            added += server.add_handlers(channel, handlers)
    return added


def main(argv: list[str] | None = None) -> int:
    """Run a kernel with plugins until it is asked to shut down; returns the exit status."""
    return serve(argv, plugins=PluginLoader)


if __name__ == "__main__":
    sys.exit(main())
