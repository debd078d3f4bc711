"""The skeleton a kernel server and a cluster engine share: how a server stops and wakes.

:class:`~.kernel.KernelServer` (Jupyter's five channels) and the parallel plugin's
``Engine`` (the cluster's queues) are both a :class:`~.requests.RequestCore` served by a
main thread that runs user code, with a control thread that answers while it does. What
they do around that core was written twice, piece by piece, and is written once here:

* **the wake pipe** — a socketpair the main loop polls with its sockets (by descriptor),
  so another thread (control, a watchdog) or a signal gets the loop's attention between
  requests. A socketpair rather than an inproc ZeroMQ pair: ``signal.set_wakeup_fd``
  needs a descriptor, and any thread may write to it (a ZeroMQ socket belongs to one).
* **work handed to the main thread** — :meth:`RequestServer.hand_to_main`: what another
  thread must not do itself (touch the namespace, end the loop, start debugpy where user
  code runs) is queued in :attr:`~RequestServer.handed` and the loop woken; the loop runs
  it between requests (:meth:`~RequestServer.run_handed`), before any further one.
* **the stop** — :meth:`RequestServer.request_stop` records the first reason and exit
  status, sets :attr:`RequestServer.shutdown_requested` and wakes the loop;
  :meth:`RequestServer.exit_later` ends the process if a requested stop hangs (user code
  that swallows ``KeyboardInterrupt``).
* **the signals** — :meth:`RequestServer.install_signals` makes the interrupt guard the
  SIGINT handler and, for a server that is stopped by SIGTERM as its normal end (an
  engine: launchers stop engines so), SIGTERM a requested stop.
* **the interrupt** — :meth:`RequestServer.interrupt`, the guard's, from any thread.
* **a type nobody serves yet** — :meth:`RequestServer.late_handler`: plugins load off the
  start-up path, so a request of a type the tables lack waits for them
  (:attr:`~RequestServer.await_handlers`) before it is refused with
  :func:`~.requests.unsupported_content`.
* **the close order** — :meth:`RequestServer.close`: the helpers that use the sockets or
  the interpreter from other threads first (:meth:`~RequestServer.stop_helpers`), then
  the control thread (it closes the control socket), the signals, the iopub publisher
  (its last stream text still goes out), the server's own sockets
  (:meth:`~RequestServer.close_sockets`: last replies, goodbyes), the wake pipe, and the
  context last, once every socket is closed.

What stays each server's own: its sockets, its loop (the engine's drains batches from
several queues and holds replies; the kernel's serves one shell socket and a backlog),
its handlers, and the steps of its close that only it has.

:func:`log_to_stderr` is the processes' shared logging set-up (kernel and engine entry
points): their stderr is what launchers keep as the log.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from .requests import ControlThread, Handler, InterruptGuard, RequestCore

__all__ = ["RequestServer", "log_to_fd", "log_to_stderr"]

log = logging.getLogger("corral.transports.zmq.server")


def log_to_stderr(level: str, role: str) -> None:
    """Log corral's own records (the ``corral`` logger and those under it) at ``level``
    to the process's real stderr (``sys.__stderr__``: user code may replace
    ``sys.stderr``, whose text goes to frontends), each line saying which server process
    (``role``, its pid) wrote it.

    The root logger is the user's, as in a plain Python process or an IPython kernel: a
    cell's ``logging.warning(...)`` reaches ``sys.stderr`` (the frontend, or the task's
    stderr on an engine), and ``logging.basicConfig(...)`` in a cell configures it.
    With a handler here on the root, both went to the kernel's terminal or log file, and
    a notebook's ``basicConfig`` did nothing."""
    logger = logging.getLogger("corral")
    for earlier in [h for h in logger.handlers if getattr(h, "_corral_server", False)]:
        logger.removeHandler(earlier)
    handler: logging.Handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(
        logging.Formatter(f"[corral {role} %(process)d %(levelname)s] %(name)s: %(message)s")
    )
    handler._corral_server = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def log_to_fd(fd: int) -> None:
    """Write corral's own records (:func:`log_to_stderr`'s handler) to descriptor ``fd``
    from now on: a kernel's original stderr, once descriptor 2 carries cell output into
    the notebook. A faulthandler the user enabled for the process follows it, so a crash
    dump still reaches the kernel's log."""
    stream = open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept by the handler for the process's life
    for handler in logging.getLogger("corral").handlers:
        if getattr(handler, "_corral_server", False) and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    faulthandler = sys.modules.get("faulthandler")
    if faulthandler is not None and faulthandler.is_enabled():
        faulthandler.enable(file=stream)


