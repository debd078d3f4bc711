"""A private Jupyter environment for tests that drive corral through Jupyter's own tools."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.transports.zmq.kernelspec import install_kernelspec

ROOT = Path(__file__).resolve().parents[1]


def isolate_jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every Jupyter and corral directory into ``tmp_path`` (nothing in ~ is read or
    written), let kernels import this checkout, and return the Jupyter path to put
    kernelspecs in (``<it>/kernels/<name>/kernel.json``)."""
    path = tmp_path / "jupyter-path"
    monkeypatch.setenv("JUPYTER_PATH", str(path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    return path


def corral_and_ipykernel_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private Jupyter environment (:func:`isolate_jupyter`) holding corral's kernelspec
    (``corral``) and ipykernel's (``ipy``), for notebooks run side by side on both."""
    path = isolate_jupyter(tmp_path, monkeypatch)
    prefix = path.parent / "prefix"
    install_kernelspec(prefix=prefix)
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "ipy"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ipykernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


def run_notebook(kernel: str, cells: list[str], timeout: float) -> list[Any]:
    """Run ``cells`` as a notebook on ``kernel`` with nbclient (errors allowed, so every
    cell runs); the outputs of each cell."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in cells]
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=timeout, startup_timeout=timeout, allow_errors=True
    )
    client.execute()
    return [c.outputs for c in nb.cells]


def stream_text(outputs: list[Any]) -> str:
    """The text of a cell's stream outputs (stdout and stderr), in order."""
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
