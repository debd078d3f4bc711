"""One recording observer for every test that watches notifications.

Tests of the bus, the interpreter, the kernel manager and the cluster's events all need
the same thing: keep what an observer was sent, in order, and wait (without sleeping)
until something in particular has arrived, whichever thread posted it. They used to carry
five copies of this class that had drifted apart in names and in what they waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from helpers import TIMEOUT

__all__ = ["Notice", "NoticeLog"]

#: One notification as an observer gets it: type, sender, info.
Notice = tuple[Any, Any, dict[str, Any]]


def _always(info: dict[str, Any]) -> bool:
    return True


class NoticeLog:
    """An observer (pass it to ``add_observer``) that keeps every notification.

    Thread-safe: cluster and kernel notifications are posted from I/O threads while the
    test waits in its own.
    """

    def __init__(self) -> None:
        #: Every notification so far, oldest first.
        self.seen: list[Notice] = []
        self._changed = threading.Condition()

    def __call__(self, type: Any, sender: Any, /, **info: Any) -> None:  # noqa: A002
        with self._changed:
            self.seen.append((type, sender, info))
            self._changed.notify_all()

    def of(self, type: Any, match: Callable[[dict[str, Any]], bool] = _always) -> list[dict]:  # noqa: A002
        """The infos of the ``type`` notifications so far that ``match`` accepts."""
        with self._changed:
            return [info for kind, _, info in self.seen if kind == type and match(info)]

    def types(self) -> list[Any]:
        """The types seen so far, in order."""
        with self._changed:
            return [kind for kind, _, _ in self.seen]

    def about(self, msg_id: str) -> list[Notice]:
        """The notifications about one task: its ``msg_id`` or among its ``msg_ids``."""
        with self._changed:
            return [
                notice
                for notice in self.seen
                if notice[2].get("msg_id") == msg_id or msg_id in (notice[2].get("msg_ids") or ())
            ]

    def wait(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Whether ``done()`` became true within ``timeout``; it is checked after every
        notification, under the log's lock (so it may read :attr:`seen`)."""
        with self._changed:
            return self._changed.wait_for(done, timeout)

    def wait_for(
        self,
        type: Any,  # noqa: A002
        match: Callable[[dict[str, Any]], bool] = _always,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """The infos of the ``type`` notifications ``match`` accepts, once there are at
        least ``count`` of them; the test fails if they do not come within TIMEOUT."""
        arrived = self.wait(lambda: len(self.of(type, match)) >= count)
        assert arrived, f"fewer than {count} {type!r} notifications; got {self.seen}"
        return self.of(type, match)

    def first(
        self,
        type: Any,  # noqa: A002
        match: Callable[[dict[str, Any]], bool] = _always,
    ) -> dict[str, Any]:
        """The info of the first ``type`` notification ``match`` accepts (waits for it)."""
        return self.wait_for(type, match)[0]

    def clear(self) -> None:
        with self._changed:
            self.seen.clear()
