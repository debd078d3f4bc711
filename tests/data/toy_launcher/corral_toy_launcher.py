"""A third-party launcher distribution, as a plugin author would write one.

It registers launcher ``toy`` through the ``corral_launchers`` hook: local engines whose
environment carries ``[launcher:toy] greeting``, so a test can see both that the launcher
started them and that its own option reached it.
"""

from __future__ import annotations

import os

from corral.plugins import hookimpl
from corral.plugins.parallel.launchers.local import (
    LocalControllerLauncher,
    LocalEngineSetLauncher,
)


class ToyEngineSetLauncher(LocalEngineSetLauncher):
    name = "toy"

    def start(self):
        os.environ["TOY_GREETING"] = self.options["greeting"]
        try:
            return super().start()
        finally:
            del os.environ["TOY_GREETING"]


@hookimpl
def corral_add_options(schema):
    schema.add_option("launcher:toy", "greeting", "hello", "What toy engines are told.")


@hookimpl
def corral_launchers():
    return {"toy": (LocalControllerLauncher, ToyEngineSetLauncher)}
