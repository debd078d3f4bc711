"""Tests for corral.core.serialize: round trips, zero copy on both sides, errors."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import functools
import math
import pickle
import socket
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.core.serialize import (
    DEFAULT_THRESHOLD,
    DeserializationError,
    SerializationError,
    deserialize,
    pack_apply,
    serialize,
    unpack_apply,
)

BIG = DEFAULT_THRESHOLD  # the smallest size that goes out of band


def roundtrip(obj, **kwargs):
    return deserialize(serialize(obj, **kwargs))


def address(buffer) -> int:
    """Address of the first byte of a buffer, to prove two views share memory."""
    view = memoryview(buffer).cast("B")
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]


def module_level_function(x, y=1):
    return x * y


class ModuleLevelClass:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return type(other) is ModuleLevelClass and other.value == self.value


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        0,
        -(2**100),
        1.5,
        complex(1, -2),
        "héllo",
        b"bytes",
        bytearray(b"mutable"),
        (),
        (1, "a", None),
        [1, [2, [3]]],
        {"a": 1, 2: "b", (3,): [4]},
        {1, 2, 3},
        frozenset({"x"}),
        range(2, 10, 3),
        slice(1, 2, 3),
        Ellipsis,
        NotImplemented,
        decimal.Decimal("1.10"),
        fractions.Fraction(3, 7),
        datetime.datetime(2024, 5, 1, 12, 30),
        uuid.UUID(int=12345),
        collections.OrderedDict(a=1, b=2),
        collections.Counter("abracadabra"),
        collections.deque([1, 2, 3]),
        ModuleLevelClass(3),
        ValueError("boom", 1),
        int,
        len,
        math.sqrt,
        module_level_function,
    ],
    ids=lambda obj: type(obj).__name__,
)
def test_builtin_roundtrip(obj):
    frames = serialize(obj)
    assert len(frames) == 1, "small values stay inline"
    result = deserialize(frames)
    if isinstance(obj, BaseException):
        assert type(result) is type(obj) and result.args == obj.args
    else:
        assert result == obj
        assert type(result) is type(obj)


def test_nan_and_shared_references_survive():
    shared = [1, 2]
    result = roundtrip({"a": shared, "b": shared, "nan": float("nan")})
    assert result["a"] is result["b"]
    assert math.isnan(result["nan"])


def test_self_referencing_structure():
    loop: list = [1]
    loop.append(loop)
    result = roundtrip(loop)
    assert result[1] is result


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.zeros((0, 3)),
        np.array(3.5),
        np.array(["a", "bc"]),
        np.array([1, "x", None], dtype=object),
        np.arange(20.0).reshape(4, 5).T,  # Fortran order
        np.arange(40)[::3],  # not contiguous
        np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8")]),
    ],
    ids=["int16", "empty", "scalar", "str", "object", "fortran", "strided", "record"],
)
def test_small_numpy_roundtrip(array):
    frames = serialize(array)
    assert len(frames) == 1
    result = deserialize(frames)
    assert result.dtype == array.dtype and result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_numpy_scalar_and_dtype():
    assert roundtrip(np.float32(2.5)) == np.float32(2.5)
    assert roundtrip(np.dtype("<c16")) == np.dtype("<c16")


# ------------------------------------------------------------------------ zero copy


def test_large_array_sender_side_zero_copy():
    array = np.ones(50 * 1024 * 1024 // 8, dtype=np.float64)  # 50 MB
    frames = serialize(array)
    assert len(frames) == 2
    head, data = frames
    assert len(head) < 1024, "frame 0 holds only the pickle, not the data"
    assert memoryview(data).nbytes == array.nbytes
    assert np.shares_memory(np.frombuffer(data, dtype=array.dtype), array)
    assert address(data) == array.__array_interface__["data"][0]


def test_large_array_receiver_side_zero_copy_writable():
    array = np.arange(BIG, dtype=np.int32)
    head, data = serialize(array)
    received = bytearray(data)  # what a socket would hand us
    result = deserialize([head, received])
    np.testing.assert_array_equal(result, array)
    assert address(result) == address(received)
    assert result.flags.writeable
    received[:4] = b"\xff\xff\xff\xff"
    assert result[0] == -1, "the array is a view onto the frame"


def test_large_array_from_readonly_frame_is_readonly_view():
    array = np.arange(BIG, dtype=np.uint8)
    head, data = serialize(array)
    frame = bytes(data)
    result = deserialize([head, frame])
    assert not result.flags.writeable
    assert address(result) == address(frame)


def test_fortran_order_large_array_out_of_band():
    array = np.asfortranarray(np.arange(BIG, dtype=np.float64).reshape(256, -1))
    frames = serialize(array)
    assert len(frames) == 2
    assert address(frames[1]) == array.__array_interface__["data"][0]
    result = deserialize([frames[0], bytearray(frames[1])])
    assert result.flags.f_contiguous
    np.testing.assert_array_equal(result, array)


def test_zmq_frames_accepted():
    zmq = pytest.importorskip("zmq")
    array = np.arange(BIG, dtype=np.float32)
    frames = [zmq.Frame(bytes(frame)) for frame in serialize({"x": array, "n": 3})]
    result = deserialize(frames)
    assert result["n"] == 3
    np.testing.assert_array_equal(result["x"], array)
    assert address(result["x"]) == address(frames[1].buffer)


def test_several_arrays_keep_their_order():
    arrays = [np.full(BIG, i, dtype=np.uint8) for i in range(4)]
    frames = serialize({"small": np.arange(3), "big": arrays})
    assert len(frames) == 5
    result = deserialize(frames)
    for i, array in enumerate(result["big"]):
        assert array[0] == i


@pytest.mark.parametrize("make", [bytes, bytearray], ids=["bytes", "bytearray"])
def test_large_bytes_like_out_of_band(make):
    payload = make(b"z" * (2 * BIG))
    frames = serialize(payload)
    assert len(frames) == 2
    assert len(frames[0]) < 256
    assert address(frames[1]) == address(payload)
    result = deserialize(frames)
    assert type(result) is make and result == payload


@pytest.mark.parametrize("make", [bytes, bytearray], ids=["bytes", "bytearray"])
def test_large_bytes_like_deeply_nested_out_of_band(make):
    payload = make(BIG)
    value = {"deep": [[[[(payload,)]]]], "noise": list(range(20_000))}
    frames = serialize(value)
    assert len(frames) == 2
    assert address(frames[1]) == address(payload)
    result = deserialize(frames)
    assert result["deep"][0][0][0][0][0] == payload
    assert result["noise"] == value["noise"]


def test_large_bytes_received_without_copy_when_frame_is_bytes():
    payload = bytes(BIG)
    head, data = serialize([payload])
    frame = bytes(data)
    assert deserialize([head, frame])[0] is frame
    writable = bytearray(data)
    frames = serialize([bytearray(BIG)])
    assert deserialize([frames[0], writable])[0] is writable


def test_same_large_bytes_twice_sent_once():
    payload = bytes(BIG)
    frames = serialize([payload, payload, {"again": payload}])
    assert len(frames) == 2
    result = deserialize(frames)
    assert result[0] is result[1] is result[2]["again"]


def test_large_memoryview_out_of_band():
    array = np.arange(BIG, dtype=np.int32)
    view = memoryview(array)
    frames = serialize({"view": view})
    assert len(frames) == 2
    assert address(frames[1]) == address(array)
    result = deserialize([frames[0], bytearray(frames[1])])["view"]
    assert type(result) is memoryview
    assert result.format == "i" and result.shape == (BIG,)
    assert result[5] == 5 and not result.readonly


def test_small_memoryview_inline_and_strided_memoryview():
    small = memoryview(b"abc")
    frames = serialize(small)
    assert len(frames) == 1
    result = deserialize(frames)
    assert result.tobytes() == b"abc" and result.readonly
    strided = memoryview(bytes(range(200)))[::2]
    assert roundtrip(strided).tobytes() == strided.tobytes()
    matrix = memoryview(np.arange(6, dtype=np.float64).reshape(2, 3))
    result = roundtrip(matrix)
    assert result.shape == (2, 3) and result.tolist() == matrix.tolist()


def test_small_things_stay_inline():
    value = {"a": bytes(BIG - 1), "b": bytearray(100), "c": np.zeros(100), "d": "x" * 1000}
    frames = serialize(value)
    assert len(frames) == 1
    result = deserialize(frames)
    assert result["a"] == value["a"] and result["b"] == value["b"]


def test_threshold_is_configurable():
    value = [b"x" * 100, np.zeros(20)]
    assert len(serialize(value)) == 1
    frames = serialize(value, threshold=100)
    assert len(frames) == 3
    result = deserialize(frames)
    assert result[0] == value[0]
    np.testing.assert_array_equal(result[1], value[1])
    assert len(serialize(value, threshold=0)) == 3
    with pytest.raises(ValueError):
        serialize(value, threshold=-1)


def test_big_graph_without_bytes_is_one_frame():
    value = [float(i) for i in range(50_000)] + [str(i) for i in range(20_000)]
    frames = serialize(value)
    assert len(frames) == 1
    assert deserialize(frames) == value


# ---------------------------------------------------------- functions and classes


def test_lambda_roundtrip():
    frames = serialize(lambda x: x * 2)
    assert deserialize(frames)(21) == 42


def test_closure_captures_variables():
    factor = 3
    offset = [10]

    def scaled(x):
        return x * factor + offset[0]

    assert deserialize(serialize(scaled))(2) == 16


def test_closure_capturing_large_array_sends_it_out_of_band():
    array = np.arange(BIG, dtype=np.float64)

    def total():
        return float(array.sum())

    frames = serialize(total)
    assert len(frames) == 2
    assert address(frames[1]) == array.__array_interface__["data"][0]
    assert deserialize([frames[0], bytearray(frames[1])])() == float(array.sum())


def test_closure_capturing_large_bytes_sends_them_out_of_band():
    payload = bytes(2 * BIG)

    def size():
        return len(payload)

    frames = serialize([size, np.arange(BIG, dtype=np.uint8)])
    assert len(frames) == 3
    assert address(frames[1]) == address(payload)
    func, array = deserialize([frames[0], *map(bytearray, frames[1:])])
    assert func() == 2 * BIG and array[-1] == (BIG - 1) % 256


def test_class_defined_in_test_and_its_instances():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm2(self):
            return self.x**2 + self.y**2

    result = roundtrip({"cls": Point, "points": [Point(1, 2), Point(3, 4)]})
    assert [p.norm2() for p in result["points"]] == [5, 25]
    assert all(type(p) is result["cls"] for p in result["points"])
    assert result["cls"] is roundtrip(Point), "cloudpickle keeps class identity"


def test_instance_of_local_class_inside_lambda_args():
    class Box:
        def __init__(self, value):
            self.value = value

    frames = pack_apply(lambda box: isinstance(box, Box) and box.value, (Box(7),), {})
    func, args, kwargs = unpack_apply(frames)
    assert func(*args, **kwargs) == 7


def test_functools_partial():
    bound = functools.partial(module_level_function, y=4)
    assert roundtrip(bound)(2) == 8
    base = 5
    local = functools.partial(lambda a, b: a + b + base, 1)
    assert roundtrip(local)(2) == 8


def test_importable_function_is_pickled_by_reference():
    # By reference means the pickle is tiny and names the function; cloudpickle not needed.
    (head,) = serialize(module_level_function)
    assert b"module_level_function" in head and len(head) < 200


def test_import_does_not_load_numpy_or_cloudpickle():
    code = (
        "import sys, corral.core.serialize as s;"
        "s.deserialize(s.serialize({'a': [1, b'x', (2.0,)], 'f': len}));"
        "print('numpy' in sys.modules, 'cloudpickle' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_function_defined_in_main_is_sent_by_value():
    code = (
        "import corral.core.serialize as s, pickle\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "class Thing:\n"
        "    pass\n"
        "frames = s.serialize([double, Thing()])\n"
        "import sys; sys.stdout.buffer.write(frames[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    func, thing = deserialize([out.stdout])  # __main__ here is pytest: no `double` in it
    assert func(21) == 42
    assert type(thing).__name__ == "Thing"


@pytest.mark.parametrize("value", [None, True, 7, 2**100, 1.5, 1j, "text", b"small"])
def test_atomic_values_skip_the_full_pickler(monkeypatch, value):
    """None, numbers, text and small bytes (what most tasks return) are written by the C
    pickler alone, as the full pickler would write them, and read back by it alone."""
    import corral.core.serialize as s

    frames = s.serialize(value)
    assert frames == [pickle.dumps(value, 5)]

    class Refused(pickle.Pickler):
        def __init__(self, *args, **kwargs):
            raise AssertionError("the full pickler was set up")

    monkeypatch.setattr(s, "_FastPickler", Refused)
    monkeypatch.setattr(s, "_Unpickler", Refused)
    assert s.serialize(value) == frames
    assert s.deserialize(frames) == value
    assert len(s.serialize(b"x" * BIG, threshold=BIG)) == 2  # large bytes: out of band


def test_one_frame_with_an_out_of_band_reference_is_refused():
    frames = serialize(b"x" * BIG)
    with pytest.raises(DeserializationError):
        deserialize(frames[:1])  # its buffer frame dropped


def test_main_function_with_its_source_note_is_loaded_once(tmp_path):
    """A ``__main__`` function carries the source lines the client attaches for remote
    tracebacks; an engine still unpickles its code once, not for every task (each load
    is a copy of one template: the same code object, its own globals and source note)."""
    code = (
        "import pickle, sys\n"
        "from corral.core.serialize import pack_apply\n"
        "from corral.plugins.parallel.client.funccache import FunctionCache\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "cache = FunctionCache()\n"
        "frames = [bytes(f) for f in pack_apply(cache.lookup(triple), (2,), {})]\n"
        "sys.stdout.buffer.write(pickle.dumps(frames))\n"
    )
    script = tmp_path / "script.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, check=True)
    frames = pickle.loads(out.stdout)
    loads = [unpack_apply(frames) for _ in range(3)]
    funcs = [func for func, _, _ in loads]
    assert [func(*args) for func, args, _ in loads] == [6, 6, 6]
    assert funcs[1].__code__ is funcs[2].__code__, "the code was unpickled again"
    assert funcs[1] is not funcs[2] and funcs[1].__globals__ is not funcs[2].__globals__
    first, second = funcs[1].__corral_source__, funcs[2].__corral_source__
    assert first == second == (str(script), 4, ["def triple(x):\n", "    return 3 * x\n"])
    assert first[2] is not second[2]


def test_module_objects_by_reference():
    assert roundtrip(math) is math
    assert roundtrip({"m": np})["m"] is np


def test_types_pickle_refuses_but_cloudpickle_handles():
    assert list(roundtrip({"a": 1}.keys())) == ["a"]


# ------------------------------------------------------------------------- apply


def test_pack_apply_mixed_arguments():
    array = np.arange(BIG, dtype=np.int64)
    payload = bytes(2 * BIG)
    base = 100

    def work(a, b, *rest, scale=1, blob=b""):
        return (int(a.sum()) + b + sum(rest) + base) * scale, len(blob)

    frames = pack_apply(work, (array, 2, 3, 4), {"scale": 2, "blob": payload})
    assert len(frames) == 3
    assert address(frames[1]) == array.__array_interface__["data"][0]
    assert address(frames[2]) == address(payload)
    func, args, kwargs = unpack_apply([frames[0], *map(bytearray, frames[1:])])
    assert type(args) is tuple and type(kwargs) is dict
    assert func(*args, **kwargs) == ((int(array.sum()) + 9 + 100) * 2, 2 * BIG)


def test_pack_apply_small_task_is_one_frame():
    frames = pack_apply(module_level_function, [3], {"y": 5})
    assert len(frames) == 1
    func, args, kwargs = unpack_apply(frames)
    assert func is module_level_function and func(*args, **kwargs) == 15


@pytest.mark.parametrize(
    "make, kind",
    [
        (threading.Lock, "lock"),
        (lambda: (i for i in range(3)), "generator"),
        (lambda: open(__file__, "rb"), "BufferedReader"),
        (lambda: open(__file__), "TextIOWrapper"),
        (lambda: socket.socket(), "socket"),
    ],
    ids=["lock", "generator", "binary-file", "text-file", "socket"],
)
def test_unpicklable_positional_argument_is_named(make, kind):
    bad = make()
    try:
        with pytest.raises(SerializationError) as info:
            pack_apply(module_level_function, (1, bad), {})
    finally:
        getattr(bad, "close", lambda: None)()
    assert info.value.argument == 1
    assert "positional argument 1" in str(info.value)
    assert kind in str(info.value)
    assert isinstance(info.value, TypeError)


def test_unpicklable_keyword_argument_is_named():
    with pytest.raises(SerializationError, match="keyword argument 'lock'") as info:
        pack_apply(module_level_function, (1,), {"y": 2, "lock": threading.RLock()})
    assert info.value.argument == "lock"
    assert "RLock" in str(info.value)


def test_unpicklable_function_is_named():
    lock = threading.Lock()

    def uses_lock():
        return lock.locked()

    with pytest.raises(SerializationError, match="the function") as info:
        pack_apply(uses_lock, (), {})
    assert info.value.argument == "func"


def test_pack_apply_rejects_non_callable():
    with pytest.raises(SerializationError, match="callable"):
        pack_apply(42, (), {})  # type: ignore[arg-type]


def test_serialize_unpicklable_names_type():
    with pytest.raises(SerializationError, match="_thread.lock"):
        serialize({"nested": [threading.Lock()]})
    with pytest.raises(SerializationError, match="generator"):
        serialize(x for x in ())


def test_unpack_apply_rejects_other_payloads():
    with pytest.raises(DeserializationError, match="apply request"):
        unpack_apply(serialize((1, 2, 3)))


# ------------------------------------------------------------------ garbled input


def valid_frames():
    return serialize({"a": np.arange(BIG, dtype=np.uint8), "b": [1, 2.0, "three"]})


def test_missing_buffer_frame():
    head, _ = valid_frames()
    with pytest.raises(DeserializationError):
        deserialize([head])


def test_extra_frame():
    with pytest.raises(DeserializationError, match="left over"):
        deserialize([*valid_frames(), b"extra"])


def test_wrong_buffer_size():
    head, data = valid_frames()
    with pytest.raises(DeserializationError):
        deserialize([head, bytes(data)[:-1]])
    frames = serialize([bytes(BIG)])
    with pytest.raises(DeserializationError, match="expected"):
        deserialize([frames[0], bytes(BIG - 1)])


@pytest.mark.parametrize(
    "frames",
    [[], [b""], [b"garbage"], [b"\x80\x05"], [b"\x80\x04K\x01."], [object()], b"\x80\x05."],
    ids=["empty", "blank", "garbage", "only-proto", "protocol4", "no-buffer", "not-a-list"],
)
def test_obviously_bad_frames(frames):
    with pytest.raises(DeserializationError):
        deserialize(frames)


def test_every_truncation_is_an_error():
    head, data = valid_frames()
    for cut in range(len(head)):
        with pytest.raises(DeserializationError):
            deserialize([head[:cut], data])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbled_frames_raise_deserialization_error_or_load(data):
    (head,) = serialize({"a": [1, 2.5, "three", b"four"], "b": (None, True), "c": {7, 8}})
    position = data.draw(st.integers(2, len(head) - 1))
    value = data.draw(st.integers(0, 255))
    garbled = head[:position] + bytes([value]) + head[position + 1 :]
    try:
        deserialize([garbled])
    except DeserializationError:
        pass


def test_deserialization_error_is_value_and_type_error():
    assert issubclass(DeserializationError, ValueError)
    assert issubclass(DeserializationError, SerializationError)
    assert issubclass(SerializationError, TypeError)


def test_unknown_module_on_receiving_side():
    head = pickle.dumps(pickle.PickleBuffer, protocol=5).replace(b"pickle", b"pickl_")
    with pytest.raises(DeserializationError, match="pickl_"):
        deserialize([head])


# ---------------------------------------------------------------------- property

builtin_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.complex_numbers(allow_nan=False)
)
hashable = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10)
nested = st.recursive(
    builtin_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(hashable, children, max_size=5)
        | st.frozensets(hashable, max_size=5)
        | st.builds(bytearray, st.binary(max_size=30))
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(value=nested, threshold=st.sampled_from([0, 8, 32, DEFAULT_THRESHOLD]))
def test_nested_builtin_roundtrip(value, threshold):
    frames = serialize(value, threshold=threshold)
    assert deserialize(frames) == value
    assert deserialize([bytes(memoryview(f).cast("B")) for f in frames]) == value