def import_from_working_directory() -> None:
    """Put ``""`` first on ``sys.path``, in place of the start directory ``python -m``
    put there: user code imports from the current working directory, wherever a
    ``%cd`` or ``os.chdir`` takes it (as in IPython's kernels and ipyparallel's engines:
    a task that moves an engine to a project directory then imports its modules)."""
    try:
        start = os.getcwd()
    except OSError:  # the start directory is gone: nothing to replace
        start = None
    if sys.path and start is not None and sys.path[0] == start:
        sys.path[0] = ""
    elif "" not in sys.path:
        sys.path.insert(0, "")


class RequestServer:
    """A request core plus the stop, wake and signal policy of the process serving it.

    Subclasses build their dispatch ``tables`` (channel -> message type -> handler) and
    pass them here; they open the wake pipe (:meth:`open_wake`) with their sockets and
    poll :attr:`wake_fd` in their loop. They set :attr:`context`, :attr:`control_thread`
    once made and ``iopub`` (an :class:`~.iopub.IOPubPublisher`) once publishing, and fill
    in :meth:`stop_helpers` and :meth:`close_sockets`; :meth:`close` does the rest.
    """

    #: The ZeroMQ context of every socket the server made (terminated by :meth:`close`).
    context: zmq.Context[Any]

    #: How long a requested stop may take before :meth:`exit_later` ends the process (s).
    shutdown_grace = 5.0

    def __init__(self, tables: Mapping[str, Mapping[str, Handler]]) -> None:
        #: The request core (see .requests): dispatch tables, SIGINT guard.
        self.core = RequestCore(tables)
        #: The SIGINT policy, a plain attribute because handlers read it per request (an
        #: engine per task); :meth:`use_guard` changes it, keeping the core's in step.
        self.guard: InterruptGuard = self.core.guard
        #: Why the server stops (the first reason given), None while it serves: a plain
        #: attribute, read by a busy loop after every message.
        self.stop_reason: str | None = None
        #: The process's exit status once stopped.
        self.exit_code = 0
        #: Set with :attr:`stop_reason`, for threads that wait for the stop (or poll it
        #: while blocked elsewhere, as a kernel's ``input()`` does).
        self.shutdown_requested = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._signals = False
        #: The thread that serves control (see .requests.ControlThread), once made.
        self.control_thread: ControlThread | None = None
        self._closed = False
        #: Called when a request arrives that no handler serves, while plugins may still
        #: be loading (a kernel's loader, an engine's loading thread), so a plugin's
        #: request type sent right after start is served rather than refused. Types with
        #: a handler never call it.
        self.await_handlers: Callable[[], None] | None = None
        #: Work other threads handed to the main thread (:meth:`hand_to_main`), in order:
        #: a plain deque a busy loop tests for emptiness after every message.
        self.handed: deque[Callable[[], None]] = deque()

    def use_guard(self, guard: InterruptGuard) -> None:
        """Share ``guard`` (a server hosted by another in the same process: one SIGINT
        policy per process)."""
        self.guard = self.core.guard = guard

    def late_handler(self, table: Mapping[str, Handler], msg_type: str) -> Handler | None:
        """The handler of ``msg_type``, a type ``table`` lacked when the request came:
        plugins still loading may add it (:attr:`await_handlers`); None if they did not.
        Off the hot path: a loop calls it only after its own lookup found nothing."""
        handler = table.get(msg_type)
        if handler is None and self.await_handlers is not None:
            self.await_handlers()
            handler = table.get(msg_type)
        return handler

    # ----------------------------------------------------------------- waking

    def open_wake(self) -> int:
        """Make the wake pipe; returns the descriptor the main loop polls."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
        return self._wake_r.fileno()

    @property
    def wake_fd(self) -> int:
        """The descriptor of the wake pipe's reading end (after :meth:`open_wake`)."""
        assert self._wake_r is not None, "the wake pipe is not open"
        return self._wake_r.fileno()

    def wake(self) -> None:
        """Get the main loop's attention (any thread; never blocks)."""
        end = self._wake_w
        if end is None:
            return
        try:
            end.send(b"\0")
        except OSError:
            pass  # full: the loop is awake already; closed: it is gone

    def drain_wake(self) -> bool:
        """Empty the wake pipe (main thread); True if anything was in it."""
        end = self._wake_r
        woken = False
        if end is None:
            return False
        try:
            while end.recv(4096):
                woken = True
        except (BlockingIOError, InterruptedError):
            pass
        return woken

    def close_wake(self) -> None:
        """Close both ends of the wake pipe (after the signals stopped writing to it);
        a late :meth:`wake` or :meth:`drain_wake` then does nothing."""
        ends, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), None, None
        for end in ends:
            if end is not None:
                end.close()

    def hand_to_main(self, work: Callable[[], None]) -> None:
        """Have the main thread run ``work`` between requests, and wake its loop (any
        thread)."""
        self.handed.append(work)
        self.wake()

    def run_handed(self) -> None:
        """Run the work handed over so far, in order (main thread)."""
        handed = self.handed
        while handed:
            handed.popleft()()

    # ------------------------------------------------------------- stopping

    def interrupt(self) -> None:
        """SIGINT to the main thread if user code runs (``KeyboardInterrupt`` in it)."""
        self.guard.interrupt()

    def request_stop(self, reason: str, code: int = 0) -> None:
        """Stop serving: the first reason and exit status stand; the loop is woken."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.exit_code = code
        self.shutdown_requested.set()
        self.wake()

    def exit_later(self, code: int) -> None:
        """End the process if a requested stop does not finish within
        :attr:`shutdown_grace` (user code that ignores its interrupt)."""

        def force() -> None:
            log.error("server did not stop within %.0f s; exiting", self.shutdown_grace)
            os._exit(code)

        timer = threading.Timer(self.shutdown_grace, force)
        timer.daemon = True
        timer.start()

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM: finish like a shutdown request, interrupting the user code running."""
        self.request_stop("terminated", 0)
        self.exit_later(0)
        self.guard.on_sigint(signum, frame)

    # -------------------------------------------------------------- signals

    def install_signals(self, *, sigterm: bool) -> bool:
        """Become the process's SIGINT handler (the guard) and, if ``sigterm``, its
        SIGTERM handler, with signals waking the loop. False, and nothing done, off the
        main thread. A kernel leaves SIGTERM alone: its manager asks it to shut down
        first and sends SIGTERM only to end it at once."""
        if not self.guard.install():
            return False
        if sigterm:
            signal.signal(signal.SIGTERM, self.on_sigterm)
            if self._wake_w is not None:
                signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self._signals = True
        return True

    def restore_signals(self) -> None:
        """Signals stop writing to the wake pipe (before it is closed; main thread)."""
        if self._signals and threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
            self._signals = False

    # -------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop the threads, deliver what is pending and close everything, once.

        The order matters and is the same for every server: nothing may use a socket
        after it is closed, and the context is terminated only when all are.
        """
        if self._closed:
            return
        self._closed = True
        self.stop_helpers()
        if self.control_thread is not None:
            self.control_thread.stop()  # it closes the control socket (made or not run)
        self.restore_signals()
        iopub = getattr(self, "iopub", None)
        if iopub is not None:
            iopub.close()  # flushes the last stream text
        self.close_sockets()
        self.close_wake()
        self.context.term()

    def stop_helpers(self) -> None:
        """First step of :meth:`close`: stop what uses the sockets or the interpreter from
        other threads (a debugger, a plugin loader, watchdogs). Nothing by default."""

    def close_sockets(self) -> None:
        """Step of :meth:`close` after the control thread and iopub publisher stopped:
        send what must still go out and close the server's own sockets (and the threads
        that own one, such as the heartbeat). Nothing by default."""
