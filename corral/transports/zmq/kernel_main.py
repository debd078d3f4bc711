"""The kernel process's server and command line (the transport layer's part).

Kernels run :mod:`corral.plugins.kernel_main`, which calls :func:`main` here with the
plugin loader; this module imports no plugins, and :func:`main` without a loader serves
the interpreter's own magics only. ``python -m corral.transports.zmq.kernel_main``, which
kernelspecs written by older versions start, runs :data:`KERNEL_MODULE` by name, so those
kernels load plugins too. Options:

``-f FILE``
    Use the ports, key and transport in ``FILE`` (as written by jupyter_client). Ports
    given as 0, or a file that does not exist yet, mean: bind random ports, then write
    ``FILE``.
without ``-f``
    Bind random ports on 127.0.0.1, then write a fresh connection file into the default
    profile's ``security/`` directory and print its path.

Either way the sockets are bound *before* the file is written (see
:mod:`.connection`), and startup imports only what serving needs, so a frontend gets its
first ``kernel_info_reply`` quickly: the interpreter is made when the first request that
needs it arrives (or right after the first reply), and plugins load after that.

Started by :mod:`.provisioner` (``CORRAL_KERNEL_READY_FD`` set), the kernel writes one
byte to that descriptor as soon as its ports are bound.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .kernel import KernelServer

__all__ = ["KERNEL_MODULE", "READY_FD_ENV", "PluginLoader", "main", "parse_args"]

#: Names the pipe a launcher waits on for the kernel's "ports bound" byte (.provisioner).
READY_FD_ENV = "CORRAL_KERNEL_READY_FD"


def _port_range(text: str) -> tuple[int, int]:
    import argparse

    lo, sep, hi = text.partition("-")
    try:
        if not sep:
            raise ValueError
        low, high = int(lo), int(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    if not 0 < low < high <= 65536:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return low, high


def watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    """End the kernel when the process that started it is gone (``JPY_PARENT_PID``).

    jupyter_client and corral's KernelManager name the launching process in
    ``JPY_PARENT_PID``; if that frontend dies without a shutdown request, nobody will ever
    stop this kernel, so it leaves on its own instead of lingering as an orphan holding
    ports and memory. Gone means: the named process no longer exists, or this process
    was re-parented (its parent at startup died).
    """
    import threading

    from corral.core.processes import process_alive

    parent_at_start = os.getppid()

    def parent_gone() -> bool:
        return os.getppid() != parent_at_start or not process_alive(parent_pid)

    def poll() -> None:
        stopped = threading.Event()
        while not stopped.wait(interval):
            if parent_gone():
                logging.getLogger("corral.kernel").warning(
                    "parent process %d is gone; shutting down", parent_pid
                )
                os._exit(1)

    threading.Thread(target=poll, name="corral-parent-watch", daemon=True).start()


class PluginLoader(Protocol):
    """What :func:`main` needs from whoever loads plugins: start off the startup path, and
    let an execution wait until loading is done. The plugins layer supplies one
    (:mod:`corral.plugins.kernel_main`); this layer never imports plugins itself."""

    def start(self) -> None: ...

    def wait(self) -> None: ...


#: Builds the loader from the server (whose interpreter is made lazily: the loader must
#: not ask for it before the main thread did) and the profile name.
PluginLoaderFactory = Callable[["KernelServer", str], PluginLoader]

#: The module a kernel process runs: this server plus the plugins. Named, not imported, so
#: the transports start it without depending on the layer above them.
KERNEL_MODULE = "corral.plugins.kernel_main"


class _Options:
    """The parsed command line (what :func:`parse_args` returns)."""

    def __init__(self) -> None:
        self.connection_file: str | None = None
        self.ip: str | None = None
        self.transport: str | None = None
        self.ports: tuple[int, int] | None = None
        self.profile = os.environ.get("CORRAL_PROFILE", "default")
        self.log_level = os.environ.get("CORRAL_KERNEL_LOG_LEVEL", "WARNING")


def _parse_launcher_args(argv: list[str]) -> _Options | None:
    """The command line a launcher writes (``-f FILE``, ``--ip IP``...) without argparse.

    Building an ArgumentParser imports gettext, locale and shutil: about 7 ms on the path
    to a frontend's first reply. Launchers only ever pass these options as ``--opt value``
    or ``--opt=value``; anything else (help, a typo, a bad port range) returns None and
    gets argparse's full treatment.
    """
    names = {
        "-f": "connection_file",
        "--connection-file": "connection_file",
        "--ip": "ip",
        "--transport": "transport",
        "--profile": "profile",
        "--log-level": "log_level",
    }
    options = _Options()
    words = iter(argv)
    for word in words:
        flag, eq, value = word.partition("=")
        if flag not in names or (eq and flag == "-f"):
            return None
        if not eq:
            value = next(words, "")
            if not value or value.startswith("-"):
                return None
        if flag == "--transport" and value not in ("tcp", "ipc"):
            return None  # argparse says what is wrong
        setattr(options, names[flag], value)
    return options


def parse_args(argv: list[str] | None = None) -> Any:
    """Command-line options of the kernel process."""
    if argv is None:
        argv = sys.argv[1:]
    fast = _parse_launcher_args(argv)
    if fast is not None:
        return fast
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"python -m {KERNEL_MODULE}",
        description="Run a corral kernel speaking the Jupyter messaging protocol.",
    )
    parser.add_argument("-f", "--connection-file", help="connection file to use or write")
    parser.add_argument("--ip", default=None, help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--transport",
        choices=("tcp", "ipc"),
        default=None,
        help="ipc: Unix sockets in the owner-only runtime directory, so no other user can "
        "connect (default: what the connection file says, else tcp)",
    )
    parser.add_argument(
        "--ports", type=_port_range, default=None, help="range MIN-MAX for random ports"
    )
    parser.add_argument(
        "--profile", default=os.environ.get("CORRAL_PROFILE", "default"), help="corral profile"
    )
    parser.add_argument("--log-level", default=os.environ.get("CORRAL_KERNEL_LOG_LEVEL", "WARNING"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, plugins: PluginLoaderFactory | None = None) -> int:
    """Run a kernel until it is asked to shut down; returns the exit status.

    ``plugins`` builds the loader of plugins and their magics; without it (``python -m
    corral.transports.zmq.kernel_main``) the kernel serves with the interpreter's own
    magics only. :data:`KERNEL_MODULE` is the entry point that passes corral's loader.
    """
    args = parse_args(argv)
    from .server import import_from_working_directory, log_to_stderr

    log_to_stderr(args.log_level, "kernel")
    import_from_working_directory()
    from .connection import (
        ConnectionInfo,
        new_connection_file,
        read_connection_file,
        write_connection_file,
    )
    from .kernel import KernelServer

    path = args.connection_file or None
    if path is not None and os.path.exists(path):
        info = read_connection_file(path)
    else:
        info = ConnectionInfo()
    if args.ip:
        info.ip = args.ip
    if args.transport == "ipc" and info.transport != "ipc":
        from corral.core.private import runtime_dir

        info.transport = "ipc"
        info.ip = str(runtime_dir() / f"kernel-{os.getpid()}")
    elif args.transport == "tcp":
        info.transport = "tcp"
    unbound = any(info.port(ch) == 0 for ch in ("shell", "iopub", "stdin", "control", "hb"))
    # Watch the parent before anything else: if it dies while we start, we must still know
    # who it was (after it dies, our parent is init).
    parent = os.environ.get("JPY_PARENT_PID", "")
    if parent.isdigit():
        watch_parent(int(parent))
    server = KernelServer(info, port_range=args.ports, lazy_interpreter=True)
    server.bind()
    if path is None:
        path = new_connection_file()
        write_connection_file(path, info)
        print(f"corral kernel connection file: {path}", flush=True)
    elif unbound or not os.path.exists(path):
        write_connection_file(path, info)
    server.connection_file = os.path.abspath(path)
    report_bound()
    server.start()
    loader = plugins(server, args.profile) if plugins else None

    def after_first_request() -> None:
        server.interpreter  # noqa: B018 - made now, while the frontend reads its reply
        if loader is not None:
            loader.start()

    server.after_first_request = after_first_request
    if loader is not None:
        server.prepare_execute = loader.wait
        server.await_handlers = _awaiting(server, loader)
    server.serve_forever()
    return 0


def _awaiting(server: KernelServer, loader: PluginLoader) -> Callable[[], None]:
    """What the server calls on a request type it does not serve: the plugins may add it.

    The interpreter is made first when on the main thread (the loader hands it to the
    plugins' magics, and it belongs to the thread that runs user code)."""
    import threading

    def wait() -> None:
        if threading.current_thread() is threading.main_thread():
            server.interpreter  # noqa: B018
        loader.wait()

    return wait


def report_bound() -> None:
    """Write the launcher's "ports bound" byte, if a launcher asked for one (.provisioner).

    The variable is removed so that processes user code starts do not inherit it; the
    descriptor is closed, so the launcher's read ends here whatever happens next.
    """
    fd = os.environ.pop(READY_FD_ENV, "")
    if not fd.isdigit():
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except OSError as exc:
        logging.getLogger("corral.kernel").warning("cannot report bound ports: %s", exc)


if __name__ == "__main__":
    # Kernelspecs written before the plugins layer had its own entry point start this
    # module: they get the kernel every other launcher starts, plugins included. Named,
    # not imported (see KERNEL_MODULE): the arrow still points down.
    import importlib

    sys.exit(importlib.import_module(KERNEL_MODULE).main())
