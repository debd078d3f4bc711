"""Parallel computing: a controller routing tasks from clients to a cluster of engines.

The wire contract between client, controller and engines is ``docs/parallel-protocol.md``.
"""
