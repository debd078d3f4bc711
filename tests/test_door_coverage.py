"""No socket bypasses the door: a scan of corral's source.

Every place that receives from a socket is found in the syntax tree and must either reach
the door (:func:`corral.transports.zmq.door.admit`, through the functions known to call
it) by calls or handler references within its module, or be listed below as carrying no
signed message (wake pipes, heartbeat beats on gated sockets, ZAP requests, socket event
monitors, ...) with the reason. A new receiving socket therefore fails this test until it
goes through the door or someone writes down why it need not. And nothing outside the
door (and the wire module it builds on) checks a signature or a replay guard by itself,
so the checks cannot drift apart again.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "corral"

#: Calls that receive something from a socket, a pipe or a stream.
RECEIVE = {
    "recv",
    "recv_multipart",
    "recv_frames",
    "recv_message",
    "recv_messages",
    "recv_string",
    "recv_json",
    "recv_pyobj",
    "drain",
    "read",
}

#: Functions that admit what they receive through the door, by their (unqualified) name
#: as called, and where they live; :func:`test_entries_call_the_door` checks each one.
ENTRIES = {
    "admit": "transports/zmq/door.py",
    "deserialize": "transports/zmq/door.py",  # wire.deserialize delegates to it
    "parse": "plugins/parallel/client/messages.py",
    "recv_message": "plugins/parallel/engine/_wire.py",
    "recv_messages": "plugins/parallel/engine/_wire.py",
    "parse_message": "plugins/parallel/engine/_wire.py",
    "_unpack": "transports/zmq/client.py",  # the kernel clients' (sync and async)
}
#: Entries called as methods (inherited), which attribute references may name.
METHODS = {"_unpack"}
#: ``Session.recv``/``Session.parse`` (corral.transports.zmq.session) reach the door too;
#: they are called as methods of a session attribute.
SESSION_METHODS = {"recv", "parse"}

#: Receive sites that carry no signed message, each with why it needs no door.
RAW = {
    "core/builtin_magics.py:pump": "a child process's output pipe (%sx), not a socket",
    "core/iostreams.py:FdCapture._drain": "a kernel's own descriptors 1 and 2 (pipes its "
    "cells' subprocesses write to), not a socket",
    "core/processes.py:process_alive": "a /proc file",
    "core/processes.py:tail": "a log file",
    "frontends/kernel_link.py:_HeartbeatWatch.run": "heartbeat echo: bytes, not a message",
    "frontends/run.py:run_command": "the user's stdin",
    "notification/bridge.py:BridgeReceiver.pump": "the bridge authenticates its own "
    "transport (peers authenticate first, types resolve only to declared ones)",
    "notification/bridge.py:BridgeReceiver._run": "as BridgeReceiver.pump",
    "plugins/manager.py:disabled_plugins": "an .ini file",
    "plugins/parallel/cluster.py:_only_child": "a /proc file (a monitor's child)",
    "plugins/parallel/launchers/remote.py:_Lines.readline": "the ssh session's stdin "
    "(the remote bootstrap's instructions from the launching host), not a socket",
    "plugins/parallel/simengine.py:SimCrowd._on_beat": "heartbeat beats on a gated socket "
    "(the scale benchmark's simulated engines echo them)",
    "plugins/parallel/client/io.py:ClientIO._run": "the I/O thread's wake pipe",
    "plugins/parallel/client/io.py:ClientIO._on_monitor": "libzmq socket events",
    "plugins/parallel/controller/base.py:drain": "hands each message to its handler; "
    "the handlers are checked at their drain sites",
    "plugins/parallel/controller/base.py:ControlPipe._read": "the supervisor's pipe",
    "plugins/parallel/controller/base.py:read_control": "the supervisor's pipe",
    "plugins/parallel/controller/main.py:_await_ports": "a component's control pipe",
    "plugins/parallel/controller/main.py:start_controller": "the controller's stdout pipe",
    "plugins/parallel/controller/queues.py:RoutingQueue.on_engine_disconnect": "libzmq "
    "socket events",
    "plugins/parallel/controller/queues.py:RoutingQueue.serve": "disconnect events "
    "(DisconnectWatch.drain); the sockets' handlers are checked at their drain sites",
    "transports/zmq/server.py:RequestServer.drain_wake": "the wake pipe of a kernel "
    "server or an engine: bytes from its own threads and signals",
    "transports/zmq/requests.py:ControlThread.run": "inproc frames from the server's "
    "own main thread (its replies, already signed); control requests go to the owner's "
    "handler, which admits them (KernelServer._serve_control, ControlHandler.handle)",
    "transports/zmq/bridge.py:ZmqBridgeTransport.recv": "the bridge's own signed format "
    "(ZmqBridgeTransport._accept: HMAC and replay guard; no Jupyter header to admit)",
    "plugins/parallel/engine/heartbeat.py:HubWatch.run": "heartbeat beats on a gated "
    "socket: only key holders connect (corral.transports.zmq.gate)",
    "plugins/parallel/engine/local.py:LocalConnection.read": "framing only; the engine "
    "admits each message (SameHostClients.serve)",
    "plugins/parallel/client/local.py:LocalCalls.call": None,  # reaches parse: checked
    "plugins/parallel/launchers/local.py:_is_ancestor": "a /proc file",
    "plugins/parallel/launchers/local.py:_wait_for_file": "a cluster file",
    "transports/zmq/aclient.py:AsyncKernelClient.heartbeat": "heartbeat echo",
    "transports/zmq/client.py:BlockingKernelClient._drain_wake": "the client's wake pipe",
    "transports/zmq/client.py:BlockingKernelClient.heartbeat": "heartbeat echo",
    "transports/zmq/debugger.py:_AdapterConnection._read_loop": "debugpy's adapter, a "
    "child process on a private connection",
    "transports/zmq/debugger.py:Debugger._source": "a source file",
    "transports/zmq/gate.py:_serve_zap": "ZAP requests from libzmq (inproc)",
    "transports/zmq/ipc.py:_owner": "a claim file",
    "transports/zmq/kernel.py:KernelServer.serve_forever": None,  # also session.recv
    "transports/zmq/kernel.py:KernelServer._ask_stdin": None,  # also session.recv
    "transports/zmq/manager.py:_HeartbeatMonitor.run": "heartbeat echo",
    "transports/zmq/manager.py:KernelManager._wait_for_heartbeat": "heartbeat echo",
    "transports/zmq/session.py:Session.recv": None,  # parse: checked
}

#: Receive sites that hand each message to a handler: the handlers (by module) that
#: must reach the door, and those that carry no signed message. Each ``_drain(sock,
#: handler)`` call in the module must be accounted for, so a new socket drained there
#: fails :func:`test_drained_handlers_go_through_the_door` until it is listed.
DISPATCHERS = {
    "plugins/parallel/controller/hub.py:Hub._drain": (
        "plugins/parallel/controller/hub.py",
        ("on_registration", "on_monitor", "on_iopub"),
        {
            "on_pong": "heartbeat beats on a gated socket (only key holders connect)",
            "on_subscription": "XPUB subscriptions, not messages: a queue's marker only "
            "opens the hub to registrations (a forged one opens it early, nothing more)",
        },
    ),
    "plugins/parallel/controller/queues.py:RoutingQueue._drain": (
        "plugins/parallel/controller/queues.py",
        ("on_client_frames", "on_engine_frames", "on_notification"),
        {
            "on_direct_feed": "the mux and broadcast queues' busy engines, on a gated "
            "socket (only key holders connect): a forged one only steers which engine "
            "a load-balanced task goes to",
        },
    ),
    "plugins/parallel/client/io.py:ClientIO._drain": (
        "plugins/parallel/client/client.py",
        ("_dispatch",),
        {},
    ),
}

#: The only modules allowed to verify signatures or consult a replay guard themselves.
CHECKERS = {"transports/zmq/door.py", "transports/zmq/wire.py"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


class _Scan(ast.NodeVisitor):
    """Per function (qualified within its module): receive calls, and every name it calls
    or references (so ``drain(sock, self.on_monitor)`` links to ``on_monitor``)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.receives: dict[str, list[int]] = {}
        self.refs: dict[str, set[str]] = {}
        self.names: dict[str, set[str]] = {}  # bare names only (function calls)
        self.session_calls: dict[str, bool] = {}
        self.defs: dict[str, str] = {}  # simple name -> qualified name

    def _enter(self, node: ast.AST, name: str) -> None:
        self.stack.append(name)
        qual = ".".join(self.stack)
        if not isinstance(node, ast.ClassDef):
            self.defs.setdefault(name, qual)
            self.refs.setdefault(qual, set())
        self.generic_visit(node)
        self.stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, node.name)

    def _current(self) -> str | None:
        return ".".join(self.stack) if self.stack else None

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        qual = self._current()
        if qual is not None and name in RECEIVE:
            self.receives.setdefault(qual, []).append(node.lineno)
        if (
            qual is not None
            and isinstance(func, ast.Attribute)
            and name in SESSION_METHODS
            and "session" in ast.unparse(func.value)
        ):
            self.session_calls[qual] = True
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        qual = self._current()
        if qual is not None:
            self.refs.setdefault(qual, set()).add(node.attr)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        qual = self._current()
        if qual is not None:
            self.refs.setdefault(qual, set()).add(node.id)
            self.names.setdefault(qual, set()).add(node.id)


