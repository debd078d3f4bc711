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
* **Behind the gate** (:mod:`.gate`, PLAIN with a password derived from the key): a
  process without the key cannot even connect. Signatures alone did not suffice: the
  bound end's PUSH deals messages out among whoever is connected, so a keyless PULL
  connected to it read every other notification, and the peer never received those.
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
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from . import wire
from .door import ROLES
from .gate import Gate
from .session import Session

__all__ = ["FEED_MSG_TYPE", "FEED_TOPIC", "FeedPublisher", "FeedSubscriber", "ZmqBridgeTransport"]

log = logging.getLogger("corral.transports.zmq.bridge")

_MESSAGE = b"m"
_GOODBYE = b"eof"
#: How long closing may wait to deliver what was sent (milliseconds).
_LINGER_MS = 2000
#: How much longer than its sockets' linger a context may take to terminate (seconds).
_TERM_MARGIN = 3.0


def _private_tmpdir() -> str:
    # Imported here: the hub imports this module for its feed, and shutil and tempfile
    # (with the compression modules they bring) would cost every controller start.
    import tempfile

    return tempfile.mkdtemp(prefix="corral-bridge-")  # created 0700


def _term(context: zmq.Context[Any], within: float) -> None:
    """Terminate ``context``, waiting at most ``within`` seconds.

    Why: every socket of the context is closed with a bounded linger when this is called,
    so ``term`` should return within that linger; libzmq has nevertheless been seen to
    block in it for good (once in a CI run, after an ipc peer had gone: the libzmq issues
    #2586 and #3252 describe the same). Closing a bridge must not hang its caller, so the
    wait happens in a daemon thread; one that does not end is logged and left behind
    (the context is then freed at exit).
    """
    thread = threading.Thread(target=context.term, name="corral-bridge-term", daemon=True)
    thread.start()
    thread.join(within)
    if thread.is_alive():
        log.warning("a bridge's ZeroMQ context did not terminate within %g s; left open", within)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class _Waker:
    """Lets ``close()`` (any thread) wake a ``recv`` blocked polling ``sock``: a PAIR of
    inproc sockets, one each side, so each socket is used by one thread only."""

    def __init__(self, context: zmq.Context[Any], sock: zmq.Socket[Any]) -> None:
        url = f"inproc://corral-bridge-wake-{os.getpid()}-{id(self)}"
        self._sock = sock
        self._rx = context.socket(zmq.PAIR)
        self._rx.linger = 0
        self._rx.bind(url)
        self._tx = context.socket(zmq.PAIR)
        self._tx.linger = 0
        self._tx.connect(url)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._rx, zmq.POLLIN)

    def wait(self, end: float | None) -> bool:
        """Whether ``sock`` has a message before ``end`` (monotonic; None: no limit);
        False also when woken."""
        ms = None if end is None else max(0, int((end - time.monotonic()) * 1000))
        ready = dict(self._poller.poll(ms))
        return self._rx not in ready and self._sock in ready

    def wake(self) -> None:
        self._tx.send(b"")

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


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
        self._nonce = os.urandom(8)  # what secrets draws from, without importing it
        self._count = 0
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closed = False
        self._eof = False
        self._waker = _Waker(context, self._in)

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
        key = os.urandom(32) if key is None else key
        gate = Gate(_check_key(key))
        ctx, own = (context, False) if context is not None else (zmq.Context(), True)
        out, inbox = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        tmpdir = None
        try:
            gate.server(out)  # the PUSH most of all: it deals messages to whoever connects
            gate.server(inbox)
            if transport == "ipc":
                tmpdir = _private_tmpdir()
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
                _remove_tree(tmpdir)
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
        gate = Gate(_check_key(key))
        ctx, own = (context, False) if context is not None else (zmq.Context(), True)
        out, inbox = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        gate.client(out).connect(peer_in)
        gate.client(inbox).connect(peer_out)
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
                if not self._waker.wait(end) or self._closed:
                    if self._closed:
                        raise EOFError("transport is closed")
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
            self._waker.wake()
        # Once both locks are ours no thread is inside a socket any more.
        with self._recv_lock, self._send_lock:
            self._out.close(linger=_LINGER_MS)
            self._in.close(linger=0)
            self._waker.close()
            if self._own_context:
                _term(self._context, _LINGER_MS / 1000 + _TERM_MARGIN)
            if self._tmpdir is not None:
                _remove_tree(self._tmpdir)

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


