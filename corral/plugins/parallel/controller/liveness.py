"""Knowing early that a same-host engine died: its queue connection drops, and its Unix
socket no longer answers.

The hub declares an engine dead after ``hb_misses`` silent heartbeat periods (seconds).
A queue can know sooner for an engine on this host: when the engine's process dies the
kernel closes its TCP connections, which the queue's engine-side ROUTER sees as a
*disconnect* (a ZeroMQ socket-monitor event, within milliseconds). A disconnect alone
proves nothing (ZeroMQ reconnects after a network hiccup), and the event does not say
which peer it was, so the queue then asks each same-host engine's Unix socket (the
``local_path`` it announced, see ``engine/local.py``): a socket file nobody listens on
(``ECONNREFUSED``) or no file at all means the process is gone, since the listening
socket lives exactly as long as the engine process. Anything else (a live listener, a
full backlog, a permission problem) counts as alive: the heartbeat still decides.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["DisconnectWatch", "local_engine_dead"]

_DEAD_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENOENT})


def local_engine_dead(path: str) -> bool:
    """Whether the engine listening on the Unix socket ``path`` is certainly gone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except OSError as exc:
        return exc.errno in _DEAD_ERRNOS
    finally:
        sock.close()
    return False


class DisconnectWatch:
    """The disconnect events of one socket, as a socket to poll."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._watched = sock
        self.socket: zmq.Socket[Any] = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def drain(self) -> int:
        """How many disconnects happened since the last call."""
        count = 0
        while True:
            try:
                recv_monitor_message(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                return count
            count += 1

    def close(self) -> None:
        try:
            self._watched.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(linger=0)
