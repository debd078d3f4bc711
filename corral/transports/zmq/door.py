"""The cluster's one door: what every controller, engine and client message must pass.

The Jupyter signature covers the four JSON parts of a message and nothing else, so a
peer that can alter a signed message in flight (or replay one with buffers of its own)
can swap a pickled function or result under an intact signature. Cluster messages
therefore carry, inside the signed part, a digest of every buffer:

    signature frame = HMAC(key, header + parent + metadata + content + b"." + digests)
                      + b"." + digests

``digests`` is the BLAKE3 digest of each buffer frame (64 hex digits each, in order). A
message without buffers is signed exactly as Jupyter signs it. So:

* a **forwarder** (a queue) checks the HMAC and that the number of digests matches the
  number of buffer frames, without reading the buffers (it never unpickles them);
* a **consumer** (engine, client, the hub storing a result) also hashes each buffer and
  compares: a buffer changed after signing is refused before anything unpickles it.

BLAKE3 and not hashlib: on the reference machine it hashes 100 MB in ~18 ms (about 5.6
GB/s on one core) where SHA-256 takes 87 ms and BLAKE2b 100 ms; sender and receiver
each hash once, and a 100 MB push must stay within 0.7x of raw pyzmq (docs/security.md).

The module also holds the **role checks** shared by every receiver: the message kinds
each socket accepts (:data:`ROLES`), and the envelope that proves a monitor copy comes
from a queue or an engine (:meth:`ClusterSigner.monitor_tag`): the hub's ``monitor`` is a
PULL socket that cannot see who is sending, so each copy carries its own MAC over its
kind, engine, client and the inner message's signature. A message signed for one place
(say an iopub ``stream`` message) therefore cannot be replayed as a reply on ``monitor``.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from typing import Any

import blake3

from corral.transports.zmq import wire

__all__ = [
    "BUFFERS_COUNTED",
    "BUFFERS_HASHED",
    "BUFFERS_IGNORED",
    "DIGEST_HEX",
    "ROLES",
    "ClusterSigner",
    "buffer_digest",
    "cluster_signer",
]

#: Hex digits of one buffer digest (BLAKE3, 32 bytes).
DIGEST_HEX = 64
#: What :meth:`ClusterSigner.check` does with the buffers.
BUFFERS_IGNORED, BUFFERS_COUNTED, BUFFERS_HASHED = range(3)
#: Buffers at least this large are hashed with BLAKE3's thread pool.
_THREADED_FROM = 8 << 20
_SEP = b"."

#: What each receiving socket accepts, by ``msg_type``: a correctly signed message of any
#: other kind is refused there (a request replayed on a socket it was not sent to).
ROLES: dict[str, frozenset[str]] = {
    "registration": frozenset(
        {
            "registration_request",
            "unregistration_request",
            "connection_request",
            "queue_request",
            "result_request",
            "db_request",
            "purge_request",
            "shutdown_request",
        }
    ),
    "control": frozenset(
        {"abort_request", "clear_request", "shutdown_request", "interrupt_request"}
    ),
}


def buffer_digest(buf: Any) -> bytes:
    """The BLAKE3 digest of one buffer frame (bytes, memoryview or ``zmq.Frame``), in hex."""
    try:
        view = memoryview(buf)
    except TypeError:
        view = memoryview(buf.bytes)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    elif view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if view.nbytes >= _THREADED_FROM:
        return blake3.blake3(view, max_threads=blake3.blake3.AUTO).hexdigest().encode("ascii")
    return blake3.blake3(view).hexdigest().encode("ascii")


class ClusterSigner(wire.Signer):
    """A :class:`wire.Signer` whose signature also covers every buffer (see the module)."""

    __slots__ = ()

    def seal(self, parts: Sequence[Any], buffers: Sequence[Any] = ()) -> bytes:
        """The signature frame for ``parts`` and ``buffers``."""
        if self._base is None:
            return b""
        if not buffers:
            return self.sign(parts)
        tail = b"".join([buffer_digest(b) for b in buffers])
        h = self._base.copy()
        h.update(b"".join(parts) + _SEP + tail)
        return h.hexdigest().encode("ascii") + _SEP + tail

    def check(
        self,
        parts: Sequence[Any],
        signature: Any,
        buffers: Sequence[Any] = (),
        how: int = BUFFERS_HASHED,
    ) -> None:
        """Raise :class:`wire.BadSignature` unless ``signature`` seals ``parts`` and (as
        ``how`` asks) ``buffers``. Constant-time comparisons throughout."""
        if self._base is None:
            return
        if not signature:
            raise wire.BadSignature("unsigned message (empty signature)")
        sig = signature if signature.__class__ is bytes else bytes(signature)
        mac, dot, tail = sig.partition(_SEP)
        h = self._base.copy()
        if dot:
            h.update(b"".join(parts) + _SEP + tail)
        else:
            h.update(b"".join(parts))
        if not hmac.compare_digest(h.hexdigest().encode("ascii"), mac):
            raise wire.BadSignature("signature does not match the message")
        if how == BUFFERS_IGNORED:
            return
        count, odd = divmod(len(tail), DIGEST_HEX)
        if odd or count != len(buffers):
            raise wire.BadSignature(
                f"the signature covers {count} buffer(s), the message has {len(buffers)}"
            )
        if how == BUFFERS_HASHED:
            for i, buf in enumerate(buffers):
                want = tail[i * DIGEST_HEX : (i + 1) * DIGEST_HEX]
                if not hmac.compare_digest(buffer_digest(buf), want):
                    raise wire.BadSignature(f"buffer {i} was altered after signing")

    def verify(self, parts: Sequence[Any], signature: bytes) -> bool:
        """Whether ``signature`` signs ``parts`` (buffers not looked at)."""
        try:
            self.check(parts, signature, (), BUFFERS_IGNORED)
        except wire.BadSignature:
            return False
        return True

    # -- the monitor envelope ----------------------------------------------------------

    def monitor_tag(self, kind: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
        """The first frame of a copy for the hub's ``monitor``: ``kind:MAC`` where the MAC
        binds the kind, the engine, the client and the inner message's signature."""
        if self._base is None:
            return kind
        h = self._base.copy()
        h.update(_envelope(kind, engine, client, signature))
        return kind + b":" + h.hexdigest().encode("ascii")

    def open_monitor_tag(self, tag: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
        """The kind of a monitor copy whose envelope checks out; :class:`wire.BadSignature`
        for a copy that no queue or engine of this cluster made."""
        if self._base is None:
            return tag
        kind, colon, mac = tag.partition(b":")
        if not colon:
            raise wire.BadSignature("monitor copy without its envelope")
        h = self._base.copy()
        h.update(_envelope(kind, engine, client, signature))
        if not hmac.compare_digest(h.hexdigest().encode("ascii"), mac):
            raise wire.BadSignature("monitor envelope does not match")
        return kind


def _envelope(kind: bytes, engine: bytes, client: bytes, signature: Any) -> bytes:
    sig = signature if signature.__class__ is bytes else bytes(signature)
    fields = (b"corral-monitor", kind, engine, client, sig)
    return b"".join(struct.pack("<I", len(f)) + f for f in fields)


def cluster_signer(key: bytes | str, scheme: str = "hmac-sha256") -> ClusterSigner:
    """The signer every cluster component uses for ``key`` (the cluster file's)."""
    return ClusterSigner(key, scheme)
