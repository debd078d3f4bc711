"""The bus: typed notifications, observers for one or all types and senders.

``corral.notification`` imports nothing else of corral, so any layer may post to it. The
cross-process bridge lives in :mod:`corral.notification.bridge`.
"""

from corral.notification.center import NotificationCenter, Observer, shared_center
from corral.notification.names import declare_type, resolve_type, sender_name, type_name

__all__ = [
    "NotificationCenter",
    "Observer",
    "declare_type",
    "resolve_type",
    "sender_name",
    "shared_center",
    "type_name",
]
