"""The kernel server: the interpreter core served over the five Jupyter channels.

Threads, and why:

* **main** — serves *shell* and runs user code. It must be the main thread because only
  the main thread receives ``SIGINT``, and an interrupt has to land in user code as
  ``KeyboardInterrupt``. ``input()`` in user code is answered here too, over *stdin*.
* **control** — serves *control* on its own thread, so ``kernel_info``, ``interrupt`` and
  ``shutdown`` are answered while user code runs.
* **heartbeat** — echoes pings inside libzmq without the GIL (:mod:`.heartbeat`).
* **iopub flusher** — sends coalesced stream text at short intervals (:mod:`.iopub`).
* **descriptor readers** — one per descriptor 1 and 2, which are pipes in a kernel
  process: what subprocesses and C code write there becomes stream output
  (:class:`corral.core.iostreams.FdCapture`); a cell's reply waits for what they hold.

The server is a :class:`~.server.RequestServer`, as the parallel engine is: the same wake
pipe, stop, signal policy, hand-over to the main thread and close order. Requests are
dispatched through its :class:`~.requests.RequestCore`: one table per channel, one
dictionary lookup a message. Plugins
add request types at configuration time (:meth:`KernelServer.add_handlers`, called by the
plugins layer with what ``corral_request_handlers`` returns: the parallel plugin's
``apply``, ``push``, ``pull``, ``clear``, ``abort``), never per message.

The server is an *observer* of the interpreter's notifications, not a hook inside it: it
subscribes to the :mod:`corral.core.events` types and turns each into an iopub message
whose parent is the request being served. Each socket is used by one thread only, except
IOPub, which the publisher guards with a lock.

Bad input is never fatal: a message that fails its signature, replay or framing check is
dropped and logged (:class:`~.session.Session`), and an exception in a handler is logged
and answered with an error reply.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from . import wire
from .connection import ConnectionInfo
from .heartbeat import Heartbeat
from .iopub import IOPubPublisher
from .ipc import Claims
from .queries import QUERIES
from .relay import OutputRelay
from .requests import (
    ControlThread,
    Handler,
    error_content,
    execute_args,
    run_execute,
    unsupported_content,
)
from .server import RequestServer
from .session import Session

__all__ = ["Handler", "KernelServer", "kernel_info_content"]

log = logging.getLogger("corral.transports.zmq.kernel")

Msg = dict[str, Any]
Idents = list[bytes]

#: How long closing sockets may wait to deliver the last replies.
_LINGER_MS = 1000


def _corral_version() -> str:
    # Not importlib.metadata: scanning installed distributions costs ~17 ms, on the path of
    # a frontend's very first reply.
    from corral._version import __version__

    return __version__


def kernel_info_content(*, encryption: bool, debugger: bool = False) -> dict[str, Any]:
    """The ``kernel_info_reply`` content (protocol 5.4)."""
    # Not the platform module: importing it costs 1.4 ms of the first reply.
    py = sys.version.split()[0]
    major_minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {
        "status": "ok",
        "protocol_version": wire.PROTOCOL_VERSION,
        "implementation": "corral",
        "implementation_version": _corral_version(),
        "language_info": {
            "name": "python",
            "version": py,
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
            "nbconvert_exporter": "python",
        },
        "banner": f"corral {_corral_version()} kernel on Python {py}\n",
        "help_links": [
            {"text": "Python Reference", "url": f"https://docs.python.org/{major_minor}"},
            {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
            {"text": "NumPy Reference", "url": "https://docs.scipy.org/doc/numpy/reference/"},
            {"text": "SciPy Reference", "url": "https://docs.scipy.org/doc/scipy/reference/"},
            {"text": "Matplotlib Reference", "url": "https://matplotlib.org/contents.html"},
            {"text": "SymPy Reference", "url": "http://docs.sympy.org/latest/index.html"},
            {"text": "pandas Reference", "url": "https://pandas.pydata.org/pandas-docs/stable/"},
            {"text": "corral Documentation", "url": "https://github.com/corral/corral"},
        ],
        "debugger": debugger,
        "supported_features": ["kernel usage"] + (["debugger"] if debugger else []),
        "supported_encryption": ["curve"] if encryption else [],
    }


def _main_module_namespace() -> dict[str, Any]:
    """The namespace of a fresh module installed as ``sys.modules["__main__"]``, for the
    kernel's user code.

    pickle finds a function or class by its module: one defined in a cell says
    ``__main__``, which was the kernel's own entry module, so ``pickle.dumps(f)``,
    ``ProcessPoolExecutor.map(f, ...)`` and dill failed on anything a notebook defined
    ("attribute lookup f on __main__ failed"). IPython's kernel installs its user module
    there too.
    """
    import types

    module = types.ModuleType("__main__", "The namespace of the kernel's user code.")
    sys.modules["__main__"] = module
    return module.__dict__


class KernelServer(RequestServer):
    """Serves ``interpreter`` on the sockets described by ``connection_info``.

    Typical use (what ``kernel_main`` does): ``server.bind()`` — every port is bound, and
    ports given as 0 are chosen and filled into :attr:`info` — then write the connection
    file, then ``server.serve_forever()`` in the main thread.

    ``interpreter`` defaults to a fresh :class:`corral.core.interpreter.Interpreter`, made
    in :meth:`start`, or on first use with ``lazy_interpreter=True``.
    ``port_range`` restricts randomly chosen ports to ``(min, max)``.
    ``max_message_size`` makes larger incoming messages be dropped unparsed.
    """

    def __init__(
        self,
        connection_info: ConnectionInfo,
        interpreter: Any = None,
        *,
        context: zmq.Context[Any] | None = None,
        port_range: tuple[int, int] | None = None,
        max_message_size: int | None = None,
        lazy_interpreter: bool = False,
    ) -> None:
        self.info = connection_info
        #: Where :attr:`info` is written for frontends, once whoever started the server
        #: knows (``%connect_info`` prints it).
        self.connection_file: str | None = None
        #: None until :meth:`start` makes the default one (or, when ``lazy_interpreter``,
        #: until a request needs it): a frontend's first request is nearly always
        #: kernel_info, which needs no interpreter, and importing and building one costs
        #: about a fifth of the kernel's startup.
        self._interpreter: Any = interpreter
        self._interpreter_lock = threading.Lock()
        self.lazy_interpreter = lazy_interpreter
        #: Called once, just before the first execution: kernel_main finishes loading
        #: plugins (started in the background to keep startup fast) here.
        self.prepare_execute: Callable[[], None] | None = None
        #: Called once, after the first request has been answered: work that must not
        #: delay a frontend's first reply (kernel_main starts loading plugins here).
        self.after_first_request: Callable[[], None] | None = None
        #: Descriptors 1 and 2 read into the notebook: wanted by :meth:`serve_forever`
        #: (a kernel process of its own), started by the first execute (off the path to
        #: the first reply: the reading code comes with the interpreter's imports).
        self._fd_capture: Any = None
        self._fd_capture_wanted = False
        self.context = context or zmq.Context()
        self.port_range = port_range
        self.session = Session(
            connection_info.key,
            scheme=connection_info.signature_scheme,
            username="kernel",
            max_size=max_message_size,
            # Frontends reach each channel in one hop: what the guard forgot stays refused.
            replay=wire.ReplayGuard(ordered=True),
        )
        self.bound = False
        self._claims = Claims()
        self.restart_requested = False
        # Per-request state of the main thread.
        self._parent_idents: Idents = []
        self._backlog: deque[tuple[Idents, Msg, bool]] = deque()
        #: The request core (see .requests): dispatch tables and the SIGINT guard, with
        #: the stop, wake and signal policy of .server: what the parallel engine is
        #: built on too. Plugins add request types to it.
        super().__init__(
            {
                "shell": {
                    "execute_request": self._execute,
                    "kernel_info_request": self._kernel_info,
                    **{kind: self._query(answer) for kind, answer in QUERIES.items()},
                    "comm_info_request": self._comm_info,
                    "comm_open": self._comm,
                    "comm_msg": self._comm,
                    "comm_close": self._comm,
                    "shutdown_request": self._shutdown,
                },
                "control": {
                    "kernel_info_request": self._kernel_info,
                    "interrupt_request": self._interrupt,
                    "shutdown_request": self._shutdown,
                    "usage_request": self._usage,
                    "debug_request": self._debug,
                },
            }
        )
        self._shell_handlers: dict[str, Handler] = self.core.tables["shell"]
        self._control_handlers: dict[str, Handler] = self.core.tables["control"]
        self._comms: Any = None
        self._debugger: Any = None
        self._debugger_available: bool | None = None

    # ------------------------------------------------------------ request types

    def add_handlers(self, channel: str, handlers: Mapping[str, Handler]) -> list[str]:
        """Serve more request types on ``channel`` (``"shell"`` or ``"control"``); returns
        the types added.

        For configuration time: the plugins layer installs here what its
        ``corral_request_handlers`` hook returns (the parallel plugin's ``apply_request``,
        ``push_request``...), once, so a message still costs one dictionary lookup
        whichever plugin serves it. A type already served keeps its handler (the
        kernel's own, or the first plugin's to name it). A handler is called as
        ``handler(sock, idents, msg)`` on the channel's thread and answers with
        :meth:`reply`; exceptions it raises become error replies.
        """
        return self.core.add(channel, handlers)

    # ------------------------------------------------------------------ set-up

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = _LINGER_MS
        if self.info.curve_secretkey:
            sock.curve_secretkey = self.info.curve_secretkey.encode("ascii")
            if self.info.curve_publickey:
                sock.curve_publickey = self.info.curve_publickey.encode("ascii")
            sock.curve_server = True
        return sock

    def _bind(self, sock: zmq.Socket[Any], channel: str) -> None:
        port = self.info.port(channel)
        if self.info.transport == "ipc":
            if port == 0:  # claimed first: two kernels never share a path (ipc.Claims)
                port = self._claims.bind(sock, self.info.ip)
            else:
                sock.bind(f"ipc://{self.info.ip}-{port}")
        elif port:
            sock.bind(f"{self.info.transport}://{self.info.ip}:{port}")
        else:
            lo, hi = self.port_range or (49152, 65536)
            port = sock.bind_to_random_port(
                f"{self.info.transport}://{self.info.ip}", lo, hi, max_tries=1000
            )
        setattr(self.info, f"{channel}_port", port)

    def bind(self) -> ConnectionInfo:
        """Create and bind every socket; returns :attr:`info` with the real ports.

        Only after this returns may the connection file be written: the ports in it are
        then held by this process, so no other process can take them in between.
        """
        if self.bound:
            return self.info
        if self.info.curve_secretkey and not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CurveZMQ support")
        self.shell_socket = self._socket(zmq.ROUTER)
        self.control = self._socket(zmq.ROUTER)
        self.stdin = self._socket(zmq.ROUTER)
        self.iopub_socket = self._socket(zmq.PUB)
        self.iopub_socket.sndhwm = 100_000
        self.hb_socket = self._socket(zmq.ROUTER)  # not REP: see heartbeat.py
        for sock, channel in (
            (self.shell_socket, "shell"),
            (self.iopub_socket, "iopub"),
            (self.stdin, "stdin"),
            (self.control, "control"),
            (self.hb_socket, "hb"),
        ):
            self._bind(sock, channel)
        # Control thread -> main thread: "look at the shutdown flag, or the calls".
        self.open_wake()
        self.bound = True
        return self.info

    def start(self) -> None:
        """Bind if needed, start the helper threads and subscribe to the interpreter."""
        self.bind()
        self.heartbeat = Heartbeat(self.context, self.hb_socket)
        self.heartbeat.start()
        self.iopub = IOPubPublisher(self.session, self.iopub_socket)
        if self._interpreter is not None:
            self._serve_interpreter(self._interpreter)
        elif not self.lazy_interpreter:
            self._make_interpreter()
        self.control_thread = ControlThread(
            self.context, self.control, self._serve_control, "corral-control"
        )
        # The debugger (debugpy) must neither trace nor suspend the kernel's own threads:
        # control answers it while user code is stopped at a breakpoint.
        flusher = getattr(self.iopub, "_flusher", None)
        if flusher is not None:
            flusher.pydev_do_not_trace = True
            flusher.is_pydev_daemon_thread = True
        self.control_thread.start()

    @property
    def interpreter(self) -> Any:
        """The interpreter served; the default one is made here on first use if lazy."""
        if self._interpreter is None:
            with self._interpreter_lock:  # one interpreter, whichever thread asks first
                if self._interpreter is None:
                    self._make_interpreter()
        return self._interpreter

    @property
    def shell(self) -> Any:
        """The interpreter's ``get_ipython()`` shell, as ipykernel's ``kernel.shell`` is.

        Libraries written for ipykernel reach the shell (``user_ns``, ``events``) through
        ``get_ipython().kernel.shell``; the shell channel's socket is :attr:`shell_socket`.
        """
        from corral.core.ipython_shell import shell_for

        return shell_for(self.interpreter)

    def _make_interpreter(self) -> None:
        from corral.core.interpreter import Interpreter
        from corral.notification.center import shared_center

        # The process-wide center, so plugins living in the kernel observe it too; the
        # server itself only observes this interpreter as sender.
        self._serve_interpreter(Interpreter(shared_center, user_ns=_main_module_namespace()))

    def _serve_interpreter(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self.relay = OutputRelay(interpreter, self.iopub)
        interpreter.input_handler = self._ask_stdin
        interpreter.kernel = self
        # Frontends render ANSI colours in tracebacks (JupyterLab, VS Code, consoles), and
        # ipykernel sends them: so does this kernel.
        interpreter.colors = True
        from corral.core.import_hooks import before_import, when_imported

        when_imported("comm", self.comms.install)
        before_import("matplotlib", _default_inline_backend)
        # tqdm.auto picks its notebook bar only when it sees ipykernel's modules loaded.
        when_imported("tqdm.autonotebook", _notebook_progress_bars)
        # Code that detects Jupyter looks up get_ipython as a builtin, as IPython provides it.
        import builtins

        if not hasattr(builtins, "get_ipython"):
            builtins.get_ipython = interpreter.get_ipython  # type: ignore[attr-defined]

    # ------------------------------------------------- what get_ipython().kernel offers

    @property
    def comms(self) -> Any:
        """The kernel's :class:`~.comms.CommSupport`, made on first use (off the start path)."""
        if self._comms is None:
            from .comms import CommSupport

            self._comms = CommSupport(self)
        return self._comms

    def current_parent(self) -> dict[str, Any]:
        """The header of the request being served (the parent of what it publishes)."""
        return self.relay.parent or {}

    def get_parent(self, channel: str = "shell") -> dict[str, Any]:
        """The request being served, as ipykernel's ``get_parent`` returns it (Output widget)."""
        return {"header": self.current_parent()}

    @property
    def comm_manager(self) -> Any:
        """The ``comm`` package's manager of this kernel (importing ``comm`` if needed)."""
        return self.comms.ensure()

    # --------------------------------------------------------------- main loop

    def serve_forever(self) -> None:
        """Serve shell in this (main) thread until a shutdown request; then close."""
        if not hasattr(self, "iopub"):
            self.start()
        # Here, not in start(): a kernel hosted by an engine shares the engine's signals
        # (and its descriptors).
        self.install_signals(sigterm=False)
        self._fd_capture_wanted = True
        wake_fd = self.wake_fd
        poller = zmq.Poller()
        poller.register(self.shell_socket, zmq.POLLIN)
        poller.register(wake_fd, zmq.POLLIN)
        try:
            while not self.shutdown_requested.is_set():
                if self._backlog:
                    idents, msg, abort = self._backlog.popleft()
                    self._serve(self.shell_socket, idents, msg, self._shell_handlers, abort=abort)
                    continue
                ready = dict(poller.poll())
                if wake_fd in ready:
                    self.drain_wake()
                    self.run_handed()
                if self.shell_socket in ready:
                    got = self.session.recv(self.shell_socket, zmq.NOBLOCK)
                    if got is not None:
                        self._serve(self.shell_socket, *got, self._shell_handlers)
        finally:
            self.close()

    def _capture_descriptors(self) -> None:
        """Show what is written to descriptors 1 and 2 (``os.system``, subprocesses, C
        code, forked workers) under the running cell, as ipykernel does; corral's own log
        goes on to the original stderr."""
        from corral.core.iostreams import FdCapture

        from .server import log_to_fd

        self._fd_capture = FdCapture(self._post_descriptor_text)
        self._fd_capture.start()
        log_to_fd(self._fd_capture.original("stderr"))

    def _post_descriptor_text(self, name: str, text: str) -> None:
        interpreter = self._interpreter
        if interpreter is None:  # before any cell: nobody to show it to
            os.write(self._fd_capture.original(name), text.encode("utf-8", "replace"))
            return
        from corral.core.iostreams import post_text

        post_text(interpreter.center, interpreter, name, text)

    def host_sockets(self) -> tuple[zmq.Socket[Any], int]:
        """What a host's own loop polls instead of :meth:`serve_forever` (a cluster engine
        bound as a kernel): shell and the wake pipe's descriptor; when either is readable,
        call :meth:`serve_waiting`."""
        return self.shell_socket, self.wake_fd

    def serve_waiting(self) -> None:
        """Serve what waits on shell, and calls handed to the main thread, without
        blocking (for a host loop; see :meth:`host_sockets`). Main thread only."""
        self.drain_wake()
        self.run_handed()
        while not self.shutdown_requested.is_set():
            if self._backlog:
                idents, msg, abort = self._backlog.popleft()
                self._serve(self.shell_socket, idents, msg, self._shell_handlers, abort=abort)
                continue
            try:
                got = self.session.recv(self.shell_socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            if got is not None:
                self._serve(self.shell_socket, *got, self._shell_handlers)

    def call_on_main(self, func: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``func`` on the main thread (between requests) and return its result.

        For the control thread, when something must happen where user code runs
        (``debugpy.listen``). Waits while a cell runs; raises what ``func`` raised.
        """
        import queue

        box: queue.Queue[tuple[bool, Any]] = queue.Queue(1)

        def call() -> None:
            try:
                box.put((True, func()))
            except Exception as exc:
                box.put((False, exc))

        self.hand_to_main(call)
        try:
            ok, value = box.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("the kernel's main thread stayed busy") from None
        if not ok:
            raise value
        return value

    def _serve(
        self,
        sock: zmq.Socket[Any],
        idents: Idents,
        msg: Msg,
        handlers: dict[str, Handler],
        *,
        abort: bool = False,
    ) -> None:
        """busy, the handler's reply, idle: the frame every request gets."""
        msg_type = msg["msg_type"]
        handler = handlers.get(msg_type) or self.late_handler(handlers, msg_type)
        if handler is None:
            log.warning("ignoring unknown message type %r", msg_type)
            if msg_type.endswith("_request"):
                # A frontend waiting for the reply (create_subshell_request, say) is told
                # at once instead of waiting forever.
                channel = "shell" if sock is self.shell_socket else "control"
                self.reply(sock, idents, msg, unsupported_content(msg_type, channel))
            return
        header = msg["header"]
        self.iopub.publish("status", {"execution_state": "busy"}, header)
        try:
            if abort:
                self.reply(sock, idents, msg, {"status": "aborted"})
            else:
                handler(sock, idents, msg)
        except Exception as exc:
            log.exception("error while handling %s", msg_type)
            reply_type = msg_type.replace("_request", "_reply")
            if reply_type != msg_type:
                self.reply(sock, idents, msg, error_content(exc))
        finally:
            self.iopub.flush()
            self.iopub.publish("status", {"execution_state": "idle"}, header)
            # Only the main thread: the hook builds the interpreter, which belongs to the
            # thread that runs user code (a first kernel_info may come on control).
            if (
                self.after_first_request is not None
                and threading.current_thread() is threading.main_thread()
            ):
                after, self.after_first_request = self.after_first_request, None
                after()

    def reply(
        self,
        sock: zmq.Socket[Any],
        idents: Idents,
        msg: Msg,
        content: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
    ) -> None:
        """Answer ``msg`` on ``sock`` (``*_request`` -> ``*_reply``): what every handler,
        built-in or a plugin's, sends its reply with."""
        reply_type = msg["msg_type"].replace("_request", "_reply")
        self.session.send(
            sock,
            reply_type,
            content,
            msg["header"],
            identities=idents,
            metadata=metadata,
            buffers=buffers,
        )

    # ------------------------------------------------------------ shell handlers

    def _execute(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        interpreter = self.interpreter  # made now if lazy, before plugins look for it
        if self._fd_capture_wanted:
            self._fd_capture_wanted = False
            self._capture_descriptors()
        if self.prepare_execute is not None:
            prepare, self.prepare_execute = self.prepare_execute, None
            prepare()
        args = execute_args(msg["content"])
        self.relay.parent = msg["header"]
        self._parent_idents = idents
        self.relay.silent = args.silent
        reply = run_execute(interpreter, self.guard, args)
        if self._fd_capture is not None:  # what the cell's subprocesses wrote is its output
            self._fd_capture.sync()
        if reply["status"] == "error" and not args.silent and args.stop_on_error:
            self._abort_queued_executes()
        self.iopub.flush()
        self.reply(sock, idents, msg, reply, {"status": reply["status"]})

    def _abort_queued_executes(self) -> None:
        """Mark the executes already waiting on shell as aborted (``stop_on_error``).

        They were sent before the client could see this error, so they assumed it would
        succeed. They are taken off the socket *before* the error reply goes out, so a
        request sent after the client saw the error is never aborted by mistake. Other
        requests waiting with them are served normally, in order.
        """
        while True:
            try:
                got = self.session.recv(self.shell_socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            if got is not None:
                idents, msg = got
                self._backlog.append((idents, msg, msg["msg_type"] == "execute_request"))

    def _kernel_info(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        encrypted = self.info.curve_secretkey is not None
        if self._debugger_available is None:
            # Not through .debugger: importing it (socket, tempfile...) costs milliseconds
            # of the first reply; a spec lookup costs microseconds.
            import importlib.util

            self._debugger_available = importlib.util.find_spec("debugpy") is not None
        content = kernel_info_content(encryption=encrypted, debugger=self._debugger_available)
        self.reply(sock, idents, msg, content)

    def _query(self, answer: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> Handler:
        """A handler answering from the interpreter alone (see .queries: the engine
        answers the same requests with the same functions)."""

        def handler(sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
            self.reply(sock, idents, msg, answer(self.interpreter, msg["content"]))

        return handler

    def _comm_info(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        target = msg["content"].get("target_name")
        self.reply(sock, idents, msg, {"status": "ok", "comms": self.comms.info(target)})

    def _comm(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        """A frontend's comm message: to the comm's callbacks, their output to this request."""
        msg_type = msg["msg_type"]
        if self.comms.manager is None:
            if msg_type == "comm_open":
                # No comm target can exist before `comm` is imported: close it, as the
                # spec says for an unknown target.
                comm_id = msg["content"].get("comm_id", "")
                content = {"comm_id": comm_id, "data": {}}
                self.iopub.publish("comm_close", content, msg["header"])
            return
        from corral.core.display import set_current
        from corral.core.iostreams import redirect_output

        interpreter = self.interpreter
        self.relay.parent = msg["header"]
        self._parent_idents = idents
        self.relay.silent = False
        set_current(interpreter)
        self.guard.executing = True
        try:
            with redirect_output(interpreter.center, interpreter):
                self.comms.handle(msg_type, msg)
        except KeyboardInterrupt:
            log.info("%s interrupted", msg_type)
        finally:
            self.guard.executing = False

    def _debug(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        """``debug_request`` (on control): a DAP request, answered through debugpy."""
        if self._debugger is None:
            from .debugger import Debugger

            self._debugger = Debugger(self)
        content = msg.get("content") or {}
        if not isinstance(content, dict) or content.get("type") != "request":
            raise ValueError("debug_request content must be a DAP request")
        self.reply(sock, idents, msg, self._debugger.handle(content, msg["header"]))

    def _usage(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        """``usage_request`` (JupyterLab's resource indicator): process and host figures."""
        from .usage import usage_content

        self.reply(sock, idents, msg, usage_content())

    # ---------------------------------------------------------- control thread

    def _serve_control(self) -> None:
        """The control thread: a message waits on control."""
        got = self.session.recv(self.control, zmq.NOBLOCK)
        if got is not None:
            self._serve(self.control, *got, self._control_handlers)

    def _interrupt(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        self.guard.interrupt()
        self.reply(sock, idents, msg, {"status": "ok"})

    def _shutdown(self, sock: zmq.Socket[Any], idents: Idents, msg: Msg) -> None:
        restart = bool(msg["content"].get("restart", False))
        content = {"status": "ok", "restart": restart}
        self.reply(sock, idents, msg, content)
        self.iopub.publish("shutdown_reply", content, msg["header"])
        self.restart_requested = restart
        self.request_stop("shutdown requested")  # wakes the main loop
        if threading.current_thread() is not threading.main_thread():
            # Code still running would keep the kernel alive past its shutdown.
            self.interrupt()

    # ------------------------------------------------------------------- stdin

    def _ask_stdin(self, prompt: str, password: bool) -> str:
        """``input()`` for user code: an input_request to the frontend that sent the code."""
        self.iopub.flush()
        while True:  # Forget replies to earlier, abandoned prompts.
            try:
                self.stdin.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.session.send(
            self.stdin,
            "input_request",
            {"prompt": prompt, "password": password},
            self.relay.parent,
            identities=self._parent_idents,
        )
        while True:
            if self.shutdown_requested.is_set():
                raise EOFError("the kernel is shutting down")
            if not self.stdin.poll(200):
                continue
            got = self.session.recv(self.stdin)
            if got is None:
                continue
            _, reply = got
            if reply["msg_type"] != "input_reply":
                log.warning("ignoring %s on stdin", reply["msg_type"])
                continue
            value = reply["content"].get("value", "")
            return value if isinstance(value, str) else str(value)

    # ---------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the threads, deliver pending messages and close every socket
        (:meth:`.RequestServer.close`); then give up the ipc paths claimed."""
        if not self.bound:
            return
        self.bound = False
        super().close()
        self._claims.release()

    def stop_helpers(self) -> None:
        if self._debugger is not None:
            self._debugger.close()
        if self._fd_capture is not None:
            self._fd_capture.stop()

    def close_sockets(self) -> None:
        if self.control_thread is None:  # never started: nobody else closes it
            self.control.close()
        if hasattr(self, "heartbeat"):
            self.heartbeat.stop()
        else:
            self.hb_socket.close(linger=0)
        for sock in (self.shell_socket, self.stdin, self.iopub_socket):
            sock.close()


def _default_inline_backend() -> None:
    """Plots inline by default, as in ipykernel: matplotlib-inline's backend, if installed.

    Runs just before user code first imports matplotlib; an explicit ``MPLBACKEND`` wins.
    """
    if "MPLBACKEND" in os.environ:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib_inline") is not None:
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


def _notebook_progress_bars(autonotebook: Any) -> None:
    """Make ``tqdm.auto`` choose the notebook bar in this kernel, as under ipykernel.

    ``tqdm.autonotebook`` decides by looking for ipykernel's modules; this runs right after
    it decided, before ``tqdm.auto`` reads its choice, and swaps in ``tqdm.notebook``'s
    classes when ipywidgets (which draws them) is installed.
    """
    from tqdm import notebook, std

    if autonotebook.tqdm is std.tqdm and getattr(notebook, "IProgress", None) is not None:
        autonotebook.tqdm, autonotebook.trange = notebook.tqdm, notebook.trange
