"""The request core shared by the kernel server and the parallel engine.

Both serve an interpreter from the main thread and answer control requests on a thread of
their own while user code runs. What they have in common lives here, once:

* :class:`RequestCore` — the dispatch tables (message type -> handler, by channel) and the
  rule for adding to them at configuration time (the parallel plugin adds ``apply``,
  ``push``, ``pull``... to a kernel through ``corral_request_handlers``), with the SIGINT
  guard; :func:`unsupported_content` and :func:`error_content` — the replies to a type
  nobody serves and to a handler that failed.
* :class:`InterruptGuard` — the SIGINT policy: an interrupt becomes ``KeyboardInterrupt``
  only while user code runs, never inside code declared protected
  (:mod:`corral.core.interrupts`), and is delivered to the main thread, the only one
  where it lands in user code.
* :func:`execute_args` and :func:`run_execute` — an ``execute_request`` checked, and run
  with the interrupt armed around the cell only; :func:`execute_reply` — the reply
  content of an interpreter's result (or of an interrupt that landed outside the
  interpreter's own handler).
* :class:`ControlThread` — the thread that owns the control socket, plus an inproc pipe by
  which the main thread sends replies through that socket or stops the thread.

The server skeleton around this core (:mod:`.server`: wake pipe, stop, signals, close
order), the heartbeat (:mod:`.heartbeat`), the iopub publisher (:mod:`.iopub`) and the
output relay (:mod:`.relay`) are the other shared pieces; each lives in its own module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import zmq

from corral.core.interrupts import is_protected, protect

__all__ = [
    "ControlThread",
    "ExecuteArgs",
    "Handler",
    "InterruptGuard",
    "RequestCore",
    "error_content",
    "execute_args",
    "execute_reply",
    "run_execute",
    "unsupported_content",
]

log = logging.getLogger("corral.transports.zmq.requests")

# The transport and pyzmq are where user code's output turns into multipart sends.
protect(os.path.dirname(__file__))
protect(os.path.dirname(zmq.__file__))

#: How long after a signal that landed in protected code it is sent again (seconds).
_RETRY_S = 0.005
_STOP = b"STOP"


class InterruptGuard:
    """When ``SIGINT`` interrupts: only while :attr:`executing`, never in protected code.

    The server sets :attr:`executing` around user code; :meth:`install` makes
    :meth:`on_sigint` the process's SIGINT handler (main thread only).
    """

    def __init__(self) -> None:
        #: True while the main thread runs user code (read by other threads).
        self.executing = False
        self._main = threading.main_thread().ident or 0

    def install(self) -> bool:
        """Become the SIGINT handler; False (and nothing done) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(signal.SIGINT, self.on_sigint)
        return True

    def on_sigint(self, signum: int, frame: Any) -> None:
        """Raise ``KeyboardInterrupt`` in user code; between requests, ignore the signal
        (an interrupt never kills a server); in protected code, try again shortly."""
        if not self.executing:
            return
        if is_protected(frame):
            threading.Timer(_RETRY_S, self.interrupt).start()
            return
        raise KeyboardInterrupt

    def interrupt(self) -> None:
        """Send SIGINT to the main thread if user code runs.

        ``pthread_kill`` rather than ``kill``: a process-directed signal may be delivered
        to another thread, which would not wake user code blocked in a system call.
        """
        if self.executing:
            signal.pthread_kill(self._main, signal.SIGINT)


#: A request handler: what a server's dispatch table maps a message type to. Its
#: arguments are the server's own (the kernel: socket, identities, message dict; the
#: engine: destination, verified Message), so no message is converted to dispatch it.
Handler = Callable[..., None]


class RequestCore:
    """What a server that answers requests decides, with no I/O: which handler serves a
    message type on each channel, and when SIGINT interrupts (:attr:`guard`).

    The kernel server and the parallel engine are each this core plus their sockets.
    Their loops read :attr:`tables` directly (``table.get(msg_type)``: one dictionary
    lookup a message); request types are added at configuration time with :meth:`add`,
    never per message.
    """

    def __init__(
        self, tables: Mapping[str, Mapping[str, Handler]], guard: InterruptGuard | None = None
    ) -> None:
        #: Handlers by channel, then by message type. Servers keep references to these
        #: dicts: :meth:`add` updates them in place.
        self.tables: dict[str, dict[str, Handler]] = {ch: dict(t) for ch, t in tables.items()}
        #: The SIGINT policy (one per process: a server hosted by another shares it).
        self.guard = guard if guard is not None else InterruptGuard()

    def add(self, channel: str, handlers: Mapping[str, Handler]) -> list[str]:
        """Serve more request types on ``channel``; returns the types added. A type
        already served keeps its handler (the server's own, or the first plugin's)."""
        table = self.tables.get(channel)
        if table is None:
            known = " or ".join(sorted(self.tables))
            raise ValueError(f"no channel {channel!r} to serve requests on; use {known}")
        added = []
        for msg_type, handler in handlers.items():
            if msg_type in table:
                log.warning(
                    "%s on %s is served already; another handler ignored", msg_type, channel
                )
                continue
            table[msg_type] = handler
            added.append(msg_type)
        return added


def unsupported_content(msg_type: str, channel: str) -> dict[str, Any]:
    """The error reply to a request type no handler serves: the requester is told at once
    instead of waiting forever."""
    return {
        "status": "error",
        "ename": "UnsupportedRequest",
        "evalue": f"{msg_type} is not served on {channel} here",
        "traceback": [],
    }


