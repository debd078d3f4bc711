"""Built-in plugin: a kernel answers the engine's requests (``apply``, ``push``, ``pull``,
``clear``, ``abort``).

The parallel plugin adds these request types to every kernel server through
``corral_request_handlers``, once, when the kernel loads its plugins: from then on an
``apply_request`` on shell is dispatched like an ``execute_request``, by one dictionary
lookup, with no hook call per message. What each request does to the namespace is the
engine's own code (:class:`.engine.tasks.Tasks`), so a kernel and an engine cannot answer
differently; what is the kernel's here is only the Jupyter side: the reply goes out on
the channel the request came from, through :meth:`KernelServer.reply`, with the
kernel's SIGINT guard around the call (an ``interrupt_request`` stops a running apply as
it stops a cell) and the function's output published on iopub, parented to the request.

Channels: ``apply``, ``push``, ``pull`` and ``clear`` run on shell (the main thread, the
one that owns the namespace); ``abort`` is answered on control at once, so tasks already
queued on shell can be cancelled while one runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.plugins.markers import hookimpl

if TYPE_CHECKING:
    import zmq

    from corral.transports.zmq.kernel import Handler, KernelServer

    from .engine.tasks import Tasks

__all__ = ["KernelRequests", "corral_request_handlers"]

Msg = dict[str, Any]


@hookimpl
def corral_request_handlers(server: KernelServer) -> Mapping[str, Mapping[str, Handler]]:
    return KernelRequests(server).tables()


class KernelRequests:
    """The parallel request handlers of one kernel ``server``.

    ``tasks`` defaults to a :class:`Tasks` over the server's interpreter's namespace,
    made at the first request (the kernel makes its interpreter lazily); an engine bound
    as a kernel passes its own, so both channels share one namespace and one abort list.
    """

    def __init__(self, server: KernelServer, tasks: Tasks | None = None) -> None:
        self.server = server
        self._tasks = tasks

    def tables(self) -> dict[str, dict[str, Handler]]:
        """The handlers by channel, as ``corral_request_handlers`` returns them."""
        return {
            "shell": {
                "apply_request": self.apply,
                "push_request": self.push,
                "pull_request": self.pull,
                "clear_request": self.clear,
            },
            "control": {"abort_request": self.abort},
        }

    @property
    def tasks(self) -> Tasks:
        if self._tasks is None:
            from .engine.tasks import Tasks

            self._tasks = Tasks(self.server.interpreter.user_ns)
        return self._tasks

    # -------------------------------------------------------------------- shell

    def apply(self, sock: zmq.Socket[Any], idents: list[bytes], msg: Msg) -> None:
        """Call the shipped function in the user namespace; reply with its pickled result."""
        from corral.core.display import set_current
        from corral.core.iostreams import redirect_output

        from .engine._wire import iso_now

        server, tasks, header = self.server, self.tasks, msg["header"]
        if tasks.take_aborted(header["msg_id"]):
            self._reply(sock, idents, msg, _aborted(), iso_now())
            return
        interpreter = server.interpreter
        server.relay.parent = header
        server.relay.silent = False
        set_current(interpreter)
        guard = server.guard
        started = iso_now()
        func = None
        try:
            func, args, kwargs = tasks.unpack(msg["buffers"])
            with redirect_output(interpreter.center, interpreter):
                guard.executing = True
                try:
                    result = func(*args, **kwargs)
                finally:
                    guard.executing = False
            buffers: list[Any] = tasks.serialize(result)
            content: dict[str, Any] = {"status": "ok"}
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt is the task's
            guard.executing = False
            content = tasks.error(exc, func)
            buffers = []
            error = {k: content[k] for k in ("ename", "evalue", "traceback")}
            server.iopub.publish("error", error, header)
        self._reply(sock, idents, msg, content, started, buffers)

    def push(self, sock: zmq.Socket[Any], idents: list[bytes], msg: Msg) -> None:
        """Set the pushed names; reply with them."""
        from .engine._wire import iso_now

        started = iso_now()
        try:
            keys = self.tasks.push(msg["content"], msg["buffers"])
        except Exception as exc:
            self._reply(sock, idents, msg, self.tasks.error(exc), started)
            return
        self._reply(sock, idents, msg, {"status": "ok", "keys": keys}, started)

    def pull(self, sock: zmq.Socket[Any], idents: list[bytes], msg: Msg) -> None:
        """Reply with the names' values, pickled into buffers."""
        from .engine._wire import iso_now

        started = iso_now()
        try:
            keys, buffers = self.tasks.pull(msg["content"])
        except KeyError as exc:  # the message names the name; str(KeyError) quotes it
            self._reply(sock, idents, msg, self.tasks.error(KeyError(exc.args[0])), started)
            return
        except Exception as exc:
            self._reply(sock, idents, msg, self.tasks.error(exc), started)
            return
        self._reply(sock, idents, msg, {"status": "ok", "keys": keys}, started, buffers)

    def clear(self, sock: zmq.Socket[Any], idents: list[bytes], msg: Msg) -> None:
        """Reset the user namespace (as ``%reset -f``) and forget shipped names."""
        from .engine._wire import iso_now

        started = iso_now()
        self.tasks.clear(self.server.interpreter)
        self._reply(sock, idents, msg, {"status": "ok"}, started)

    # ------------------------------------------------------------------ control

    def abort(self, sock: zmq.Socket[Any], idents: list[bytes], msg: Msg) -> None:
        """Answer the named requests ``aborted`` when they come, instead of running them."""
        from .engine._wire import iso_now

        started = iso_now()
        self.tasks.abort(msg["content"])
        self._reply(sock, idents, msg, {"status": "ok"}, started)

    # ------------------------------------------------------------------ replies

    def _reply(
        self,
        sock: zmq.Socket[Any],
        idents: list[bytes],
        msg: Msg,
        content: dict[str, Any],
        started: str,
        buffers: list[Any] | tuple[Any, ...] = (),
    ) -> None:
        """Reply with the metadata an engine's replies carry (status, started, completed)."""
        from .engine._wire import iso_now

        method = msg["msg_type"].removesuffix("_request")
        content.setdefault("engine_info", {"method": method})
        metadata = {"status": content["status"], "started": started, "completed": iso_now()}
        self.server.iopub.flush()
        self.server.reply(sock, idents, msg, content, metadata, buffers)


def _aborted() -> dict[str, Any]:
    return {
        "status": "aborted",
        "ename": "TaskAborted",
        "evalue": "the task was aborted before it ran",
        "traceback": [],
    }
