"""The pluggy markers for project ``corral``, in a module of their own so that hookspecs
and plugins can import them without importing the plugin manager."""

import pluggy

PROJECT_NAME = "corral"
ENTRY_POINT_GROUP = "corral"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
