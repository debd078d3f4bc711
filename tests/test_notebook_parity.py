"""The same notebook, run by nbclient on the corral kernel and on ipykernel: same outputs.

The cells (tests/notebook_cells.py) are what notebooks written for ipykernel do: rich
displays through IPython.display, display handles, clear_output, get_ipython(), inline
matplotlib, %config, %%capture, %%bash, %%html, widgets, tqdm.notebook, comms, extensions,
%timeit, errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TIMEOUT
from jupyter_helpers import isolate_jupyter
from notebook_cells import CELLS, notebook, signature

from corral.transports.zmq.kernelspec import install_kernelspec

for _name in ("nbclient", "nbformat", "ipykernel", "matplotlib", "matplotlib_inline", "ipywidgets"):
    pytest.importorskip(_name)


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = isolate_jupyter(tmp_path, monkeypatch)
    install_kernelspec(prefix=path.parent / "prefix")
    monkeypatch.setenv("JUPYTER_PATH", str(path.parent / "prefix" / "share" / "jupyter"))
    yield tmp_path


def run_notebook(kernel_name: str) -> list[list[dict]]:
    import nbclient

    nb = notebook()
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=TIMEOUT, startup_timeout=TIMEOUT, allow_errors=True
    )
    # ipykernel reads descriptors 1 and 2 (os.system, subprocesses) only when it is not
    # under pytest, which it tells by this variable: its users' kernels never are.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    client.execute(env=env)
    return [cell.outputs for cell in nb.cells]


def test_corral_and_ipykernel_give_the_same_outputs(jupyter_env: Path) -> None:
    corral = run_notebook("corral")
    ipykernel = run_notebook("python3")
    differ = []
    for (source, check), ours, theirs in zip(CELLS, corral, ipykernel, strict=True):
        if signature(ours, check) != signature(theirs, check):
            differ.append((source, signature(ours, check), signature(theirs, check)))
    assert differ == []

    # And the outputs are the rich ones, not text reprs (cells found by their source).
    def outputs(start: str) -> list[dict]:
        pairs = zip(CELLS, corral, strict=True)
        return next(out for (source, _), out in pairs if source.startswith(start))

    assert outputs("from IPython.display import")[0]["data"]["text/html"] == "<b>bold</b>"
    assert outputs("h = display(")[0]["data"]["text/plain"] == "'second'"  # updated in place
    assert "image/png" in outputs("import matplotlib.pyplot")[0]["data"]
    assert "image/png" in outputs("fig, ax = plt.subplots()")[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in outputs("import ipywidgets")[0]["data"]
    bare = corral[[source for source, _ in CELLS].index("%matplotlib")]
    assert bare[0]["text"].startswith("Using matplotlib backend:")
    assert outputs("%%bash\necho failing")[-1]["ename"] == "CalledProcessError"
