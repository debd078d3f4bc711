"""What an engine answers on its queues: the parallel plugin's handlers, on the engine's wire.

The engine's request core (:class:`~corral.transports.zmq.requests.RequestCore`, the
kernel server's class) dispatches to these. They are the engine's counterpart of
:class:`corral.plugins.parallel.kernel_requests.KernelRequests`, which a kernel gains from
the same plugin: both run the requests through :class:`.tasks.Tasks` (apply, push, pull)
and the kernel's own functions (the cell runner, the interpreter queries); what is the
engine's here is only the wire: replies with pre-encoded content and metadata, sent
through :meth:`Engine._send` (held for batches, zero-copy buffers tracked), output
parented to the task on the cluster's iopub.

Hot path: :meth:`EngineRequests.apply`. No logging, no thread hop, no iopub message unless
the task wrote output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.transports.zmq import wire
from corral.transports.zmq.queries import QUERIES
from corral.transports.zmq.requests import execute_args, run_execute

from ._wire import Message, iso_now

if TYPE_CHECKING:
    from .engine import Destination, Engine

__all__ = ["EngineRequests"]

Handler = Callable[["Destination", Message], None]

#: What a task interrupted by its engine's shutdown (the cluster stopping) says, instead
#: of an empty KeyboardInterrupt that nobody typed.
SHUT_DOWN_MIDTASK = "the engine was shut down (its cluster is stopping) while this task ran"


class EngineRequests:
    """The queue handlers of ``engine`` (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def tables(self) -> dict[str, Handler]:
        """The handlers by message type, for the engine's ``queues`` table."""
        return {
            "apply_request": self.apply,
            "execute_request": self.execute,
            "push_request": self.push,
            "pull_request": self.pull,
            # What a kernel answers from its interpreter, answered the same way.
            **{kind: self._query(answer) for kind, answer in QUERIES.items()},
            "kernel_info_request": self.kernel_info,
        }

    # ------------------------------------------------------------ tasks

    def apply(self, sock: Destination, msg: Message) -> None:
        """Call the shipped function; reply with its pickled result or its error."""
        engine = self.engine
        replies = engine.replies
        if replies.in_flight:
            replies.settle()
        engine._started.add(msg.msg_id)
        if engine._aborted and engine.tasks.take_aborted(msg.msg_id):
            self._reply_aborted(sock, msg, "apply")
            return
        started = iso_now()
        relay = engine.relay
        relay.parent = msg.header
        relay.silent = False
        iopub = engine.iopub
        sent = iopub.sent
        unmet = False
        # The flusher may send held replies while user code runs: the lock is released
        # around the call (and taken back before anything else here).
        frames, error = engine.tasks.call(msg.buffers, engine.guard, engine._unlocked)
        buffers: list[Any] | tuple[Any, ...] = ()
        if error is None:
            buffers = frames or ()
            content = engine._ok_apply
            status = "ok"
        else:
            error["engine_info"] = {**engine.engine_info, "method": "apply"}
            if error["ename"] == "KeyboardInterrupt" and engine.shutdown_interrupts:
                error["evalue"] = SHUT_DOWN_MIDTASK
            unmet = error["ename"] == "UnmetDependency"
            if not unmet:  # a rejected task runs elsewhere: its rejection is no output
                iopub.publish(
                    "error",
                    {k: error[k] for k in ("ename", "evalue", "traceback")},
                    msg.header,
                )
            content = wire.json_dumps(error)
            status = "error"
        if iopub._chunks:
            iopub.flush()
        outputs = iopub.sent - sent
        completed = iso_now()
        metadata = engine._metadata(started, completed, status, outputs)
        if unmet:
            # @require/@depend do not hold here: the task scheduler tries another engine
            # (ipyparallel's metadata key; see controller/dependencies.py).
            metadata = metadata[:-1] + b',"dependencies_met":false}'
        engine._send(sock, msg, content, metadata, buffers, completed)
        if outputs:
            iopub.publish("status", {"execution_state": "idle"}, msg.header)

    def execute(self, sock: Destination, msg: Message) -> None:
        """Run a cell with the kernel's own cell runner (no stdin on an engine)."""
        engine = self.engine
        if engine.replies.in_flight:
            engine.replies.settle()
        engine._started.add(msg.msg_id)
        if engine._aborted and engine.tasks.take_aborted(msg.msg_id):
            self._reply_aborted(sock, msg, "execute")
            return
        started = iso_now()
        args = execute_args(msg.content)
        iopub = engine.iopub
        engine.relay.parent = msg.header
        engine.relay.silent = args.silent
        iopub.publish("status", {"execution_state": "busy"}, msg.header)
        sent = iopub.sent
        # The lock is released meanwhile (see apply: the flusher may send held replies
        # while user code runs).
        reply = run_execute(
            engine.interpreter, engine.guard, args, allow_stdin=False, unlocked=engine._unlocked
        )
        reply["engine_info"] = {**engine.engine_info, "method": "execute"}
        iopub.flush()
        outputs = iopub.sent - sent
        completed = iso_now()
        engine._send(
            sock,
            msg,
            wire.json_dumps(reply),
            engine._metadata(started, completed, reply["status"], outputs),
            date=completed,
        )
        iopub.publish("status", {"execution_state": "idle"}, msg.header)

    def _reply_aborted(self, sock: Destination, msg: Message, method: str) -> None:
        engine = self.engine
        now = iso_now()
        content = {
            "status": "aborted",
            "ename": "TaskAborted",
            "evalue": "the task was aborted before it ran",
            "traceback": [],
            "engine_info": {**engine.engine_info, "method": method},
        }
        metadata = engine._metadata(now, now, "aborted", 0)
        engine._send(sock, msg, wire.json_dumps(content), metadata, date=now)

    # ------------------------------------------------------------ the interpreter

    def _query(self, answer: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> Handler:
        """A handler answering from the interpreter alone, as the kernel does (queries)."""

        def handler(sock: Destination, msg: Message) -> None:
            self._reply_content(sock, msg, answer(self.engine.interpreter, msg.content))

        return handler

    def kernel_info(self, sock: Destination, msg: Message) -> None:
        """The kernel's ``kernel_info_reply``: this engine serves the same interpreter."""
        from corral.transports.zmq.kernel import kernel_info_content

        curve = self.engine.gate.encryption == "curve"
        self._reply_content(sock, msg, kernel_info_content(encryption=curve))

    def _reply_content(self, sock: Destination, msg: Message, content: dict[str, Any]) -> None:
        engine = self.engine
        now = iso_now()
        method = msg.msg_type.removesuffix("_request")
        content["engine_info"] = {**engine.engine_info, "method": method}
        metadata = engine._metadata(now, now, str(content.get("status", "ok")), 0)
        engine._send(sock, msg, wire.json_dumps(content), metadata, date=now)

    # ------------------------------------------------------------ data

    def push(self, sock: Destination, msg: Message) -> None:
        """Set the pushed names; reply with them."""
        started = iso_now()
        try:
            keys = self.engine.tasks.push(msg.content, msg.buffers)
        except Exception as exc:
            self.engine._reply_error(sock, msg, exc, "push")
            return
        self._reply_data(sock, msg, "push", keys, started)

    def pull(self, sock: Destination, msg: Message) -> None:
        """Reply with the names' values, pickled into buffers."""
        started = iso_now()
        try:
            keys, buffers = self.engine.tasks.pull(msg.content)
        except KeyError as exc:  # the message names the name; str(KeyError) quotes it
            self.engine._reply_error(sock, msg, KeyError(exc.args[0]), "pull")
            return
        except Exception as exc:
            self.engine._reply_error(sock, msg, exc, "pull")
            return
        self._reply_data(sock, msg, "pull", keys, started, buffers)

    def _reply_data(
        self,
        sock: Destination,
        msg: Message,
        method: str,
        keys: Any,
        started: str,
        buffers: Any = (),
    ) -> None:
        """The ok reply of a push or pull: the names handled, and pulled values' buffers."""
        engine = self.engine
        content = {
            "status": "ok",
            "keys": keys,
            "engine_info": {**engine.engine_info, "method": method},
        }
        completed = iso_now()
        metadata = engine._metadata(started, completed, "ok", 0)
        engine._send(sock, msg, wire.json_dumps(content), metadata, buffers, completed)
