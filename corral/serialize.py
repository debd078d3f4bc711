"""ipyparallel's ``ipyparallel.serialize`` functions, on corral's serializer.

Scripts use them to send objects over zmq sockets of their own (ipyparallel's
``interengine`` example: ``sock.send_multipart(serialize_object(obj))``, then
``deserialize_object(sock.recv_multipart())[0]``). The frames are corral's
(:mod:`corral.core.serialize`: pickle protocol 5, large buffers out of band, functions and
classes of ``__main__`` by value), not ipyparallel's, so both ends must use corral.

ipyparallel's ``deserialize_object`` returns ``(obj, remaining_frames)``, so several
objects can share one message; corral's :func:`~corral.core.serialize.deserialize` takes
exactly one object's frames. :func:`serialize_object` therefore puts a first frame saying
how many frames follow.

.. versionadded:: 0.1
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corral.core.serialize import (
    DEFAULT_THRESHOLD,
    DeserializationError,
    Frame,
    deserialize,
    pack_apply,
    serialize,
    unpack_apply,
)

__all__ = [
    "deserialize_object",
    "pack_apply_message",
    "serialize_object",
    "unpack_apply_message",
]

_HEADER = struct.Struct("!4sI")
_MAGIC = b"crl1"


def serialize_object(
    obj: Any, buffer_threshold: int = DEFAULT_THRESHOLD, item_threshold: int = 64
) -> list[Frame]:
    """``obj`` as frames for ``send_multipart``: a header, the pickle, then buffers of at
    least ``buffer_threshold`` bytes, uncopied. ``item_threshold`` (how far ipyparallel's
    canning walks containers) has no counterpart: it is accepted and ignored."""
    frames = serialize(obj, threshold=buffer_threshold)
    return [_HEADER.pack(_MAGIC, len(frames)), *frames]


def deserialize_object(
    buffers: Sequence[Any], g: Mapping[str, Any] | None = None
) -> tuple[Any, list[Any]]:
    """The object the first frames of ``buffers`` hold (from :func:`serialize_object`),
    and the frames after them. ``g`` (ipyparallel's globals for uncanning) is ignored:
    functions travel with their globals.

    :raises DeserializationError: the frames are not :func:`serialize_object`'s.
    """
    frames = list(buffers)
    if not frames:
        raise DeserializationError("no frames to deserialize")
    head = frames[0]
    head = bytes(getattr(head, "buffer", head))
    if len(head) != _HEADER.size or head[:4] != _MAGIC:
        raise DeserializationError("the first frame is not a corral.serialize header")
    count = _HEADER.unpack(head)[1]
    if len(frames) < 1 + count:
        raise DeserializationError(f"{count} frames announced, {len(frames) - 1} given")
    return deserialize(frames[1 : 1 + count]), frames[1 + count :]


def pack_apply_message(
    f: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    buffer_threshold: int = DEFAULT_THRESHOLD,
    item_threshold: int = 64,
) -> list[Frame]:
    """``f(*args, **kwargs)`` as frames (:func:`corral.core.serialize.pack_apply`)."""
    return pack_apply(f, args, kwargs, threshold=buffer_threshold)


def unpack_apply_message(
    bufs: Sequence[Any], g: Mapping[str, Any] | None = None, copy: bool = True
) -> tuple[Callable[..., Any], list[Any], dict[str, Any]]:
    """``(f, args, kwargs)`` from :func:`pack_apply_message`'s frames (``g`` and
    ``copy`` are ipyparallel's and ignored: buffers are never copied)."""
    f, args, kwargs = unpack_apply(bufs)
    return f, list(args), kwargs
