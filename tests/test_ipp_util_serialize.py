"""``corral.util.disambiguate_url`` and ``corral.serialize``: what ipyparallel's
``interengine`` and ``wave2D`` examples import from ``ipyparallel.util`` and
``ipyparallel.serialize``, used as they use them, over real zmq sockets."""

from __future__ import annotations

import socket

import pytest
import zmq

import corral as ipp
from corral.core.serialize import DeserializationError
from corral.serialize import (
    deserialize_object,
    pack_apply_message,
    serialize_object,
    unpack_apply_message,
)
from corral.util import disambiguate_url


@pytest.fixture
def pair():
    """A PUSH socket bound everywhere, as the examples bind, and a PULL socket connected
    to the address ``disambiguate_url`` makes of it."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    port = push.bind_to_random_port("tcp://*")
    pull.connect(disambiguate_url(f"tcp://*:{port}", socket.gethostname()))
    yield push, pull
    push.close(linger=0)
    pull.close(linger=0)
    ctx.term()


def test_disambiguate_url_names_a_connectable_address():
    assert disambiguate_url("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert disambiguate_url("tcp://0.0.0.0:5555", socket.gethostname()) == "tcp://127.0.0.1:5555"
    assert disambiguate_url("tcp://*:5555", "127.0.0.1") == "tcp://127.0.0.1:5555"
    assert disambiguate_url("tcp://*:5555", "192.0.2.7") == "tcp://192.0.2.7:5555"  # elsewhere
    assert disambiguate_url("tcp://10.1.2.3:5555", "192.0.2.7") == "tcp://10.1.2.3:5555"
    assert disambiguate_url("ipc:///tmp/sock") == "ipc:///tmp/sock"
    assert ipp.util.disambiguate_url is disambiguate_url


def test_objects_round_trip_over_a_socket_with_frames_to_spare(pair):
    np = pytest.importorskip("numpy")
    push, pull = pair
    big = np.arange(100_000, dtype="f8").reshape(100, 1000)  # out of band, uncopied
    value = {"grid": big, "label": "step", "f": lambda x: x + 1}
    push.send_multipart([*serialize_object(value), *serialize_object([1, 2])])
    frames = pull.recv_multipart(copy=False)
    got, rest = deserialize_object(frames)
    assert (got["grid"] == big).all() and got["label"] == "step" and got["f"](1) == 2
    assert deserialize_object(rest) == ([1, 2], [])
    assert ipp.serialize.serialize_object is serialize_object


def test_apply_messages_round_trip_and_foreign_frames_are_refused(pair):
    push, pull = pair
    push.send_multipart(pack_apply_message(divmod, (17, 5), {}, buffer_threshold=8))
    f, args, kwargs = unpack_apply_message(pull.recv_multipart())
    assert (f, args, kwargs) == (divmod, [17, 5], {})
    push.send_multipart(pack_apply_message(pow, (2,), {"exp": 10}))
    f, args, kwargs = unpack_apply_message(pull.recv_multipart())
    assert f(*args, **kwargs) == 1024
    with pytest.raises(DeserializationError, match="not a corral.serialize header"):
        deserialize_object([b"not ours", b""])
    with pytest.raises(DeserializationError, match="2 frames announced, 1 given"):
        deserialize_object(serialize_object(b"x" * 100, buffer_threshold=10)[:2])
