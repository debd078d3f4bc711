"""A man in the middle of a client's subscription, for the replay and reorder tests.

The tests that play a network peer on an unencrypted link (one that can drop, hold back
or inject published messages) all need the same middle: an XPUB the client subscribes
to, an XSUB connected to the controller's PUB socket, subscriptions forwarded up and
messages down. :class:`SubscriptionRelay` is that middle; a test changes what goes down
by overriding :meth:`SubscriptionRelay.down`, and adds messages with
:meth:`SubscriptionRelay.inject`.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import zmq

from corral.transports.zmq.gate import gate_for

__all__ = ["SubscriptionRelay"]


class SubscriptionRelay:
    """Forwards one subscription between a client (who connects to :attr:`port`) and
    the PUB socket at ``target``, past the cluster's gate on both sides."""

    def __init__(self, info: dict[str, Any], target: str) -> None:
        ctx = zmq.Context.instance()
        gate = gate_for(info)
        self.front = gate.server(ctx.socket(zmq.XPUB))
        self.front.linger = 0
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = gate.client(ctx.socket(zmq.XSUB))
        self.back.linger = 0
        self.back.connect(target)
        self._inject: queue.Queue[list[bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def down(self, frames: list[bytes]) -> bool:
        """Whether a published message goes on to the client (runs on the relay's
        thread). Everything does, unless a subclass says otherwise."""
        return True

    def inject(self, frames: list[bytes]) -> None:
        """Publish ``frames`` to the client as if the controller had."""
        self._inject.put(frames)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                while not self._inject.empty():
                    self.front.send_multipart(self._inject.get())
                for sock, _ in poller.poll(10):
                    frames = sock.recv_multipart()
                    if sock is self.front:
                        self.back.send_multipart(frames)
                    elif self.down(frames):
                        self.front.send_multipart(frames)
        finally:
            self.front.close(linger=0)
            self.back.close(linger=0)
