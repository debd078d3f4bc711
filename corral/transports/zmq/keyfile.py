"""Files that hold a signing key and the endpoints it guards: one writer, one reader.

A kernel's connection file and a cluster's file are the same thing with two schemas:
where a kernel or a controller listens (transport, ip, one port per socket) and the key
that signs its messages. Each is the only secret of what it describes, so both are
written the same way (:func:`write_private_json`: mode 0600 from the start, atomically)
and read the same way (:func:`read_json_object`, then only the known fields).
:class:`KeyFile` is that shared record; a subclass states its schema and nothing else:

=====================  ==============================  ==============================
                       :class:`~.connection.ConnectionInfo`  ``ClusterInfo`` (parallel)
=====================  ==============================  ==============================
fields                 Jupyter's, in Jupyter's order   the controller's sockets, ...
a socket's port field  ``<channel>_port``              ``<socket>``
left out when None     the two CurveZMQ keys           nothing
=====================  ==============================  ==============================

The key is always held as bytes (JSON holds it as text) and never shown in a repr, which
ends up in logs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from corral.core.private import private_parent

__all__ = ["KeyFile", "endpoint", "new_key", "read_json_object", "write_private_json"]

_K = TypeVar("_K", bound="KeyFile")


def new_key() -> bytes:
    """A fresh signing key: 64 hex digits (256 bits) from the OS's secure generator."""
    # os.urandom is what the secrets module draws from; importing secrets (and the random
    # module it brings) would add milliseconds to every kernel's startup.
    return os.urandom(32).hex().encode("ascii")


def endpoint(transport: str, ip: str, port: int) -> str:
    """The ZeroMQ endpoint of a socket: ``tcp://ip:port``, or ``ipc://ip-port`` (where
    ``ip`` is a path prefix)."""
    if transport == "ipc":
        return f"ipc://{ip}-{port}"
    return f"{transport}://{ip}:{port}"


def write_private_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` with mode 0600, atomically; returns the path.

    The content goes to a private temporary file in the same directory (created with
    ``O_EXCL`` and mode 0600 from the start, whatever the umask) and is then renamed over
    ``path``, so the file is never visible incomplete or with wider permissions. Every file
    holding a signing key (kernel connection files, cluster files) is written this way.
    """
    target = Path(path)
    private_parent(target)  # not mkdir(parents=True): that follows the umask
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


class KeyFile:
    """A key file's fields as attributes, compared by value; see the module docstring.

    A plain class, neither attrs nor a dataclass: kernels and controllers read and write
    these on their startup path, where importing attrs or ``dataclasses`` (with the
    ``inspect`` it pulls in) costs milliseconds. Subclasses set the class attributes below
    and assign every field in ``__init__``.
    """

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    #: Every field, in the order the file lists them.
    FIELDS: ClassVar[tuple[str, ...]] = ()
    #: The sockets, by name; a socket's port is in the field ``name + PORT_SUFFIX``.
    SOCKETS: ClassVar[tuple[str, ...]] = ()
    PORT_SUFFIX: ClassVar[str] = ""
    #: Fields left out of the file while None.
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    #: What the file is called in error messages, and what its sockets are.
    KIND: ClassVar[str] = "key file"
    SOCKET_KIND: ClassVar[str] = "socket"

    transport: str
    ip: str
    key: bytes

    def __setattr__(self, name: str, value: Any) -> None:
        # The key may be given as text (as JSON holds it); it is always kept as bytes.
        if name == "key" and not isinstance(value, bytes):
            value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    def __repr__(self) -> str:  # without the key: a repr ends up in logs
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS if n != "key")
        return f"{type(self).__name__}({shown}, key=...)"

    def port(self, name: str) -> int:
        """The port of socket ``name`` (one of :attr:`SOCKETS`)."""
        if name not in self.SOCKETS:
            raise ValueError(f"unknown {self.SOCKET_KIND} {name!r}; expected one of {self.SOCKETS}")
        return int(getattr(self, name + self.PORT_SUFFIX))

    def url(self, name: str) -> str:
        """The ZeroMQ endpoint of socket ``name``, e.g. ``tcp://127.0.0.1:5555``."""
        return endpoint(self.transport, self.ip, self.port(name))

    def ports(self) -> dict[str, int]:
        """``{socket name: port}`` for every socket."""
        return {name: self.port(name) for name in self.SOCKETS}

    def to_dict(self, *, include_key: bool = True) -> dict[str, Any]:
        """The file's JSON object (the key as text; without it for ``include_key=False``,
        what may be shown to a peer that already holds it)."""
        data = {name: getattr(self, name) for name in self.FIELDS}
        if include_key:
            data["key"] = self.key.decode("utf-8")
        else:
            del data["key"]
        for name in self.OMIT_NONE:
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls: type[_K], data: dict[str, Any]) -> _K:
        """Build from the file's object, ignoring fields other tools add."""
        known = cls.FIELDS
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_file(cls: type[_K], path: str | os.PathLike[str]) -> _K:
        """Read a file written by :meth:`to_file` (or by another tool of the same schema).

        Not ``read``: a method of that name reads as a receive to the door's coverage
        test (tests/test_door_coverage.py), and a file is not a socket."""
        return cls.from_dict(read_json_object(path, cls.KIND))

    def to_file(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` with mode 0600, atomically (:func:`write_private_json`)."""
        return write_private_json(path, self.to_dict())