def error_content(exc: BaseException) -> dict[str, Any]:
    """``{"status": "error", "ename", "evalue", "traceback"}`` for ``exc`` (a handler's
    failure, or a task's); never raises: an exception that cannot print itself is still
    reported, by its type."""
    from corral.core.tracebacks import format_exception

    try:
        evalue = str(exc)
    except Exception:
        evalue = f"<unprintable {type(exc).__name__}>"
    try:
        traceback = format_exception(exc)
    except Exception:
        traceback = [f"{type(exc).__name__}: {evalue}"]
    return {
        "status": "error",
        "ename": type(exc).__name__,
        "evalue": evalue,
        "traceback": traceback,
    }


class ExecuteArgs(NamedTuple):
    """An ``execute_request``'s content, checked (see :func:`execute_args`)."""

    code: str
    silent: bool
    store_history: bool
    user_expressions: dict[str, Any]
    allow_stdin: bool
    stop_on_error: bool


def execute_args(content: dict[str, Any]) -> ExecuteArgs:
    """What an ``execute_request`` asks, with the protocol's defaults.

    :raises TypeError: ``code`` is not a string (answered as an error reply).
    """
    code = content.get("code", "")
    if not isinstance(code, str):
        raise TypeError("execute_request 'code' must be a string")
    silent = bool(content.get("silent", False))
    expressions = content.get("user_expressions") or {}
    return ExecuteArgs(
        code,
        silent,
        bool(content.get("store_history", not silent)),
        expressions if isinstance(expressions, dict) else {},
        bool(content.get("allow_stdin", True)),
        bool(content.get("stop_on_error", True)),
    )


def run_execute(
    interpreter: Any,
    guard: InterruptGuard,
    args: ExecuteArgs,
    *,
    allow_stdin: bool = True,
    unlocked: AbstractContextManager[Any] | None = None,
) -> dict[str, Any]:
    """Run a cell with the interrupt armed; the ``execute_reply`` content.

    ``allow_stdin`` False refuses ``input()`` whatever the request says (an engine has no
    frontend to ask). ``unlocked`` is entered around the cell only (the engine releases
    the lock that lets its flusher send replies while user code runs). The guard is
    disarmed before ``unlocked`` exits, so no ``KeyboardInterrupt`` can land in it.
    """
    unlocked = unlocked if unlocked is not None else nullcontext()
    try:
        with unlocked:
            guard.executing = True
            try:
                result = interpreter.execute(
                    args.code,
                    silent=args.silent,
                    store_history=args.store_history,
                    user_expressions=args.user_expressions,
                    allow_stdin=allow_stdin and args.allow_stdin,
                )
            finally:
                guard.executing = False
    except KeyboardInterrupt:  # landed outside the interpreter's own handler
        result = None
    return execute_reply(result, interpreter)


def execute_reply(result: Any, interpreter: Any) -> dict[str, Any]:
    """The ``execute_reply`` content for ``result`` (an interpreter's ``ExecuteResult``),
    or for an interrupt raised outside the interpreter's handler when ``result`` is None."""
    if result is None:
        return {
            "status": "error",
            "execution_count": interpreter.execution_count,
            "ename": "KeyboardInterrupt",
            "evalue": "",
            "traceback": [],
        }
    reply: dict[str, Any] = {"status": result.status, "execution_count": result.execution_count}
    if result.status == "ok":
        reply["payload"] = result.payload or []
        reply["user_expressions"] = result.user_expressions or {}
    elif result.status == "error":
        reply["ename"] = result.ename
        reply["evalue"] = result.evalue
        reply["traceback"] = result.traceback or []
    return reply


class ControlThread(threading.Thread):
    """Owns ``control`` and calls ``handle()`` whenever a message waits on it.

    The main thread may not touch ``control`` (ZeroMQ sockets belong to one thread): it
    hands replies to :meth:`send`, which forwards them through an inproc pipe, and ends
    the thread with :meth:`stop`. Both are for one thread only (the one that made this).
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        control: zmq.Socket[Any],
        handle: Callable[[], None],
        name: str,
        *,
        linger_ms: int = 1000,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.control = control
        self._handle = handle
        self._linger = linger_ms
        url = f"inproc://corral-control-{os.getpid()}-{id(self)}"
        self._rx = context.socket(zmq.PAIR)
        self._rx.linger = linger_ms
        self._rx.bind(url)
        self._tx = context.socket(zmq.PAIR)
        self._tx.linger = linger_ms
        self._tx.connect(url)
        # debugpy must neither trace nor suspend it: control answers while user code
        # is stopped at a breakpoint.
        self.pydev_do_not_trace = True
        self.is_pydev_daemon_thread = True

    def send(self, frames: list[Any]) -> None:
        """Send ``frames`` on the control socket (from the thread that made this)."""
        self._tx.send_multipart(frames, copy=False)

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread, which closes the control socket, and close the pipe."""
        if self.is_alive():
            try:
                self._tx.send(_STOP)
            except zmq.ZMQError:
                pass
            self.join(timeout)
        elif not self._rx.closed:
            self._rx.close(linger=0)
            self.control.close(linger=0)
        self._tx.close(linger=0)

    def run(self) -> None:
        control, pipe = self.control, self._rx
        poller = zmq.Poller()
        poller.register(pipe, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if pipe in ready:
                    frames = pipe.recv_multipart(copy=False)
                    if len(frames) == 1 and frames[0].bytes == _STOP:
                        return
                    control.send_multipart(frames, copy=False)
                    continue
                if control in ready:
                    self._handle()
        except zmq.ContextTerminated:
            return
        except Exception:  # pragma: no cover - a bug: keep the server alive, loudly
            log.exception("%s crashed", self.name)
        finally:
            control.close(linger=self._linger)
            pipe.close(linger=0)