def _scan(tree: ast.Module) -> _Scan:
    scan = _Scan()
    scan.visit(tree)
    return scan


def _reaches_door(scan: _Scan, start: str, module: str) -> bool:
    """Whether ``start`` calls or references an entry (or a session's recv/parse),
    directly or through functions of its own module (breadth-first, any depth) that do
    not receive anything themselves."""
    seen, todo = {start}, [start]
    while todo:
        qual = todo.pop()
        if scan.session_calls.get(qual):
            return True
        # An entry counts when named bare (imported: ``admit(...)``, ``parse(...)``), or
        # as a method only if it is one (``self._unpack``); ``x.parse`` is anything.
        for ref in scan.names.get(qual, set()) | (scan.refs.get(qual, set()) & METHODS):
            if ref in ENTRIES and ENTRIES[ref] != module:
                return True
        for ref in scan.refs.get(qual, ()):
            target = scan.defs.get(ref)
            # A function that receives by itself admits its own messages, not ours.
            if target is not None and target not in seen and target not in scan.receives:
                seen.add(target)
                todo.append(target)
    return False


SCANS = {module: _scan(tree) for module, tree in _modules()}


def _sites() -> list[tuple[str, str]]:
    return sorted((module, qual) for module, scan in SCANS.items() for qual in scan.receives)


