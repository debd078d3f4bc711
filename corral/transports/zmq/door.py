"""The cluster's one door: what every controller, engine and client message must pass.

The Jupyter signature covers the four JSON parts of a message and nothing else, so a
peer that can alter a signed message in flight (or replay one with buffers of its own)
can swap a pickled function or result under an intact signature. Cluster messages
therefore carry, inside the signed part, a digest of every buffer:

    signature frame = HMAC(key, header + parent + metadata + content + b"." + digests)
                      + b"." + digests

``digests`` is the BLAKE3 digest of each buffer frame (64 hex digits each, in order). A
message without buffers is signed exactly as Jupyter signs it. So:

* a **forwarder** (a queue) checks the HMAC and that the number of digests matches the
  number of buffer frames, without reading the buffers (it never unpickles them);
* a **consumer** (engine, client, the hub storing a result) also hashes each buffer and
  compares: a buffer changed after signing is refused before anything unpickles it. (A
  buffer that crossed a Curve data channel as a stream of chunks was hashed by the
  receiving process as the chunks were copied in, :class:`chunkstream.Joined`; the
  comparison is the same.)

BLAKE3 and not hashlib: on the reference machine it hashes 100 MB in ~18 ms (about 5.6
GB/s on one core) where SHA-256 takes 87 ms and BLAKE2b 100 ms; sender and receiver
each hash once, and a 100 MB push must stay within 0.7x of raw pyzmq (docs/security.md).

The module also holds the **role checks** shared by every receiver: the message kinds
each socket accepts (:data:`ROLES`), and the envelope that proves a monitor copy comes
from a queue or an engine (:meth:`ClusterSigner.monitor_tag`): the hub's ``monitor`` is a
PULL socket that cannot see who is sending, so each copy carries its own MAC over its
kind, engine, client and the inner message's signature. A message signed for one place
(say an iopub ``stream`` message) therefore cannot be replayed as a reply on ``monitor``.

:func:`admit` is **the door** itself: the one function through which every message a
cluster socket receives passes before anything else looks at it (signature and buffer
digests, replay guard, header, role). ``tests/test_door_coverage.py`` scans the code so
that no receiving socket can be added without it: nothing outside this module and
:mod:`.wire` may call a signer's or replay guard's checks.

**Destinations.** Replay guards are per receiver, so a signed request must not be
admissible at any receiver but the one it was signed for: every cluster request carries,
in its signed header, :data:`DEST` naming where it may be let in (:func:`dest_of`: the
hub, a queue by name, or one engine's direct sockets), and :func:`admit` refuses it
anywhere else (:class:`Misdirected`). A queue does not know its engines in advance for a
load-balanced task, so what it forwards to an engine carries the queue's **route seal**
(:meth:`ClusterSigner.route_seal`, a MAC over the queue, the engine and the request's
signature, as one extra routing frame the engine takes off): an engine admits a queued
request only with a seal naming that queue and itself. A captured request can then only
be replayed to the receiver it was for, whose own guard has seen it.

**Runs.** That guard forgets everything when its controller is restarted. So each start
of a controller draws a new random **run** (in the cluster file, and in the hub's
registration and connection replies), and every request to the hub or a queue (and an
engine's ``bus_notification`` to the hub) carries it in its signed header (:data:`RUN`):
the hub and the queues refuse a message of another run (:class:`WrongRun`), before their
replay guard records it. A request captured before a restart is thereby refused by every
later controller of the cluster, a registration included: an engine that outlived its
controller sends the run it knew, and the hub's :class:`WrongRun` answer (signed, to
that request) names the current run, which the engine adopts and registers under. One
exemption (:data:`RUN_ANY`): a ``connection_request`` (read-only, answered only to its
sender) may name any run, which is how a client whose file is older than the controller
learns the current run from the signed ``connection_reply``. Engines do not
check runs: their replay guards outlive the controller, and queued requests reach them
only under a queue's route seal.
"""

from __future__ import annotations

import hmac
import json
import struct
import time
from collections.abc import Sequence
from hashlib import blake2b as _blake2b
from typing import Any

from corral.transports.zmq import wire
from corral.transports.zmq.chunkstream import Joined

