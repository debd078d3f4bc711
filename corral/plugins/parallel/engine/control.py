"""The engine's control channel: answered on its own thread while a task runs.

``interrupt``, ``abort`` and ``signal`` requests are answered at once on the control
thread (the shared :class:`~corral.transports.zmq.requests.ControlThread`), because the
main thread may be busy in user code for hours. ``clear`` and ``shutdown`` touch the
namespace or end the serving loop, so they are handed to the main thread (served before
any further task); their replies go back out through the control thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from corral.transports.zmq import wire
from corral.transports.zmq.requests import ControlThread, unsupported_content

from ._wire import Message, Replier, iso_now, send_frames

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["EngineControl", "signal_number"]

log = logging.getLogger("corral.parallel.engine")


class EngineControl:
    """Serves ``engine``'s control socket; :attr:`thread` is started by the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Replies made on the control thread carry their own session id (and counter).
        self.replier = Replier(engine.signer, engine.session_id + "c", "engine")
        self.thread = ControlThread(
            engine.context, engine.control, self.handle, "corral-engine-control"
        )
        #: The engine's request core's control table: one lookup a message.
        self._handlers = engine.core.tables["control"]
        engine.core.add(
            "control",
            {
                "interrupt_request": self._interrupt,
                "abort_request": self._abort,
                "signal_request": self._signal,
                "clear_request": self._to_main,
                "shutdown_request": self._to_main,
            },
        )

    def handle(self) -> None:
        """The control thread: a message waits on the control socket."""
        msg = self.engine._receive(self.engine.control, "control", self._refused)
        if msg is None:
            return
        try:
            handler = self._handlers.get(msg.msg_type) or self.engine.late_handler(
                self._handlers, msg.msg_type
            )
            if handler is None:
                self._unknown(msg)
            else:
                handler(msg)
        except Exception as exc:
            log.exception("error while handling %s", msg.msg_type)
            if msg.msg_type.endswith("_request"):
                self._reply(msg, self.engine._error_content(exc, "control"))

    def _refused(self, msg: Message, exc: wire.WireError) -> None:
        """Answer a request the door refused after admitting its header (its buffers
        altered, its content unreadable): the control queue waits for that answer."""
        self._reply(msg, self.engine._error_content(exc, "control"))

    def _reply(self, msg: Message, content: dict[str, Any]) -> None:
        reply_type = msg.msg_type.removesuffix("_request") + "_reply"
        now = iso_now()
        metadata = self.engine._metadata(now, now, str(content.get("status", "ok")), 0)
        frames = self.replier.frames(
            msg.idents, reply_type, msg.raw_header, metadata, wire.json_dumps(content), (), now
        )
        send_frames(self.engine.control, frames)

    def _ok(self, msg: Message) -> None:
        self._reply(msg, {"status": "ok", "engine_info": _info(self.engine, msg.msg_type)})

    def _interrupt(self, msg: Message) -> None:
        self.engine.interrupt()
        self._ok(msg)

    def _abort(self, msg: Message) -> None:
        engine = self.engine
        ids = engine.tasks.abort(msg.content)
        # After marking them: which had started already (see .started); those not
        # listed will never run here.
        started = engine._started
        content = {"status": "ok", "engine_info": _info(engine, msg.msg_type)}
        self._reply(msg, {**content, "started": [i for i in ids if i in started]})

    def _signal(self, msg: Message) -> None:
        engine = self.engine
        signum = signal_number(msg.content.get("sig"))
        self._ok(msg)
        if signum == signal.SIGINT:
            engine.interrupt()
        elif signum == signal.SIGTERM:  # what the SIGTERM handler does, without a race
            engine.request_stop("terminated", 0)
            engine.exit_later(0)
            engine.interrupt()
        else:
            signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def _to_main(self, msg: Message) -> None:
        """``clear`` and ``shutdown`` touch the namespace or end the loop: the main thread
        serves them (:meth:`serve_on_main`) before any further task."""
        engine = self.engine
        engine.hand_to_main(partial(self.serve_on_main, msg))
        if msg.msg_type == "shutdown_request":
            engine.shutdown_interrupts = True  # before the interrupt lands: its message
            engine.interrupt()  # a running task would keep the engine alive
            engine.exit_later(0)

    def _unknown(self, msg: Message) -> None:
        kind = msg.msg_type
        log.warning("ignoring unknown control message %r", kind)
        if kind.endswith("_request"):
            content = unsupported_content(kind, "control")
            self._reply(msg, {**content, "engine_info": _info(self.engine, kind)})

    def serve_on_main(self, msg: Message) -> None:
        """Main thread: a clear or shutdown handed over by the control thread."""
        engine = self.engine
        info = _info(engine, msg.msg_type)
        if msg.msg_type == "clear_request":
            try:
                engine.tasks.clear(engine.interpreter)
                content: dict[str, Any] = {"status": "ok", "engine_info": info}
            except Exception as exc:
                log.exception("clear failed")
                content = engine._error_content(exc, "clear")
        else:
            content = {"status": "ok", "restart": False, "engine_info": info}
            # The hub asked (the whole cluster stops): it unregisters us itself and exits
            # once every engine has answered, so nothing more we sent would be read.
            engine._hub_asked = msg.content.get("hub") is True
            engine.request_stop("shutdown requested", 0)
        now = iso_now()
        reply_type = msg.msg_type.removesuffix("_request") + "_reply"
        frames = engine.replier.frames(
            msg.idents,
            reply_type,
            msg.raw_header,
            engine._metadata(now, now, str(content["status"]), 0),
            wire.json_dumps(content),
            (),
            now,
        )
        self.thread.send(frames)


def _info(engine: Engine, kind: str) -> dict[str, Any]:
    return {**engine.engine_info, "method": kind.removesuffix("_request")}


def signal_number(sig: Any) -> int:
    """The signal a ``signal_request`` names (a number or a name such as ``"SIGTERM"``).

    Anything else is refused with an error reply rather than guessed at.
    """
    if isinstance(sig, str):
        try:
            return int(signal.Signals[sig if sig.startswith("SIG") else "SIG" + sig])
        except KeyError:
            raise ValueError(f"unknown signal name {sig!r}") from None
    if isinstance(sig, int) and not isinstance(sig, bool):
        # 0 checks that the process is there and sends nothing (kill(2)), as ipyparallel
        # passes it on to os.kill.
        return 0 if sig == 0 else int(signal.Signals(sig))
    raise TypeError(f"signal_request 'sig' must be a signal number or name, not {sig!r}")