# ---------------------------------------------------------------------- the cluster feed

#: The ``msg_type`` of a bridged notification on a cluster's notification feed (the
#: hub's XPUB socket); also its topic, so a subscriber can take these and nothing else.
FEED_MSG_TYPE = "bus_notification"
#: Its topic on the feed (what the hub checks subscriptions against).
FEED_TOPIC = FEED_MSG_TYPE.encode("ascii")


class FeedPublisher:
    """The sending end of a bridge over a publisher socket many subscribers read.

    Each notification goes out as one cluster message of type :data:`FEED_MSG_TYPE`,
    signed by ``session`` (so through the same door as every cluster message:
    :class:`~.session.Session` signs, :class:`FeedSubscriber` admits). A PUB socket
    drops what no subscriber asked for, so a feed nobody reads costs the send call only.

    ``topic`` (default :data:`FEED_TOPIC`) is the topic frame: a publisher may keep some
    notifications on a topic of their own, which only the subscribers that asked for it
    receive (and whose subscriptions an XPUB owner can see apart).

    Send-only; ``send`` must be called from the thread that owns ``socket``.
    """

    def __init__(
        self, socket: zmq.Socket[Any], session: Session, topic: bytes = FEED_TOPIC
    ) -> None:
        self._socket = socket
        self._session = session
        self._topic = [topic]
        self._closed = False

    def send(self, data: bytes) -> None:
        if self._closed:
            raise OSError("transport is closed")
        content = {"notification": data.decode("utf-8")}
        try:
            self._session.send(self._socket, FEED_MSG_TYPE, content, identities=self._topic)
        except zmq.ZMQError as exc:
            raise OSError(str(exc)) from exc

    def recv(self, timeout: float | None) -> bytes | None:
        raise EOFError("a feed publisher only sends")

    def close(self) -> None:
        """Stop sending; the socket stays its owner's."""
        self._closed = True


def feed_payload(msg_type: str, content: dict[str, Any]) -> bytes | None:
    """The bridge message inside an admitted feed message, None if it carries none."""
    if msg_type != FEED_MSG_TYPE:
        return None
    text = content.get("notification")
    return text.encode("utf-8") if isinstance(text, str) else None


class FeedSubscriber:
    """The receiving end of a :class:`FeedPublisher`: a SUB socket on ``url``.

    ``session`` admits every message (signature, replay, the ``notifications`` role:
    :func:`~.door.admit`); ``secure`` is applied to the socket before it connects (the
    cluster gate's client credentials). ``topics`` are the feed topics subscribed (the
    publishers' ``topic``). Refused messages are counted in :attr:`refused` by the session
    and skipped. Receive-only.
    """

    def __init__(
        self,
        url: str,
        session: Session,
        *,
        secure: Callable[[zmq.Socket[Any]], Any] | None = None,
        context: zmq.Context[Any] | None = None,
        topics: tuple[bytes, ...] = (FEED_TOPIC,),
    ) -> None:
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._session = session
        self._sub = self._context.socket(zmq.SUB)
        self._sub.linger = 0
        if secure is not None:
            secure(self._sub)
        for topic in topics:
            self._sub.subscribe(topic)
        self._sub.connect(url)
        self._waker = _Waker(self._context, self._sub)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def refused(self) -> int:
        return self._session.dropped

    def send(self, data: bytes) -> None:
        raise OSError("a feed subscriber only receives")

    def recv(self, timeout: float | None) -> bytes | None:
        with self._lock:
            end = None if timeout is None else time.monotonic() + max(0.0, timeout)
            while True:
                if self._closed:
                    raise EOFError("transport is closed")
                if not self._waker.wait(end):
                    if self._closed:
                        raise EOFError("transport is closed")
                    return None
                parsed = self._session.parse(self._sub.recv_multipart(), ROLES["notifications"])
                if parsed is None:
                    continue
                msg = parsed[1]
                payload = feed_payload(msg["msg_type"], msg["content"])
                if payload is not None:
                    return payload

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._waker.wake()
        with self._lock:  # no thread is inside the socket any more
            self._sub.close(linger=0)
            self._waker.close()
            if self._own_context:
                _term(self._context, _TERM_MARGIN)