def test_the_scan_finds_the_known_sockets() -> None:
    """The scan sees the receiving sites that matter (a broken scan proves nothing)."""
    found = {f"{m}:{q}" for m, q in _sites()}
    for site in (
        "plugins/parallel/controller/hub.py:Hub._drain",
        "plugins/parallel/controller/queues.py:RoutingQueue._drain",
        "plugins/parallel/engine/engine.py:Engine._serve_one",
        "plugins/parallel/engine/samehost.py:SameHostClients.serve",
        "plugins/parallel/client/io.py:ClientIO._drain",
        "transports/zmq/requests.py:ControlThread.run",
    ):
        assert site in found


@pytest.mark.parametrize(("module", "qual"), _sites(), ids=lambda v: str(v))
def test_every_receiving_site_goes_through_the_door(module: str, qual: str) -> None:
    site = f"{module}:{qual}"
    if ENTRIES.get(qual.rpartition(".")[2]) == module or module in CHECKERS:
        return  # the door itself, and the entries (checked below)
    if RAW.get(site):
        return  # written down: carries no signed message
    if site in DISPATCHERS:
        return  # its handlers: test_drained_handlers_go_through_the_door
    assert _reaches_door(SCANS[module], qual, module), (
        f"{site} receives from a socket but never reaches the door "
        "(corral.transports.zmq.door.admit); route it there, or list it in RAW with why"
    )


