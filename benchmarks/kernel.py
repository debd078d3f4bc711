"""Kernel latency through jupyter_client: corral beside ipykernel, in one run.

Two figures per kernel, both measured with jupyter_client as the frontend:

* startup: from ``KernelManager.start_kernel()`` to the first ``kernel_info_reply``
  (timed here, not with ``wait_for_ready``, which adds a fixed flush of its own). Each
  kernel runs from the kernelspec its installer writes; corral's names its provisioner,
  which hands the kernel to the client once its ports are bound (see
  ``corral/transports/zmq/provisioner.py``), where jupyter_client's default provisioner
  lets the client's first connection be refused and retried 100-200 ms later;
* execute: ``execute("pass")`` until both its reply and the iopub ``idle`` have arrived;
* notebook: nbclient running, start to end (kernel start included), the notebook of what
  notebooks written for ipykernel do (``tests/notebook_cells.py``: rich displays,
  matplotlib plots, a widget, tqdm.notebook, magics...). Skipped if nbclient, matplotlib
  or ipywidgets are not installed.

Prints a table and the ratios; never passes or fails. Run: ``tox -e bench``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager

from corral.transports.zmq.kernelspec import kernel_json

STARTS = 7
EXECUTES = 300
NOTEBOOK_RUNS = 3


def install_specs(root: Path) -> None:
    """Kernelspecs for both kernels in a private Jupyter path, using this interpreter.

    Each is the spec its own installer writes: ``corral kernel install`` (which names
    corral's provisioner) and ``python -m ipykernel install``.
    """
    ipykernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ipykernel",
        "language": "python",
    }
    specs = {"corral": kernel_json("corral", provisioner=True), "ipykernel": ipykernel}
    for name, spec in specs.items():
        folder = root / "kernels" / f"bench-{name}"
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text(json.dumps(spec))


def first_reply_seconds(kernel_name: str) -> float:
    manager = KernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        msg_id = client.kernel_info()
        while True:
            reply = client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return time.perf_counter() - started
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute_round_trips_ms(kernel_name: str) -> list[float]:
    manager = KernelManager(kernel_name=kernel_name)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=30)
    times = []
    try:
        for _ in range(EXECUTES):
            started = time.perf_counter()
            msg_id = client.execute("pass")
            replied = idle = False
            while not replied:
                replied = client.get_shell_msg(timeout=30)["parent_header"]["msg_id"] == msg_id
            while not idle:
                msg = client.get_iopub_msg(timeout=30)
                idle = (
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"
                )
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return times


def notebook_seconds(kernel_name: str) -> float | None:
    """One nbclient run of the parity notebook, kernel start included; None if unavailable."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        import ipywidgets  # noqa: F401
        import matplotlib  # noqa: F401
        import nbclient
        from notebook_cells import notebook
    except ImportError:
        return None
    nb = notebook()
    started = time.perf_counter()
    nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=60, allow_errors=True).execute()
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        install_specs(Path(root))
        os.environ["JUPYTER_PATH"] = root
        os.environ.setdefault("CORRAL_DIR", str(Path(root) / "corral"))
        results = {}
        for name in ("corral", "ipykernel"):
            kernel = f"bench-{name}"
            first_reply_seconds(kernel)  # warm the file system caches for both alike
            starts = [first_reply_seconds(kernel) for _ in range(STARTS)]
            trips = execute_round_trips_ms(kernel)
            books = [notebook_seconds(kernel) for _ in range(NOTEBOOK_RUNS)]
            book = statistics.median(books) if None not in books else float("nan")
            results[name] = (statistics.median(starts), statistics.median(trips), book)
    print(f"{'kernel':<10} {'startup (s)':>12} {'execute pass (ms)':>18} {'notebook (s)':>13}")
    for name, (start, trip, book) in results.items():
        print(f"{name:<10} {start:12.3f} {trip:18.2f} {book:13.2f}")
    corral, ipykernel = results["corral"], results["ipykernel"]
    print()
    print("ratios corral / ipykernel (goal in brackets):")
    print(f"  startup  {corral[0] / ipykernel[0]:5.2f}  [<= 0.4]")
    print(f"  execute  {corral[1] / ipykernel[1]:5.2f}  [<= 0.3]")
    print(f"  notebook {corral[2] / ipykernel[2]:5.2f}")


if __name__ == "__main__":
    main()
