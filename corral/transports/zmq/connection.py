"""Connection files: where a kernel listens and the key that signs its messages.

The file is the kernel's only secret, so it is created with mode 0600 in one step (a
private temporary file renamed into place): no other user can ever read it, and a reader
polling for it never sees half a file. A kernel writes its file only *after* binding its
sockets, so the ports in the file are ports it already holds; nobody can race for them.

The JSON fields are Jupyter's (``transport``, ``ip``, ``shell_port``, ``iopub_port``,
``stdin_port``, ``control_port``, ``hb_port``, ``key``, ``signature_scheme``,
``kernel_name``), plus the two optional CurveZMQ fields jupyter_client provisions when
its ``KernelManager(transport_encryption="auto"|"required")`` starts a kernel whose
kernelspec lists ``"curve"`` in ``metadata.supported_encryption``. Both are Z85 text:

``curve_publickey``
    the kernel's public key. Clients set it as ``socket.curve_serverkey`` (jupyter_client
    also reuses the pair as its own client keys).
``curve_secretkey``
    the matching secret key; the kernel sets it with ``curve_server=True`` on every socket.

With CurveZMQ every kernel socket is encrypted and a client that does not know the server
key cannot even complete the handshake; the HMAC key still authenticates each message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from .keyfile import KeyFile, new_key, read_json_object, write_private_json

__all__ = [
    "CHANNELS",
    "FIELDS",
    "ConnectionInfo",
    "default_connection_dir",
    "new_connection_file",
    "new_key",
    "read_connection_file",
    "read_json_object",
    "write_connection_file",
    "write_private_json",
]

#: The five kernel channels, in the order Jupyter lists them.
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

#: Every field of a connection file, in the order Jupyter writes them.
FIELDS = (
    "transport",
    "ip",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
    "kernel_name",
    "curve_publickey",
    "curve_secretkey",
)


class ConnectionInfo(KeyFile):
    """Everything a client needs to reach a kernel. Port 0 means "not bound yet".

    The schema of a :class:`~.keyfile.KeyFile` (which reads, writes and compares it):
    Jupyter's fields, a channel's port in ``<channel>_port``, the CurveZMQ keys left out
    while None (so jupyter_client reads the file as its own).
    """

    __slots__ = FIELDS
    FIELDS: ClassVar[tuple[str, ...]] = FIELDS
    SOCKETS: ClassVar[tuple[str, ...]] = CHANNELS
    PORT_SUFFIX: ClassVar[str] = "_port"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"curve_publickey", "curve_secretkey"})
    KIND: ClassVar[str] = "connection file"
    SOCKET_KIND: ClassVar[str] = "kernel channel"

    def __init__(
        self,
        transport: str = "tcp",
        ip: str = "127.0.0.1",
        shell_port: int = 0,
        iopub_port: int = 0,
        stdin_port: int = 0,
        control_port: int = 0,
        hb_port: int = 0,
        key: bytes | str | None = None,
        signature_scheme: str = "hmac-sha256",
        kernel_name: str = "",
        curve_publickey: str | None = None,
        curve_secretkey: str | None = None,
    ) -> None:
        self.transport = transport
        self.ip = ip
        self.shell_port = shell_port
        self.iopub_port = iopub_port
        self.stdin_port = stdin_port
        self.control_port = control_port
        self.hb_port = hb_port
        self.key = new_key() if key is None else key  # type: ignore[assignment]
        self.signature_scheme = signature_scheme
        self.kernel_name = kernel_name
        self.curve_publickey = curve_publickey
        self.curve_secretkey = curve_secretkey

    @property
    def encrypted(self) -> bool:
        """Whether the kernel's sockets use CurveZMQ."""
        return self.curve_publickey is not None


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write ``info`` to ``path`` with mode 0600, atomically (see write_private_json)."""
    return info.write(path)


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read a connection file written by corral or by jupyter_client."""
    return ConnectionInfo.read(path)


def default_connection_dir() -> Path:
    """``security/`` of the default profile (mode 0700), where kernels put their files."""
    from corral.core.profiles import profile_dir

    return profile_dir("default") / "security"


def new_connection_file(directory: str | os.PathLike[str] | None = None) -> Path:
    """An unused connection file name: ``kernel-<pid>-<random>.json``."""
    base = Path(directory) if directory is not None else default_connection_dir()
    return base / f"kernel-{os.getpid()}-{os.urandom(4).hex()}.json"
