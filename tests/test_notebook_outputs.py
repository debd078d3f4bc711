"""What a notebook shows of its engines' outputs: ``%%px`` cells and
``AsyncResult.display_outputs()`` run by nbclient on corral's kernel and on ipykernel
(``%load_ext corral``), with a cluster the notebook starts.

nbclient keeps a cell's outputs as a frontend does: it merges nothing, records each
display with its ``transient`` display id and applies ``update_display_data`` to the
outputs that carry that id, in any cell. One notebook per kernel is run (module-scoped
fixture) and each test reads the cells it is about.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import TIMEOUT
from jupyter_helpers import corral_and_ipykernel_specs, run_notebook, stream_text

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(300)

#: A display shown, then updated in place, on an engine.
UPDATED = "from IPython.display import display\nh = display('a', display_id=True)\nh.update('b')\n"
APPLIED = "def shows():\n" + "".join(f"    {line}\n" for line in UPDATED.splitlines())

CELLS = {
    "start": "import corral as ipp\ncluster = ipp.Cluster(n=2)\n"
    "rc = cluster.start_and_connect_sync()",
    "px_updated": "%%px\n" + UPDATED,
    "apply_updated": APPLIED + "ar = rc[:].apply_async(shows)\nar.get()\nar.display_outputs()",
    "one_updated": f"one = rc[0].execute({UPDATED!r})\none.get()\none.display_outputs()",
    "later_shown": "%%px --targets 0\nlater = display('first', display_id=True)",
    "later_updated": "%%px --targets 0\nlater.update('second')",
    "failing": "%%px\n1/0",
    "apply_failing": "rc[:].apply_sync(lambda: 1/0)",
    "labels": "%%px --no-stream\nprint('text')\ndisplay('shown')\n3",
    "labels_outputs": "both = rc[:].execute(\"print('text')\\ndisplay('shown')\")\n"
    "both.get()\nboth.display_outputs()",
    "stop": "cluster.stop_cluster_sync()",
}

KERNELS = {"corral-kernel": ("corral", []), "ipykernel": ("ipy", ["%load_ext corral"])}


@pytest.fixture(scope="module", params=list(KERNELS))
def notebook(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The outputs of :data:`CELLS` run as one notebook on the kernel, by cell name."""
    pytest.importorskip("ipykernel", reason="ipykernel is a test extra")
    kernel, setup = KERNELS[request.param]
    with pytest.MonkeyPatch.context() as monkeypatch:
        corral_and_ipykernel_specs(tmp_path_factory.mktemp("jupyter"), monkeypatch)
        outputs = run_notebook(kernel, [*setup, *CELLS.values()], TIMEOUT)[len(setup) :]
    return dict(zip(CELLS, outputs, strict=True))


def plain(outputs: list[Any]) -> list[str]:
    """The ``text/plain`` of each display and value in a cell, in order."""
    return [
        o["data"].get("text/plain", "")
        for o in outputs
        if o["output_type"] in ("display_data", "execute_result")
    ]


def displays(outputs: list[Any]) -> list[str]:
    """:func:`plain` without the engines' ``[output:N]`` labels."""
    return [text for text in plain(outputs) if not re.fullmatch(r"\[output:\d+\]", text)]


def errors(outputs: list[Any]) -> list[Any]:
    return [o for o in outputs if o["output_type"] == "error"]


def test_no_cell_fails_but_the_failing_one(notebook: dict[str, list[Any]]) -> None:
    failed = [name for name, outputs in notebook.items() if errors(outputs)]
    assert failed == ["failing", "apply_failing"], {name: errors(notebook[name]) for name in failed}


def test_an_updated_display_shows_once_with_its_last_value(
    notebook: dict[str, list[Any]],
) -> None:
    """An engine's ``display(..., display_id=True)`` then ``handle.update(...)``: the cell
    shows that display once, with the updated value, as the same code shows in a local
    cell, rather than the first value and then the second as another output."""
    assert displays(notebook["px_updated"]) == ["'b'", "'b'"]
    assert displays(notebook["apply_updated"]) == ["'b'", "'b'"]
    assert displays(notebook["one_updated"]) == ["'b'"]


def test_an_update_from_a_later_cell_replaces_the_earlier_display(
    notebook: dict[str, list[Any]],
) -> None:
    """The engine updates a display shown by an earlier ``%%px`` cell: as in a local
    notebook, the earlier cell's output changes in place and the later cell adds none."""
    assert displays(notebook["later_shown"]) == ["'second'"]
    assert plain(notebook["later_updated"]) == []


def test_a_failing_px_cell_shows_the_engines_errors_not_the_clients_internals(
    notebook: dict[str, list[Any]],
) -> None:
    """``%%px`` on code that fails everywhere: the error names each engine's failure and
    its remote traceback; no frame of the client's machinery (``concurrent.futures``,
    where the result was waited for) stands before it."""
    [error] = errors(notebook["failing"])
    text = "\n".join(error["traceback"])
    assert error["ename"] == "CompositeError"
    assert "concurrent" not in text and "_base.py" not in text and "File " not in text, text
    assert "[engine 0] ZeroDivisionError" in text and "[engine 1] ZeroDivisionError" in text
    assert "1/0" in text  # the remote frame: where the bug is


def test_a_failed_blocking_call_shows_the_engines_errors_not_the_clients_internals(
    notebook: dict[str, list[Any]],
) -> None:
    """``rc[:].apply_sync(f)`` failing on every engine, outside any magic: the error
    renders itself (IPython's ``_render_traceback_``, which corral's kernel honours as
    ipykernel does): each engine's failure and the remote frame, and none of the frames
    where the client waited for the result."""
    [error] = errors(notebook["apply_failing"])
    text = "\n".join(error["traceback"])
    assert error["ename"] == "CompositeError"
    assert "concurrent" not in text and "_base.py" not in text, text
    assert "[engine 0] ZeroDivisionError" in text and "[engine 1] ZeroDivisionError" in text


def test_engine_labels_of_displays_are_outputs_of_their_own(
    notebook: dict[str, list[Any]],
) -> None:
    """``[output:N]`` labels the display under it: it is a display of its own (as
    ipyparallel sends it), not text appended to the stdout stream, where a frontend
    merges it into the engines' printed text. Stream labels stay in their streams
    (``[stdout:N]`` heads the text it labels), and a value is ``Out[N:count]``."""
    for name in ("labels", "labels_outputs"):
        outputs = notebook[name]
        text = stream_text(outputs)
        assert text == "[stdout:0] \ntext\n[stdout:1] \ntext\n", (name, text)
        shown = plain(outputs)
        assert shown[:4] == ["[output:0]", "'shown'", "[output:1]", "'shown'"], (name, shown)
    values = plain(notebook["labels"])[4:]
    assert [v.split(":", 1)[0] for v in values] == ["Out[0", "Out[1"], values
    assert all(v.endswith("]: 3") for v in values), values
