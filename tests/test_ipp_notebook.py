"""%px in real notebooks run by nbclient: on ipykernel (``%load_ext corral``) and on
corral's own kernel (magics registered by the built-in plugin), against a real cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT
from jupyter_helpers import corral_and_ipykernel_specs, run_notebook, stream_text
from parallel_client_harness import LiveCluster

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveCluster]:
    """A private Jupyter path with corral's and ipykernel's kernelspecs, and a cluster of
    the default profile that ``Client()`` in the kernels finds."""
    corral_and_ipykernel_specs(tmp_path, monkeypatch)
    live = LiveCluster(tmp_path / "corral", threads=True, profile="default")
    yield live
    live.stop()


def run(kernel: str, cells: list[str]) -> list[Any]:
    """``cells`` as a notebook on ``kernel``: the outputs of each cell."""
    return run_notebook(kernel, cells, TIMEOUT)


def stdout(outputs: list[Any]) -> str:
    return stream_text(outputs)


def errors(outputs: list[Any]) -> list[Any]:
    return [o for o in outputs if o["output_type"] == "error"]


CELLS = [
    "x = 1",
    "%%px\nimport os\nprint('pid', os.getpid() > 0)",
    "%%px --targets 0\n1/0",
    "%px 6 * 7",
    "%%px --targets 1 --save-name kept\nprint('one engine')",
    "type(kept).__name__",
    "%autopx",
    "auto_remote = 3\nprint('auto', auto_remote)",
    "%autopx",
    "'auto_remote' in dir()",
    "%%px --noblock\nprint('before')\nraise KeyError('later')",
    "%pxresult",
]


def check(outputs: list[Any]) -> None:
    lines = sorted(stdout(outputs[1]).splitlines())
    assert lines == ["[stdout:0] pid True", "[stdout:1] pid True"]
    (error,) = errors(outputs[2])  # the error shows, with the remote traceback
    assert "ZeroDivisionError" in "\n".join(error["traceback"])
    shown = [o for o in outputs[3] if o["output_type"] in ("display_data", "execute_result")]
    assert len(shown) == 2 and all("42" in o["data"]["text/plain"] for o in shown)
    assert stdout(outputs[4]) == "[stdout:1] one engine\n"  # streamed: labelled, inline
    result = [o for o in outputs[5] if o["output_type"] == "execute_result"]
    assert result and "AsyncResult" in result[0]["data"]["text/plain"]
    assert "%autopx enabled" in stdout(outputs[6])
    assert sorted(stdout(outputs[7]).splitlines()) == ["[stdout:0] auto 3", "[stdout:1] auto 3"]
    assert "%autopx disabled" in stdout(outputs[8])
    (local,) = [o for o in outputs[9] if o["output_type"] == "execute_result"]
    assert local["data"]["text/plain"] == "False"  # ran on the engines, not in the kernel
    assert not errors(outputs[10])  # a non-blocking cell reports nothing yet
    assert "[stdout:0] \nbefore" in stdout(outputs[11])  # %pxresult: display_outputs
    (late,) = errors(outputs[11])  # %pxresult raises the error of the failed cell
    assert "KeyError" in "\n".join(late["traceback"])


def test_px_on_ipykernel_with_load_ext(env: LiveCluster) -> None:
    pytest.importorskip("ipykernel", reason="ipykernel is a test extra")
    check(run("ipy", ["%load_ext corral", *CELLS])[1:])


def test_px_on_corrals_kernel(env: LiveCluster) -> None:
    check(run("corral", CELLS))


def test_applied_cell_functions_name_their_cell_on_ipykernel(env: LiveCluster) -> None:
    """A function defined in a notebook cell (ipykernel compiles it from a temporary file)
    fails on an engine: its frame reads ``Cell In[N]`` as a local one would, not the
    temporary file's path."""
    pytest.importorskip("ipykernel", reason="ipykernel is a test extra")
    cells = [
        "import corral",
        "def from_cell(x):\n    y = x + 1\n    return y / 0",
        "corral.Client()[0].apply_sync(from_cell, 1)",
    ]
    (error,) = errors(run("ipy", cells)[2])
    text = "\n".join(error["traceback"])
    assert "Cell In[2], line 3, in from_cell(x)" in text, text
    assert "return y / 0" in text and "ipykernel_" not in text


def _interrupt_px(kernel: str, setup: list[str]) -> tuple[str, str, float]:
    """Run a long ``%%px`` cell, interrupt the kernel as JupyterLab's Kernel > Interrupt
    does (jupyter_client's ``interrupt_kernel``) once both engines print, then run another
    ``%px``: (the interrupted cell's error text, the next cell's stdout, its seconds)."""
    import time

    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=kernel, startup_timeout=TIMEOUT)
    try:
        for code in setup:
            reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=lambda m: None)
            assert reply["content"]["status"] == "ok", reply["content"]
        msg_id = kc.execute("%%px\nimport time\nprint('sleeping', flush=True)\ntime.sleep(120)")
        printed = 0
        deadline = time.monotonic() + TIMEOUT
        while printed < 2:  # both engines run it
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id and "sleeping" in str(
                msg["content"].get("text", "")
            ):
                printed += msg["content"]["text"].count("sleeping")
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id
        content = reply["content"]
        error = " ".join([content.get("ename", ""), content.get("evalue", "")])
        error += "\n".join(content.get("traceback", []))
        started = time.monotonic()
        texts: list[str] = []
        after = kc.execute_interactive(
            "%px print('alive')",
            timeout=TIMEOUT,
            output_hook=lambda m: texts.append(str(m["content"].get("text", ""))),
        )
        assert after["content"]["status"] == "ok", after["content"]
        return error, "".join(texts), time.monotonic() - started
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("kernel", "setup"),
    [("corral", []), ("ipy", ["%load_ext corral"])],
    ids=["corral-kernel", "ipykernel"],
)
def test_kernel_interrupt_reaches_the_engines(
    env: LiveCluster, kernel: str, setup: list[str]
) -> None:
    """Kernel > Interrupt during ``%%px`` stops the cell, the engines' task ends with
    KeyboardInterrupt (shown in the cell's error), and the next ``%px`` runs at once, not
    after the 120 s the task would have slept."""
    error, out, seconds = _interrupt_px(kernel, setup)
    assert "KeyboardInterrupt" in error
    assert out.count("alive") == 2
    assert seconds < 60
