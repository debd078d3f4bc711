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

import json
import os
from pathlib import Path
from typing import Any

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


def new_key() -> bytes:
    """A fresh signing key: 64 hex digits (256 bits) from the OS's secure generator."""
    # os.urandom is what the secrets module draws from; importing secrets (and the random
    # module it brings) would add milliseconds to every kernel's startup.
    return os.urandom(32).hex().encode("ascii")


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


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


class ConnectionInfo:
    """Everything a client needs to reach a kernel. Port 0 means "not bound yet".

    A plain class, neither attrs nor a dataclass: it is read on every kernel's startup
    path, where importing attrs costs more than a tenth of the whole startup and
    ``dataclasses`` (with the ``inspect`` it pulls in) about a twentieth.
    """

    __slots__ = FIELDS
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

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
        self.key: bytes = new_key() if key is None else key  # type: ignore[assignment]
        self.signature_scheme = signature_scheme
        self.kernel_name = kernel_name
        self.curve_publickey = curve_publickey
        self.curve_secretkey = curve_secretkey

    def __setattr__(self, name: str, value: Any) -> None:
        # The key may be given as text (as JSON holds it); it is always kept as bytes.
        object.__setattr__(self, name, _to_bytes(value) if name == "key" else value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionInfo):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in FIELDS)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS if name != "key")
        return f"ConnectionInfo({shown}, key=...)"

    def port(self, channel: str) -> int:
        """The port of ``channel`` (one of :data:`CHANNELS`)."""
        return int(getattr(self, f"{channel}_port"))

    def url(self, channel: str) -> str:
        """The ZeroMQ endpoint of ``channel``, e.g. ``tcp://127.0.0.1:5555``."""
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{self.port(channel)}"
        return f"{self.transport}://{self.ip}:{self.port(channel)}"

    @property
    def encrypted(self) -> bool:
        """Whether the kernel's sockets use CurveZMQ."""
        return self.curve_publickey is not None

    def to_dict(self) -> dict[str, Any]:
        """The connection file's JSON object (the key as text, absent curve keys omitted)."""
        data = {name: getattr(self, name) for name in FIELDS}
        data["key"] = self.key.decode("utf-8")
        for name in ("curve_publickey", "curve_secretkey"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        """Build from a connection file's object, ignoring fields other tools add."""
        return cls(**{k: v for k, v in data.items() if k in FIELDS})


def write_private_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` with mode 0600, atomically; returns the path.

    The content goes to a private temporary file in the same directory (created with
    ``O_EXCL`` and mode 0600 from the start, whatever the umask) and is then renamed over
    ``path``, so the file is never visible incomplete or with wider permissions. Every file
    holding a signing key (kernel connection files, cluster files) is written this way.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a clear ValueError naming ``what`` if it is not one."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} holds a JSON object")
    return data


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write ``info`` to ``path`` with mode 0600, atomically (see write_private_json)."""
    return write_private_json(path, info.to_dict())


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read a connection file written by corral or by jupyter_client."""
    return ConnectionInfo.from_dict(read_json_object(path, "connection file"))


def default_connection_dir() -> Path:
    """``security/`` of the default profile (mode 0700), where kernels put their files."""
    from corral.core.profiles import profile_dir

    return profile_dir("default") / "security"


def new_connection_file(directory: str | os.PathLike[str] | None = None) -> Path:
    """An unused connection file name: ``kernel-<pid>-<random>.json``."""
    base = Path(directory) if directory is not None else default_connection_dir()
    return base / f"kernel-{os.getpid()}-{os.urandom(4).hex()}.json"
