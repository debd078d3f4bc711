"""A private Jupyter environment for tests that drive corral through Jupyter's own tools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
