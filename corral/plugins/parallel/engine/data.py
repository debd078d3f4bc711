"""The direct data path: ``push``/``pull`` straight between a client and one engine.

Every queue stores and forwards whole zmq messages, so a 100 MB array relayed by the mux
crosses the network twice and sits in the queue's memory once. For large objects a client
therefore talks to the engine's own ``data`` ROUTER (its ``data_url`` is in the engine's
registration), signed with the cluster key like every message.

The engine polls this socket in its main loop next to the queues, so the namespace is
only ever touched by the main thread. Buffers are received as ``zmq.Frame`` objects and
deserialized in place: a pushed numpy array is a (writable) view onto the received
message, never a copy.

Messages (content; buffers):

* ``push_request`` ``{keys: [...]}``; ``serialize(dict)`` → ``push_reply``
  ``{status: "ok", keys: [...]}``.
* ``pull_request`` ``{keys: [...]}`` → ``pull_reply`` ``{status: "ok", keys: [...]}``;
  ``serialize(tuple of values)`` in ``keys`` order. A missing name gives ``status:
  "error"``, ``ename: "KeyError"`` and an ``evalue`` naming it.

The same two requests are accepted on the mux and broadcast queues too, for small data.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import zmq

from corral.transports.zmq.chunkstream import stream_large_frames

__all__ = ["bind_data_socket", "local_ip_for", "pull", "push"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "*", ""}


def local_ip_for(controller_ip: str) -> str:
    """The address clients can reach this engine at, given where the controller is.

    On one machine (the controller on loopback) that is 127.0.0.1. Otherwise it is the
    address of the interface that routes to the controller, found with a UDP "connect"
    that sends nothing.
    """
    if controller_ip in _LOOPBACK or controller_ip.startswith("127."):
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((controller_ip, 9))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def bind_data_socket(
    context: zmq.Context[Any], ip: str = "127.0.0.1", gate: Any = None
) -> tuple[zmq.Socket[Any], str]:
    """A ROUTER bound to a random port on ``ip``; returns it and its ``data_url``. With
    a ``gate`` (corral.transports.zmq.gate) only peers with the cluster key connect.

    Its large frames travel as streams on Curve (corral.transports.zmq.chunkstream),
    which each client's data channel expects."""
    sock = context.socket(zmq.ROUTER)
    sock.linger = 1000
    stream_large_frames(sock)
    if gate is not None and gate.enabled:
        gate.server(sock)
        # A client's data channel that lost its connection reconnects under the same
        # identity while this side may still hold the old one half-open (a NAT or Wi-Fi
        # drop): without handover that identity is refused for good and every direct
        # call of that client waits for ever. Only key holders pass the gate, so only
        # they can claim an identity (docs/security.md, "Routing identities").
        sock.router_handover = 1
    port = sock.bind_to_random_port(f"tcp://{ip}")
    return sock, f"tcp://{ip}:{port}"


def _keys(content: dict[str, Any]) -> list[str]:
    keys = content.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TypeError("content 'keys' must be a list of names (str)")
    return keys


def push(
    namespace: dict[str, Any],
    content: dict[str, Any],
    buffers: list[Any],
    adopt: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Update ``namespace`` from a ``push_request``; returns the names set.

    ``adopt`` maps each pushed value before it is bound (the engine binds functions
    from a client's ``__main__`` to ``namespace``, as it does for applied ones).

    :raises DeserializationError: the buffers do not hold a pickled dict.
    :raises TypeError: the dict's keys are not all names.
    """
    from corral.core.serialize import DeserializationError, deserialize

    values = deserialize(buffers)
    if type(values) is not dict:
        raise DeserializationError(f"push needs a dict of names, got {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise TypeError(f"pushed names must be str, got {bad[0]!r}")
    if adopt is not None:
        values = {name: adopt(value) for name, value in values.items()}
    namespace.update(values)
    return list(values)


def pull(namespace: dict[str, Any], content: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """Frames for a ``pull_reply``: ``serialize(tuple(namespace[k] for k in keys))``.

    :raises KeyError: a name is not defined on this engine (the message names it).
    """
    from corral.core.serialize import serialize

    keys = _keys(content)
    values = []
    for key in keys:
        try:
            values.append(namespace[key])
        except KeyError:
            raise KeyError(f"name {key!r} is not defined on this engine") from None
    return keys, serialize(tuple(values))
