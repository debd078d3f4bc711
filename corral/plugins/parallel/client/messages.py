"""Building and parsing the client's wire messages, cheaply.

A client that submits thousands of tasks a second spends its time here, so this module
does the minimum per message: one JSON encoding per part (with a shared encoder), one
HMAC over the four parts, no intermediate message dict on the way out, and on the way in
no copy of buffer frames (a 50 MB result is handed to the deserializer as the frame it
arrived in). Everything else about the format (delimiter, signer, replay guard, errors)
comes from :mod:`corral.transports.zmq.wire`, so the two can never disagree.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from corral.transports.zmq import wire
from corral.transports.zmq.door import (
    BUFFERS_HASHED,
    BUFFERS_IGNORED,
    DEST,
    RUN,
    BuffersAltered,
    Role,
    admit,
)

__all__ = ["MessageBuilder", "Parsed", "encode_json", "parse"]

_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=wire._json_default
).encode
_EMPTY = b"{}"
_DELIM = wire.DELIMITER
_FIXED = 5  # signature + four JSON parts
#: msg_ids that need no JSON escaping (ours always qualify; others go the slow way).
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]+").fullmatch


def encode_json(obj: Any) -> bytes:
    """JSON bytes; falls back to the wire module (NaN handling, odd text) when needed."""
    if not obj:
        return _EMPTY
    try:
        return _encode(obj).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return wire.json_dumps(obj)


class MessageBuilder:
    """Makes signed frame lists for one client session.

    Message ids are the session's random prefix plus a counter: unique, and an order of
    magnitude cheaper than a fresh uuid4 per message.

    ``run``: the controller run (corral.transports.zmq.door.RUN) every request with a
    destination names, so the hub and the queues of a later run refuse it; "" while it
    is not known (a cluster file without one: the hub's connection reply tells it).
    """

    __slots__ = ("signer", "session", "username", "run", "_prefix", "_counter", "_templates")

    def __init__(
        self, signer: wire.Signer, session: str, username: str = "corral", run: str = ""
    ) -> None:
        self.signer = signer
        self.session = session
        self.username = username
        self.run = run
        self._prefix = uuid.UUID(bytes=os.urandom(16)).hex[:24] + "-"
        self._counter = itertools.count(1)
        self._templates: dict[str, str] = {}

    def set_run(self, run: str) -> None:
        """Name ``run`` in the requests built from now on (the hub said the controller
        runs another run than the cluster file: see Client._check_run)."""
        if run != self.run:
            self.run = run
            self._templates = {}  # the headers of the old run

    def new_msg_id(self) -> str:
        """A message id unique to this client; ``next`` on a count is atomic, so any
        thread may submit."""
        return f"{self._prefix}{next(self._counter):x}"

    def header(
        self, msg_type: str, msg_id: str | None = None, dest: str | None = None
    ) -> dict[str, Any]:
        """A protocol header (timezone-aware ISO date); ``dest``: where the message may
        be admitted (corral.transports.zmq.door.DEST), signed with the rest."""
        header = {
            "msg_id": msg_id or self.new_msg_id(),
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": wire.PROTOCOL_VERSION,
        }
        if dest is not None:
            header[DEST] = dest
            header[RUN] = self.run  # even "": the hub then tells it (door.RUN_ANY)
        return header

    def _header_bytes(self, msg_type: str, msg_id: str, dest: str | None = None) -> bytes:
        """The header's JSON from a template: the same bytes ``json_dumps`` would make
        for :meth:`header`, without building and encoding a dict each time."""
        key = msg_type if dest is None else f"{msg_type}\x00{dest}"
        template = self._templates.get(key)
        if template is None:
            sample = self.header(msg_type, "\x00ID\x00", dest)
            sample["date"] = "\x00DATE\x00"
            text = encode_json(sample).decode("utf-8").replace("%", "%%")
            template = text.replace("\\u0000ID\\u0000", "%s").replace("\\u0000DATE\\u0000", "%s")
            self._templates[key] = template
        if not _SAFE_ID(msg_id):
            header = self.header(msg_type, msg_id, dest)
            return encode_json(header)
        now = datetime.now(timezone.utc).isoformat()
        return (template % (msg_id, now)).encode("utf-8")

    def build(
        self,
        msg_type: str,
        content: dict[str, Any] | bytes | None = None,
        *,
        metadata: dict[str, Any] | bytes | None = None,
        buffers: Sequence[Any] = (),
        identities: Sequence[bytes] = (),
        parent: dict[str, Any] | None = None,
        msg_id: str | None = None,
        dest: str | None = None,
    ) -> tuple[str, list[Any]]:
        """``(msg_id, frames)`` of a signed message, ready to send.

        ``metadata`` and ``content`` may be given already encoded (bytes), so a view
        sending many requests with the same flags encodes them once. ``dest``: where a
        request may be admitted (corral.transports.zmq.door.dest_of).
        """
        if msg_id is None:
            msg_id = self.new_msg_id()
        parts = [
            self._header_bytes(msg_type, msg_id, dest),
            encode_json(parent),
            metadata if type(metadata) is bytes else encode_json(metadata),
            content if type(content) is bytes else encode_json(content),
        ]
        frames: list[Any] = [*identities, _DELIM, self.signer.seal(parts, buffers), *parts]
        frames.extend(buffers)
        return msg_id, frames


class Parsed:
    """A verified incoming message; ``buffers`` are the frames as received (no copy)."""

    __slots__ = ("identities", "header", "parent_header", "metadata", "content", "buffers")

    def __init__(
        self,
        identities: list[Any],
        header: dict[str, Any],
        parent_header: dict[str, Any],
        metadata: dict[str, Any],
        content: dict[str, Any],
        buffers: list[Any],
    ) -> None:
        self.identities = identities
        self.header = header
        self.parent_header = parent_header
        self.metadata = metadata
        self.content = content
        self.buffers = buffers

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def parent_id(self) -> str | None:
        return self.parent_header.get("msg_id")


def _bytes(frame: Any) -> bytes:
    if type(frame) is bytes:
        return frame
    inner = getattr(frame, "bytes", None)
    if isinstance(inner, bytes):
        return inner
    return bytes(frame)


_decode = json.JSONDecoder().decode


def _loads_rest(parts: Sequence[bytes]) -> list[Any]:
    """The parent header, metadata and content in one decoder call (a third of the
    per-call overhead; the header was parsed by the door)."""
    try:
        values = _decode(
            b"".join((b"[", parts[0], b",", parts[1], b",", parts[2], b"]")).decode("utf-8")
        )
    except (ValueError, RecursionError) as exc:
        raise wire.MalformedMessage(f"message parts are not valid UTF-8 JSON: {exc}") from None
    if len(values) != 3:  # a part smuggling a comma: "1,2" is not one JSON value
        raise wire.MalformedMessage("each message part must be one JSON object")
    for value in values:
        if type(value) is not dict:
            raise wire.MalformedMessage("message parts must be JSON objects")
    return values


def parse(
    frames: Sequence[Any],
    signer: wire.Signer,
    replay: wire.ReplayGuard | None = None,
    without_buffers: bool = False,
    role: Role | None = None,
) -> Parsed:
    """Verify and decode ``frames`` (bytes or zmq.Frame); raises :class:`wire.WireError`.

    Through :func:`corral.transports.zmq.door.admit` (constant-time signature and buffer
    digests, replay, header), in
    the same cheapest-first order, but buffer frames after the four JSON parts are passed
    through untouched instead of being copied to bytes. ``without_buffers``: a stored
    reply (corral.plugins.parallel.flow), whose buffers are fetched and checked later.
    ``role``: what the receiving channel's peer may send (corral.transports.zmq.door.ROLES).
    """
    split = -1
    for index, frame in enumerate(frames):
        # The delimiter is 9 bytes; anything else (identities, topics) is skipped cheaply.
        if len(frame) == 9 and _bytes(frame) == _DELIM:
            split = index
            break
    if split < 0:
        raise wire.MalformedMessage("no delimiter")
    if len(frames) - split - 1 < _FIXED:
        raise wire.MalformedMessage("too few frames after the delimiter")
    signature = _bytes(frames[split + 1])
    parts = [_bytes(f) for f in frames[split + 2 : split + 6]]
    buffers = frames[split + 6 :]
    if without_buffers and buffers:
        raise wire.MalformedMessage("a stored reply carries no buffers")
    # The door: signature (buffers hashed too, with a cluster signer; a stored reply's
    # buffers come later and are checked against the signed digests then), replay, header.
    how = BUFFERS_IGNORED if without_buffers else BUFFERS_HASHED
    try:
        header = admit(signer, replay, parts, signature, buffers, how=how, role=role)
    except BuffersAltered as exc:
        # The signed parts are genuine: say which request this answers, so that the
        # client fails it instead of waiting for a reply that will not come whole.
        assert exc.header is not None
        parent, metadata, content = _loads_rest(parts[1:])
        exc.message = Parsed(list(frames[:split]), exc.header, parent, metadata, content, [])
        raise
    if not isinstance(header.get("msg_type"), str):
        raise wire.MalformedMessage("header must hold string 'msg_id' and 'msg_type'")
    parent, metadata, content = _loads_rest(parts[1:])
    return Parsed(list(frames[:split]), header, parent, metadata, content, list(buffers))
