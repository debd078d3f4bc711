"""``usage_request``: the kernel's and the host's CPU and memory, for JupyterLab's meter.

The reply has the fields JupyterLab's resource indicator (jupyter-resource-usage) reads:
``kernel_cpu`` and ``kernel_memory`` for this process and its children, ``host_cpu_percent``,
``cpu_count`` and ``host_virtual_memory``. psutil's CPU percentages are measured since the
previous call, so the process objects are kept between requests.
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["usage_content"]

_processes: dict[int, Any] = {}


def _process(pid: int) -> Any:
    import psutil

    proc = _processes.get(pid)
    if proc is None:
        proc = _processes[pid] = psutil.Process(pid)
    return proc


def usage_content() -> dict[str, Any]:
    """The ``usage_reply`` content for this kernel process."""
    import psutil

    me = _process(os.getpid())
    cpu, memory = me.cpu_percent(), me.memory_info().rss
    alive = {os.getpid()}
    for child in me.children(recursive=True):
        try:
            proc = _process(child.pid)
            cpu += proc.cpu_percent()
            memory += proc.memory_info().rss
            alive.add(child.pid)
        except psutil.Error:  # ended meanwhile
            continue
    for pid in set(_processes) - alive:
        del _processes[pid]
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "kernel_cpu": cpu,
        "kernel_memory": memory,
        "host_cpu_percent": psutil.cpu_percent(),
        "cpu_count": psutil.cpu_count(logical=True),
        "host_virtual_memory": dict(psutil.virtual_memory()._asdict()),
    }
