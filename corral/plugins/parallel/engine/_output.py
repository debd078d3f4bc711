"""Engine output: the interpreter's notifications turned into iopub messages.

The engine observes its interpreter exactly as the kernel server does (see
:mod:`corral.transports.zmq.kernel`): ``STREAM``, ``DISPLAY_DATA``, ``EXECUTE_RESULT``,
``ERROR``... become ``stream``, ``display_data``, ``execute_result``, ``error`` messages
whose parent header is the task being served. Two things differ, hence this adapter:

* every engine message carries ``{"engine_id": id}`` as metadata, stream text included.
  :class:`~corral.transports.zmq.iopub.IOPubPublisher` sends coalesced stream text with
  empty metadata and has no option for it, so :class:`EngineIOPub` overrides its one send
  method. (A ``default_metadata`` argument on ``IOPubPublisher`` would be the cleaner hook.)
* apply tasks call user functions directly, not through ``Interpreter.execute``, so no one
  swaps ``sys.stdout``/``sys.stderr`` for them. :func:`install_streams` installs posting
  streams once, for the life of the engine (the interpreter's own per-cell swap restores
  them afterwards), which costs nothing per task.

This file is listed among the places a SIGINT must not tear (see the engine's handler).
"""

from __future__ import annotations

import sys
from typing import Any

import zmq

from corral.core import events
from corral.core.iostreams import PostingStream
from corral.transports.zmq.iopub import IOPubPublisher
from corral.transports.zmq.session import Session

__all__ = ["EngineIOPub", "OutputRelay", "install_streams"]


class EngineIOPub(IOPubPublisher):
    """An IOPub publisher that stamps every message with the engine's metadata.

    ``sent`` counts published messages, so the engine can tell whether a task produced
    output at all (and only then announce ``status: idle`` for it).
    """

    def __init__(self, session: Session, socket: zmq.Socket[Any], metadata: dict[str, Any]) -> None:
        self.default_metadata = metadata
        self.sent = 0
        super().__init__(session, socket)

    def _send_locked(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.sent += 1
        super()._send_locked(
            msg_type, content, parent, self.default_metadata if metadata is None else metadata
        )


def install_streams(center: Any, sender: Any) -> tuple[Any, Any]:
    """Point ``sys.stdout``/``sys.stderr`` at posting streams; returns the old pair."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PostingStream(center, sender, "stdout")
    sys.stderr = PostingStream(center, sender, "stderr")
    return saved


class OutputRelay:
    """Observes ``interpreter`` and publishes what it posts, parented to :attr:`parent`.

    :attr:`parent` is set by the engine to the header of the task it is serving (one
    attribute store per task); ``silent`` suppresses ``execute_input``/``execute_result``
    as a silent Jupyter execution does.
    """

    def __init__(self, interpreter: Any, iopub: EngineIOPub) -> None:
        self.iopub = iopub
        self.parent: dict[str, Any] | None = None
        self.silent = False
        center = interpreter.center
        for kind, callback in (
            (events.EXECUTE_STARTED, self._on_started),
            (events.STREAM, self._on_stream),
            (events.DISPLAY_DATA, self._on_display),
            (events.UPDATE_DISPLAY_DATA, self._on_update_display),
            (events.CLEAR_OUTPUT, self._on_clear),
            (events.EXECUTE_RESULT, self._on_result),
            (events.ERROR, self._on_error),
        ):
            center.add_observer(callback, kind, interpreter)

    def _on_started(
        self, _t: str, _s: Any, *, code: str, execution_count: int, silent: bool, **_: Any
    ) -> None:
        if not silent:
            content = {"code": code, "execution_count": execution_count}
            self.iopub.publish("execute_input", content, self.parent)

    def _on_stream(self, _t: str, _s: Any, *, name: str, text: str, **_: Any) -> None:
        self.iopub.write(name, text, self.parent)

    def _on_display(self, _t: str, _s: Any, **info: Any) -> None:
        self.iopub.publish("display_data", _display_content(info), self.parent)

    def _on_update_display(self, _t: str, _s: Any, **info: Any) -> None:
        self.iopub.publish("update_display_data", _display_content(info), self.parent)

    def _on_clear(self, _t: str, _s: Any, *, wait: bool = False, **_: Any) -> None:
        self.iopub.publish("clear_output", {"wait": bool(wait)}, self.parent)

    def _on_result(
        self, _t: str, _s: Any, *, execution_count: int, data: dict, metadata: dict, **_: Any
    ) -> None:
        if not self.silent:
            content = {"execution_count": execution_count, "data": data, "metadata": metadata}
            self.iopub.publish("execute_result", content, self.parent)

    def _on_error(
        self, _t: str, _s: Any, *, ename: str, evalue: str, traceback: list, **_: Any
    ) -> None:
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        self.iopub.publish("error", content, self.parent)


def _display_content(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": info.get("data") or {},
        "metadata": info.get("metadata") or {},
        "transient": info.get("transient") or {},
    }
