"""The cluster file: every port of a running controller and the key that signs its messages.

Clients and engines find a cluster through ``<profile>/security/cluster-<cluster_id>.json``.
Like a kernel's connection file it is the cluster's only secret, so it is written with mode
0600 in one step (a private temporary file renamed into place), and only *after* every
controller socket is bound: a reader that sees the file can connect at once, and never
sees half a file or a port nobody holds yet.

``run`` names one start of the controller (a new random value at each start, also on a
restart that takes over a dead controller's key and ports): requests to the hub and the
queues carry it, so that none made before a restart is admitted after it (see
:mod:`corral.transports.zmq.door`, "Runs").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from corral.transports.zmq.keyfile import KeyFile, new_key

__all__ = [
    "FIELDS",
    "new_run",
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
    "run",
)


class ClusterInfo(KeyFile):
    """Everything a client or engine needs to reach a controller. Port 0: not bound yet.

    The schema of a :class:`~corral.transports.zmq.keyfile.KeyFile` (which reads, writes
    and compares it, and keeps the key as bytes): the fields :data:`FIELDS`, a socket's
    port in the field of its name. A plain class, not attrs (DESIGN.md's default for
    records): the controller builds it on the path to a ready cluster, where importing
    attrs costs 17 ms.
    """

    FIELDS: ClassVar[tuple[str, ...]] = FIELDS
    SOCKETS: ClassVar[tuple[str, ...]] = PORT_NAMES
    KIND: ClassVar[str] = "cluster file"
    SOCKET_KIND: ClassVar[str] = "controller socket"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"run"})

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
        run: str | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.key = new_key() if key is None else key  # type: ignore[assignment]
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
        #: this start of the controller (None, and left out of the file, for a file of a
        #: controller without runs: such a file reads and writes back unchanged)
        self.run = run


def new_run() -> str:
    """A fresh controller run: 32 hex digits (128 bits) from the OS's secure generator,
    so no two starts of a cluster's controller ever share one."""
    return os.urandom(16).hex()


def cluster_file_path(profile: str, cluster_id: str) -> Path:
    """``<profile>/security/cluster-<cluster_id>.json`` (the profile is created if missing)."""
    from corral.core.profiles import profile_dir

    if not cluster_id or "/" in cluster_id or os.sep in cluster_id or cluster_id in (".", ".."):
        raise ValueError(f"cluster id {cluster_id!r} must be a non-empty file-name component")
    return profile_dir(profile) / "security" / f"cluster-{cluster_id}.json"


def write_cluster_file(path: str | os.PathLike[str], info: ClusterInfo) -> Path:
    """Write ``info`` to ``path`` with mode 0600, atomically; returns the path (the same
    private, never-half-written file as a kernel's connection file)."""
    return info.to_file(path)


def read_cluster_file(path: str | os.PathLike[str]) -> ClusterInfo:
    """Read a cluster file written by :func:`write_cluster_file`."""
    return ClusterInfo.from_file(path)
