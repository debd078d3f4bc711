"""The aggregate cluster file: the member controllers of one aggregated cluster.

Why a file of its own: ``corral cluster start --controllers N`` starts N complete
controllers, each writing its own ``security/cluster-<id>-<k>.json``. A client started
elsewhere (``Client(profile=...)``, ``corral.Client(path)``) must find all N, in order (the
order makes the aggregate engine ids), and know they belong together. The aggregate file
``security/cluster-<id>.json`` says so: it holds every member's cluster file content, keys
included, so it is a secret like theirs, written the same way (mode 0600, atomically, only
once every member is up).

Readers connect through each member's own file (a member controller restarted on the same
profile keeps its key but may bind other ports, and rewrites that file), after checking it
holds the key the aggregate recorded: the key is what makes it the same controller.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from corral.transports.zmq.connection import read_json_object, write_private_json

__all__ = [
    "MEMBERS",
    "is_aggregate",
    "member_cluster_ids",
    "member_files",
    "write_aggregate_file",
]

#: The field naming the members: a list of cluster file objects, controller ``k`` at ``k``.
MEMBERS = "controllers"


def is_aggregate(data: dict[str, Any] | None) -> bool:
    """Whether a cluster file's object is an aggregate's (it lists member controllers)."""
    return isinstance(data, dict) and isinstance(data.get(MEMBERS), list)


def write_aggregate_file(
    path: str | os.PathLike[str], cluster_id: str, members: list[dict[str, Any]]
) -> Path:
    """Write the aggregate file for ``members`` (each a member's cluster file object, with
    its key), private and atomic like every file holding a key."""
    if not members:
        raise ValueError("an aggregate needs at least one member controller")
    for member in members:
        if not member.get("key") or not member.get("cluster_id"):
            raise ValueError("each member needs its cluster_id and key")
    data = {"cluster_id": cluster_id, "aggregate": len(members), MEMBERS: members}
    return write_private_json(path, data)


def _key_of(info: dict[str, Any]) -> bytes:
    key = info.get("key") or b""
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def member_files(path: str | os.PathLike[str]) -> list[Path]:
    """The members' cluster files, in order (controller ``k`` at ``k``), each checked to
    hold the key the aggregate recorded: a file of another controller that took a
    member's name is refused, not connected to.

    :raises ValueError: not an aggregate file, or a member's file is gone or foreign.
    """
    data = read_json_object(path, "cluster file")
    if not is_aggregate(data):
        raise ValueError(f"{path} is not an aggregate cluster file")
    security = Path(path).parent
    found: list[Path] = []
    for copy in data[MEMBERS]:
        if not isinstance(copy, dict) or not copy.get("cluster_id"):
            raise ValueError(f"{path}: a member without a cluster_id")
        member = security / f"cluster-{copy['cluster_id']}.json"
        try:
            current = read_json_object(member, "cluster file")
        except (OSError, ValueError) as error:
            raise ValueError(
                f"member controller {copy['cluster_id']!r} of {path} has no cluster file "
                f"({error}); is it running?"
            ) from error
        if not hmac.compare_digest(_key_of(current), _key_of(copy)):
            raise ValueError(f"{member} holds another key than {path} recorded for it")
        found.append(member)
    return found


def member_cluster_ids(security: Path) -> set[str]:
    """Cluster ids that are members of some aggregate whose file is in ``security``: the
    members are not clusters of their own to list, pick or stop one by one."""
    members: set[str] = set()
    for path in security.glob("cluster-*.json"):
        try:
            data = read_json_object(path, "cluster file")
        except (OSError, ValueError):
            continue
        if is_aggregate(data):
            members.update(str(m.get("cluster_id")) for m in data[MEMBERS] if isinstance(m, dict))
    return members
