"""The Jupyter wire format as pure functions: framing, JSON, HMAC signing, replay checks.

A message travels as ``[identities..., b"<IDS|MSG>", signature, header, parent_header,
metadata, content, buffers...]``. The signature is an HMAC (SHA-256 by default) over the
four JSON parts, so a peer that does not hold the connection file's key can neither forge
nor alter a request. This module owns no sockets: the kernel server, the clients and the
parallel controller all call the same functions, and the tests exercise them without any
network. Every way a frame list can be wrong surfaces as a :class:`WireError` subclass, so
a server can drop and log bad input with a single ``except WireError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import uuid
from array import array
from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any

from corral.errors import CorralError

__all__ = [
    "DELIMITER",
    "PROTOCOL_VERSION",
    "WireError",
    "MalformedMessage",
    "BadSignature",
    "ReplayedMessage",
    "StaleMessage",
    "MessageTooLarge",
    "Signer",
    "ReplayGuard",
    "new_id",
    "make_header",
    "make_message",
    "serialize",
    "deserialize",
    "json_dumps",
    "json_loads",
]

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"

#: Parts after the delimiter that every message has: signature + four JSON dicts.
_FIXED_PARTS = 5


class WireError(CorralError, ValueError):
    """A frame list that must not be acted upon; the message says why."""


class MalformedMessage(WireError):
    """Frames that are not a Jupyter message: no delimiter, too few parts, bad JSON."""


class BadSignature(WireError):
    """A message whose HMAC is missing or does not match: unsigned, forged or altered."""


class ReplayedMessage(WireError):
    """A correctly signed message whose signature was already seen: a replay."""


class StaleMessage(ReplayedMessage):
    """A correctly signed message dated no later than messages of its session that the
    receiver's bounded replay memory has already forgotten: it cannot be told from a
    replay of one of them, so it is refused like one."""


class MessageTooLarge(WireError):
    """A message larger than the receiver is willing to parse."""


# ----------------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> Any:
    """Encode what the protocol itself produces beyond plain JSON: dates, sets, tuples."""
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=timezone.utc)
        return obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raise TypeError(
            "bytes cannot go into a JSON message part; send them as a buffer "
            "(make_message(..., buffers=[...])) or encode them (e.g. base64) first"
        )
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable: {obj!r:.80}")


_strict_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
)


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON; browsers reject them) with null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; datetimes become ISO 8601, NaN/inf become null, bytes are refused.

    Lone surrogates (from undecodable file names, say) are replaced rather than failing the
    whole message, because a message that cannot be sent is worse than one odd character.
    """
    try:
        text = _strict_encoder.encode(obj)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        text = _strict_encoder.encode(_finite(obj))
    return text.encode("utf-8", "replace")


