"""What an engine starts from: the cluster file, and the parts of its set-up that need
no socket (the controller grace period, a history that keeps nothing).

Kept apart from :mod:`.engine` so that reading a cluster file costs no import of the
server, and the server's module holds only serving.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import CorralError

__all__ = [
    "CHANNELS",
    "DEFAULT_CONTROLLER_GRACE",
    "REQUIRED",
    "EngineError",
    "EngineJoinError",
    "as_dict",
    "controller_grace",
    "load_cluster_file",
    "no_history",
]

log = logging.getLogger("corral.parallel.engine")


class EngineJoinError(CorralError, RuntimeError):
    """The engine could not join the cluster (bad cluster file, registration refused).

    Not ``EngineError``: that name belongs to the client's error for an engine that died
    under a task (ipyparallel's name, which users catch).
    """


EngineError = EngineJoinError  # the old name, still used inside the engine package


#: The controller's sockets an engine connects a DEALER to, by cluster-file key.
CHANNELS = ("mux_engine", "control_engine", "task_engine", "broadcast_engine")
#: What an engine cannot start without.
REQUIRED = ("key", "registration", "hb_ping", "hb_pong", *CHANNELS, "iopub_engine")


#: Seconds an engine waits for a lost controller to come back, unless configured.
DEFAULT_CONTROLLER_GRACE = 60.0


def controller_grace(given: float | None, info: dict[str, Any]) -> float:
    """The controller grace period: the argument, the cluster file, the environment."""
    if given is None:
        given = info.get("controller_grace")
    if given is None:
        env = os.environ.get("CORRAL_CONTROLLER_GRACE", "")
        given = float(env) if env else DEFAULT_CONTROLLER_GRACE
    grace = float(given)
    if not grace >= 0:
        raise EngineError(f"controller_grace must be >= 0 seconds, not {given!r}")
    return grace


def as_dict(info: Any) -> dict[str, Any]:
    """A plain dict from whatever ``read_cluster_file`` returns (mapping, attrs, object)."""
    if isinstance(info, Mapping):
        return dict(info)
    for name in ("to_dict", "as_dict", "asdict"):
        method = getattr(info, name, None)
        if callable(method):
            return dict(method())
    try:
        import attrs

        if attrs.has(type(info)):
            return attrs.asdict(info)
    except ImportError:  # pragma: no cover - attrs is a dependency
        pass
    import dataclasses

    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        return dataclasses.asdict(info)
    return dict(vars(info))


def load_cluster_file(path: str | Path) -> dict[str, Any]:
    """The cluster file as a dict (see docs/parallel-protocol.md, "The cluster file").

    Uses the controller's ``read_cluster_file`` when it exists and gives every field the
    engine needs, else plain JSON: the file format is the contract, not the reader.
    """
    reader: Any = None
    try:
        from corral.plugins.parallel.clusterfile import read_cluster_file as reader
    except ImportError:
        pass
    if reader is not None:
        try:
            info = as_dict(reader(path))
            if all(k in info for k in REQUIRED):
                return info
        except Exception as exc:
            log.debug("read_cluster_file(%s) failed (%s); reading the JSON", path, exc)
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    if not isinstance(info, dict):
        raise EngineError(f"{path}: a cluster file holds a JSON object")
    return info


def no_history() -> Any:
    """A history that keeps nothing: an engine never opens the history database."""
    from corral.core.history import HistoryManager

    class NoHistory(HistoryManager):
        def store_input(self, line: int, source: str, source_raw: str | None = None) -> None:
            pass

        def store_output(self, line: int, output: str) -> None:
            pass

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

        def new_session(self) -> int:
            return 0

        @property
        def session_id(self) -> int:
            return 0

        def resolve_session(self, session: int) -> int:
            return 0

        def _query(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

    return NoHistory(":memory:")
