"""Notification types the interpreter posts, and what each carries as ``info``.

The interpreter (sans-I/O) posts these to its center as things happen; the zmq kernel
server, frontends and plugins observe them. Every type is a plain string so it crosses
processes unchanged through the notification bridge.

==========================  ============================================================
type                        info keywords
==========================  ============================================================
``EXECUTE_STARTED``         code, execution_count, silent
``STREAM``                  name ("stdout" or "stderr"), text
``DISPLAY_DATA``            data (mime bundle), metadata, transient
``UPDATE_DISPLAY_DATA``     data, metadata, transient (holds ``display_id``)
``CLEAR_OUTPUT``            wait
``EXECUTE_RESULT``          execution_count, data, metadata
``ERROR``                   ename, evalue, traceback (list of str)
``EXECUTE_FINISHED``        execution_count, status ("ok", "error" or "aborted")
==========================  ============================================================
"""

from __future__ import annotations

EXECUTE_STARTED = "execute.started"
STREAM = "stream"
DISPLAY_DATA = "display.data"
UPDATE_DISPLAY_DATA = "display.update"
CLEAR_OUTPUT = "display.clear"
EXECUTE_RESULT = "execute.result"
ERROR = "execute.error"
EXECUTE_FINISHED = "execute.finished"

#: Every type the interpreter posts, for plugins that declare or forward them.
INTERPRETER_TYPES = (
    EXECUTE_STARTED,
    STREAM,
    DISPLAY_DATA,
    UPDATE_DISPLAY_DATA,
    CLEAR_OUTPUT,
    EXECUTE_RESULT,
    ERROR,
    EXECUTE_FINISHED,
)
