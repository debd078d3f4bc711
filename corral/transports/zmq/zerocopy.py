"""pyzmq's zero-copy collector, kept running until the process ends.

pyzmq sends a large buffer without copying it by lending it to libzmq. When libzmq is
done with it (sent, or dropped as its socket closes), it tells pyzmq's collector thread
over an inproc PUSH socket, so that Python can release the buffer. At interpreter exit
pyzmq stops that collector and closes its socket, yet libzmq may still hold lent
messages: sockets closed while the interpreter tears down, messages still on their way.
Its next release then sends on a socket that no longer exists, and the process dies of
SIGSEGV or SIGABRT after the program has finished: 19 of 20 runs of a script that exits
with twenty 8 MB messages queued (tests/test_zerocopy_exit.py, pyzmq 27.3). corral's
test run died of SIGSEGV at its end in CI once, most likely that way.

A collector left running costs nothing (a daemon thread, ended with the process), so
importing :mod:`corral.transports.zmq` takes pyzmq's stop off the exit handlers.
"""

from __future__ import annotations

import atexit

import zmq.utils.garbage as _garbage


def keep_collector_until_exit() -> bool:
    """Take pyzmq's "stop the collector" off the exit handlers (idempotent); False if
    this pyzmq has no such handler (a version that manages lent buffers otherwise)."""
    stop = getattr(getattr(_garbage, "gc", None), "_atexit", None)
    if stop is None:
        return False
    atexit.unregister(stop)
    return True