__all__ = [
    "BUFFERS_COUNTED",
    "DEST",
    "HUB",
    "RUN",
    "RUN_ANY",
    "BUFFER_DIGESTS",
    "BUFFERS_HASHED",
    "BUFFERS_IGNORED",
    "BuffersAltered",
    "DIGEST_HEX",
    "Misdirected",
    "ROLES",
    "WrongRun",
    "SEAL_PREFIX",
    "ClusterSigner",
    "Role",
    "RoleRefused",
    "admit",
    "buffer_digest",
    "check_buffer_digests",
    "check_run",
    "check_signed_buffers",
    "cluster_signer",
    "dest_of",
    "deserialize",
    "signed_digests",
    "take_seal",
]

#: The metadata key that carries buffer digests on kernel channels (Jupyter's signature
#: does not cover buffers; cluster messages carry them in the signature frame instead).
BUFFER_DIGESTS = "corral_buffer_digests"
#: Hex digits of one buffer digest (BLAKE3, 32 bytes).
DIGEST_HEX = 64
#: What :meth:`ClusterSigner.check` does with the buffers.
BUFFERS_IGNORED, BUFFERS_COUNTED, BUFFERS_HASHED = range(3)
#: Buffers at least this large are hashed with BLAKE3's thread pool.
_THREADED_FROM = 8 << 20
_SEP = b"."
#: The signed header key naming where a cluster request may be admitted.
DEST = "dest"
#: The destination of requests to the hub (its registration socket).
HUB = "hub"
#: The signed header key naming the controller run (one start of a controller) a request
#: to the hub or a queue was made for; see the module docstring.
RUN = "run"
#: Requests admitted with any run, even an empty one, but not without the key: a client
#: whose cluster file is older than the controller (or names no run) learns the current
#: run from the answer, and a client older than runs is told so at once.
RUN_ANY = frozenset({"connection_request"})
#: How a route seal frame starts: ZeroMQ reserves routing ids that begin with a zero
#: byte for its own (5-byte) ids, so no peer can name itself like a seal.
SEAL_PREFIX = b"\x00>"
#: Bytes of a route seal's stamp (big-endian microseconds of the queue's clock, strictly
#: increasing per signer) and of its MAC (raw: routing frames are binary).
_SEAL_STAMP = 8
_SEAL_MAC = 32
_SEAL_LEN = len(SEAL_PREFIX) + _SEAL_STAMP + _SEAL_MAC
#: The replay guard session of requests through one queue (their order is the queue's).
SEALED_SESSION = "sealed:"

#: At most this many (queue, engine) seal states are kept by one signer.
_SEAL_STATES = 4096


class RoleRefused(wire.WireError):
    """A correctly signed message of a kind this socket's role may not receive (a request
    replayed where replies arrive, a registration on a queue, ...)."""


class Misdirected(RoleRefused):
    """A correctly signed request that names another destination than the receiving
    socket (captured on its way to one queue or engine and replayed to another), or a
    queued request without its queue's seal for this engine."""


class WrongRun(Misdirected):
    """A correctly signed request to the hub or a queue made for another run of its
    controller (captured before a restart and replayed, or from a client that missed the
    restart), or carrying no run at all (a client older than the controller).

    The header is genuine (:func:`admit` attaches it): the hub answers the sender with
    this error, so a stale client learns why instead of waiting."""

    header: dict[str, Any] | None = None


def check_run(header: dict[str, Any], run: str) -> None:
    """Raise :class:`WrongRun` unless ``header`` (a verified request's) may be admitted by
    the controller run ``run`` (see :data:`RUN_ANY`)."""
    msg_type = header.get("msg_type")
    theirs = header.get(RUN)
    if theirs == run or (msg_type in RUN_ANY and theirs.__class__ is str):
        return
    if theirs is None:
        why = (
            f"{msg_type!r} carries no controller run: the sender is older than the "
            "controller (use a client of the same corral version)"
        )
    else:
        why = (
            f"{msg_type!r} was made for controller run {theirs!r}, this controller runs "
            f"{run!r}: the controller was restarted since (a replayed request, or a client "
            "that missed the restart: Client.reconnect() or a new Client)"
        )
    error = WrongRun(why)
    error.header = header
    raise error


