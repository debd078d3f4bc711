"""What the client's channels send and accept, in the door's terms.

A client has one socket per controller interface (``registration``, the four queues,
``notification``, ``iopub``) and one per engine data socket it uses (``data:<id>:<uuid>``).
Both directions are bound to the channel:

* **out**, every request carries the destination it may be admitted at
  (:func:`corral.transports.zmq.door.dest_of`) in its signed header, so a request captured
  on its way to one queue, to the hub or to one engine cannot be replayed to another
  receiver whose replay guard has not seen it (:func:`dest_for`);
* **in**, each channel accepts only what its peer may send (:func:`role_for`): replies on
  the registration, queue and data sockets, notifications on ``notification``, the IOPub
  kinds on ``iopub``. An iopub message is parented to a task's request like its reply, so
  without this check a message captured on iopub and slipped into a queue connection would
  be taken as the task's reply.
"""

from __future__ import annotations

from corral.transports.zmq.door import HUB, ROLES, Role, dest_of

__all__ = ["QUEUES", "dest_for", "role_for"]

#: The queue channels (replies come back on the channel the request went out on).
QUEUES = frozenset(["mux", "task", "broadcast", "control"])

_REPLIES = ROLES["replies"]
_BY_CHANNEL: dict[str, Role] = {
    "registration": _REPLIES,
    "notification": ROLES["notifications"],
    "iopub": ROLES["iopub"],
    **{name: _REPLIES for name in QUEUES},
}


def dest_for(channel: str) -> str:
    """The signed destination of a request sent on ``channel``: the hub, the queue of that
    name, or the engine of a ``data:<id>:<uuid>`` channel."""
    if channel == "registration":
        return HUB
    if channel.startswith("data:"):
        return dest_of("engine", channel.rpartition(":")[2])
    return channel


def role_for(channel: str) -> Role | None:
    """What ``channel``'s peer may send (None for a channel this module does not know,
    which then checks only signature, replay and header)."""
    role = _BY_CHANNEL.get(channel)
    if role is None and channel.startswith("data:"):
        return _REPLIES
    return role
