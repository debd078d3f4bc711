"""The other process in tests/test_bridge.py: a separate interpreter with its own center.

Run as ``python tests/bridge_child.py send|receive ADDRESS [pipe|zmq]`` with the hex
authkey in ``CORRAL_TEST_AUTHKEY`` (the environment, because other users can read command
lines). For ``zmq`` (tests/test_bridge_zmq.py), ADDRESS is the bound end's address as JSON.

* ``send``: connects, forwards notifications posted on its ``shared_center``, then checks
  that a non-serialisable one is refused on this side and prints ``refused: <message>``.
* ``receive``: connects, re-posts into its ``shared_center`` and prints one JSON line per
  notification an observer sees, until a ``"done"`` notification arrives.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from corral.notification import shared_center
from corral.notification.bridge import BridgeError, BridgeReceiver, BridgeSender, BridgeTransport
from corral.notification.names import declare_type
from corral.transports.pipe import PipeTransport
from corral.transports.zmq.bridge import ZmqBridgeTransport


class Progress:
    """A class used as a notification type, declared under the same name in the parent."""


declare_type(Progress, "test.progress")


class Engine:
    """A sender that names itself for other processes."""

    notification_name = "engine-7"


def send(transport: BridgeTransport) -> None:
    engine = Engine()
    with BridgeSender(transport, shared_center, types=["stream", Progress, "done"]) as sender:
        shared_center.post("stream", engine, name="stdout", text="hello\n")
        shared_center.post("not-forwarded", engine, secret=1)
        shared_center.post(Progress, "loop", done=1, total=3, shape=(2, 3))
        shared_center.post("stream", engine, name="stderr", text="ünïcode ✓\n")
        try:
            sender.forward("stream", engine, name="stdout", text=object())
        except BridgeError as exc:
            print(f"refused: {exc}", flush=True)
        shared_center.post("done", None)
        print(f"sent: {sender.sent}", flush=True)


def receive(transport: BridgeTransport) -> None:
    finished = threading.Event()

    def show(type: Any, sender: Any, /, **info: Any) -> None:  # noqa: A002
        name = "Progress" if type is Progress else type
        print(json.dumps({"type": name, "sender": sender, "info": info}), flush=True)
        if type == "done":
            finished.set()

    shared_center.add_observer(show)
    receiver = BridgeReceiver(transport, shared_center)
    if not finished.wait(30):
        sys.exit("no 'done' notification within 30s")
    receiver.close()


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "pipe"
    authkey = bytes.fromhex(os.environ["CORRAL_TEST_AUTHKEY"])
    transport: BridgeTransport
    if kind == "zmq":
        transport = ZmqBridgeTransport.connect(json.loads(address), authkey)
    else:
        transport = PipeTransport.connect(address, authkey)
    with transport:  # type: ignore[attr-defined]
        {"send": send, "receive": receive}[mode](transport)


if __name__ == "__main__":
    main()
