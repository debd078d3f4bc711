"""Waiting helpers shared by the test files, and the one timeout they use.

Tests await events where there are events (replies, notifications, process exits).
These two are for what nothing signals: a file another process writes, state in another
process's database. They poll briefly and fail loudly after :data:`TIMEOUT`.

``wait_for_file`` also runs *on engines* (a task that blocks until the test releases it),
so this module is pickled by value: engines need not import it from the tests directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle

__all__ = ["TIMEOUT", "JsonLines", "cluster_client", "until", "wait_for_file"]

#: Seconds before a wait gives up. Generous because the machine is shared and noisy;
#: only a hang ever reaches it, so a passing run never waits this long.
TIMEOUT = 60.0

#: Seconds between two looks: short, because the awaited change is usually imminent.
_POLL = 0.005

T = TypeVar("T")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def until(
    predicate: Callable[[], T],
    timeout: float = TIMEOUT,
    *,
    what: str = "condition not met",
    tolerate: tuple[type[BaseException], ...] = (),
    interval: float = _POLL,
) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    ``tolerate`` names exceptions that mean "not yet" (a page still being built); any
    other propagates. :class:`TimeoutError` carrying ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except tolerate:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def wait_for_file(
    path: str | os.PathLike[str],
    timeout: float = TIMEOUT,
    proc: subprocess.Popen[Any] | None = None,
) -> str:
    """Block until ``path`` exists; returns ``"released"`` (what engine-side tests check).

    With ``proc``, fail at once if that process exits first (a kernel that died before
    writing its connection file), rather than after the whole timeout.
    """
    target = Path(path)

    def exists() -> bool:
        if proc is not None and not target.exists() and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before writing {target}")
        return target.exists()

    until(exists, timeout, what=f"no file at {target}")
    return "released"


class JsonLines:
    """The JSON lines a child process prints (a watcher of the cluster's feed, say), read
    in a thread; tests wait on a condition, not on the clock."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[list[Any]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.seen.append(json.loads(line))
                self._changed.notify_all()

    def wait(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Whether ``done()`` came true within ``timeout``."""
        with self._changed:
            return self._changed.wait_for(done, timeout)

    def wait_for(
        self, match: Callable[[list[Any]], bool], timeout: float = TIMEOUT
    ) -> list[Any] | None:
        """The first line ``match`` accepts, None if none came within ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: any(map(match, self.seen)), timeout)
            return next((line for line in self.seen if match(line)), None)

    def of(self, msg_id: str) -> list[list[Any]]:
        """The lines whose info names ``msg_id``."""
        with self._changed:
            return [line for line in self.seen if line[2].get("msg_id") == msg_id]


@contextlib.contextmanager
def cluster_client(monkeypatch: Any, corral_dir: Path, **options: Any) -> Iterator[Any]:
    """A local cluster under ``corral_dir`` (``options`` go to ``Cluster``) and a client
    connected to it; both stopped after."""
    from corral.plugins.parallel.cluster import Cluster

    monkeypatch.setenv("CORRAL_DIR", str(corral_dir))
    cluster = Cluster(**options)
    client = cluster.start_and_connect()
    try:
        yield client
    finally:
        client.close()
        cluster.stop()
