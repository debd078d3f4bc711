"""Every hook corral calls, in one place: what a plugin can extend, and when it is called.

Hooks are for configuration and extension, never per-event traffic: a pluggy call costs
microseconds, a notification post nanoseconds. Plugins that want to see what happens
subscribe to the notification center in :func:`corral_configure`.

A plugin is a module or object with functions named like these, marked with
``@corral.plugins.hookimpl``, installed under the entry-point group ``corral``::

    [project.entry-points.corral]
    myplugin = "mypackage.corral_plugin"
"""

# A hook spec is a signature pluggy reads, never called: its docstring is its whole body,
# so mypy's "returns nothing" finding does not apply here.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

import argparse
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING

from corral.plugins.markers import hookspec

if TYPE_CHECKING:
    from corral.core.config import Config, Schema
    from corral.core.magics import MagicsRegistry
    from corral.core.serialize import Reducer
    from corral.plugins.parallel.controller.policies import Policy
    from corral.plugins.parallel.engine.engine import Engine
    from corral.plugins.parallel.engine.engine import Handler as EngineHandler
    from corral.transports.zmq.kernel import Handler, KernelServer


@hookspec
def corral_add_options(schema: Schema) -> None:
    """Declare configuration options, with ``schema.add_option(section, key, default, help,
    type=..., choices=...)``. Called once, before any configuration file is read, so that
    every file and environment variable is checked against every plugin's options.

    .. versionadded:: 0.1
    """


@hookspec
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``corral`` subcommands: ``parser = subparsers.add_parser("name", help=...)``, then
    ``parser.set_defaults(run=callable)``; the callable gets ``(args, config)`` and returns
    an exit code (or None for 0).

    .. versionadded:: 0.1
    """


@hookspec
def corral_notification_types() -> Iterable[Hashable]:
    """Return the notification types this plugin posts (strings, or classes/constants it
    defines), so they can be listed, documented and carried across processes by name.

    .. versionadded:: 0.1
    """


@hookspec
def corral_add_magics(registry: MagicsRegistry) -> None:
    """Add line and cell magics to an interpreter when its kernel starts:
    ``registry.register_line("name", func)`` with ``func(interpreter, line)``, or
    ``registry.register_cell("name", func)`` with ``func(interpreter, line, cell)``.

    .. versionadded:: 0.1
    """


@hookspec
def corral_configure(config: Config) -> None:
    """Called once the configuration is resolved: start what the plugin needs, subscribe to
    notifications.

    .. versionadded:: 0.1
    """


@hookspec
def corral_unconfigure(config: Config) -> None:
    """Called at shutdown, in reverse order of registration: release what configure took.

    .. versionadded:: 0.1
    """


@hookspec
def corral_request_handlers(server: KernelServer) -> Mapping[str, Mapping[str, Handler]] | None:
    """Return request types a kernel server should serve, by channel: ``{"shell":
    {"apply_request": handler}, "control": {"abort_request": handler}}``, where
    ``handler(sock, idents, msg)`` answers with ``server.reply(sock, idents, msg, content,
    metadata, buffers)`` (``server`` is a
    :class:`~corral.transports.zmq.kernel.KernelServer`; keep it, the handlers need it).

    Called once per server, when plugins are configured in its process (a kernel: as
    plugins load, right after its first reply), never per message: the handlers go into
    the server's dispatch tables, so a message costs one dictionary lookup whichever
    plugin serves it. A type the kernel serves itself cannot be taken over, and the first
    plugin to name a type wins. The parallel plugin serves ``apply``, ``push``, ``pull``,
    ``clear`` and ``abort`` this way, so a kernel answers what an engine answers.

    .. versionadded:: 0.1
    """


@hookspec
def corral_engine_request_handlers(
    engine: Engine,
) -> Mapping[str, Mapping[str, EngineHandler]] | None:
    """The engine's :func:`corral_request_handlers`: return request types a parallel
    engine should serve, by channel: ``{"queues": {"thing_request": handler}}`` (whatever
    reaches the engine through the mux, task and broadcast queues, its data socket or a
    same-host client). ``handler(sock, msg)`` runs in the engine's main thread, where
    tasks run; it answers with ``engine.reply(sock, msg, content)`` (``engine`` is a
    :class:`~corral.plugins.parallel.engine.engine.Engine`; keep it, the handlers need
    it). The reply's type is the request's, ``_request`` replaced by ``_reply``.

    Called once per engine, when it loads its plugins at start (in a thread, once it is
    registered; a message of a type the engine does not serve waits for it), never per
    message: the handlers go into the engine's dispatch
    table, so a message costs one dictionary lookup whichever plugin serves it. A type
    the engine serves itself cannot be taken over, and the first plugin to name a type
    wins. Why a hook of its own: an engine's wire is the cluster's, not a kernel's
    (requests arrive already verified, as one message object; replies may be batched),
    so a kernel's handlers would not fit.

    .. versionadded:: 0.1
    """


@hookspec
def corral_launchers() -> Mapping[str, tuple[type, type]]:
    """Return launchers by name: ``{"name": (ControllerLauncherClass,
    EngineSetLauncherClass)}`` (subclasses of the classes in
    :mod:`corral.plugins.parallel.launchers.base`). ``Cluster(engines="name")`` and
    ``[cluster] engines = name`` pick the engine-set class, ``controller = name`` the
    controller class. A launcher's own options belong in section ``[launcher:name]``,
    declared through :func:`corral_add_options`; they reach the launcher as its
    ``options`` mapping. The built-in launchers (local, ssh, mpi, slurm, ...) register
    through this hook too.

    .. versionadded:: 0.1
    """


@hookspec
def corral_schedulers() -> Mapping[str, Policy]:
    """Return load-balancing policies by name: ``{"name": policy}``, where ``policy(loads,
    last_used, rng, cursor)`` returns the index of the candidate engine a task goes to (see
    :mod:`corral.plugins.parallel.controller.policies`, whose ``leastload``, ``lru``,
    ``random``, ``twobin`` and ``weighted`` register through this hook too).
    ``Cluster(policy="name")``, ``[controller] policy = name`` and the controller's
    ``--policy name`` select one. A built-in name cannot be taken over: the first
    registration of a name wins. Called in the controller process when it starts, only
    for a name that is not built in.

    .. versionadded:: 0.1
    """


@hookspec
def corral_serializers() -> Mapping[type, Reducer]:
    """Return reducers by type: ``{cls: reduce}``, where ``reduce(obj)`` returns
    ``(callable, args)`` as for :mod:`copyreg` (``callable`` must be importable where the
    object is loaded, so install the plugin on engines and clients alike). Exactly ``cls``
    is matched, not its subclasses.

    Kernels and the ``corral`` command register them when plugins are configured. Clients
    and engines, which skip loading plugins at start, ask this hook the first time an
    object does not pickle without it, then pickle it again: a serializer for a type pickle
    already handles takes effect there only once something has needed the hook.

    .. versionadded:: 0.1
    """
