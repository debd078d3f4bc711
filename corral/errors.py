"""The root of every exception corral raises: catch :class:`CorralError` to catch them all.

Each error class lives beside the code that raises it (the wire's errors in the wire
module, the launchers' in the launchers), so a reader sees the failure where it starts.
What ties them together is this one base: every exception class defined in corral derives
from :class:`CorralError` (``tests/test_errors.py`` checks it by importing every module).
Classes keep their builtin base too where users already catch that, e.g. ``MessageTimeout``
is still a ``TimeoutError`` and ``ConfigError`` a ``ValueError``, so::

    except CorralError:      # anything corral raised on purpose
    except TimeoutError:     # still catches a MessageTimeout

This module imports nothing, so every layer (even ``notification``, which imports nothing
else of corral) may import it.
"""

from __future__ import annotations

__all__ = ["CorralError"]


class CorralError(Exception):
    """Base of every exception class corral defines.

    It adds no state and no ``__init__``, so it combines with any builtin exception base
    (``OSError``, ``TimeoutError``, ``ValueError``...) and pickles like the class it joins,
    which matters for errors carried from engines back to clients.

    .. versionadded:: 0.1
    """
