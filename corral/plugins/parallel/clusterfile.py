"""The cluster file: every port of a running controller and the key that signs its messages.

Clients and engines find a cluster through ``<profile>/security/cluster-<cluster_id>.json``.
Like a kernel's connection file it is the cluster's only secret, so it is written with mode
0600 in one step (a private temporary file renamed into place), and only *after* every
controller socket is bound: a reader that sees the file can connect at once, and never
sees half a file or a port nobody holds yet.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from corral.transports.zmq.connection import new_key, read_json_object, write_private_json

__all__ = [
    "PORT_NAMES",
    "ClusterInfo",
    "cluster_file_path",
    "new_key",
    "read_cluster_file",
    "write_cluster_file",
]

#: Every socket a controller binds, in the order the protocol lists them.
PORT_NAMES = (
    "registration",
    "hb_ping",
    "hb_pong",
    "notification",
    "monitor",
    "mux",
    "mux_engine",
    "control",
    "control_engine",
    "task",
    "task_engine",
    "broadcast",
    "broadcast_engine",
    "iopub",
    "iopub_engine",
)


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@dataclasses.dataclass
class ClusterInfo:
    """Everything a client or engine needs to reach a controller. Port 0: not bound yet.

    A stdlib dataclass, not attrs (DESIGN.md's default for records): the controller reads
    it on the path to a ready cluster, where importing attrs costs 17 ms.
    """

    cluster_id: str = ""
    key: bytes = dataclasses.field(default_factory=new_key)
    signature_scheme: str = "hmac-sha256"
    transport: str = "tcp"
    ip: str = "127.0.0.1"
    registration: int = 0
    hb_ping: int = 0
    hb_pong: int = 0
    notification: int = 0
    monitor: int = 0
    mux: int = 0
    mux_engine: int = 0
    control: int = 0
    control_engine: int = 0
    task: int = 0
    task_engine: int = 0
    broadcast: int = 0
    broadcast_engine: int = 0
    iopub: int = 0
    iopub_engine: int = 0
    hb_period: float = 1.0
    hb_misses: int = 2
    controller_pid: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        # The key may be given as text (as JSON holds it); it is always kept as bytes.
        super().__setattr__(name, _to_bytes(value) if name == "key" else value)

    def url(self, name: str) -> str:
        """The ZeroMQ endpoint of socket ``name`` (one of :data:`PORT_NAMES`)."""
        if name not in PORT_NAMES:
            raise ValueError(f"unknown controller socket {name!r}; expected one of {PORT_NAMES}")
        port = int(getattr(self, name))
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"{self.transport}://{self.ip}:{port}"

    def ports(self) -> dict[str, int]:
        """``{socket name: port}`` for every controller socket."""
        return {name: int(getattr(self, name)) for name in PORT_NAMES}

    def to_dict(self, *, include_key: bool = True) -> dict[str, Any]:
        """The cluster file's JSON object; ``include_key=False`` for a connection_reply."""
        data = dataclasses.asdict(self)
        if include_key:
            data["key"] = self.key.decode("utf-8")
        else:
            del data["key"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterInfo:
        """Build from a cluster file's object, ignoring fields other tools add."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def cluster_file_path(profile: str, cluster_id: str) -> Path:
    """``<profile>/security/cluster-<cluster_id>.json`` (the profile is created if missing)."""
    from corral.core.profiles import profile_dir

    if not cluster_id or "/" in cluster_id or os.sep in cluster_id or cluster_id in (".", ".."):
        raise ValueError(f"cluster id {cluster_id!r} must be a non-empty file-name component")
    return profile_dir(profile) / "security" / f"cluster-{cluster_id}.json"


def write_cluster_file(path: str | os.PathLike[str], info: ClusterInfo) -> Path:
    """Write ``info`` to ``path`` with mode 0600, atomically; returns the path (the same
    private, never-half-written file as a kernel's connection file)."""
    return write_private_json(path, info.to_dict())


def read_cluster_file(path: str | os.PathLike[str]) -> ClusterInfo:
    """Read a cluster file written by :func:`write_cluster_file`."""
    return ClusterInfo.from_dict(read_json_object(path, "cluster file"))
