"""A cluster driven from a notebook, as ipyparallel users do in JupyterLab: notebooks
written with nbformat, run by nbclient on corral's kernel and on ipykernel
(``%load_ext corral``), with clusters the notebook itself starts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT, until
from jupyter_helpers import corral_and_ipykernel_specs, run_notebook, stream_text

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
    corral_and_ipykernel_specs(tmp_path, monkeypatch)
    yield


def run(kernel: str, cells: list[str]) -> list[Any]:
    """``cells`` as a notebook on ``kernel``: the outputs of each cell."""
    return run_notebook(kernel, cells, TIMEOUT)


def stdout(outputs: list[Any]) -> str:
    return stream_text(outputs)


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


def rich(outputs: list[Any]) -> list[str]:
    """The HTML of each display in the cell's output area."""
    return [
        o["data"]["text/html"]
        for o in outputs
        if o["output_type"] in ("display_data", "execute_result") and "text/html" in o["data"]
    ]


@pytest.mark.parametrize(("kernel", "setup"), KERNELS, ids=KERNEL_IDS)
def test_display_outputs_shows_engines_rich_outputs(
    kernels: None, kernel: str, setup: list[str]
) -> None:
    """``ar.display_outputs()`` in a notebook shows what the engines displayed as rich
    outputs (HTML here; a matplotlib figure the same way), each under its ``[output:N]``
    label, as ipyparallel republishes them, not as ``<IPython.core.display.HTML object>``
    text. One engine's result shows its display unlabelled."""
    code = (
        "from IPython.display import HTML, display\n"
        "import os\n"
        "display(HTML(f'<b>shown {os.getpid()}</b>'))\n"
        "HTML('<i>value</i>')"
    )
    cells = [
        *setup,
        "import corral as ipp\ncluster = ipp.Cluster(n=2)\nrc = cluster.start_and_connect_sync()",
        f"ar = rc[:].execute({code!r}, block=True)\nar.display_outputs()",
        f"one = rc[0].execute({code!r}, block=True)\none.display_outputs()",
        "cluster.stop_cluster_sync()",
    ]
    outputs = run(kernel, cells)[len(setup) :]
    assert not any(errors(out) for out in outputs), [errors(out) for out in outputs]
    both = rich(outputs[1])
    assert [html.startswith("<b>shown ") for html in both] == [True, False, True, False], both
    assert both[1] == both[3] == "<i>value</i>"
    labels = [
        o["data"]["text/plain"]
        for o in outputs[1]
        if o["output_type"] == "display_data" and "text/html" not in o["data"]
    ]
    assert labels == ["[output:0]", "[output:1]"]  # displays of their own, as ipyparallel's
    assert stdout(outputs[1]) == ""
    single = rich(outputs[2])
    assert len(single) == 2 and single[0].startswith("<b>shown "), single
    assert "Display" not in stdout(outputs[2]) and "HTML object" not in stdout(outputs[2])


def test_a_client_brings_the_px_magics_on_ipykernel(kernels: None) -> None:
    """An ipyparallel notebook ported with ``import corral as ipp`` runs its ``%px``
    cells on ipykernel without ``%load_ext corral``: the first client brings the magics,
    as ipyparallel's does, and a later ``%load_ext corral`` changes nothing."""
    cells = [
        "import corral as ipp\ncluster = ipp.Cluster(n=1)\nrc = cluster.start_and_connect_sync()",
        "%px print('remote')",
        "%load_ext corral",
        "%px print('still')",
        "cluster.stop_cluster_sync()",
    ]
    outputs = run("ipy", cells)
    assert not any(errors(out) for out in outputs), [errors(out) for out in outputs]
    assert stdout(outputs[1]) == "[stdout:0] remote\n"
    assert stdout(outputs[3]) == "[stdout:0] still\n"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("kernel", "setup"), KERNELS, ids=KERNEL_IDS)
def test_kernel_restart_stops_the_notebooks_cluster(
    kernels: None, kernel: str, setup: list[str]
) -> None:
    """Kernel > Restart while the notebook's cluster runs: the controller and engines go
    with the kernel that owned them (docs/parallel.md: processes never outlive their
    owner), and the new kernel can start a cluster of its own at once."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=kernel, startup_timeout=TIMEOUT)
    try:
        texts: list[str] = []

        def run_cell(code: str) -> None:
            reply = kc.execute_interactive(
                code,
                timeout=TIMEOUT,
                output_hook=lambda m: texts.extend(
                    [m["content"]["text"]] if m["msg_type"] == "stream" else []
                ),
            )
            assert reply["content"]["status"] == "ok", reply["content"]

        for code in setup:
            run_cell(code)
        run_cell(
            "import corral as ipp, json\n"
            "cluster = ipp.Cluster(n=2)\n"
            "rc = cluster.start_and_connect_sync()\n"
            "pids = cluster.pids()\n"
            "print(json.dumps([pids['controller'], *pids['engines']]))"
        )
        pids = json.loads(texts[-1])
        assert len(pids) == 3 and not any(_gone(pid) for pid in pids)
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=TIMEOUT)
        until(lambda: all(_gone(pid) for pid in pids), what=f"cluster {pids} still running")
        for code in setup:
            run_cell(code)
        run_cell(
            "import corral as ipp\n"
            "cluster = ipp.Cluster(n=1)\n"
            "rc = cluster.start_and_connect_sync()\n"
            "print(rc[:].apply_sync(lambda: 'new'))\n"
            "cluster.stop_cluster_sync()"
        )
        assert texts[-1] == "['new']\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
