"""The bus: typed notifications, observers for one or all types and senders.

``corral.notification`` imports nothing else of corral, so any layer may post to it.
"""

from corral.notification.center import NotificationCenter, Observer, shared_center

__all__ = ["NotificationCenter", "Observer", "shared_center"]
