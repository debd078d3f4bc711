"""The cluster file: every port of a running controller and the key that signs its messages.

Clients and engines find a cluster through ``<profile>/security/cluster-<cluster_id>.json``.
Like a kernel's connection file it is the cluster's only secret, so it is written with mode
0600 in one step (a private temporary file renamed into place), and only *after* every
controller socket is bound: a reader that sees the file can connect at once, and never
sees half a file or a port nobody holds yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from corral.transports.zmq.connection import new_key, read_json_object, write_private_json

__all__ = [
    "FIELDS",
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


#: Every field of a cluster file, in the order it is written.
FIELDS = (
    "cluster_id",
    "key",
    "signature_scheme",
    "transport",
    "ip",
    *PORT_NAMES,
    "hb_period",
    "hb_misses",
    "controller_pid",
    "encryption",
)
_KNOWN = frozenset(FIELDS)


class ClusterInfo:
    """Everything a client or engine needs to reach a controller. Port 0: not bound yet.

    A plain class, not attrs (DESIGN.md's default for records) nor a dataclass: the
    controller builds it on the path to a ready cluster, where importing attrs costs 17 ms
    and dataclasses (with inspect) 7 ms. Fields are :data:`FIELDS`; two infos are equal
    when every field is.
    """

    def __init__(
        self,
        cluster_id: str = "",
        key: bytes | str | None = None,
        signature_scheme: str = "hmac-sha256",
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        registration: int = 0,
        hb_ping: int = 0,
        hb_pong: int = 0,
        notification: int = 0,
        monitor: int = 0,
        mux: int = 0,
        mux_engine: int = 0,
        control: int = 0,
        control_engine: int = 0,
        task: int = 0,
        task_engine: int = 0,
        broadcast: int = 0,
        broadcast_engine: int = 0,
        iopub: int = 0,
        iopub_engine: int = 0,
        hb_period: float = 1.0,
        hb_misses: int = 2,
        controller_pid: int = 0,
        encryption: str = "none",
    ) -> None:
        self.cluster_id = cluster_id
        self.key = new_key() if key is None else key
        self.signature_scheme = signature_scheme
        self.transport = transport
        self.ip = ip
        self.registration = registration
        self.hb_ping = hb_ping
        self.hb_pong = hb_pong
        self.notification = notification
        self.monitor = monitor
        self.mux = mux
        self.mux_engine = mux_engine
        self.control = control
        self.control_engine = control_engine
        self.task = task
        self.task_engine = task_engine
        self.broadcast = broadcast
        self.broadcast_engine = broadcast_engine
        self.iopub = iopub
        self.iopub_engine = iopub_engine
        self.hb_period = hb_period
        self.hb_misses = hb_misses
        self.controller_pid = controller_pid
        #: "none" (a PLAIN handshake keyed by the cluster key) or "curve" (CurveZMQ):
        #: see corral.transports.zmq.gate.
        self.encryption = encryption

    @property
    def key(self) -> bytes:
        """The signing key, always bytes (it may be given as text, as JSON holds it)."""
        return self._key

    @key.setter
    def key(self, value: bytes | str) -> None:
        self._key = _to_bytes(value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterInfo):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:  # without the key: a repr ends up in logs
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS if name != "key")
        return f"ClusterInfo({fields})"

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
        data = {name: getattr(self, name) for name in FIELDS}
        if include_key:
            data["key"] = self.key.decode("utf-8")
        else:
            del data["key"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterInfo:
        """Build from a cluster file's object, ignoring fields other tools add."""
        return cls(**{k: v for k, v in data.items() if k in _KNOWN})


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
