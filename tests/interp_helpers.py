"""Shared fixtures for the interpreter tests: a strict center and a recording observer."""

from __future__ import annotations

from typing import Any

from observers import NoticeLog

from corral.core.history import HistoryManager
from corral.core.interpreter import Interpreter
from corral.notification.center import NotificationCenter


class Recorder(NoticeLog):
    """Every notification posted to a center, in order, and the output text among them."""

    def __init__(self, center: NotificationCenter) -> None:
        super().__init__()
        center.add_observer(self)

    def stdout(self) -> str:
        return "".join(i["text"] for i in self.of("stream") if i["name"] == "stdout")

    def stderr(self) -> str:
        return "".join(i["text"] for i in self.of("stream") if i["name"] == "stderr")


def make_interpreter(**kwargs: Any) -> tuple[Interpreter, Recorder]:
    center = NotificationCenter(strict=True)
    recorder = Recorder(center)
    kwargs.setdefault("history", HistoryManager(":memory:"))
    return Interpreter(center, **kwargs), recorder
