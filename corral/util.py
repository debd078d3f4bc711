"""ipyparallel's ``ipyparallel.util`` helpers that users' engine code imports.

Only what ipyparallel's examples of engines talking to each other over their own zmq
sockets (``interengine``, ``wave2D``) need: :func:`disambiguate_url`. An engine binds
``tcp://*:PORT`` and publishes that with its host; a peer must turn it into an address it
can connect to.

.. versionadded:: 0.1
"""

from __future__ import annotations

import socket

__all__ = ["disambiguate_url"]

_ANY = ("*", "0.0.0.0")


def disambiguate_url(url: str, location: str | None = None) -> str:
    """``url`` (``tcp://*:5555``, ``tcp://0.0.0.0:5555``) with its bind-everywhere host
    replaced by one a peer can connect to: loopback when ``location`` (the binding
    machine's host name or address) is this machine or not given, else ``location``'s
    address. Other urls (an explicit address, ``ipc://...``) come back unchanged.
    """
    proto, sep, rest = url.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or host not in _ANY:
        return url
    return f"{proto}://{_connectable(location)}:{port}"


def _connectable(location: str | None) -> str:
    """Loopback for this machine (it is reachable whatever the interfaces), else the
    address of ``location`` (or ``location`` itself if it does not resolve)."""
    if not location or location in ("localhost", socket.gethostname()):
        return "127.0.0.1"
    try:
        address = socket.gethostbyname(location)
    except OSError:
        return location
    return "127.0.0.1" if address in _own_addresses() else address


def _own_addresses() -> set[str]:
    """This machine's IPv4 addresses: its interfaces' (through psutil when installed)
    and what its host name resolves to."""
    found = {"127.0.0.1"}
    try:
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return found
    for addresses in psutil.net_if_addrs().values():
        found.update(a.address for a in addresses if a.family == socket.AF_INET)
    return found