def dest_of(name: str, engine: bytes | str | None = None) -> str:
    """The :data:`DEST` a request bound for ``name`` carries: :data:`HUB`, a queue's name
    (``mux``, ``control``, ``task``, ``broadcast``), or, with ``engine`` (its uuid), that
    engine's direct sockets (``engine:<uuid>``: its data socket and its Unix socket)."""
    if engine is None:
        return name
    uuid = engine.decode("ascii", "replace") if engine.__class__ is bytes else str(engine)
    return f"{name}:{uuid}"


def take_seal(idents: list[bytes]) -> bytes | None:
    """Remove and return a queue's route seal from the routing frames of a request (it
    travels as the last one), so replies never echo it; None if there is none."""
    if idents:
        last = idents[-1]
        if len(last) == _SEAL_LEN and last.startswith(SEAL_PREFIX):
            return idents.pop()
    return None


class Role:
    """What one kind of receiving socket accepts: exact ``msg_type`` names, or names that
    end with one of ``suffixes`` (``"_request"``: whatever a client may ask)."""

    __slots__ = ("name", "suffixes", "types")

    def __init__(self, name: str, types: Sequence[str] = (), suffixes: Sequence[str] = ()) -> None:
        self.name = name
        self.types = frozenset(types)
        self.suffixes = tuple(suffixes)

    def allows(self, msg_type: Any) -> bool:
        return msg_type.__class__ is str and (
            msg_type in self.types or msg_type.endswith(self.suffixes)
        )

    def __repr__(self) -> str:
        return f"Role({self.name!r})"


_HUB_REQUESTS = (
    "registration_request",
    "unregistration_request",
    "connection_request",
    "queue_request",
    "result_request",
    "db_request",
    "purge_request",
    "shutdown_request",
)
_CONTROL = (
    "abort_request",
    "clear_request",
    "shutdown_request",
    "interrupt_request",
    "signal_request",
)

#: What each receiving socket accepts, by ``msg_type``: a correctly signed message of any
#: other kind is refused there (:class:`RoleRefused`). Keys name the receiving side.
ROLES: dict[str, Role] = {
    # hub: the registration socket serves only the hub's own request types, and takes
    # the engines' bridged task notifications (bridge.FEED_MSG_TYPE) while followed
    "registration": Role("registration", (*_HUB_REQUESTS, "bus_notification")),
    # a queue's client side forwards requests; its engine side replies (and the task
    # scheduler's start notices, which go no further than the scheduler)
    "queue_client": Role("queue_client", suffixes=("_request",)),
    "queue_engine": Role("queue_engine", ("task_started",), suffixes=("_reply",)),
    # the hub's monitor: request copies and reply copies (the envelope says which)
    "monitor_request": Role("monitor_request", suffixes=("_request",)),
    "monitor_reply": Role("monitor_reply", suffixes=("_reply",)),
    # an engine: its control socket, its request sockets (queues, data socket, same-host
    # socket); the hub's answers on an engine's registration socket, and the engines'
    # answers to the hub's shutdown requests
    "control": Role("control", _CONTROL),
    "engine_requests": Role("engine_requests", suffixes=("_request",)),
    "replies": Role("replies", suffixes=("_reply",)),
    # the hub's notification feed, as engines and queues read it
    "notifications": Role("notifications", suffixes=("_notification",)),
    # a client's iopub: what engines publish there (Jupyter's IOPub kinds, and
    # ipyparallel's data_message); never a request, reply or notification
    "iopub": Role(
        "iopub",
        (
            "stream",
            "display_data",
            "update_display_data",
            "execute_input",
            "execute_result",
            "error",
            "status",
            "clear_output",
            "data_message",
            "comm_open",
            "comm_msg",
            "comm_close",
            "debug_event",
        ),
    ),
}

_decode = json.JSONDecoder().decode


