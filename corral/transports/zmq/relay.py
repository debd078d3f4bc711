"""The interpreter's notifications, published as Jupyter iopub messages.

The transport is an observer of the interpreter, not a special case inside it: one
:class:`OutputRelay` subscribes to what an interpreter posts (``STREAM``,
``DISPLAY_DATA``, ``EXECUTE_RESULT``, ``ERROR``, ...) and publishes ``stream``,
``display_data``, ``execute_result``, ``error`` ... messages whose parent header is the
request being served. The kernel server and the cluster's engines both use it; each sets
:attr:`parent` (and :attr:`silent`) when it starts serving a request.
"""

from __future__ import annotations

from typing import Any

from corral.core import events

__all__ = ["OutputRelay"]


class OutputRelay:
    """Observes ``interpreter`` and publishes what it posts on ``iopub``, parented to
    :attr:`parent`; ``silent`` suppresses ``execute_input`` and ``execute_result`` as a
    silent Jupyter execution does.

    ``iopub`` is an :class:`~corral.transports.zmq.iopub.IOPubPublisher` (or anything with
    its ``publish`` and ``write``).
    """

    def __init__(self, interpreter: Any, iopub: Any) -> None:
        self.iopub = iopub
        self.parent: dict[str, Any] | None = None
        self.silent = False
        center = getattr(interpreter, "center", None)
        if center is None:
            raise TypeError("the interpreter has no notification center to observe")
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
