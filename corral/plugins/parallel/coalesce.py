"""Reply coalescing: the replies of one multi-engine call leave a queue together.

Shared by the queues (:class:`Coalescer`) and the client (:func:`mark_metadata`).

Why: a DirectView or BroadcastView call to N engines gets N replies, each from its own
engine connection, so the queue receives them in a trickle; sent on as they come, they
reach the client and the hub in as many zmq messages as the queue had passes over its
sockets (6-9 per call to 256 simulated engines, each a wake-up of the client's I/O thread
and of the hub). Held until the call is answered, they leave in one flush: one message
to the client and one batch of records to the hub.

What is held is only ever forwarded verbatim: every reply was verified by the queue
(signature, replay guard, and that this engine owes this request) before it is held, and
keeps the engine's signature, which the client checks again for each reply. Coalescing
chooses *when* replies go, never what they say or to whom (the client of the request).

Latency is bounded: a call's held replies go as soon as every request of the call is
answered, or once no reply of it came for :data:`GAP` seconds (the rest are slow: the
others do not wait for a straggler), or :data:`HOLD` seconds after the first was held.
Order is kept per engine: before a reply from engine E to client C goes out (or is held
for another call), any other call of C holding an earlier reply of E is released first.

A client marks the requests of one call with ``"coalesce": [key, n]`` in their metadata
(``key`` unique per call for that client, ``n`` the number of requests); the broadcast
queue groups the targets of one request by itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = [
    "GAP",
    "HOLD",
    "MARK",
    "Coalescer",
    "Group",
    "mark_metadata",
    "parse_mark",
    "read_mark",
]

#: Held replies of a call go once none of its replies came for this long (seconds);
#: ``CORRAL_COALESCE_GAP`` overrides it (0 turns coalescing off: nothing waits).
GAP = float(os.environ.get("CORRAL_COALESCE_GAP", "0.005"))
#: ... and at the latest this long after the first of them was held
#: (``CORRAL_COALESCE_HOLD``).
HOLD = float(os.environ.get("CORRAL_COALESCE_HOLD", "0.1"))
#: How the metadata of a marked request begins: the mark is its first key, so the queue
#: reads it without parsing the rest (a DirectView's metadata lists every target: parsing
#: it for each of N requests made the queue's cost per call grow as N squared).
MARK = b'{"coalesce":'
#: The mark is read from at most this many bytes after :data:`MARK`.
_MARK_SPAN = 600
_DECODER = json.JSONDecoder()
#: A mark claiming more requests than this is ignored (nothing is held for it).
MAX_MEMBERS = 100_000


def mark_metadata(metadata: bytes, key: str, count: int) -> bytes:
    """The JSON object ``metadata`` with ``"coalesce": [key, count]`` added (the client's
    side: one splice per call, the rest of the encoded metadata shared by its requests)."""
    mark = MARK + json.dumps([key, count]).encode("utf-8")
    body = metadata.strip()
    if not body.startswith(b"{") or body[1:].lstrip().startswith(b"}"):
        return mark + b"}"
    return mark + b"," + body[1:]


def read_mark(metadata: bytes) -> tuple[str, int] | None:
    """``(key, n)`` from the encoded metadata of a request marked by
    :func:`mark_metadata`, reading only the mark; None when unmarked or malformed (a
    malformed mark only means the replies are not coalesced)."""
    if not metadata.startswith(MARK):
        return None
    try:
        text = metadata[len(MARK) : len(MARK) + _MARK_SPAN].decode("utf-8")
        mark, _ = _DECODER.raw_decode(text)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        return None
    return _checked(mark)


def parse_mark(metadata: dict[str, Any] | None) -> tuple[str, int] | None:
    """:func:`read_mark` for metadata already parsed."""
    if metadata is None:
        return None
    return _checked(metadata.get("coalesce"))


def _checked(mark: Any) -> tuple[str, int] | None:
    if not isinstance(mark, list) or len(mark) != 2:
        return None
    key, count = mark
    if not isinstance(key, str) or not 0 < len(key) <= 255:
        return None
    if type(count) is not int or not 2 <= count <= MAX_MEMBERS:
        return None
    return key, count


class Group:
    """The requests of one call and the replies of it being held."""

    __slots__ = ("client", "key", "expected", "seen", "owed", "engines", "held", "first", "last")

    def __init__(self, client: bytes, key: str, expected: int) -> None:
        self.client = client
        self.key = key
        self.expected = expected
        #: requests of the call routed so far, and of those how many are unanswered
        self.seen = 0
        self.owed = 0
        #: engines with a reply held, and the held replies: (hub copy, client message)
        self.engines: set[bytes] = set()
        self.held: list[tuple[list[Any], list[Any]]] = []
        self.first = 0.0
        self.last = 0.0

    @property
    def complete(self) -> bool:
        """Every request of the call was routed and answered."""
        return self.seen >= self.expected and self.owed <= 0


class Coalescer:
    """The calls a queue is coalescing, and which of them hold replies (per client)."""

    def __init__(self, gap: float = GAP, hold: float = HOLD) -> None:
        self.gap = gap
        self.hold_limit = hold
        self.groups: dict[tuple[bytes, str], Group] = {}
        #: client -> its groups holding replies, oldest first
        self.holding: dict[bytes, list[Group]] = {}

    def join(self, client: bytes, key: str, expected: int) -> Group:
        """A request of the call ``key`` of ``client`` was routed: it owes a reply."""
        group = self.groups.get((client, key))
        if group is None:
            group = self.groups[(client, key)] = Group(client, key, expected)
        group.seen += 1
        group.owed += 1
        return group

    def blocking(self, client: bytes, engine: bytes, group: Group | None) -> list[Group]:
        """The other groups of ``client`` holding a reply of ``engine``: they must go before
        a later reply of that engine to that client does (order per engine)."""
        holding = self.holding.get(client)
        if not holding:
            return []
        return [g for g in holding if g is not group and engine in g.engines]

    def hold(
        self, group: Group, engine: bytes, copy: list[Any], message: list[Any], now: float
    ) -> None:
        """Keep one verified reply of ``group`` (its hub copy and its client message)."""
        if not group.held:
            group.first = now
            self.holding.setdefault(group.client, []).append(group)
        group.held.append((copy, message))
        group.engines.add(engine)
        group.last = now
        group.owed -= 1

    def answered(self, group: Group) -> None:
        """A request of ``group`` was answered by a reply that is not held."""
        group.owed -= 1

    def take(self, group: Group) -> list[tuple[list[Any], list[Any]]]:
        """The replies ``group`` holds, in arrival order, now released; the group is
        forgotten once it owes nothing (a late request of it starts a new one)."""
        held, group.held = group.held, []
        group.engines = set()
        if held:
            holding = self.holding[group.client]
            holding.remove(group)
            if not holding:
                del self.holding[group.client]
        key = (group.client, group.key)
        if group.owed <= 0 and self.groups.get(key) is group:
            del self.groups[key]
        return held

    def due(self, now: float) -> list[Group]:
        """Groups whose held replies must go now (quiet for :attr:`gap`, or held for
        :attr:`hold_limit`)."""
        out = []
        for holding in self.holding.values():
            for group in holding:
                if now - group.last >= self.gap or now - group.first >= self.hold_limit:
                    out.append(group)
        return out

    def next_due(self) -> float | None:
        """The monotonic time at which some held replies must go, or None."""
        soonest: float | None = None
        for holding in self.holding.values():
            for group in holding:
                at = min(group.last + self.gap, group.first + self.hold_limit)
                if soonest is None or at < soonest:
                    soonest = at
        return soonest
