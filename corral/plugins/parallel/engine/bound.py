"""An engine that is also a Jupyter kernel: ``bind_kernel``, as ipyparallel has it.

Call :func:`bind_kernel` on an engine (``rc[0].apply_sync(bind_kernel)``) and it starts
serving its interpreter on the five Jupyter channels too, with the kernel server's own
pieces (:class:`~corral.transports.zmq.kernel.KernelServer`: control thread, heartbeat,
iopub, stdin), and returns the path of a connection file. Any Jupyter frontend
(``jupyter console --existing FILE``, a ``BlockingKernelClient``) then attaches to the
engine: same namespace, completion, inspection, magics, while tasks keep coming.

Why it is cheap and safe:

* One main thread for both. The engine's loop polls the kernel's shell socket with its
  queues (:meth:`KernelServer.host_sockets`) and serves it between tasks
  (:meth:`KernelServer.serve_waiting`), so a cell and a task never run at once and user
  code always runs where ``SIGINT`` lands. The kernel shares the engine's interrupt guard.
* Output goes where its request came from. Both servers observe the one interpreter; the
  engine's relay is unparented while a kernel request runs (a client never sees a cell's
  output as a task's), and the kernel's is unparented after each request.
* The kernel answers the parallel requests too (``apply``, ``push``, ``pull``, ``clear``,
  ``abort``: :mod:`..kernel_requests`), over the engine's own :class:`.tasks.Tasks`.
* The connection file is written owner-only (0600) next to the cluster file; the kernel
  binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["BoundKernel", "bind_kernel", "current_engine", "install_connect_magics"]

log = logging.getLogger("corral.parallel.engine")

#: The engine serving in this process (set when it starts).
_current: Engine | None = None


def current_engine() -> Engine:
    """The engine of this process; ``RuntimeError`` outside an engine."""
    if _current is None:
        raise RuntimeError("bind_kernel runs on an engine: rc[0].apply_sync(bind_kernel)")
    return _current


def set_current(engine: Engine | None) -> None:
    global _current
    _current = engine


def bind_kernel(ip: str = "127.0.0.1") -> str:
    """Serve this engine as a Jupyter kernel too; the connection file's path.

    Called again, it returns the same file (one kernel per engine).

    .. versionadded:: 0.1
    """
    engine = current_engine()
    bound = engine.bound_kernel
    if bound is not None and bound.server.shutdown_requested.is_set():
        bound.close()  # shut down, but its wake-up not served yet: a new one
    if engine.bound_kernel is None:
        engine.bound_kernel = BoundKernel(engine, ip)
    return str(engine.bound_kernel.connection_file)


def install_connect_magics(interpreter: Any) -> None:
    """On an engine, ``%connect_info`` and ``%qtconsole`` bind the engine as a kernel
    first (as :func:`bind_kernel`), so ``%px %connect_info`` answers as on ipyparallel's
    engines (which are kernels already) instead of "not a kernel"."""
    from corral.core.magics_connect import connect_info_magic, qtconsole_magic

    for name, magic in (("connect_info", connect_info_magic), ("qtconsole", qtconsole_magic)):
        interpreter.magics.register_line(name, partial(_bound_first, magic))


def _bound_first(magic: Any, interp: Any, line: str) -> Any:
    bind_kernel()
    return magic(interp, line)


class BoundKernel:
    """A :class:`KernelServer` over ``engine``'s interpreter, served by its main loop."""

    def __init__(self, engine: Engine, ip: str) -> None:
        from corral.transports.zmq.connection import (
            ConnectionInfo,
            default_connection_dir,
            new_connection_file,
            write_connection_file,
        )
        from corral.transports.zmq.kernel import KernelServer

        self.engine = engine
        self.server = KernelServer(ConnectionInfo(ip=ip), engine.interpreter)
        self.server.use_guard(engine.guard)  # one SIGINT policy for the process
        self.server.start()
        self.server.relay.parent = None
        # The requests a kernel with the parallel plugin serves, over the engine's own
        # task core: a name pushed on either channel is pulled on the other, and an
        # abort on either cancels the request wherever it comes.
        from ..kernel_requests import KernelRequests

        for channel, handlers in KernelRequests(self.server, engine.tasks).tables().items():
            self.server.add_handlers(channel, handlers)
        directory = (
            engine.cluster_file.parent
            if engine.cluster_file is not None
            else default_connection_dir()
        )
        self.connection_file: Path = write_connection_file(
            new_connection_file(directory), self.server.info
        )
        self.server.connection_file = str(self.connection_file)
        self.sockets = self.server.host_sockets()
        engine.watch_sockets(self.sockets)
        log.warning("engine %s is bound as a kernel: %s", engine.id, self.connection_file)

    def serve(self) -> None:
        """Main loop: serve the kernel's waiting requests (between tasks)."""
        engine, server = self.engine, self.server
        if engine.replies.held:  # the tasks' replies must not wait for a cell
            engine.replies.flush()
        engine.relay.parent = None
        try:
            server.serve_waiting()
        finally:
            server.relay.parent = None
        if server.shutdown_requested.is_set():
            self.close()

    def close(self) -> None:
        """Stop serving as a kernel (the engine goes on) and remove the file."""
        engine = self.engine
        engine.unwatch_sockets(self.sockets)
        engine.bound_kernel = None
        self.server.close()
        self.connection_file.unlink(missing_ok=True)
        log.warning("engine %s is no longer bound as a kernel", engine.id)


def close_bound(engine: Any) -> None:
    """Close ``engine``'s bound kernel, if any (when the engine stops)."""
    bound = getattr(engine, "bound_kernel", None)
    if bound is not None:
        bound.close()
