"""The debugger: Debug Adapter Protocol over the control channel, served by debugpy.

JupyterLab and VS Code debug a kernel by sending DAP requests as ``debug_request``
messages on *control* and reading ``debug_reply`` messages there and ``debug_event``
messages on IOPub (the protocol ipykernel defined). This module keeps that exchange: on
``initialize`` it starts debugpy in the kernel process (``debugpy.listen`` on the main
thread, which launches debugpy's adapter as a child process) and connects to the adapter
over TCP on 127.0.0.1; requests are then forwarded to the adapter, responses come back
as replies and events are published.

A few requests are answered by the kernel itself, as ipykernel answers them:

* ``debugInfo`` — whether the debugger runs, and how cells are named: a cell runs as the
  file ``tmpFilePrefix + murmur2(code, hashSeed) + tmpFileSuffix``, so the frontend can
  map a breakpoint in a cell to the file the code runs as;
* ``dumpCell`` — writes a cell's code to that file (breakpoints are set on it);
* ``inspectVariables`` — the user's variables, when no thread is stopped;
* ``configurationDone`` — the kernel sent it to debugpy itself, after ``attach``;
* ``source`` — the text of a file.

**The kernel stays attached once it has attached.** debugpy's adapter listens on a TCP
port of 127.0.0.1 for its client, without any credential, and serves one client at a
time: while the kernel's connection is attached, another client is turned away ("Server
is not available"); once that client disconnects, the next one to connect may attach and
``evaluate`` anything in the kernel, and any local user can connect to 127.0.0.1. So a
frontend's ``disconnect`` is not passed on: the kernel clears the breakpoints and
exception filters it set, lets stopped threads go on, and answers it; the session stays
attached and serves the frontend's next ``initialize`` and ``attach`` itself (the
capabilities debugpy gave the first time, and an ``initialized`` event). Left open: the
moment between ``debugpy.listen`` starting the adapter and the kernel connecting to it,
and debugpy's own tracing, which stays installed (as after a real disconnect).

Nothing of debugpy is imported until a frontend asks for the debugger. Once started, cells
run under their murmur2 file names (see :meth:`Debugger.cell_filename`); the interpreter
still labels them ``Cell In[N]`` in tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HASH_SEED", "Debugger", "debugger_available", "murmur2_x86"]

log = logging.getLogger("corral.transports.zmq.debugger")

#: The seed of the cell-name hash, as ipykernel uses it (frontends are told in debugInfo).
HASH_SEED = 0xC70F6907

_TIMEOUT = 30.0


def murmur2_x86(text: str, seed: int) -> int:
    """MurmurHash2 (32-bit, x86) of ``text``'s UTF-8 bytes: how frontends name cells."""
    m = 0x5BD1E995
    data = text.encode("utf-8")
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def debugger_available() -> bool:
    """Whether debugpy is installed (kernel_info's ``debugger`` flag)."""
    import importlib.util

    try:
        return importlib.util.find_spec("debugpy") is not None
    except (ImportError, ValueError):
        return False


def hide_thread_from_debugger(thread: threading.Thread) -> None:
    """Keep debugpy from tracing or suspending one of the kernel's own threads."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]


class _AdapterConnection:
    """One TCP connection to debugpy's adapter: DAP messages framed by Content-Length."""

    def __init__(self, host: str, port: int, on_event: Callable[[dict[str, Any]], None]) -> None:
        self._sock = socket.create_connection((host, port), timeout=_TIMEOUT)
        self._sock.settimeout(None)
        self._on_event = on_event
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, name="corral-dap", daemon=True)
        hide_thread_from_debugger(self._reader)
        self._reader.start()

    def expect(self, seq: int) -> queue.Queue[dict[str, Any]]:
        """Get ready for the response to request ``seq`` (before sending it)."""
        box: queue.Queue[dict[str, Any]] = queue.Queue(1)
        with self._lock:
            self._waiting[seq] = box
        return box

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode("utf-8")
        with self._send_lock:
            self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, message: dict[str, Any], timeout: float = _TIMEOUT) -> dict[str, Any]:
        """Send a request and wait for its response."""
        box = self.expect(int(message["seq"]))
        self.send(message)
        return wait(box, timeout, message.get("command", "?"))

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                self._dispatch(json.loads(body))
        except (OSError, ValueError) as exc:
            if not self.closed:
                log.warning("lost the connection to the debug adapter: %s", exc)
        finally:
            self.closed = True

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "response":
            with self._lock:
                box = self._waiting.pop(int(message.get("request_seq", -1)), None)
            if box is not None:
                box.put(message)
            return
        if message.get("type") == "event":
            self._on_event(message)


