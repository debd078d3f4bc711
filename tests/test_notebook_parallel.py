"""A cluster driven from a notebook, as ipyparallel users do in JupyterLab: notebooks
written with nbformat, run by nbclient on corral's kernel and on ipykernel
(``%load_ext corral``), with clusters the notebook itself starts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT
from jupyter_helpers import isolate_jupyter

from corral.transports.zmq.kernelspec import install_kernelspec

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(240)

KERNELS = [("corral", []), ("ipy", ["%load_ext corral"])]
KERNEL_IDS = ["corral-kernel", "ipykernel"]


@pytest.fixture
def kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private Jupyter path with corral's and ipykernel's kernelspecs; no cluster: the
    notebooks start their own."""
    pytest.importorskip("ipykernel", reason="ipykernel is a test extra")
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
    yield


def run(kernel: str, cells: list[str]) -> list[Any]:
    """Run ``cells`` as a notebook on ``kernel``; the outputs of each cell. The last cell
    is the notebook's clean-up and runs even if the others fail."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in cells]
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=TIMEOUT, startup_timeout=TIMEOUT, allow_errors=True
    )
    client.execute()
    return [c.outputs for c in nb.cells]


def stdout(outputs: list[Any]) -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def errors(outputs: list[Any]) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]


@pytest.mark.parametrize(("kernel", "setup"), KERNELS, ids=KERNEL_IDS)
def test_px_runs_on_the_notebooks_own_cluster(kernels: None, kernel: str, setup: list[str]) -> None:
    """A notebook starts its cluster, then a second one starts on the same profile (here
    from the notebook; as often another notebook's). ``%px`` before any ``activate()``
    runs on the notebook's first client, as ipyparallel's first ``Client`` activates the
    magics, not on the profile's newest cluster. Once that cluster is stopped, ``%px``
    moves to the client still usable rather than failing on the stopped one for good."""
    cells = [
        *setup,
        "import corral as ipp\n"
        "mine = ipp.Cluster(n=1)\n"
        "rc = mine.start_and_connect_sync()\n"
        "rc[:].execute('which = \"mine\"', block=True)",
        "other = ipp.Cluster(n=1)\n"
        "rc2 = other.start_and_connect_sync()\n"
        "rc2[:].execute('which = \"other\"', block=True)",
        "%px print(which)",
        "mine.stop_cluster_sync()",
        "%px print(which)",
        "other.stop_cluster_sync()\nmine.stop_cluster_sync()",
    ]
    outputs = run(kernel, cells)[len(setup) :]
    assert not any(errors(out) for out in outputs), [errors(out) for out in outputs]
    assert stdout(outputs[2]) == "[stdout:0] mine\n"
    assert stdout(outputs[4]) == "[stdout:0] other\n"
