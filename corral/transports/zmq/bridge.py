"""The notification bridge over ZeroMQ: notifications between processes and hosts.

Implements :class:`corral.notification.bridge.BridgeTransport` (send, recv with a timeout,
close from any thread), so a :class:`~corral.notification.bridge.BridgeSender` and a
:class:`~corral.notification.bridge.BridgeReceiver` work over it unchanged.

Why it is built this way:

* **Two sockets per end, one per direction** (PUSH out, PULL in). ZeroMQ sockets belong
  to one thread; a bridge sends from whichever thread posts and receives on the
  receiver's thread. With one socket each way, each socket is used under one lock by one
  thread at a time, and a blocked ``recv`` never holds up a ``send``.
* **Every message signed** with the shared key (HMAC through :class:`~.wire.Signer`, the
  one place corral signs) over a fresh nonce and the payload, and every signature seen
  once is refused again (:class:`~.wire.ReplayGuard`): a peer without the key cannot
  inject notifications, and a captured message cannot be replayed. Unsigned or badly
  signed messages are logged, counted in :attr:`ZmqBridgeTransport.refused`, and skipped.
* **An explicit goodbye**: ZeroMQ hides connections, so :meth:`close` sends a signed
  end-of-stream message; the other side's ``recv`` raises ``EOFError`` after every
  message sent before it, as the interface asks. (A peer that dies without closing
  sends no goodbye; its receiver just hears nothing more.)

One end binds (:meth:`ZmqBridgeTransport.bind`, random ports on ``ip``, or ipc sockets in
a private directory) and hands :attr:`~ZmqBridgeTransport.address` and the key to the
other, which calls :meth:`ZmqBridgeTransport.connect` — the key through the environment
or a 0600 file, never a command line.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any

import zmq

from . import wire

__all__ = ["ZmqBridgeTransport"]

log = logging.getLogger("corral.transports.zmq.bridge")

_MESSAGE = b"m"
_GOODBYE = b"eof"
#: How long closing may wait to deliver what was sent (milliseconds).
_LINGER_MS = 2000


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError(
            "a key of at least 16 random bytes is required, so that no other process can "
            "inject notifications; share ZmqBridgeTransport.key with the peer"
        )
    return key


class ZmqBridgeTransport:
    """One end of a bridge: ``out`` (PUSH) sends, ``inbox`` (PULL) receives.

    Make one with :meth:`bind` or :meth:`connect`. ``send_timeout`` (seconds, None: wait)
    bounds how long a send may wait for a peer; past it ``send`` raises ``TimeoutError``
    (an ``OSError``, as the interface asks).
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        out: zmq.Socket[Any],
        inbox: zmq.Socket[Any],
        key: bytes,
        *,
        own_context: bool = False,
        send_timeout: float | None = None,
        tmpdir: str | None = None,
    ) -> None:
        self.key = _check_key(key)
        #: (where the peer sends to, where the peer receives from): give it to the peer.
        self.address: tuple[str, str] = ("", "")
        #: Messages refused: bad signature, replayed, malformed.
        self.refused = 0
        self._context = context
        self._own_context = own_context
        self._tmpdir = tmpdir
        self._out = out
        self._in = inbox
        if send_timeout is not None:
            out.sndtimeo = int(send_timeout * 1000)
        self._signer = wire.Signer(key)
        self._replay = wire.ReplayGuard()
        self._nonce = secrets.token_bytes(8)
        self._count = 0
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closed = False
        self._eof = False
        # close() (any thread) -> a recv blocked in poll: one socket each side, so each is
        # used by one thread only.
        wake_url = f"inproc://corral-bridge-wake-{os.getpid()}-{id(self)}"
        self._wake_rx = context.socket(zmq.PAIR)
        self._wake_rx.linger = 0
        self._wake_rx.bind(wake_url)
        self._wake_tx = context.socket(zmq.PAIR)
        self._wake_tx.linger = 0
        self._wake_tx.connect(wake_url)
        self._poller = zmq.Poller()
        self._poller.register(self._in, zmq.POLLIN)
        self._poller.register(self._wake_rx, zmq.POLLIN)

    # ------------------------------------------------------------------ making ends

    @classmethod
    def bind(
        cls,
        key: bytes | None = None,
        *,
        ip: str = "127.0.0.1",
        transport: str = "tcp",
        context: zmq.Context[Any] | None = None,
        send_timeout: float | None = None,
    ) -> ZmqBridgeTransport:
        """The listening end: random ports on ``ip`` (``transport="tcp"``), or ipc sockets
        in a fresh private directory (``"ipc"``). ``key`` defaults to 32 random bytes."""
        key = secrets.token_bytes(32) if key is None else key
        ctx, own = (context, False) if context is not None else (zmq.Context(), True)
        out, inbox = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        tmpdir = None
        try:
            if transport == "ipc":
                tmpdir = tempfile.mkdtemp(prefix="corral-bridge-")  # created 0700
                in_url, out_url = (f"ipc://{tmpdir}/{name}" for name in ("in", "out"))
                inbox.bind(in_url)
                out.bind(out_url)
            elif transport == "tcp":
                base = f"tcp://{ip}"
                in_url = f"{base}:{inbox.bind_to_random_port(base)}"
                out_url = f"{base}:{out.bind_to_random_port(base)}"
            else:
                raise ValueError(f"transport must be 'tcp' or 'ipc', not {transport!r}")
        except BaseException:
            out.close(0)
            inbox.close(0)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            if own:
                ctx.term()
            raise
        end = cls(ctx, out, inbox, key, own_context=own, send_timeout=send_timeout, tmpdir=tmpdir)
        end.address = (in_url, out_url)
        return end

    @classmethod
    def connect(
        cls,
        address: tuple[str, str] | list[str],
        key: bytes,
        *,
        context: zmq.Context[Any] | None = None,
        send_timeout: float | None = None,
    ) -> ZmqBridgeTransport:
        """The other end, given the bound end's :attr:`address` and key."""
        peer_in, peer_out = address
        ctx, own = (context, False) if context is not None else (zmq.Context(), True)
        out, inbox = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        out.connect(peer_in)
        inbox.connect(peer_out)
        end = cls(ctx, out, inbox, key, own_context=own, send_timeout=send_timeout)
        end.address = (peer_in, peer_out)
        return end

    # ------------------------------------------------------------------ the interface

    def send(self, data: bytes) -> None:
        """Send one message (atomically, in order); ``OSError`` if closed or timed out."""
        with self._send_lock:
            if self._closed:
                raise OSError("transport is closed")
            self._send_locked(_MESSAGE, bytes(data))

    def recv(self, timeout: float | None) -> bytes | None:
        """The next message, None after ``timeout`` seconds, ``EOFError`` once the peer
        said goodbye (after all it sent) or this end was closed."""
        with self._recv_lock:
            end = None if timeout is None else time.monotonic() + max(0.0, timeout)
            while True:  # refused messages do not end the wait
                if self._closed or self._eof:
                    raise EOFError("transport is closed")
                ms = None if end is None else max(0, int((end - time.monotonic()) * 1000))
                ready = dict(self._poller.poll(ms))
                if self._closed or self._wake_rx in ready:
                    raise EOFError("transport is closed")
                if self._in not in ready:
                    return None
                message = self._accept(self._in.recv_multipart())
                if message is not None:
                    return message

    def close(self) -> None:
        """Say goodbye to the peer, wake a blocked ``recv``, close everything."""
        with self._send_lock:
            if self._closed:
                return
            try:
                self._out.sndtimeo = 0
                self._send_locked(_GOODBYE, b"")
            except OSError:
                pass  # no peer connected: nobody to tell
            self._closed = True
            self._wake_tx.send(b"")
        # Once both locks are ours no thread is inside a socket any more.
        with self._recv_lock, self._send_lock:
            self._out.close(linger=_LINGER_MS)
            self._in.close(linger=0)
            self._wake_rx.close()
            self._wake_tx.close()
            if self._own_context:
                self._context.term()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> ZmqBridgeTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _send_locked(self, kind: bytes, data: bytes) -> None:
        self._count += 1
        nonce = self._nonce + self._count.to_bytes(8, "big")
        signature = self._signer.sign([kind, nonce, data])
        try:
            self._out.send_multipart([signature, kind, nonce, data])
        except zmq.Again:
            raise TimeoutError("no bridge peer took the message in time") from None
        except zmq.ZMQError as exc:
            raise OSError(str(exc)) from exc

    def _accept(self, frames: list[bytes]) -> bytes | None:
        """The payload of a good message; None (logged, counted) for any other."""
        try:
            if len(frames) != 4:
                raise wire.MalformedMessage(f"{len(frames)} frames, expected 4")
            signature, kind, nonce, data = frames
            if kind not in (_MESSAGE, _GOODBYE) or len(nonce) != 16:
                raise wire.MalformedMessage("not a bridge message")
            self._signer.check([kind, nonce, data], signature)
            self._replay.check(signature)
        except wire.WireError as exc:
            self.refused += 1
            log.warning("bridge refused a message: %s", exc)
            return None
        if kind == _GOODBYE:
            self._eof = True
            raise EOFError("the peer closed the bridge")
        return data
