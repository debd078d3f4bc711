"""IPython's magics as a notebook sees them, through a real corral kernel process.

The in-process tests (test_magics_shell.py, test_magics_more.py) cover each magic; these
check what reaches the frontend: streams, results, page payloads, %pylab's figures.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jupyter_client")
from helpers import TIMEOUT  # noqa: E402
from jupyter_client import BlockingKernelClient  # noqa: E402
from test_kernel_protocol import (  # noqa: E402
    iopub_until_idle,
    kernel_client,
    reply_to,
    run,
    stdout_of,
)


@pytest.fixture(scope="module")
def kc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockingKernelClient]:
    with kernel_client(tmp_path_factory.mktemp("magics")) as client:
        yield client


def ok(kc: BlockingKernelClient, code: str) -> tuple[dict, list[dict]]:
    reply, msgs = run(kc, code)
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors
    return reply, msgs


def results(msgs: list[dict]) -> list[str]:
    return [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"]


def test_aliases_and_sx_in_a_kernel(kc: BlockingKernelClient, tmp_path: Path) -> None:
    ok(kc, f"%cd {tmp_path}")
    ok(kc, "%mkdir made")
    assert (tmp_path / "made").is_dir()
    _, msgs = ok(kc, "%ls -1")
    assert "made" in stdout_of(msgs)
    _, msgs = ok(kc, "%%!\necho one\necho two")
    assert results(msgs) == ["['one', 'two']"]


def test_precision_and_macro_in_a_kernel(kc: BlockingKernelClient) -> None:
    _, msgs = ok(kc, "%precision 2")
    assert results(msgs) == ["'%.2f'"]
    _, msgs = ok(kc, "[3.14159]")
    assert results(msgs) == ["[3.14]"]
    ok(kc, "%precision")
    reply, _ = ok(kc, "hits = []")
    count = reply["content"]["execution_count"]
    ok(kc, "hits.append(1)\nlen(hits)")
    ok(kc, f"%macro -q again {count + 1}")
    _, msgs = ok(kc, "again")
    assert results(msgs) == ["2"]


def test_prun_and_pinfo_page_their_text(kc: BlockingKernelClient) -> None:
    reply, _ = ok(kc, "%prun -l 2 sum(range(100))")
    [page] = [p for p in reply["content"]["payload"] if p["source"] == "page"]
    assert "function calls in" in page["data"]["text/plain"]
    reply, _ = ok(kc, "%pinfo len")
    assert "Signature: len(obj, /)" in reply["content"]["payload"][0]["data"]["text/plain"]


def test_pylab_inline_shows_figures(kc: BlockingKernelClient) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("matplotlib_inline")
    pytest.importorskip("IPython")
    _, msgs = ok(kc, "%pylab inline")
    assert "Populating the interactive namespace from numpy and matplotlib" in stdout_of(msgs)
    _, msgs = ok(kc, "plot(linspace(0, 1, 5));")  # names %pylab imported
    pngs = [
        base64.b64decode(m["content"]["data"]["image/png"])
        for m in msgs
        if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]
    ]
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG")


def test_debug_prompts_through_input_requests(kc: BlockingKernelClient) -> None:
    run(kc, "def broken():\n    inside = 'seen'\n    return 1 / 0\nbroken()")
    msg_id = kc.execute("%debug")
    for command in ("p inside", "q"):
        request = kc.get_stdin_msg(timeout=TIMEOUT)
        assert request["content"]["prompt"] == "(Pdb) "
        kc.input(command)
    assert reply_to(kc.shell_channel, msg_id)["content"]["status"] == "ok"
    out = stdout_of(iopub_until_idle(kc, msg_id))
    assert "-> return 1 / 0" in out and "'seen'" in out


def test_connect_info_names_the_kernels_file_and_how_to_attach(kc: BlockingKernelClient) -> None:
    _, msgs = ok(kc, "%connect_info")
    text = stdout_of(msgs)
    info = json.loads(text.split("\n\n")[0])
    assert (info["shell_port"], info["key"]) == (kc.shell_port, kc.session.key.decode())
    assert f"jupyter console --existing {kc.connection_file}" in text
    assert f"corral console --existing {kc.connection_file}" in text


@pytest.mark.skipif(shutil.which("jupyter-qtconsole") is not None, reason="qtconsole installed")
def test_qtconsole_without_qtconsole_says_what_to_install(kc: BlockingKernelClient) -> None:
    reply, _ = run(kc, "%qtconsole")
    assert reply["content"]["ename"] == "UsageError"
    assert "pip install qtconsole" in reply["content"]["evalue"]
    assert f"jupyter console --existing {kc.connection_file}" in reply["content"]["evalue"]
