"""Parallel computing: a controller routing tasks from clients to a cluster of engines.

The wire contract between client, controller and engines is ``docs/parallel-protocol.md``.
"""

from corral.core.reducer_source import set_reducer_source
from corral.plugins.serializers import plugin_reducers

# Clients and engines do not load plugins at start; their serializers come on first need.
set_reducer_source(plugin_reducers)
