"""Who may connect to a cluster socket at all: a ZAP gate keyed by the cluster key.

Signing (:mod:`corral.transports.zmq.door`) stops a peer without the key from *acting*,
but not from *connecting*: without a gate anyone who can reach a port may subscribe to
``iopub`` (task output) or ``notification`` (engine uuids), take an engine's routing
identity, or echo heartbeats under a dead engine's name. The gate closes the door at the
handshake, before any message flows, in one of two ways:

``encryption="none"`` (the default): ZeroMQ's PLAIN mechanism. Every connecting socket
presents a password derived from the cluster key; every bound socket asks the ZAP
handler of its process, which admits only that password. Nothing is added per message,
so the hot path keeps its speed. The password crosses the wire in clear at each
handshake: on one host (loopback, which other users cannot capture without root) that
is safe; across a network that an attacker can sniff it is not, and ``curve`` is the
setting for that (docs/security.md).

``encryption="curve"``: CurveZMQ. Bound sockets hold a server key pair and connecting
sockets a client key pair, both derived from the cluster key (so they are as secret as
the key, live only where it lives, and never appear on a command line); the ZAP handler
admits only the cluster's client public key. Every message is then encrypted and
authenticated by libzmq.

Derivation uses BLAKE3's key-derivation mode with a fixed context string per purpose.
A refused handshake is counted per cause and peer address and logged at most once per
:data:`LOG_EVERY` seconds per cause, so a flood of bad peers cannot fill the disk.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import blake3
import zmq
from zmq.utils import z85

from corral.transports.zmq.frames import chunk_large_frames

__all__ = [
    "ENCRYPTIONS",
    "REFUSED",
    "Gate",
    "RefusalLog",
    "gate_for",
    "peer_name",
    "probe",
    "stop_zap",
]

log = logging.getLogger("corral.transports.zmq.gate")

#: The values of the ``encryption`` setting.
ENCRYPTIONS = ("none", "curve")
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_DOMAIN = b"corral"
_USER = b"corral"
#: Refusals of one cause are logged at most this often (with the count since the last).
LOG_EVERY = 10.0


def _derive(key: bytes, purpose: str) -> bytes:
    return blake3.blake3(key, derive_key_context=f"corral 2026 {purpose}").digest()


class RefusalLog:
    """Counts refused peers per cause and logs them rate-limited: the first of a cause at
    once, then one line per :data:`LOG_EVERY` seconds with how many came since."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every: float = LOG_EVERY,
        *,
        verb: str = "refused",
        peer_word: str = "from",
    ) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        #: How a line says what happened (``refused ... from``; ``dropped ... for``).
        self.verb, self.peer_word = verb, peer_word
        self.total: dict[str, int] = {}
        self._since: dict[str, int] = {}
        self._peers: dict[str, str] = {}
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def refused(self, cause: str, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.total[cause] = self.total.get(cause, 0) + 1
            self._since[cause] = self._since.get(cause, 0) + 1
            self._peers[cause] = peer
            if now < self._next.get(cause, 0.0):
                return
            count, self._since[cause] = self._since[cause], 0
            self._next[cause] = now + self.every
        self._log(cause, count, peer)

    def flush(self) -> None:
        """Log the refusals not yet reported (a component stopping calls it)."""
        with self._lock:
            pending = [(c, n, self._peers[c]) for c, n in self._since.items() if n]
            for cause, _, _ in pending:
                self._since[cause] = 0
        for cause, count, peer in pending:
            self._log(cause, count, peer)

    def _log(self, cause: str, count: int, peer: str) -> None:
        if count == 1:
            self.logger.warning(
                "%s: %s %s %s %s", self.what, self.verb, cause, self.peer_word, peer
            )
        else:
            self.logger.warning(
                "%s: %s %d %s in the last %.0f s (latest %s %s)",
                self.what,
                self.verb,
                count,
                cause,
                self.every,
                self.peer_word,
                peer,
            )


class Gate:
    """Socket options for one cluster key, and the ZAP handler that checks them."""

    def __init__(self, key: bytes, encryption: str = "none") -> None:
        if encryption not in ENCRYPTIONS:
            raise ValueError(f"encryption must be one of {ENCRYPTIONS}, not {encryption!r}")
        if encryption == "curve" and not zmq.has("curve"):
            raise RuntimeError("encryption='curve' needs a libzmq built with CURVE support")
        self.encryption = encryption
        self.enabled = bool(key)
        self.password = _derive(key, "plain password").hex().encode("ascii")
        server = z85.encode(_derive(key, "curve server secret"))
        client = z85.encode(_derive(key, "curve client secret"))
        self.server_secret, self.server_public = server, zmq.curve_public(server)
        self.client_secret, self.client_public = client, zmq.curve_public(client)
        self._client_public_raw = z85.decode(self.client_public)

    # -- sockets ------------------------------------------------------------------------

    def server(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """Make ``sock`` (about to bind) admit only peers with this key."""
        if not self.enabled:
            return sock
        self._ensure_handler(sock.context)
        sock.zap_domain = _DOMAIN
        if self.encryption == "curve":
            sock.curve_secretkey = self.server_secret
            sock.curve_server = True
            chunk_large_frames(sock)  # Curve seals big frames fastest in chunks (frames.py)
        else:
            sock.plain_server = True
        return sock

    def client(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """Give ``sock`` (about to connect) this key's credentials."""
        if not self.enabled:
            return sock
        if self.encryption == "curve":
            sock.curve_serverkey = self.server_public
            sock.curve_publickey = self.client_public
            sock.curve_secretkey = self.client_secret
            chunk_large_frames(sock)
        else:
            sock.plain_username = _USER
            sock.plain_password = self.password
        return sock

    # -- ZAP -------------------------------------------------------------------------------

    def _ensure_handler(self, ctx: zmq.Context[Any]) -> None:
        """Admit this gate's peers on ``ctx``: one ZAP handler thread per context (several
        clusters may share one, a test's for instance), started before a server binds."""
        with _lock:
            accepted = _accepted.setdefault(id(ctx), set())
            accepted.add((b"PLAIN", self.password))
            accepted.add((b"CURVE", self._client_public_raw))
            thread = _handlers.get(id(ctx))
            if thread is not None and thread.is_alive():
                return
            ready = threading.Event()
            thread = threading.Thread(
                target=_serve_zap, args=(ctx, accepted, ready), name="corral-zap", daemon=True
            )
            thread.start()
            ready.wait()
            _handlers[id(ctx)] = thread


_lock = threading.Lock()
_handlers: dict[int, threading.Thread] = {}
_accepted: dict[int, set[tuple[bytes, bytes]]] = {}
#: Refused handshakes of this process, per cause (tests and diagnostics read it).
REFUSALS = RefusalLog(log, "gate")


def _stop_url(ctx: zmq.Context[Any]) -> str:
    return f"inproc://corral-zap-stop-{id(ctx)}"


def stop_zap(ctx: zmq.Context[Any]) -> None:
    """End ``ctx``'s ZAP handler thread: needed before ``ctx.destroy()``, which would close
    the handler's socket under it (``ctx.term()`` alone is fine)."""
    with _lock:
        thread = _handlers.pop(id(ctx), None)
        _accepted.pop(id(ctx), None)
    if thread is None or not thread.is_alive():
        return
    stop = ctx.socket(zmq.PAIR)
    try:
        stop.connect(_stop_url(ctx))
        stop.send(b"")
        thread.join(5)
    finally:
        stop.close(linger=0)


def _serve_zap(ctx: zmq.Context[Any], accepted: set[tuple[bytes, bytes]], ready: Any) -> None:
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        stop = ctx.socket(zmq.PAIR)
        stop.linger = 0
    except zmq.ZMQError:  # the context is closing
        ready.set()
        return
    try:
        sock.bind(_ZAP_ENDPOINT)
        stop.bind(_stop_url(ctx))
    except zmq.ZMQError:  # someone else serves ZAP on this context
        sock.close()
        stop.close()
        ready.set()
        return
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(stop, zmq.POLLIN)
    try:
        while True:
            events = dict(poller.poll())
            if stop in events:
                return
            frames = sock.recv_multipart()
            sock.send_multipart(_answer(frames, accepted))
    except zmq.ContextTerminated:
        pass
    except Exception:  # pragma: no cover - a bug: log it; the sockets then refuse all
        log.exception("ZAP handler failed")
    finally:
        sock.close(linger=0)
        stop.close(linger=0)
        _forget(ctx, accepted)


def _forget(ctx: zmq.Context[Any], accepted: set[tuple[bytes, bytes]]) -> None:
    """Drop a finished handler's entries. The tables are keyed by ``id(ctx)``, which a
    later context may reuse once this one is gone: it would inherit these keys, and its
    Curve sockets would let a holder of an earlier cluster's key subscribe and read."""
    with _lock:
        if _accepted.get(id(ctx)) is accepted:
            del _accepted[id(ctx)]
        if _handlers.get(id(ctx)) is threading.current_thread():
            del _handlers[id(ctx)]


def _answer(frames: list[bytes], accepted: set[tuple[bytes, bytes]]) -> list[bytes]:
    """The ZAP reply to one request (RFC 27): 200 for a known cluster's peers, else 400."""
    try:
        at = frames.index(b"")
    except ValueError:
        return frames
    route, request = frames[: at + 1], frames[at + 1 :]
    if len(request) < 6:
        return [*route, b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
    request_id, address, mechanism = request[1], request[3], request[5]
    credentials = request[6:]
    peer = address.decode("ascii", "replace") or "?"
    if mechanism == b"PLAIN" and len(credentials) == 2 and credentials[0] == _USER:
        if (b"PLAIN", credentials[1]) in accepted:
            return [*route, b"1.0", request_id, b"200", b"OK", _USER, b""]
        cause = "PLAIN handshakes with a wrong cluster key"
    elif mechanism == b"CURVE" and len(credentials) == 1:
        if (b"CURVE", credentials[0]) in accepted:
            return [*route, b"1.0", request_id, b"200", b"OK", _USER, b""]
        cause = "CURVE handshakes with a key not derived from the cluster key"
    else:
        cause = f"{mechanism.decode('ascii', 'replace')} handshakes without the cluster key"
    REFUSALS.refused(cause, peer)
    return [*route, b"1.0", request_id, b"400", b"wrong cluster key", b"", b""]


def peer_name(ident: bytes) -> str:
    """A zmq routing identity as text for a log line: printable ASCII as is, else hex."""
    try:
        text = ident.decode("ascii")
    except UnicodeDecodeError:
        return "peer 0x" + ident.hex()
    return "peer " + (text if text.isprintable() else "0x" + ident.hex())


def gate_for(info: Any) -> Gate:
    """The gate of a cluster described by ``info`` (a ClusterInfo or its dict)."""
    get = info.get if isinstance(info, dict) else lambda k, d=None: getattr(info, k, d)
    key = get("key", b"")
    if isinstance(key, str):
        key = key.encode("ascii")
    return Gate(key, str(get("encryption", None) or "none"))


def probe(
    gate: Gate,
    ctx: zmq.Context[Any],
    url: str,
    timeout: float = 5.0,
    absent_after: float | None = None,
) -> str | None:
    """Try one handshake with ``url`` using ``gate``'s credentials: ``"ok"``, ``"refused"``
    (the peer's gate rejected them: a wrong cluster key) or None (no answer in time).

    A refused handshake is otherwise silent (ZeroMQ just retries), which would leave a
    client or engine with the wrong key waiting for a reply that never comes; this turns
    it into an error that says why.

    ``absent_after``: also return ``"absent"`` once every connection attempt for that
    many seconds was turned away before any was accepted (nothing listens at ``url``: a
    controller that died and left its cluster file), which ZeroMQ too only retries
    silently.
    """
    from zmq.utils.monitor import recv_monitor_message

    sock = gate.client(ctx.socket(zmq.DEALER))
    sock.linger = 0
    events = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_CONNECTED
        | zmq.EVENT_CONNECT_RETRIED
    )
    monitor = sock.get_monitor_socket(events)
    try:
        start = time.monotonic()
        sock.connect(url)
        end = start + timeout
        # Since when every attempt was turned away: a connection that got through (to a
        # process still dying, say) starts it again.
        refused_from, accepted = start, False
        while True:
            left = end - time.monotonic()
            if left <= 0 or not monitor.poll(int(left * 1000) + 1):
                return None
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "ok"
            if event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                return "refused"
            if event == zmq.EVENT_CONNECTED:
                accepted = True
            elif event == zmq.EVENT_CONNECT_RETRIED:
                now = time.monotonic()
                if accepted:
                    refused_from, accepted = now, False
                elif absent_after is not None and now - refused_from >= absent_after:
                    return "absent"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


#: What a client or engine is told when the controller's gate refuses it.
REFUSED = (
    "the controller at {url} refused the connection: this cluster key is not the "
    "controller's (an old or foreign cluster file?)"
)
