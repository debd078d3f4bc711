"""A third-party frontend as a corral plugin: ``corral hello-kernel CODE...``.

Runs each argument as a cell in a kernel it starts, and prints the kernel manager's
KERNEL_DIED / KERNEL_RESTARTED notifications, so a cell that crashes the kernel is
reported and the following cells run in the restarted one.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from corral.plugins import hookimpl
from corral.transports.zmq.client import KernelDiedError
from corral.transports.zmq.kernel_events import KERNEL_DIED, KERNEL_RESTARTED
from corral.transports.zmq.manager import KernelManager


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hello-kernel", help="run code in a fresh kernel")
    parser.add_argument("cells", nargs="+", metavar="CODE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Any) -> int:
    restarted = threading.Event()

    def report(kind: str, sender: KernelManager, **info: Any) -> None:
        detail = info.get("message") or f"new pid {info.get('pid')}"
        print(f"[{kind}] {detail}", flush=True)
        if kind == KERNEL_RESTARTED:
            restarted.set()

    with KernelManager(profile=args.profile) as manager:
        manager.center.add_observer(report, KERNEL_DIED, sender=manager)
        manager.center.add_observer(report, KERNEL_RESTARTED, sender=manager)
        client = manager.client()
        client.wait_for_ready(30)
        for code in args.cells:
            try:
                client.execute_interactive(code, timeout=30)  # prints output as it comes
            except KernelDiedError:
                restarted.wait(30)  # the manager restarts it; the same client follows
                restarted.clear()
        manager.center.remove_observer(report, KERNEL_DIED, sender=manager)
        manager.center.remove_observer(report, KERNEL_RESTARTED, sender=manager)
    return 0