@pytest.mark.parametrize("site", sorted(DISPATCHERS))
def test_drained_handlers_go_through_the_door(site: str) -> None:
    """Every handler a dispatching site feeds reaches the door on its own (or is listed
    as raw with why), and every ``_drain`` call of the module is accounted for."""
    module, handlers, raw = DISPATCHERS[site]
    scan = SCANS[module]
    for handler in handlers:
        assert _reaches_door(scan, scan.defs[handler], "-"), f"{module}:{handler}"
    if site.endswith("ClientIO._drain"):
        # The client's I/O thread hands everything to the one handler it is built with.
        tree = ast.parse((ROOT / module).read_text())
        made = [
            ast.unparse(n.args[1])
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and ast.unparse(n.func) == "ClientIO"
        ]
        assert made == ["self._dispatch"]
        return
    calls = sum(
        1
        for n in ast.walk(ast.parse((ROOT / module).read_text()))
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "self._drain"
    )
    assert calls == len(handlers) + len(raw), (
        f"{module} drains {calls} sockets but {site} lists {len(handlers) + len(raw)} "
        "handlers: list the new one (it must reach the door)"
    )


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entries_call_the_door(name: str) -> None:
    """Each entry named above really calls ``admit`` (the door)."""
    scan = SCANS[ENTRIES[name]]
    qual = scan.defs[name]
    if name == "admit":
        return
    seen, todo = {qual}, [qual]
    while todo:
        refs = scan.refs.get(todo.pop(), set())
        # admit itself, or door.deserialize (wire.deserialize is it: checked below)
        if "admit" in refs or (name != "deserialize" and "deserialize" in refs):
            return
        for ref in refs:
            target = scan.defs.get(ref)
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    pytest.fail(f"{name} in {ENTRIES[name]} does not call door.admit")


def test_session_parses_through_the_door() -> None:
    scan = SCANS["transports/zmq/session.py"]
    assert "deserialize" in scan.refs["Session.parse"]
    assert "parse" in scan.refs["Session.recv"]
    wire = SCANS["transports/zmq/wire.py"]
    assert "through_the_door" in wire.refs["deserialize"]


def _signature_checks(tree: ast.Module) -> list[str]:
    """Calls that verify a signature or consult a replay guard directly."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = ast.unparse(node.func.value).lower()
        if node.func.attr in ("check", "verify") and ("signer" in target or "replay" in target):
            out.append(f"{ast.unparse(node.func)} (line {node.lineno})")
        if node.func.attr == "compare_digest" and target == "hmac":
            out.append(f"hmac.compare_digest (line {node.lineno})")
    return out


@pytest.mark.parametrize("module", sorted(m for m, _ in _modules() if m not in CHECKERS))
def test_nobody_checks_signatures_outside_the_door(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    allowed = {
        "transports/zmq/gate.py",  # the ZAP handler compares PLAIN passwords
        # the notification bridge's own 4-frame format (no Jupyter header to admit): a
        # keyed HMAC and a replay guard over [kind, nonce, data], tested in test_bridge
        "transports/zmq/bridge.py",
        # compares the key an aggregate file recorded for a member with the member's own
        # cluster file (both owner-only files), not a message signature
        "plugins/parallel/aggregatefile.py",
    }
    if module in allowed:
        return
    assert _signature_checks(tree) == [], f"{module} verifies by itself; use door.admit"