def wait(box: queue.Queue[dict[str, Any]], timeout: float, what: str) -> dict[str, Any]:
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"the debug adapter did not answer {what} in {timeout:g}s") from None


def _cells_dir() -> str:
    """Where cells are written while they are debugged: a directory of this kernel's in
    corral's owner-only runtime directory. Not ``corral_<pid>`` straight in the shared
    temporary directory (ipykernel's place): another user could make that directory
    first, and cells would then be written into a directory they own, through any
    symlink they plant there (the same cell's file name comes back each time)."""
    if hasattr(os, "getuid"):
        from corral.core.private import runtime_dir

        return str(runtime_dir() / f"debug-{os.getpid()}")
    return os.path.join(tempfile.gettempdir(), f"corral_{os.getpid()}")  # per-user on Windows


class Debugger:
    """Serves ``debug_request`` for ``server`` (a :class:`~.kernel.KernelServer`).

    ``handle`` runs on the control thread; ``debugpy.listen`` runs on the main thread
    (through ``server.call_on_main``), where user code runs, as debugpy expects.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.started = False
        self._listening: tuple[str, int] | None = None
        self._adapter: _AdapterConnection | None = None
        self.breakpoints: dict[str, list[dict[str, Any]]] = {}
        self.stopped_threads: set[int] = set()
        self._parent: dict[str, Any] = {}
        self._seq = 1_000_000  # our own requests' numbers, far from the frontend's
        self._initialized: queue.Queue[dict[str, Any]] = queue.Queue()
        self.tmp_dir = _cells_dir()
        #: debugpy's answer to the first ``initialize`` (its capabilities), once the
        #: kernel's session is attached: later sessions are served from it (module doc)
        self._capabilities: dict[str, Any] | None = None
        self._attached = False
        #: exception filters a frontend set (cleared when it disconnects)
        self._exception_filters = False

    # ------------------------------------------------------------------ cell names

    def cell_filename(self, code: str) -> str:
        """The file a cell runs as while debugging (what the frontend computes too)."""
        return os.path.join(self.tmp_dir, f"{murmur2_x86(code, HASH_SEED)}.py")

    # ------------------------------------------------------------------ requests

    def handle(self, request: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
        """The ``debug_reply`` content (a DAP response) for a ``debug_request``."""
        self._parent = parent
        command = request.get("command", "")
        if command == "initialize" and not self.started:
            try:
                self._start()
            except Exception as exc:
                log.exception("the debugger could not start")
                return self._response(request, success=False, message=str(exc))
        own = {
            "debugInfo": self._debug_info,
            "dumpCell": self._dump_cell,
            "inspectVariables": self._inspect_variables,
            "source": self._source,
        }.get(command)
        if own is not None:
            return own(request)
        if not self.started or self._adapter is None or self._adapter.closed:
            return self._response(request, success=False, message="the debugger is not started")
        if command == "setBreakpoints":
            args = request.get("arguments", {})
            path = args.get("source", {}).get("path")
            if path:
                self.breakpoints[path] = list(args.get("breakpoints", []))
        if command == "setExceptionBreakpoints":
            self._exception_filters = True
        if command == "configurationDone":
            # Sent to debugpy already, right after attach (see _attach): debugpy would
            # refuse a second one.
            return self._response(request)
        if command == "initialize" and self._attached and self._capabilities is not None:
            return self._response(request, body=self._capabilities)
        if command == "attach":
            return self._attach(request)
        if command == "disconnect":
            return self._detach(request)
        reply = self._adapter.request(request)
        if command == "initialize" and reply.get("success"):
            self._capabilities = reply.get("body") or {}
        return reply

    def _response(
        self, request: dict[str, Any], *, success: bool = True, body: Any = None, message: str = ""
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "type": "response",
            "request_seq": request.get("seq", 0),
            "seq": 0,
            "success": success,
            "command": request.get("command", ""),
            "body": body if body is not None else {},
        }
        if message:
            reply["message"] = message
        return reply

    def _start(self) -> None:
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        if self._adapter is None or self._adapter.closed:
            if self._listening is None:
                self._listening = self.server.call_on_main(_listen)
            host, port = self._listening
            self._adapter = _AdapterConnection(host, port, self._on_event)
            self._attached = False
        self.started = True
        self.server.interpreter.cell_namer = self.cell_filename

    def _attach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Forward ``attach``; then finish debugpy's start-up handshake ourselves.

        debugpy answers ``attach`` only after ``configurationDone``, which a frontend sends
        after it has the attach response: so, as ipykernel does, the kernel sends
        ``configurationDone`` itself once debugpy says ``initialized``.
        """
        assert self._adapter is not None and self._listening is not None
        if self._attached:  # still attached since an earlier session (module docstring)
            self._on_event({"type": "event", "seq": 0, "event": "initialized", "body": {}})
            return self._response(request)
        args = request.setdefault("arguments", {})
        args["connect"] = {"host": self._listening[0], "port": self._listening[1]}
        corral_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        args.setdefault("rules", [{"path": corral_root, "include": False}])
        while not self._initialized.empty():
            self._initialized.get_nowait()
        attached = self._adapter.expect(int(request["seq"]))
        self._adapter.send(request)
        try:
            self._initialized.get(timeout=_TIMEOUT)
        except queue.Empty:
            raise TimeoutError("debugpy sent no initialized event after attach") from None
        self._own_request("configurationDone")
        reply = wait(attached, _TIMEOUT, "attach")
        self._attached = bool(reply.get("success"))
        return reply

    def _own_request(self, command: str, **arguments: Any) -> dict[str, Any]:
        """A request of the kernel's own to debugpy (numbered apart from the frontend's)."""
        assert self._adapter is not None
        self._seq += 1
        message = {"type": "request", "seq": self._seq, "command": command}
        if arguments:
            message["arguments"] = arguments
        return self._adapter.request(message)

    def _detach(self, request: dict[str, Any]) -> dict[str, Any]:
        """A frontend's ``disconnect``, answered without ending the kernel's session with
        debugpy (which would leave debugpy's port to whoever connects next: module
        docstring): what that frontend set is undone, and stopped threads go on."""
        try:
            for path in list(self.breakpoints):
                self._own_request("setBreakpoints", source={"path": path}, breakpoints=[])
            if self._exception_filters:
                self._own_request("setExceptionBreakpoints", filters=[])
            if self.stopped_threads:
                self._own_request("continue", threadId=min(self.stopped_threads))
        except (OSError, TimeoutError) as exc:
            log.warning("the debugger could not undo a session's settings: %s", exc)
        self.started = False
        self.breakpoints = {}
        self.stopped_threads = set()
        self._exception_filters = False
        self.server.interpreter.cell_namer = None
        return self._response(request)

    def close(self) -> None:
        """At kernel shutdown: drop the adapter connection and the cell files."""
        import shutil

        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        body = event.get("body") or {}
        if name == "initialized":
            self._initialized.put(event)
        elif name == "stopped" and "threadId" in body:
            self.stopped_threads.add(body["threadId"])
        elif name == "continued":
            if body.get("allThreadsContinued", True):
                self.stopped_threads = set()
            else:
                self.stopped_threads.discard(body.get("threadId"))
        self.server.iopub.publish("debug_event", event, self._parent)

    # ------------------------------------------------------------ kernel's own answers

    def _debug_info(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {
            "isStarted": self.started,
            "hashMethod": "Murmur2",
            "hashSeed": HASH_SEED,
            "tmpFilePrefix": self.tmp_dir + os.sep,
            "tmpFileSuffix": ".py",
            "breakpoints": [
                {"source": path, "breakpoints": points} for path, points in self.breakpoints.items()
            ],
            "stoppedThreads": sorted(self.stopped_threads),
            "richRendering": False,
            "exceptionPaths": ["Python Exceptions"],
            "copyToGlobals": False,
        }
        return self._response(request, body=body)

    def _dump_cell(self, request: dict[str, Any]) -> dict[str, Any]:
        code = request.get("arguments", {}).get("code", "")
        path = self.cell_filename(code)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(code)
        return self._response(request, body={"sourcePath": path})

    def _inspect_variables(self, request: dict[str, Any]) -> dict[str, Any]:
        interp = self.server.interpreter
        hidden = interp.hidden_names()
        variables = []
        for name, value in list(interp.user_ns.items()):
            if name.startswith("_") or name in hidden:
                continue
            try:
                text = repr(value)
            except Exception as exc:
                text = f"<repr failed: {type(exc).__name__}>"
            variables.append(
                {
                    "name": name,
                    "value": text[:1000],
                    "type": type(value).__name__,
                    "evaluateName": name,
                    "variablesReference": 0,
                }
            )
        return self._response(request, body={"variables": variables})

    def _source(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request.get("arguments", {}).get("source", {}).get("path", "")
        try:
            with open(path, encoding="utf-8") as f:
                return self._response(request, body={"content": f.read()})
        except OSError as exc:
            return self._response(request, success=False, message=f"cannot read {path}: {exc}")


def _listen() -> tuple[str, int]:
    """``debugpy.listen`` on 127.0.0.1 (runs on the kernel's main thread)."""
    # The kernel's Python may use frozen stdlib modules; debugpy warns about that on
    # stderr at every start, which users cannot act on from a notebook.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    import debugpy

    host, port = debugpy.listen(("127.0.0.1", 0))
    return str(host), int(port)
