"""Shared fixtures for the interpreter tests: a strict center and a recording observer."""

from __future__ import annotations

from typing import Any

from corral.core.history import HistoryManager
from corral.core.interpreter import Interpreter
from corral.notification.center import NotificationCenter


class Recorder:
    """Records every notification posted to a center, in order."""

    def __init__(self, center: NotificationCenter) -> None:
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        center.add_observer(self._record)

    def _record(self, type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        self.events.append((type, sender, info))

    def of(self, type: str) -> list[dict[str, Any]]:  # noqa: A002
        return [info for t, _, info in self.events if t == type]

    def types(self) -> list[str]:
        return [t for t, _, _ in self.events]

    def stdout(self) -> str:
        return "".join(i["text"] for i in self.of("stream") if i["name"] == "stdout")

    def stderr(self) -> str:
        return "".join(i["text"] for i in self.of("stream") if i["name"] == "stderr")

    def clear(self) -> None:
        self.events.clear()


def make_interpreter(**kwargs: Any) -> tuple[Interpreter, Recorder]:
    center = NotificationCenter(strict=True)
    recorder = Recorder(center)
    kwargs.setdefault("history", HistoryManager(":memory:"))
    return Interpreter(center, **kwargs), recorder
