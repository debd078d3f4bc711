"""The engine's hot-path framing: receive, verify and answer messages with few allocations.

Why not :class:`corral.transports.zmq.session.Session` as it is: an engine answers
thousands of tiny tasks a second, and on this path the generic helpers cost more than the
task itself. Measured with pyzmq 27 on the target machine, ``send_multipart`` spends ~11 us
on an 8-frame reply where a plain ``send(..., SNDMORE)`` loop spends ~4 us, and
``recv_multipart(copy=True)`` copies every buffer frame (a 50 MB argument included) into a
new ``bytes``. So this module:

* receives the routing frames and the five fixed parts as ``bytes`` (cheap for small
  frames) and every buffer frame as a ``zmq.Frame`` (no copy, whatever its size);
* checks the HMAC and the replay guard with the very :class:`~wire.Signer` and
  :class:`~wire.ReplayGuard` the session uses, before parsing any JSON, and parses only
  the header and the content (the engine never reads a request's parent or metadata);
* builds reply headers from a per-process prefix and a counter (unique ids without
  ``uuid4`` per message) and reuses the request's raw header bytes as the reply's
  ``parent_header`` instead of encoding the dict again.

Every way a frame list can be wrong raises :class:`~wire.WireError`, as in :mod:`wire`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import zmq

from corral.core.interrupts import protect
from corral.transports.zmq import wire
from corral.transports.zmq.batch import BatchError, is_batch, unbatch
from corral.transports.zmq.door import DEST, ROLES, RUN, BuffersAltered, Role, admit, take_seal
from corral.transports.zmq.frames import recv_frames, send_frames

__all__ = [
    "ROLES",
    "MalformedRequest",
    "Message",
    "Replier",
    "answerable",
    "iso_now",
    "parse_message",
    "recv_message",
    "recv_messages",
    "send_frames",
]

# Replies are sent from here, frame by frame: an interrupt must not tear one.
protect(__file__)

_DELIM = wire.DELIMITER
# Plain ints: zmq's Flag enums cost a Python-level __or__/__call__ per use (~1 us each).
#: More routing frames than any queue adds: a message with more is garbage.
_MAX_IDENTS = 16
_UTC = timezone.utc


def iso_now() -> str:
    """The current UTC time in ISO 8601, as every header and reply metadata carries it."""
    return datetime.now(_UTC).isoformat()


class Message:
    """One verified request: routing frames, header, content and zero-copy buffers.

    ``metadata`` and ``parent_header`` are parsed only when asked for (the engine itself
    never needs them), so the raw bytes are kept.
    """

    __slots__ = (
        "idents",
        "header",
        "raw_header",
        "content",
        "buffers",
        "msg_type",
        "msg_id",
        "_raw_parent",
        "_raw_metadata",
    )

    def __init__(
        self,
        idents: list[bytes],
        header: dict[str, Any],
        raw_header: bytes,
        content: dict[str, Any],
        buffers: list[Any],
        raw_parent: bytes,
        raw_metadata: bytes,
    ) -> None:
        self.idents = idents
        self.header = header
        self.raw_header = raw_header
        self.content = content
        self.buffers = buffers
        self.msg_type: str = header["msg_type"]
        self.msg_id: str = header["msg_id"]
        self._raw_parent = raw_parent
        self._raw_metadata = raw_metadata

    @property
    def metadata(self) -> dict[str, Any]:
        return _parse_dict(self._raw_metadata, "metadata")

    @property
    def parent_header(self) -> dict[str, Any]:
        return _parse_dict(self._raw_parent, "parent_header")


class MalformedRequest(wire.MalformedMessage):
    """A request whose signed header was admitted (signature, role, destination, seal,
    replay) but whose content is not a JSON object.

    The queue that forwarded it parses only the header and metadata, so it has already
    counted the request as owed by this engine: dropped without a word, it stayed
    "running" at the hub for good, its sender waited for ever, and each one held one of
    the engine's load-balanced slots (300 of them starved the task scheduler). Like
    :class:`BuffersAltered`, the header is genuine, so the engine answers it with this
    error (:func:`answerable`).
    """

    #: the request as far as it could be read (no content, no buffers), for the answer
    message: Message | None = None


def answerable(exc: wire.WireError) -> Message | None:
    """The request a refusal should still be answered (with ``exc``), or None to drop it:
    one whose genuine header the door admitted although the rest is unusable (buffers
    altered, content unreadable)."""
    if isinstance(exc, (BuffersAltered, MalformedRequest)):
        message = exc.message
        if message.__class__ is Message and message.msg_type.endswith("_request"):
            return message
    return None


_decode = json.JSONDecoder().decode  # json.loads minus its wrapper and encoding sniffing


def _parse_dict(part: bytes, name: str) -> dict[str, Any]:
    try:
        value = _decode(part.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise wire.MalformedMessage(f"{name} is not valid UTF-8 JSON: {exc}") from None
    if type(value) is not dict:
        raise wire.MalformedMessage(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def recv_message(
    sock: zmq.Socket[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    flags: int = 0,
    role: Role | None = None,
    dest: str | None = None,
    sealed_to: bytes | None = None,
) -> Message:
    """Receive and verify one message from ``sock`` (a socket that never carries batches:
    registration, control).

    Raises ``zmq.Again`` (with ``flags=zmq.NOBLOCK``) when nothing waits, and
    :class:`wire.WireError` for anything malformed, unsigned, forged or replayed; either
    way the whole multipart message has been consumed. ``dest`` and ``sealed_to``: where
    the socket sits (see :func:`corral.transports.zmq.door.admit`).
    """
    return _parse_routed(recv_frames(sock, flags), signer, replay, role, dest, sealed_to)


def recv_messages(
    sock: zmq.Socket[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    flags: int = 0,
    role: Role | None = None,
    dest: str | None = None,
    sealed_to: bytes | None = None,
) -> tuple[list[Message], list[wire.WireError]]:
    """Receive one zmq message, which may be a batch: the verified messages it carries,
    and why each of the others was dropped. ``zmq.Again`` (with ``NOBLOCK``) when empty.

    One bad message in a batch costs only itself.
    """
    frames = recv_frames(sock, flags)
    if len(frames) == 3 and is_batch(frames[0]):
        try:
            batch = unbatch(frames, 0)
        except BatchError as exc:
            return [], [wire.MalformedMessage(str(exc))]
    else:
        batch = [frames]
    messages: list[Message] = []
    errors: list[wire.WireError] = []
    for one in batch:
        try:
            messages.append(_parse_routed(one, signer, replay, role, dest, sealed_to))
        except wire.WireError as exc:
            # Kept without its traceback: its frames (this one among them, holding
            # ``errors``, so a cycle) held the refused message's frames until the cyclic
            # collector ran (``_verified``).
            errors.append(exc.with_traceback(None))
    return messages, errors


def _parse_routed(
    frames: list[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    role: Role | None = None,
    dest: str | None = None,
    sealed_to: bytes | None = None,
) -> Message:
    """Verify ``[*routing ids, DELIM, signature, four parts, buffers...]`` (zmq frames, or
    bytes from a batch); a queue's route seal among the routing ids is taken off (so a
    reply never echoes it) and checked."""
    idents: list[bytes] = []
    at = 0
    n = len(frames)
    while True:
        if at >= n:
            raise wire.MalformedMessage(f"no delimiter among {len(idents)} frames")
        data = frames[at]
        if data.__class__ is not bytes:
            data = data.bytes
        if data == _DELIM:
            break
        if len(idents) >= _MAX_IDENTS:
            raise wire.MalformedMessage("too many routing frames")
        idents.append(data)
        at += 1
    if n < at + 6:
        raise wire.MalformedMessage(
            f"expected signature and four JSON parts after the delimiter, got {n - at - 1}"
        )
    parts = [f if f.__class__ is bytes else f.bytes for f in frames[at + 1 : at + 6]]
    seal = take_seal(idents)
    return _verified(idents, parts, frames[at + 6 :], signer, replay, role, dest, sealed_to, seal)


def parse_message(
    frames: Sequence[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    role: Role | None = None,
    dest: str | None = None,
) -> Message:
    """Verify one message received whole (``[DELIM, signature, four parts, buffers...]``,
    no routing frames: a same-host connection, :mod:`.local`)."""
    if len(frames) < 6:
        raise wire.MalformedMessage(f"a message needs at least 6 frames, got {len(frames)}")
    if bytes(frames[0]) != _DELIM:
        raise wire.MalformedMessage("the first frame must be the delimiter")
    parts = [bytes(f) for f in frames[1:6]]
    return _verified([], parts, list(frames[6:]), signer, replay, role, dest)


def _verified(
    idents: list[bytes],
    parts: list[bytes],
    buffers: list[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None,
    role: Role | None,
    dest: str | None = None,
    sealed_to: bytes | None = None,
    seal: bytes | None = None,
) -> Message:
    """Let ``parts`` through the cluster's door (signature with every buffer hashed,
    header, role, destination and seal, replay), then parse the content."""
    signature, raw_header, raw_parent, raw_metadata, raw_content = parts
    try:
        header = admit(
            signer, replay, parts[1:], signature, buffers,
            role=role, dest=dest, sealed_to=sealed_to, seal=seal,
        )  # fmt: skip
    except BuffersAltered as exc:  # genuine header: the engine answers with an error
        assert exc.header is not None
        exc.message = Message(idents, exc.header, raw_header, {}, [], raw_parent, raw_metadata)
        raise
    if type(header.get("msg_type")) is not str:
        raise wire.MalformedMessage("header must hold string 'msg_id' and 'msg_type'")
    try:
        content = _parse_dict(raw_content, "content")
    except wire.MalformedMessage as exc:  # admitted header: answered (MalformedRequest)
        why = str(exc)
    else:
        return Message(idents, header, raw_header, content, buffers, raw_parent, raw_metadata)
    # Raised out here, with no context: an exception that refers (through its context's
    # traceback) to this frame, whose locals refer to it, is a cycle that kept the whole
    # request alive until the cyclic collector came (a 200 MB one held 600 MB for good).
    bad = MalformedRequest(why)
    bad.message = Message(idents, header, raw_header, {}, [], raw_parent, raw_metadata)
    try:
        raise bad
    finally:
        del bad, parts, buffers, raw_content


class Replier:
    """Builds signed reply frames for one engine (one session id, one counter).

    Header ids are ``<session>-<n>``: unique per process without drawing random bytes per
    message, and a signature never repeats because ``n`` never does.
    """

    __slots__ = ("signer", "_prefix", "_tail", "_n")

    def __init__(self, signer: wire.Signer, session_id: str, username: str) -> None:
        self.signer = signer
        self._prefix = session_id.encode("ascii") + b"-"
        self._tail = (
            b'","username":'
            + json.dumps(username).encode("utf-8")
            + b',"session":"'
            + session_id.encode("ascii")
            + b'","date":"'
        )
        self._n = 0

    def header(
        self, msg_type: str, date: str, dest: str | None = None, run: str | None = None
    ) -> bytes:
        """The JSON of a fresh header for ``msg_type`` (``msg_type`` and ``dest`` must be
        plain ASCII); ``dest``: where a request may be admitted (door.dest_of);
        ``run``: the controller run a request to the hub is for (door.RUN)."""
        self._n += 1
        return b'{"msg_id":"%b%d","msg_type":"%b%b%b","version":"%b"%b%b}' % (
            self._prefix,
            self._n,
            msg_type.encode("ascii"),
            self._tail,
            date.encode("ascii"),
            wire.PROTOCOL_VERSION.encode("ascii"),
            b"" if dest is None else b',"%b":"%b"' % (DEST.encode(), dest.encode("ascii")),
            b"" if not run else b',"%b":%b' % (RUN.encode(), json.dumps(run).encode("ascii")),
        )

    @property
    def last_msg_id(self) -> str:
        """The msg_id of the header built last (a reply's parent names it)."""
        return self._prefix.decode("ascii") + str(self._n)

    def frames(
        self,
        idents: Sequence[bytes],
        msg_type: str,
        parent: bytes,
        metadata: bytes,
        content: bytes,
        buffers: Sequence[Any] = (),
        date: str | None = None,
        dest: str | None = None,
        run: str | None = None,
    ) -> list[Any]:
        """Frames of a signed message; ``parent``/``metadata``/``content`` are JSON bytes."""
        parts = [self.header(msg_type, date or iso_now(), dest, run), parent, metadata, content]
        return [*idents, _DELIM, self.signer.seal(parts, buffers), *parts, *buffers]
