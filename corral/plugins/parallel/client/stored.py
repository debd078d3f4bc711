"""Replies that arrive stored: their buffers are fetched from the hub's task database.

A queue sends a large reply without its buffers, behind the ``STORED`` frame, when this
client has not read the large replies sent before it (corral.plugins.parallel.flow):
the controller's memory stays bounded however long the client does not read. The stub
is the engine's signed message minus its buffers, so its signature still names the
digest of every buffer: the buffers the hub sends back are checked against those
before the reply is delivered as if it had come whole.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from corral.transports.zmq import wire
from corral.transports.zmq.door import check_signed_buffers, signed_digests

from ..flow import STORED
from .messages import Parsed

__all__ = ["StoredFetches", "is_stored"]

log = logging.getLogger("corral.plugins.parallel.client")

_FIRST_DELAY = 0.01
_MAX_DELAY = 0.5
#: Seconds a stored reply may stay ``pending`` at the hub before it is given up as lost
#: (the hub's copy can only lag by what its database writer has not written yet).
_PENDING_LIMIT = 120.0
#: Stored replies fetched at once: each answer holds a whole result in the hub's
#: memory until sent, so a client catching up on many must not ask for all of them.
_AT_ONCE = 2


def is_stored(frames: list[Any]) -> bool:
    """Whether ``frames`` (a reply as received) is a stored stub."""
    if not frames:
        return False
    first = frames[0]
    return len(first) == len(STORED) and bytes(first) == STORED


class StoredFetches:
    """The stored replies of one client waiting for their buffers, fetched
    :data:`_AT_ONCE` at a time, in the order they came (I/O thread only)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.waiting: deque[_Fetch] = deque()
        self.running = 0
        #: stored replies received so far (for diagnostics and tests)
        self.received = 0

    def add(self, stub: Parsed, signature: Any) -> None:
        """A stored reply (``stub``, already verified) and its signature frame, whose
        buffer digests the fetched buffers must match."""
        self.received += 1
        self.waiting.append(_Fetch(self, stub, signed_digests(signature)))
        self._next()

    def _next(self) -> None:
        while self.waiting and self.running < _AT_ONCE:
            self.running += 1
            self.waiting.popleft().ask()

    def done(self) -> None:
        self.running -= 1
        self._next()


class _Fetch:
    """Fetches one stored reply's buffers from the hub, then delivers the whole reply.

    The hub may not have written the result yet (its copy can still be on the way), so
    a ``pending`` or ``unknown`` answer is asked again, backing off, for up to
    :data:`_PENDING_LIMIT` seconds.
    """

    def __init__(self, owner: StoredFetches, stub: Parsed, digests: list[bytes]) -> None:
        self.owner = owner
        self.client = owner.client
        self.stub = stub
        self.digests = digests
        self.msg_id = str(stub.parent_header.get("msg_id"))
        self.delay = _FIRST_DELAY
        self.give_up_at = time.monotonic() + _PENDING_LIMIT

    def ask(self) -> None:
        if self.client.closed:
            return
        self.client._request(
            "registration", "result_request", {"msg_ids": [self.msg_id]}, self.answer
        )

    def answer(self, reply: Parsed) -> None:
        entry = (reply.content.get("results") or {}).get(self.msg_id) or {}
        status = entry.get("status") if isinstance(entry, dict) else None
        # "unknown": the hub has not read the copies yet (it reads its registration
        # socket first, and pauses reading copies while its database writer lags).
        if status in ("pending", "unknown") and time.monotonic() < self.give_up_at:
            self.client._io.call_later(self.delay, self.ask)
            self.delay = min(self.delay * 2, _MAX_DELAY)
            return
        buffers = list(reply.buffers)
        problem = None
        if status in ("pending", "unknown"):
            problem = f"the hub still did not have it after {_PENDING_LIMIT:.0f} s ({status})"
        elif status != "completed":
            problem = f"the hub does not have it ({status or 'no answer'})"
        elif self.client._signer.enabled:  # no key, no digests: nothing to check against
            try:
                check_signed_buffers(self.digests, buffers)
            except wire.BadSignature as exc:
                problem = f"what the hub sent does not match what the engine signed: {exc}"
        stub = self.stub
        content = stub.content
        if problem is not None:
            log.warning("result %s was stored by the controller but %s", self.msg_id, problem)
            content = {
                "status": "error",
                "ename": "ResultLost",
                "evalue": f"the result of {self.msg_id} was stored by the controller but {problem}",
                "traceback": [],
            }
            buffers = []
        self.owner.done()
        self.client._on_reply(
            Parsed(
                stub.identities, stub.header, stub.parent_header, stub.metadata, content, buffers
            )
        )