def admit(
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    parts: Sequence[bytes],
    signature: Any,
    buffers: Sequence[Any] = (),
    *,
    how: int = BUFFERS_HASHED,
    role: Role | None = None,
    seen: Any = None,
    dest: str | None = None,
    sealed_to: bytes | None = None,
    seal: bytes | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Let one received message in, or raise a :class:`wire.WireError` saying why not.

    In order: the HMAC over the four JSON ``parts`` and the buffer digests (``how``:
    hashed by consumers, counted by forwarders), the header (a JSON object with a string
    ``msg_id``), ``role`` (whether this socket may receive the header's ``msg_type``),
    ``dest`` and the route seal (below), ``run``, and last the ``replay`` guard (the signature seen
    before on this receiver), so that only what this receiver would admit is recorded.
    Returns the parsed header, so callers never parse it twice. ``seen`` is what the
    replay guard records instead of the signature (the hub's monitor records each copy's
    envelope: the same inner message legitimately arrives once per queue).

    ``dest``: the receiving socket's destination (:func:`dest_of`); the header's
    :data:`DEST` must name it. ``sealed_to``: the receiving engine's uuid on a queue
    socket, where ``seal`` (taken off by :func:`take_seal`) must be the queue's route seal
    for ``dest``, this engine and this signature. ``run``: the receiving controller's run
    (the hub and the queues), which the header's :data:`RUN` must name
    (:func:`check_run`). All three are checked only with a key (a cluster without one
    checks nothing cryptographic).

    With a non-cluster :class:`wire.Signer` (kernel channels) the buffers are not covered:
    Jupyter's own signature. A disabled signer (empty key) checks nothing cryptographic.
    """
    altered: BuffersAltered | None = None
    enabled = signer.enabled
    sealed: tuple[str, int] | None = None
    if enabled:
        try:
            signer.check(parts, signature, buffers, how)
        except BuffersAltered as exc:
            altered = exc  # the parts are genuine: still checked for replay, then raised
    try:
        header = _decode(bytes(parts[0]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise wire.MalformedMessage(f"header is not valid UTF-8 JSON: {exc}") from None
    if header.__class__ is not dict or header.get("msg_id").__class__ is not str:
        raise wire.MalformedMessage("header must be a JSON object with a string 'msg_id'")
    if role is not None and not role.allows(header.get("msg_type")):
        raise RoleRefused(f"{header.get('msg_type')!r} is not accepted by {role.name}")
    if dest is not None and enabled:
        # Before the replay guard: a request sent to the wrong place must not be
        # recorded there (nor block its genuine copy, were this its place after all).
        if header.get(DEST) != dest:
            raise Misdirected(f"signed for {header.get(DEST)!r}, received by {dest!r}")
        if sealed_to is not None:
            stamp = -1
            if seal is not None and signer.__class__ is ClusterSigner:
                stamp = signer.open_route_seal(seal, dest, sealed_to, signature)
            if stamp < 0:
                raise Misdirected(f"no {dest} route seal for this engine")
            # Through a queue, order is the queue's: its stamp, under a session of that
            # queue in that controller run (a restarted controller's clock is another's).
            sealed = (f"{SEALED_SESSION}{dest}:{header.get(RUN)}", stamp)
    if run is not None and enabled:
        check_run(header, run)  # before the guard: a stale run is not recorded either
    if enabled and replay is not None:
        if seen is None:
            seen = signature
        # The signed header's session and date: an ordered guard refuses what is older
        # than what it has forgotten of that session (wire.ReplayGuard).
        seen = seen if seen.__class__ is bytes else bytes(seen)
        if sealed is None:
            replay.check(seen, header.get("session"), header.get("date"))
        else:
            replay.check(seen, sealed[0], stamp=sealed[1])
    if altered is not None:
        altered.header = header
        try:
            raise altered
        finally:  # the frame must not keep its exception: a cycle holding the buffers
            del altered, buffers
    return header


def check_buffer_digests(metadata: dict[str, Any], buffers: Sequence[Any]) -> None:
    """Kernel channels: the buffers against the digests in the signed metadata
    (:data:`BUFFER_DIGESTS`, put there by :func:`wire.serialize`).

    A message without the key (a jupyter_client frontend, which does not send them) is
    let through as Jupyter would: its buffers are not covered, as the spec says. The key
    cannot be stripped or altered without breaking the HMAC, so a message from corral
    always has its buffers checked; a buffer swapped, added or dropped is refused.
    """
    digests = metadata.get(BUFFER_DIGESTS)
    if digests is None:
        return
    if digests.__class__ is not list or len(digests) != len(buffers):
        raise wire.BadSignature(
            f"the signed metadata covers {len(digests) if isinstance(digests, list) else '?'}"
            f" buffer(s), the message has {len(buffers)}"
        )
    for i, (buf, want) in enumerate(zip(buffers, digests, strict=True)):
        if want.__class__ is not str or not hmac.compare_digest(
            buffer_digest(buf), want.encode("ascii", "replace")
        ):
            raise wire.BadSignature(f"buffer {i} was altered after signing")


def deserialize(
    frames: Sequence[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None = None,
    max_size: int | None = None,
    role: Role | None = None,
    dest: str | None = None,
    run: str | None = None,
) -> tuple[list[bytes], dict[str, Any]]:
    """``(identities, msg)`` from received ``frames`` after :func:`admit` (see
    :func:`wire.deserialize`, which is this; ``role``, ``dest`` and ``run`` as in
    :func:`admit`)."""
    raw = [f if f.__class__ is bytes else wire._as_bytes(f) for f in frames]
    if max_size is not None:
        size = sum(len(f) for f in raw)
        if size > max_size:
            raise wire.MessageTooLarge(f"message of {size} bytes exceeds the limit of {max_size}")
    try:
        split = raw.index(wire.DELIMITER)
    except ValueError:
        raise wire.MalformedMessage(
            f"no {wire.DELIMITER.decode()} delimiter among {len(raw)} frames"
        ) from None
    rest = raw[split + 1 :]
    if len(rest) < 5:
        raise wire.MalformedMessage(
            f"expected signature, header, parent_header, metadata and content after the "
            f"delimiter, got {len(rest)} frame(s)"
        )
    parts = rest[1:5]
    buffers = rest[5:]
    header = admit(signer, replay, parts, rest[0], buffers, role=role, dest=dest, run=run)
    msg_type = header.get("msg_type")
    if msg_type.__class__ is not str:
        raise wire.MalformedMessage("header must hold string 'msg_id' and 'msg_type'")
    metadata = wire._parse_dict(parts[2], "metadata")
    if signer.enabled and not signer.covers_buffers:
        check_buffer_digests(metadata, buffers)
    msg = {
        "header": header,
        "parent_header": wire._parse_dict(parts[1], "parent_header"),
        "metadata": metadata,
        "content": wire._parse_dict(parts[3], "content"),
        "buffers": buffers,
        "msg_id": header["msg_id"],
        "msg_type": msg_type,
    }
    return raw[:split], msg


def signed_digests(signature: Any) -> list[bytes]:
    """The buffer digests a cluster signature frame carries (empty when it carries none)."""
    tail = bytes(signature).partition(_SEP)[2]
    return [tail[i : i + DIGEST_HEX] for i in range(0, len(tail), DIGEST_HEX)]


def check_signed_buffers(digests: Sequence[bytes], buffers: Sequence[Any]) -> None:
    """Buffers that arrive apart from their message (a stored reply's, fetched from the
    task database later) against the digests its already-verified signature carried;
    raises :class:`wire.BadSignature` naming what differs."""
    if len(buffers) != len(digests):
        raise wire.BadSignature(
            f"{len(buffers)} buffer(s) arrived where the signature covers {len(digests)}"
        )
    for index, (buf, want) in enumerate(zip(buffers, digests, strict=True)):
        if not hmac.compare_digest(buffer_digest(buf), want):
            raise wire.BadSignature(f"buffer {index} differs from what was signed")


def buffer_digest(buf: Any) -> bytes:
    """The BLAKE3 digest of one buffer frame (bytes, memoryview or ``zmq.Frame``), in hex.

    A buffer joined from a stream of chunks brings the digest computed as they arrived
    (once: :meth:`chunkstream.Joined.take_digest`)."""
    if buf.__class__ is Joined:
        digest = buf.take_digest()
        if digest is not None:
            return digest
    try:
        view = memoryview(buf)
    except TypeError:
        view = memoryview(buf.bytes)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    elif view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    hasher = _blake3 or _load_blake3()
    if view.nbytes >= _THREADED_FROM:
        return hasher(view, max_threads=hasher.AUTO).hexdigest().encode("ascii")
    return hasher(view).hexdigest().encode("ascii")


_blake3: Any = None


def _load_blake3() -> Any:
    """BLAKE3, imported on first use: a kernel that never sees a cluster buffer (most of
    them) does not pay for the import at start-up."""
    global _blake3
    from blake3 import blake3

    _blake3 = blake3
    return blake3


class BuffersAltered(wire.BadSignature):
    """The signed parts verify but the buffers do not match the digests they carry (one
    altered, added or dropped on the way).

    Unlike any other refusal, the header is genuine: :func:`admit` attaches it (after the
    replay check), so a receiver can answer the sender with an error instead of leaving a
    task that will never be answered (a forwarder, which only counts buffers, has already
    recorded it as sent).
    """

    header: dict[str, Any] | None = None
    #: what the receiver made of the rest of the message (its own type), for its answer
    message: Any = None


class ClusterSigner(wire.Signer):
    """A :class:`wire.Signer` whose signature also covers every buffer (see the module)."""

    __slots__ = ("_seal_key", "_seal_stamp", "_seal_states")

    def __init__(self, key: bytes | str, scheme: str = "hmac-sha256") -> None:
        super().__init__(key, scheme)
        self._seal_key: bytes | None = None
        #: the last route seal's stamp (see route_seal)
        self._seal_stamp = 0
        #: (queue, engine) -> the keyed BLAKE2b state after that prefix
        self._seal_states: dict[tuple[str, bytes], Any] = {}

    covers_buffers = True

    def seal(self, parts: Sequence[Any], buffers: Sequence[Any] = ()) -> bytes:
        """The signature frame for ``parts`` and ``buffers``."""
        if self._base is None:
            return b""
        if not buffers:
            return self.sign(parts)
        tail = b"".join([buffer_digest(b) for b in buffers])
        h = self._base.copy()
        h.update(b"".join(parts) + _SEP + tail)
        return h.hexdigest().encode("ascii") + _SEP + tail

    def check(
        self,
        parts: Sequence[Any],
        signature: Any,
        buffers: Sequence[Any] = (),
        how: int = BUFFERS_HASHED,
    ) -> None:
        """Raise :class:`wire.BadSignature` unless ``signature`` seals ``parts`` and (as
        ``how`` asks) ``buffers``. Constant-time comparisons throughout."""
        if self._base is None:
            return
        if not signature:
            raise wire.BadSignature("unsigned message (empty signature)")
        sig = signature if signature.__class__ is bytes else bytes(signature)
        mac, dot, tail = sig.partition(_SEP)
        h = self._base.copy()
        if dot:
            h.update(b"".join(parts) + _SEP + tail)
        else:
            h.update(b"".join(parts))
        if not hmac.compare_digest(h.hexdigest().encode("ascii"), mac):
            raise wire.BadSignature("signature does not match the message")
        if how == BUFFERS_IGNORED:
            return
        count, odd = divmod(len(tail), DIGEST_HEX)
        if odd or count != len(buffers):
            raise BuffersAltered(
                f"the signature covers {count} buffer(s), the message has {len(buffers)}"
            )
        if how == BUFFERS_HASHED:
            for i, buf in enumerate(buffers):
                want = tail[i * DIGEST_HEX : (i + 1) * DIGEST_HEX]
                if not hmac.compare_digest(buffer_digest(buf), want):
                    # A buffer whose stream ended early (chunkstream.Joined) says why.
                    cut = getattr(buf, "cut", None)
                    if cut:
                        raise BuffersAltered(f"buffer {i} is incomplete: {cut}")
                    raise BuffersAltered(f"buffer {i} was altered after signing")

    def verify(self, parts: Sequence[Any], signature: bytes) -> bool:
        """Whether ``signature`` signs ``parts`` (buffers not looked at)."""
        try:
            self.check(parts, signature, (), BUFFERS_IGNORED)
        except wire.BadSignature:
            return False
        return True

    # -- the route seal -----------------------------------------------------------------

    def route_seal(self, queue: str, engine: bytes, signature: Any) -> bytes:
        """The routing frame a queue adds to a request it forwards to ``engine``: binds
        the request (by its signature) to this queue and this engine (see the module),
        and stamps it with this queue's clock.

        The stamp (microseconds, strictly increasing per signer: a queue seals in the
        order it sends) lets an engine order what comes through a queue by the queue's
        sending order, which the task scheduler's holding back does not disturb: its
        ordered replay guard then refuses a sealed request it has already forgotten
        (see :class:`wire.ReplayGuard`). A keyed BLAKE2b (a MAC in its keyed mode, under a
        key of its own derived from the cluster key) rather than an HMAC: one C call, a
        few times cheaper than copying an HMAC state, and paid twice per load-balanced
        task (queue and engine)."""
        now = time.time_ns() // 1000
        stamp = self._seal_stamp = now if now > self._seal_stamp else self._seal_stamp + 1
        mark = stamp.to_bytes(_SEAL_STAMP, "big")
        return SEAL_PREFIX + mark + self._seal_mac(queue, engine, signature, mark)

    def open_route_seal(self, seal: bytes, queue: str, engine: bytes, signature: Any) -> int:
        """The stamp of ``seal`` if it is ``queue``'s seal of ``signature`` for
        ``engine``, else -1."""
        if len(seal) != _SEAL_LEN:
            return -1
        mark = seal[len(SEAL_PREFIX) : len(SEAL_PREFIX) + _SEAL_STAMP]
        expected = SEAL_PREFIX + mark + self._seal_mac(queue, engine, signature, mark)
        return int.from_bytes(mark, "big") if hmac.compare_digest(expected, seal) else -1

    def _seal_mac(self, queue: str, engine: bytes, signature: Any, mark: bytes) -> bytes:
        state = self._seal_states.get((queue, engine))
        if state is None:
            if self._base is None:
                return b"\x00" * _SEAL_MAC
            if self._seal_key is None:
                self._seal_key = hmac.digest(self.key, b"corral-route-seal", "sha256")
            q = queue.encode()
            # queue and engine length-prefixed, the signature last: no two bindings collide
            prefix = b"%c%b%b%b" % (len(q), q, len(engine).to_bytes(4, "little"), engine)
            state = _blake2b(prefix, key=self._seal_key, digest_size=_SEAL_MAC)
            if len(self._seal_states) >= _SEAL_STATES:
                self._seal_states.clear()  # engines come and go: bounded
            self._seal_states[(queue, engine)] = state
        h = state.copy()  # the keyed state after the prefix: one C copy per message
        h.update(signature if signature.__class__ is bytes else bytes(signature))
        h.update(mark)  # fixed length, last: no (signature, stamp) pair reads as another
        return h.digest()

    # -- the monitor envelope ----------------------------------------------------------

    def monitor_tag(self, kind: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
        """The first frame of a copy for the hub's ``monitor``: ``kind:MAC`` where the MAC
        binds the kind, the engine, the client and the inner message's signature."""
        if self._base is None:
            return kind
        h = self._base.copy()
        h.update(_envelope(kind, engine, client, signature))
        return kind + b":" + h.hexdigest().encode("ascii")

    def open_monitor_tag(self, tag: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
        """The kind of a monitor copy whose envelope checks out; :class:`wire.BadSignature`
        for a copy that no queue or engine of this cluster made."""
        if self._base is None:
            return tag
        kind, colon, mac = tag.partition(b":")
        if not colon:
            raise wire.BadSignature("monitor copy without its envelope")
        h = self._base.copy()
        h.update(_envelope(kind, engine, client, signature))
        if not hmac.compare_digest(h.hexdigest().encode("ascii"), mac):
            raise wire.BadSignature("monitor envelope does not match")
        return kind


def _envelope(kind: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
    return _fields(b"corral-monitor", kind, engine, client, signature)


def _fields(*fields: Any) -> bytes:
    """Length-prefixed fields: no two different tuples MAC the same bytes."""
    out = []
    for f in fields:
        b = f if f.__class__ is bytes else bytes(f)
        out.append(struct.pack("<I", len(b)) + b)
    return b"".join(out)


def cluster_signer(key: bytes | str, scheme: str = "hmac-sha256") -> ClusterSigner:
    """The signer every cluster component uses for ``key`` (the cluster file's)."""
    return ClusterSigner(key, scheme)
