"""Waiting for the hub's answer to an engine's registration: the first one, and the one
after a controller restart (:mod:`.recovery`) share this loop.

Only an answer to a registration this engine sent in this round counts: a late answer
to an earlier one may come from a controller that is gone. A refusal for another
controller run (``WrongRun``) names the current run: the engine adopts it and asks
again (see :func:`adopt_run`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from corral.transports.zmq import wire

from ._wire import ROLES, Message, recv_message

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["adopt_run", "await_registration"]

log = logging.getLogger("corral.parallel.engine")

_NOBLOCK = int(zmq.NOBLOCK)


def adopt_run(engine: Engine, reply: Message, asked: set[str]) -> bool:
    """Whether ``reply`` refused one of the registrations ``asked`` (msg_ids) for naming
    another controller run, and named the current one, now ``engine``'s.

    A cluster file older than its controller, or a controller restarted while the engine
    ran: the hub refuses every request of another run, a registration too, so that one
    captured before a restart cannot register a phantom engine. The answer is the hub's,
    signed, and to a request of ours: only then is its run believed. A run the engine
    already sent is refused for another reason: False.
    """
    try:
        content = reply.content
        run = content.get("run")
        if (
            content.get("ename") != "WrongRun"
            or not isinstance(run, str)
            or not run
            or run == engine.controller_run
            or reply.parent_header.get("msg_id") not in asked
        ):
            return False
    except wire.WireError:
        return False  # the caller's own parse reports it
    log.warning("the controller runs %s now, not %s: registering again", run, engine.controller_run)
    engine.controller_run = run
    return True


def await_registration(
    engine: Engine,
    ask: Callable[[], str],
    asked: set[str],
    end: float,
    replay: wire.ReplayGuard,
    ask_again: float | None = None,
) -> Message | None:
    """The hub's ``registration_reply`` to one of the registrations ``asked`` (msg_ids,
    grown here), or None at ``end`` (a monotonic time).

    ``ask()`` sends the registration again and returns its msg_id: after adopting a run,
    and every ``ask_again`` seconds if given (a controller killed again before it
    answered: whichever is there now is asked; the hub answers a repeated registration
    with the same one).
    """
    sock = engine.registration
    again_at = time.monotonic() + ask_again if ask_again else float("inf")
    while True:
        now = time.monotonic()
        if now >= end:
            return None
        if now >= again_at and ask_again:
            asked.add(ask())
            again_at = now + ask_again
        wait_ms = int((min(end, again_at) - now) * 1000) + 1
        if not sock.poll(wait_ms):
            continue
        try:
            msg = recv_message(sock, engine.signer, replay, _NOBLOCK, ROLES["replies"])
            parent: Any = msg.parent_header.get("msg_id")
        except zmq.Again:
            continue
        except wire.WireError as exc:
            log.warning("dropped a bad message on registration: %s", exc)
            continue
        if msg.msg_type != "registration_reply" or parent not in asked:
            log.debug("ignoring %s (to %s) while registering", msg.msg_type, parent)
            continue
        if adopt_run(engine, msg, asked):
            asked.add(ask())
            continue
        return msg