def json_loads(b: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON part (bytes in UTF-8, as they come off the wire)."""
    if isinstance(b, memoryview):
        b = b.tobytes()
    return json.loads(b)


# -------------------------------------------------------------------------- signing


class Signer:
    """Signs and verifies the four JSON parts with the connection's key.

    ``key == b""`` disables signing exactly as Jupyter does: the signature frame is empty
    and every signature verifies. ``scheme`` is ``"hmac-<hashlib name>"``.
    """

    __slots__ = ("key", "scheme", "_base")

    #: Whether :meth:`seal` covers buffer frames itself (a cluster signer does); if not,
    #: :func:`serialize` puts their digests in the signed metadata.
    covers_buffers = False

    def __init__(self, key: bytes | str, scheme: str = "hmac-sha256") -> None:
        if isinstance(key, str):
            key = key.encode("ascii")
        if not scheme.startswith("hmac-"):
            raise ValueError(f"signature scheme must look like 'hmac-sha256', got {scheme!r}")
        digest = scheme[len("hmac-") :]
        try:
            hashlib.new(digest)
        except (ValueError, TypeError):
            raise ValueError(f"unknown hash {digest!r} in signature scheme {scheme!r}") from None
        self.key = bytes(key)
        self.scheme = scheme
        # One keyed HMAC, copied per message: saves re-deriving the key pads every time.
        # The C-level object under ``hmac.HMAC`` where there is one: its copy/update/
        # hexdigest skip a Python method each, and one update over the joined parts
        # replaces four. Every message crossing a socket is signed or checked here, so
        # that is about 60% off a few microseconds many times per task.
        base = hmac.new(self.key, digestmod=digest) if self.key else None
        self._base: Any = getattr(base, "_hmac", None) or base

    @property
    def enabled(self) -> bool:
        """Whether messages are signed at all (a non-empty key)."""
        return self._base is not None

    def sign(self, parts: Sequence[bytes | memoryview]) -> bytes:
        """Hex digest over header, parent_header, metadata and content (in that order)."""
        if self._base is None:
            return b""
        h = self._base.copy()
        h.update(b"".join(parts))
        digest: bytes = h.hexdigest().encode("ascii")
        return digest

    def verify(self, parts: Sequence[bytes | memoryview], signature: bytes) -> bool:
        """Whether ``signature`` signs ``parts``; compared in constant time."""
        if self._base is None:
            return True
        if not signature:
            return False
        return hmac.compare_digest(self.sign(parts), bytes(signature))

    def seal(self, parts: Sequence[bytes | memoryview], buffers: Sequence[Any] = ()) -> bytes:
        """The signature frame for a message: Jupyter's, over the JSON parts only (a
        cluster signer, :class:`corral.transports.zmq.door.ClusterSigner`, covers the
        buffers too)."""
        return self.sign(parts)

    def check(
        self,
        parts: Sequence[bytes | memoryview],
        signature: bytes,
        buffers: Sequence[Any] = (),
        how: int = 2,
    ) -> None:
        """Raise :class:`BadSignature` unless ``signature`` signs ``parts`` (Jupyter's
        scheme ignores ``buffers`` and ``how``)."""
        if self._base is None:
            return
        if not signature:
            raise BadSignature("unsigned message (empty signature)")
        if not self.verify(parts, signature):
            raise BadSignature("signature does not match the message")


class ReplayGuard:
    """Remembers the most recent signatures so an exact resend of a message is refused.

    Memory is bounded: once ``maxlen`` signatures are held the oldest is forgotten. With a
    random ``msg_id`` and a timestamp in every signed header, two genuine messages never
    share a signature. Safe to share between the threads serving a kernel's channels, so
    a message captured on one channel cannot be replayed on another.

    Each signature is remembered as a 64-bit key (its first 16 hex digits) in two flat
    arrays: an open-addressing hash table kept at most half full (linear probing,
    deletions shift later keys back, so there are no tombstones) and a ring of keys in
    arrival order. Both grow with use, the table by doubling, up to about 30 bytes per
    remembered signature at ``maxlen`` (42 when ordered, below); a set of Python ints
    took 80, and a busy controller holds one guard per socket it verifies. Only a genuine
    signature can be replayed, and two of those share 64 bits with odds of about one in
    10^14 at this size.

    **What is forgotten stays refused** (``ordered=True``). A bounded memory alone would
    let a message be replayed once ``maxlen`` newer ones have pushed it out. An *ordered*
    guard, for a receiver that each sender reaches in one hop (so a session's messages
    arrive in the order they were made: a queue's client side, the hub's registration
    socket, an engine's direct sockets, a kernel's channels), also keeps, per
    sending session (the signed header's ``session``), a *horizon*: the latest signed
    ``date`` among that session's forgotten messages. Forgetting goes in arrival order, so
    every forgotten message of a session is dated at or before its horizon, and a message
    dated there is refused as stale (:class:`StaleMessage`) whether or not its signature
    is still held. A genuine message is refused only if its sender's clock stepped back
    by more than the age of the ``maxlen``-th newest message here, or if it was delayed
    behind ``maxlen`` later ones of its own session. A message without a parseable
    ``date`` or ``session`` (no corral peer sends one; only a key holder could sign one)
    is guarded by its signature alone. Sessions that no remembered message names are
    dropped in bulk when their table grows past :attr:`_FIRST_SESSIONS` entries (then
    twice the sessions still named), their latest horizon kept as one *floor* that
    applies to every session: the table stays bounded whatever the number of senders
    over the guard's life (about 150 bytes a session). The floor compares one sender's
    clock with another's, so it is put off that long: once it is in use, a sender whose
    clock lags by more than the age of the dropped sessions' last messages is refused.

    A receiver reached through a queue that may hold a message back (an engine's queue
    sockets behind the task scheduler, the hub's monitor, a client's replies, some of
    which come from the hub's store) must not be ordered: a genuine message delayed past
    ``maxlen`` later ones of its session would be refused. Any guard can still be told
    where a sender starts (:meth:`refuse_before`).
    """

    __slots__ = (
        "maxlen",
        "ordered",
        "_table",
        "_ring",
        "_stamps",
        "_owners",
        "_sessions",
        "_horizons",
        "_floor",
        "_pinned",
        "_session_cap",
        "_mask",
        "_max_mask",
        "_count",
        "_next",
        "_lock",
    )

    _FIRST_SIZE = 1024
    _FIRST_SESSIONS = 65_536
    #: The stamp of a message without a usable date (never compared).
    _UNDATED = -1

    def __init__(self, maxlen: int = 100_000, *, ordered: bool = False) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        #: whether forgotten messages stay refused (per-session horizons, above)
        self.ordered = ordered
        self._max_mask = (1 << max(4, (2 * maxlen - 1).bit_length())) - 1
        self._mask = min(self._FIRST_SIZE - 1, self._max_mask)
        self._table = array("Q", [0]) * (self._mask + 1)  # 0 marks an empty slot
        self._ring = array("Q")  # appended to until maxlen long, then reused in a circle
        self._stamps = array("q")  # beside the ring: each message's date, in microseconds
        self._owners = array("I")  # beside the ring: each message's session (0: none)
        self._sessions: dict[str, int] = {}  # session id -> its index in _horizons
        self._horizons = array("q", [self._UNDATED])  # index 0: "no session"
        self._floor = self._UNDATED  # the latest horizon of the sessions dropped
        self._pinned: set[str] = set()  # sessions given a start: never dropped
        self._session_cap = self._FIRST_SESSIONS
        self._count = 0
        self._next = 0  # once the ring is full: the oldest key, overwritten next
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, signature: object) -> bool:
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            return False
        key = _signature_key(bytes(signature))
        with self._lock:
            return self._table[self._slot(key)] == key

    def check(
        self,
        signature: bytes,
        session: object = None,
        date: object = None,
        *,
        stamp: int | None = None,
    ) -> None:
        """Record ``signature``; raise :class:`ReplayedMessage` if it was seen before, or
        :class:`StaleMessage` if ``date`` (the signed header's) is at or before what this
        guard has already forgotten of ``session``. ``stamp``: the order already as
        microseconds (a queue's route seal), instead of ``date``."""
        sig = bytes(signature)
        key = _signature_key(sig)
        ordered = self.ordered
        if session.__class__ is not str or not (ordered or session in self._sessions):
            stamp = self._UNDATED
        elif stamp is None:
            stamp = _stamp(date)
        with self._lock:
            owner = 0
            if stamp != self._UNDATED:
                name = str(session)  # it is one: a stamp is taken only then
                # Known sessions by a plain lookup: this runs for every message.
                known = self._sessions.get(name)
                owner = self._session_index(name) if known is None else known
                if stamp <= self._horizons[owner] or stamp <= self._floor:
                    raise StaleMessage(
                        f"message of {date} from session {str(session)[:12]}... is older "
                        "than what this receiver remembers: refused as a possible replay"
                    )
            table = self._table
            slot = self._slot(key)
            if table[slot] == key:
                raise ReplayedMessage(
                    f"signature {sig[:16].decode('ascii', 'replace')}... replayed"
                )
            ring = self._ring
            if self._count == self.maxlen:
                oldest = self._next
                self._forget(ring[oldest])
                ring[oldest] = key
                if ordered:
                    stamps, owners = self._stamps, self._owners
                    gone = owners[oldest]  # its session's horizon moves up to its date
                    if gone and stamps[oldest] > self._horizons[gone]:
                        self._horizons[gone] = stamps[oldest]
                    stamps[oldest] = stamp
                    owners[oldest] = owner
                self._next = (oldest + 1) % self.maxlen
                slot = self._slot(key)  # forgetting may have moved keys up the probe path
            else:
                ring.append(key)
                if ordered:
                    self._stamps.append(stamp)
                    self._owners.append(owner)
                self._count += 1
                if 2 * self._count > self._mask + 1 and self._mask < self._max_mask:
                    self._grow()  # rehashes every key, this one included
                    return
            self._table[slot] = key

    def refuse_before(self, session: str, date: object) -> None:
        """Refuse from now on every message of ``session`` dated before ``date`` (a date
        of that session's own clock), ordered guard or not.

        For a receiver that joins a running sender: what that sender published before
        the receiver learned its state (a subscriber's first reply from the publisher)
        was never seen here, so the replay guard alone would take a copy of it."""
        stamp = _stamp(date)
        if stamp == self._UNDATED:
            return
        with self._lock:
            index = self._sessions.get(session)
            if index is None:
                index = len(self._horizons)
                self._sessions[session] = index
                self._horizons.append(self._UNDATED)
            self._horizons[index] = max(self._horizons[index], stamp - 1)
            self._pinned.add(session)  # a recent date: not for the floor of all sessions

    def _session_index(self, session: str) -> int:
        """The index of ``session``'s horizon, made on first sight (lock held)."""
        index = self._sessions.get(session)
        if index is None:
            if len(self._sessions) >= self._session_cap:
                self._drop_idle_sessions()
            index = len(self._horizons)
            self._sessions[session] = index
            self._horizons.append(self._UNDATED)
        return index

    def _drop_idle_sessions(self) -> None:
        """Forget every session no remembered message names, keeping the latest of their
        horizons as the floor (lock held); the table is renumbered."""
        named = set(self._owners)
        renumber = {0: 0}
        horizons = array("q", [self._UNDATED])
        sessions: dict[str, int] = {}
        for session, index in self._sessions.items():
            if index in named or session in self._pinned:
                renumber[index] = len(horizons)
                sessions[session] = len(horizons)
                horizons.append(self._horizons[index])
            elif self._horizons[index] > self._floor:
                self._floor = self._horizons[index]
        self._owners = array("I", (renumber[owner] for owner in self._owners))
        self._sessions, self._horizons = sessions, horizons
        self._session_cap = max(self._FIRST_SESSIONS, 2 * len(sessions))

    def _grow(self) -> None:
        """Double the table and put every remembered key (all in the ring) back."""
        self._mask = self._mask * 2 + 1
        table = self._table = array("Q", [0]) * (self._mask + 1)
        for key in self._ring:
            table[self._slot(key)] = key

    def _slot(self, key: int) -> int:
        """Where ``key`` is, or the empty slot where it would go (linear probing)."""
        table, mask = self._table, self._mask
        slot = key & mask
        while True:
            held = table[slot]
            if held == key or held == 0:
                return slot
            slot = (slot + 1) & mask

    def _forget(self, key: int) -> None:
        """Remove ``key``, shifting later keys of its probe run back (no tombstones)."""
        table, mask = self._table, self._mask
        hole = self._slot(key)
        probe = hole
        while True:
            probe = (probe + 1) & mask
            held = table[probe]
            if held == 0:
                break
            home = held & mask
            # ``held`` may fill the hole unless its home lies cyclically in (hole, probe].
            if (home - hole - 1) & mask >= (probe - hole) & mask:
                table[hole] = held
                hole = probe
        table[hole] = 0


def _stamp(date: object) -> int:
    """A signed header's ``date`` in microseconds (its own clock), or ``_UNDATED``.

    Computed for every message an ordered guard checks, so UTC (what corral and
    Jupyter's clients write) takes the arithmetic on the fields, about twice as fast as
    subtracting aware datetimes; another offset is converted first, and a date without
    one is read as UTC.
    """
    if date.__class__ is not str:
        return ReplayGuard._UNDATED
    try:
        moment = datetime.fromisoformat(date)
        zone = moment.tzinfo
        if zone is not None and zone is not timezone.utc:
            moment = moment.astimezone(timezone.utc)
        seconds = moment.toordinal() * 86400 + moment.hour * 3600 + moment.minute * 60
        return (seconds + moment.second) * 1_000_000 + moment.microsecond
    except (ValueError, OverflowError):
        return ReplayGuard._UNDATED


def _signature_key(signature: bytes) -> int:
    """A compact key for a signature: its first 64 bits (any scheme's hex digest), never 0."""
    try:
        key = int(signature[:16], 16)
    except ValueError:  # not hex: keep all of it, hashed
        key = hash(signature) & 0xFFFF_FFFF_FFFF_FFFF
    return key or 1


# ------------------------------------------------------------------------- messages


def new_id() -> str:
    """A fresh message or session id: 32 hex digits from uuid4."""
    return uuid.uuid4().hex


def make_header(
    msg_type: str, session: str, username: str = "corral", msg_id: str | None = None
) -> dict[str, Any]:
    """A protocol header with a timezone-aware ISO 8601 ``date``."""
    return {
        "msg_id": msg_id or new_id(),
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": datetime.now(timezone.utc).isoformat(),
        "version": PROTOCOL_VERSION,
    }


def make_message(
    msg_type: str,
    content: dict[str, Any],
    *,
    session: str,
    parent: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    buffers: Sequence[Any] = (),
    username: str = "corral",
) -> dict[str, Any]:
    """A message dict ready for :func:`serialize`.

    ``parent`` is the message being answered (its ``header`` becomes ``parent_header``);
    a bare header dict is accepted too.
    """
    header = make_header(msg_type, session, username)
    if parent:
        parent_header = parent["header"] if "header" in parent else parent
    else:
        parent_header = {}
    return {
        "header": header,
        "parent_header": parent_header,
        "metadata": metadata if metadata is not None else {},
        "content": content,
        "buffers": list(buffers),
        "msg_id": header["msg_id"],
        "msg_type": msg_type,
    }


def serialize(
    msg: dict[str, Any], signer: Signer, identities: Sequence[bytes] = ()
) -> list[bytes | memoryview]:
    """Frames for ``msg``, routed to ``identities`` (ROUTER sockets need them first)."""
    metadata = msg.get("metadata") or {}
    buffers: list[bytes | memoryview] = []
    for buf in msg.get("buffers") or ():
        if isinstance(buf, (bytes, memoryview)):
            buffers.append(buf)
        else:
            try:
                buffers.append(memoryview(buf))
            except TypeError:
                raise TypeError(
                    f"message buffers must support the buffer protocol, got {type(buf).__name__}"
                ) from None
    if buffers and signer.enabled and not signer.covers_buffers:
        # Kernel channels: Jupyter's signature leaves buffers out, so their digests ride
        # in the (signed) metadata, where the spec lets extra keys be; jupyter_client
        # peers ignore them (corral.transports.zmq.door.check_buffer_digests).
        from corral.transports.zmq.door import BUFFER_DIGESTS, buffer_digest

        metadata = {**metadata, BUFFER_DIGESTS: [buffer_digest(b).decode() for b in buffers]}
    parts = [
        json_dumps(msg["header"]),
        json_dumps(msg.get("parent_header") or {}),
        json_dumps(metadata),
        json_dumps(msg.get("content") or {}),
    ]
    frames: list[bytes | memoryview] = list(identities)
    frames.append(DELIMITER)
    frames.append(signer.seal(parts, buffers))
    frames.extend(parts)
    frames.extend(buffers)
    return frames


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, (bytearray, memoryview)):
        return bytes(frame)
    # zmq.Frame and other buffer-protocol objects.
    buffer = getattr(frame, "bytes", None)
    if isinstance(buffer, bytes):
        return buffer
    try:
        return bytes(memoryview(frame))
    except TypeError:
        raise MalformedMessage(f"frame of type {type(frame).__name__} is not bytes") from None


def _parse_dict(part: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(part)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise MalformedMessage(f"{name} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def deserialize(
    frames: Sequence[bytes],
    signer: Signer,
    replay: ReplayGuard | None = None,
    max_size: int | None = None,
) -> tuple[list[bytes], dict[str, Any]]:
    """Split ``frames`` into ``(identities, msg)``, verifying signature and freshness.

    Checks run cheapest first and before any JSON is parsed: size, framing, signature,
    replay. So a forged message costs one HMAC, and only an authentic one reaches the
    parser. Raises :class:`MalformedMessage`, :class:`MessageTooLarge`,
    :class:`BadSignature` or :class:`ReplayedMessage`; never anything else.

    The checks themselves are :func:`corral.transports.zmq.door.admit`, the one door
    every received message passes (imported here lazily: the door builds on this module).
    """
    from corral.transports.zmq.door import deserialize as through_the_door

    return through_the_door(frames, signer, replay, max_size)
