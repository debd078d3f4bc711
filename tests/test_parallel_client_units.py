"""Pure pieces of the cluster client: chunking, errors, messages, the result state machine.

No sockets and no cluster: these run in milliseconds and pin down the logic the
integration tests (tests/test_parallel_client.py) exercise end to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.serialize import serialize
from corral.plugins.parallel.client import mapping
from corral.plugins.parallel.client.asyncresult import (
    AsyncMapResult,
    AsyncResult,
    BroadcastResult,
    ExecuteReply,
    StreamBlocks,
    as_completed,
)
from corral.plugins.parallel.client.errors import (
    CompositeError,
    ControllerLost,
    DependencyTimeout,
    EngineError,
    RemoteError,
    TaskAborted,
    UnmetDependency,
    error_from_content,
)
from corral.plugins.parallel.client.messages import MessageBuilder, Parsed, parse
from corral.transports.zmq import wire

# ---------------------------------------------------------------------- mapping


@given(st.integers(0, 500), st.integers(1, 50))
def test_chunk_slices_cover_in_order(length: int, chunksize: int) -> None:
    slices = mapping.chunk_slices(length, chunksize)
    items = [i for s in slices for i in range(length)[s]]
    assert items == list(range(length))
    assert all(0 < s.stop - s.start <= chunksize for s in slices)


@given(st.integers(0, 500), st.integers(1, 40))
def test_partition_slices_balanced(length: int, parts: int) -> None:
    slices = mapping.partition_slices(length, parts)
    assert len(slices) == parts
    sizes = [s.stop - s.start for s in slices]
    assert sum(sizes) == length and max(sizes) - min(sizes) <= 1
    assert [i for s in slices for i in range(length)[s]] == list(range(length))


def test_auto_chunksize_and_lengths() -> None:
    assert mapping.auto_chunksize(0, 2) == 1
    assert mapping.auto_chunksize(1000, 2) == 125
    assert mapping.auto_chunksize(3, 8) == 1
    assert mapping.resolve_length([range(5), [1, 2, 3]]) == 3
    with pytest.raises(TypeError, match="imap"):
        mapping.resolve_length([iter([1, 2])])
    with pytest.raises(ValueError):
        mapping.chunk_slices(3, 0)


def test_iter_chunks_is_lazy_on_infinite_input() -> None:
    pulled = []

    def naturals() -> Any:
        n = 0
        while True:
            pulled.append(n)
            yield n
            n += 1

    chunks = mapping.iter_chunks(naturals(), 3)
    assert next(chunks) == [0, 1, 2]
    assert next(chunks) == [3, 4, 5]
    assert len(pulled) == 6


def test_map_chunk() -> None:
    assert mapping.map_chunk(pow, [1, 2, 3], [2, 2, 2]) == [1, 4, 9]


# ---------------------------------------------------------------------- errors


def test_remote_error_shows_remote_traceback_and_engine() -> None:
    content = {
        "status": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": ["Traceback (most recent call last):", '  File "<x>", line 1', "ZeroDiv"],
        "engine_info": {"engine_id": 3},
    }
    error = error_from_content(content, msg_id="m1")
    assert type(error) is RemoteError
    assert error.engine_id == 3 and error.msg_id == "m1"
    assert error.ename == "ZeroDivisionError"
    text = str(error)
    assert "[engine 3] ZeroDivisionError: division by zero" in text
    assert 'File "<x>", line 1' in text
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is RemoteError and clone.engine_id == 3 and str(clone) == text


def test_a_queue_made_error_says_its_sentence_once() -> None:
    """The controller's failures carry `ename: evalue` as their whole traceback; str()
    and the rendered traceback must not repeat it under the same head line."""
    sentence = "engine 0 died: exited with status 4"
    content = {
        "status": "error",
        "ename": "EngineError",
        "evalue": sentence,
        "traceback": [f"EngineError: {sentence}"],
    }
    error = error_from_content(content, 0)
    assert type(error) is EngineError
    assert str(error) == f"[engine 0] EngineError: {sentence}"
    assert error.render_traceback() == [f"[engine 0] EngineError: {sentence}"]
    assert error.traceback == f"EngineError: {sentence}"  # still there for who reads it


def test_a_request_refused_for_altered_buffers_says_what_to_do() -> None:
    """An array modified while a non-blocking push was still sending it makes the engine
    refuse the request: the error says so and what to do, not just a digest mismatch."""
    content = {
        "status": "error",
        "ename": "BuffersAltered",
        "evalue": "buffer 1 was altered after signing",
        "traceback": ["BuffersAltered: buffer 1 was altered after signing"],
        "engine_info": {"engine_id": 1, "method": "push"},
    }
    text = str(error_from_content(content))
    assert text.startswith("[engine 1] BuffersAltered: buffer 1 was altered after signing.")
    assert "did not run" in text and "block=True" in text and "a.copy()" in text
    assert text.count("buffer 1 was altered") == 1


@pytest.mark.parametrize(
    ("ename", "cls"),
    [
        ("EngineError", EngineError),
        ("DependencyTimeout", DependencyTimeout),
        ("UnmetDependency", UnmetDependency),
        ("ValueError", RemoteError),
    ],
)
def test_queue_errors_map_to_classes(ename: str, cls: type) -> None:
    error = error_from_content({"status": "error", "ename": ename, "evalue": "x"}, 1)
    assert type(error) is cls and isinstance(error, RemoteError)


def test_aborted_and_composite() -> None:
    aborted = error_from_content({"status": "aborted"}, 0)
    assert isinstance(aborted, TaskAborted)
    errors = [RemoteError("KeyError", "'a'", "tb a", 0), RemoteError("OSError", "b", "tb b", 1)]
    composite = CompositeError(errors)
    assert isinstance(composite, RemoteError)
    assert composite.engine_ids == [0, 1]
    assert "2 task(s) failed" in str(composite) and "tb a" in str(composite)
    with pytest.raises(RemoteError, match="OSError"):
        composite.raise_exception(1)


# ---------------------------------------------------------------------- messages


def test_builder_frames_parse_back_and_verify() -> None:
    signer = wire.Signer(b"k" * 64)
    builder = MessageBuilder(signer, "session-1")
    buffers = serialize(b"x" * 100_000)
    msg_id, frames = builder.build(
        "apply_request",
        None,
        metadata={"targets": [1], "after": []},
        buffers=buffers,
        identities=(b"engine-uuid",),
    )
    # The generic wire parser accepts what the fast builder makes.
    idents, msg = wire.deserialize([bytes(f) for f in frames], signer)
    assert idents == [b"engine-uuid"]
    assert msg["header"]["msg_id"] == msg_id
    assert msg["metadata"] == {"targets": [1], "after": []}
    assert msg["content"] == {}
    # ...and the client's parser keeps buffers as they came.
    parsed = parse(frames, signer, wire.ReplayGuard())
    assert parsed.identities == [b"engine-uuid"]
    assert parsed.buffers[0] is frames[-2]
    guard = wire.ReplayGuard()
    parse(frames, signer, guard)
    with pytest.raises(wire.ReplayedMessage):
        parse(frames, signer, guard)
    tampered = list(frames)
    tampered[-3 - len(buffers) + 1] = b'{"x":1}'
    with pytest.raises(wire.BadSignature):
        parse(tampered, signer)


def test_builder_falls_back_to_the_wire_json_for_nan_and_lone_surrogates() -> None:
    """The fast encoder refuses NaN and lone surrogates; the wire module's encoder makes
    them null and "?" rather than failing the message (this fallback once named a
    function the wire module does not have)."""
    signer = wire.Signer(b"k" * 64)
    builder = MessageBuilder(signer, "session-1")
    _, frames = builder.build(
        "apply_request", None, metadata={"score": float("nan"), "name": "odd\udcff"}
    )
    _, msg = wire.deserialize([bytes(f) for f in frames], signer)
    assert msg["metadata"] == {"score": None, "name": "odd?"}


def test_msg_ids_unique_across_threads() -> None:
    builder = MessageBuilder(wire.Signer(b""), "s")
    seen: list[str] = []

    def work() -> None:
        seen.extend(builder.new_msg_id() for _ in range(2000))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 8000


# ---------------------------------------------------------------------- results


class _FakeClient:
    """Just enough client for result objects: records abort/interrupt calls."""

    def __init__(self) -> None:
        self.aborted: list[AsyncResult] = []
        self.interrupted: list[AsyncResult] = []
        self._engines: dict[int, Any] = {0: None, 1: None}
        self._direct: dict[str, int] = {}

    def _abort(self, result: AsyncResult) -> None:
        self.aborted.append(result)

    def _interrupt(self, result: AsyncResult) -> None:
        self.interrupted.append(result)


def _reply(
    msg_id: str,
    value: Any = None,
    *,
    engine_id: int = 0,
    status: str = "ok",
    outputs: int = 0,
    **content: Any,
) -> Parsed:
    buffers = serialize(value) if status == "ok" else []
    return Parsed(
        [],
        {"msg_id": "r-" + msg_id, "msg_type": "apply_reply"},
        {"msg_id": msg_id},
        {"engine_id": engine_id, "started": "s", "completed": "c", "outputs": outputs},
        {"status": status, "engine_info": {"engine_id": engine_id}, **content},
        list(buffers),
    )


def _iopub(msg_id: str, msg_type: str, engine_id: int = 0, **content: Any) -> Parsed:
    return Parsed(
        [],
        {"msg_id": "io", "msg_type": msg_type, "date": "d"},
        {"msg_id": msg_id},
        {"engine_id": engine_id},
        content,
        [],
    )


def test_single_result_lifecycle() -> None:
    result = AsyncResult(_FakeClient(), ["a"], fname="f")
    assert not result.ready() and not result.wait(0)
    with pytest.raises(ValueError):
        result.successful()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.01)
    result._on_iopub("a", _iopub("a", "stream", name="stdout", text="hello\n"))
    assert result._on_reply("a", _reply("a", {"x": 1}, outputs=2))
    assert result.get() == {"x": 1} and result.successful()
    md = result.metadata
    assert md["engine_id"] == 0 and md["stdout"] == "hello\n" and md["status"] == "ok"
    assert not result.wait_for_output(0.01)  # the idle status has not arrived yet
    result._on_iopub("a", _iopub("a", "status", execution_state="idle"))
    assert result.wait_for_output(0)


def test_execute_reply_that_beats_the_execute_mark() -> None:
    # execute() marks its result after submitting: a reply quick enough to finish it
    # first (a local engine) must still give ExecuteReply objects, the same ones each time
    result = AsyncResult(_FakeClient(), ["a"], fname="execute")
    assert result._on_reply("a", _reply("a", None))
    result._execute = True
    replies = result.get()
    assert isinstance(replies, ExecuteReply) and replies.engine_id == 0
    assert result.get() is replies


def test_multi_result_composite_and_iteration_order() -> None:
    result = AsyncResult(_FakeClient(), ["a", "b", "c"], single=False)
    result._on_reply("c", _reply("c", 3, engine_id=1))
    result._on_reply("a", _reply("a", 1))
    assert result.progress == 2 and not result.done()
    it = iter(result)
    assert next(it) == 1
    result._on_reply(
        "b", _reply("b", status="error", ename="KeyError", evalue="'k'", traceback=["tb"])
    )
    with pytest.raises(CompositeError) as info:
        result.get()
    assert info.value.errors[0].ename == "KeyError"
    with pytest.raises(RemoteError):
        next(it)


def test_map_result_flattens_and_yields_unordered() -> None:
    result = AsyncMapResult(_FakeClient(), ["a", "b"], ordered=False)
    result._length = 4
    assert len(result) == 4
    result._on_reply("b", _reply("b", [30, 40]))
    it = iter(result)
    assert [next(it), next(it)] == [30, 40]
    result._on_reply("a", _reply("a", [10, 20]))
    assert list(it) == [10, 20]
    assert result.get() == [10, 20, 30, 40]


def test_broadcast_slots_by_engine_and_local_failure() -> None:
    result = BroadcastResult(_FakeClient(), "m", [0, 1])
    assert not result._on_reply("m", _reply("m", "one", engine_id=1))
    result._fail_engine(0, EngineError("EngineError", "died", "", 0))
    with pytest.raises(CompositeError) as info:
        result.get(0)
    assert isinstance(info.value.errors[0], EngineError)
    assert result._values[1] == "one"


def test_late_reply_after_cancel_is_ignored() -> None:
    client = _FakeClient()
    result = AsyncResult(client, ["a"])
    assert result.cancel()
    assert client.aborted == [result]
    result._on_reply("a", _reply("a", 1))  # must not raise InvalidStateError
    assert result.cancelled()


def test_a_cancelled_result_is_done_for_wait_and_as_completed() -> None:
    """concurrent.futures counts a future done once it is "cancelled and notified";
    a cancelled result that was never notified made wait() and as_completed() (and so
    Client.wait) sit out their whole timeout, or hang without one."""
    result = AsyncResult(_FakeClient(), ["a"])
    assert result.cancel()
    done, not_done = concurrent.futures.wait([result], timeout=5)
    assert done == {result} and not not_done
    assert list(concurrent.futures.as_completed([result], timeout=5)) == [result]
    assert result.wait(5)
    result._on_reply("a", _reply("a", 1))  # the abort's late answer changes nothing
    assert result.cancelled() and result.done()


def test_await_and_as_completed() -> None:
    first = AsyncResult(_FakeClient(), ["a"])
    second = AsyncResult(_FakeClient(), ["b"])

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: first._on_reply("a", _reply("a", 42)))
        return await first

    assert asyncio.run(main()) == 42
    second._on_reply("b", _reply("b", 7))
    assert {r.get() for r in as_completed([first, second], timeout=1)} == {42, 7}
    done, _ = concurrent.futures.wait([first, second], 0)
    assert len(done) == 2


def test_wait_interactive_draws_a_bar() -> None:
    import io

    result = AsyncResult(_FakeClient(), ["a", "b"], single=False, fname="job")
    result._on_reply("a", _reply("a", 1))
    timer = threading.Timer(0.05, lambda: result._on_reply("b", _reply("b", 2)))
    timer.start()
    out = io.StringIO()
    result.wait_interactive(interval=0.01, file=out)
    timer.join()
    assert "job" in out.getvalue() and "2/2" in out.getvalue()


def test_client_times_out_without_a_hub(tmp_path: Any) -> None:
    import socket

    from corral.plugins.parallel.client import Client
    from corral.plugins.parallel.clusterfile import PORT_NAMES, ClusterInfo, write_cluster_file

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on
    info = ClusterInfo(cluster_id="dead", **{name: port for name in PORT_NAMES})
    path = write_cluster_file(tmp_path / "cluster-dead.json", info)
    with pytest.raises(TimeoutError, match="did not answer"):
        Client(connection_file=path, timeout=0.2)


def test_task_metadata_joins_stream_pieces_when_read() -> None:
    """Stream text is appended in O(1) (a str kept in a dict was copied whole for every
    piece: seconds for 30 MB) and every way of reading the dict sees all of it."""
    from corral.plugins.parallel.client.taskmeta import new_metadata

    md = new_metadata()
    pieces = [f"line {i}\n" for i in range(20_000)]
    for piece in pieces:
        md.append_stream("stdout", piece)
    md.append_stream("stderr", "oops\n")
    whole = "".join(pieces)
    assert md["stdout"] == whole and md.get("stderr") == "oops\n"
    md.append_stream("stdout", "more\n")
    assert dict(md)["stdout"] == whole + "more\n"
    md.append_stream("stdout", "again\n")
    assert {**md}["stdout"].endswith("again\n")
    md.append_stream("stderr", "late\n")
    assert dict(md.items())["stderr"] == "oops\nlate\n"
    assert md == {**md} and "again" in repr(md)
    # ipyparallel's attribute reads; pickled and copied with every piece joined
    import copy
    import pickle

    md.append_stream("stdout", "last\n")
    assert md.stdout.endswith("last\n") and md.stderr == "oops\nlate\n"
    for clone in (pickle.loads(pickle.dumps(md)), copy.deepcopy(md), copy.copy(md)):
        assert clone == md and clone["stdout"].endswith("last\n")
    with pytest.raises(AttributeError):
        md.not_a_key  # noqa: B018


def test_stdout_waits_only_for_output_that_can_still_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ar.stdout`` waits for output trailing a reply from an engine that published some;
    never for a task no engine ran (an error reply the scheduler made names no output
    count), a cancelled one, or one whose client lost its controller."""

    def no_wait(self: AsyncResult, timeout: float | None = None) -> bool:
        raise AssertionError("waited for output that cannot come")

    monkeypatch.setattr(AsyncResult, "wait_for_output", no_wait)
    from_scheduler = AsyncResult(_FakeClient(), ["a"])
    reply = _reply("a", status="error", ename="TaskAborted", evalue="aborted")
    del reply.metadata["outputs"]
    from_scheduler._on_reply("a", reply)
    assert from_scheduler.done() and from_scheduler.stdout == ""
    cancelled = AsyncResult(_FakeClient(), ["b"])
    assert cancelled.cancel() and cancelled.stdout == ""
    lost = AsyncResult(_FakeClient(), ["c"])
    lost._abandon(ControllerLost("gone"))
    assert lost.stdout == "" and lost.stderr == ""
    printed = AsyncResult(_FakeClient(), ["d"])
    printed._on_reply("d", _reply("d", 1, outputs=2))  # its output is still on the way
    with pytest.raises(AssertionError, match="waited"):
        _ = printed.stdout


def test_stream_blocks_lay_output_out_as_ipyparallel() -> None:
    import io

    out = io.StringIO()
    blocks = StreamBlocks()
    blocks.write("a\nb\n", "[stdout:0] ", out)
    blocks.write("c\n", "[stdout:0] ", out)  # the same engine's stream goes on: no label
    blocks.write("part", "[stdout:1] ", out)
    blocks.write("x\n", "[stdout:0] ", out)  # a new label starts its own line
    blocks.end(out)
    assert out.getvalue() == "[stdout:0] \na\nb\nc\n[stdout:1] \npart\n[stdout:0] \nx\n"
    inline = io.StringIO()
    blocks = StreamBlocks(inline=True)  # in a kernel: the text on the label's line
    blocks.write("one\ntwo\n", "[stdout:0] ", inline)
    blocks.write("three\n", "", inline)
    assert inline.getvalue() == "[stdout:0] one\ntwo\nthree\n"
