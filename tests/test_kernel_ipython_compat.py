"""Notebook code written for ipykernel runs unchanged on a real corral kernel process.

Driven by jupyter_client: ``get_ipython()``, ``IPython.display``, inline matplotlib,
comms both ways and ipywidgets model sync, ``usage_request`` and kernel_info.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("IPython")
from jupyter_client import BlockingKernelClient  # noqa: E402
from test_kernel_protocol import (  # noqa: E402
    connect,
    control_request,
    iopub_until_idle,
    kernel_client,
    reply_to,
    run,
    start_kernel,
    stdout_of,
    stop,
    types,
)

PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def kc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockingKernelClient]:
    with kernel_client(tmp_path_factory.mktemp("compat")) as client:
        yield client


def ok(kc: BlockingKernelClient, code: str) -> list[dict]:
    reply, msgs = run(kc, code)
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors
    return msgs


def of_type(msgs: list[dict], msg_type: str) -> list[dict]:
    return [m["content"] for m in msgs if m["msg_type"] == msg_type]


# --------------------------------------------------------------------- get_ipython


def test_ipython_is_not_imported_until_user_code_asks(kc: BlockingKernelClient) -> None:
    msgs = ok(kc, "import sys; print(sorted(m for m in sys.modules if m.startswith('IPython')))")
    assert stdout_of(msgs).strip() == "[]"
    msgs = ok(kc, "ip = get_ipython(); print(type(ip).__name__, ip.user_ns is globals())")
    assert stdout_of(msgs).strip() == "ZMQInteractiveShell True"
    msgs = ok(kc, "print('IPython' in sys.modules, 'IPKernelApp' in ip.config)")
    assert stdout_of(msgs).strip() == "False True"


def test_ipython_get_ipython_is_the_same_shell(kc: BlockingKernelClient) -> None:
    msgs = ok(
        kc,
        "import IPython\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = IPython.get_ipython()\n"
        "print(sh is get_ipython(), isinstance(sh, InteractiveShell), sh.kernel is not None)",
    )
    assert stdout_of(msgs).strip() == "True True True"


def test_shell_api_libraries_use(kc: BlockingKernelClient) -> None:
    ok(
        kc,
        "ip = get_ipython()\n"
        "def shout(line):\n"
        "    return line.upper()\n"
        "ip.register_magic_function(shout)\n"
        "def twice(line, cell):\n"
        "    return cell * 2\n"
        "ip.register_magic_function(twice, 'cell')\n"
        "from IPython.core.magic import register_line_magic\n"
        "@register_line_magic\n"
        "def hello(line):\n"
        "    return 'hello ' + line\n"
        "seen = []\n"
        "ip.events.register('pre_run_cell', lambda info: seen.append(('pre', info.raw_cell)))\n"
        "ip.events.register('post_run_cell', lambda r: seen.append(('post', r.success)))\n",
    )
    reply, msgs = run(kc, "%shout abc")
    assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "'ABC'"
    reply, msgs = run(kc, "%%twice\nxy")
    # A cell magic's body ends with a newline, as IPython hands it over.
    assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "'xy\\nxy\\n'"
    msgs = ok(
        kc,
        "print(ip.run_line_magic('hello', 'there'), 'shout' in ip.magics_manager.magics['line'])",
    )
    assert stdout_of(msgs).strip() == "hello there True"
    msgs = ok(kc, "1 / 0 if False else None")
    msgs = ok(kc, "print(seen[-4:])")
    assert stdout_of(msgs).strip() == (
        "[('post', True), ('pre', '1 / 0 if False else None'), ('post', True), "
        "('pre', 'print(seen[-4:])')]"
    )
    reply, _ = run(kc, "raise ValueError('x')")
    assert reply["content"]["status"] == "error"
    msgs = ok(kc, "print(seen[-2])")
    assert stdout_of(msgs).strip() == "('post', False)"


def test_a_fresh_kernels_first_cells(tmp_path: Path) -> None:
    """What a notebook's first cells do before anything imported IPython: the rest of
    IPython's shell API is there on first use, a figure drawn by the cell that first
    imports pyplot shows under that cell, and callbacks a cell registers run after it."""
    pytest.importorskip("matplotlib_inline")
    proc, cf = start_kernel(tmp_path)
    client = connect(cf)
    try:
        msgs = ok(
            client,
            "import sys\nbefore = 'IPython' in sys.modules\nip = get_ipython()\n"
            "class T:\n    pass\n"
            "ip.display_formatter.formatters['text/html'].for_type(T, lambda o: '<i>T</i>')\n"
            "print(before, ip.has_trait('kernel'))\nT()",
        )
        assert stdout_of(msgs).strip() == "False True"
        assert of_type(msgs, "execute_result")[0]["data"]["text/html"] == "<i>T</i>"
        reply, msgs = run(client, "get_ipython().no_such_attribute")
        assert reply["content"]["ename"] == "AttributeError"
        msgs = ok(client, "import matplotlib.pyplot as plt\nplt.plot([1, 2])")
        assert len(_pngs(msgs)) == 1  # shown by this cell, not the next
        msgs = ok(client, "ip.events.register('post_run_cell', lambda r: print('ran', r.success))")
        assert stdout_of(msgs).strip() == "ran True"
    finally:
        client.stop_channels()
        stop(proc)


def test_interactivity_set_on_ipythons_class(kc: BlockingKernelClient) -> None:
    """The notebook idiom ``InteractiveShell.ast_node_interactivity = "all"``."""
    ok(
        kc,
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.ast_node_interactivity = 'all'",
    )
    try:
        msgs = ok(kc, "'a'\nprint('b')\n'c'")
        shown = [
            m["content"]["data"]["text/plain"] if m["msg_type"] == "execute_result" else "print"
            for m in msgs
            if m["msg_type"] in ("execute_result", "stream")
        ]
        assert shown == ["'a'", "print", "'c'"]
    finally:
        ok(kc, "InteractiveShell.ast_node_interactivity = 'last_expr'")
    assert len(of_type(ok(kc, "'a'\n'c'"), "execute_result")) == 1


def test_load_ext_and_autoreload(kc: BlockingKernelClient, tmp_path: Path) -> None:
    mod = tmp_path / f"corralmod_{uuid.uuid4().hex[:6]}.py"
    mod.write_text("def f():\n    return 1\n")
    ext = tmp_path / "corral_test_ext.py"
    ext.write_text(
        "def load_ipython_extension(ip):\n"
        "    ip.user_ns['ext_loaded'] = ip.user_ns.get('ext_loaded', 0) + 1\n"
        "def unload_ipython_extension(ip):\n"
        "    ip.user_ns['ext_loaded'] -= 1\n"
    )
    ok(kc, f"import sys; sys.path.insert(0, {str(tmp_path)!r})")
    ok(kc, "%load_ext corral_test_ext")
    msgs = ok(kc, "%load_ext corral_test_ext\nprint(ext_loaded)")
    assert "already loaded" in stdout_of(msgs) and stdout_of(msgs).strip().endswith("1")
    msgs = ok(kc, "%reload_ext corral_test_ext\nprint(ext_loaded)")
    assert stdout_of(msgs).strip() == "1"
    msgs = ok(kc, "%unload_ext corral_test_ext\nprint(ext_loaded)")
    assert stdout_of(msgs).strip() == "0"
    ok(kc, f"%load_ext autoreload\n%autoreload 2\nimport {mod.stem} as m")
    assert stdout_of(ok(kc, "print(m.f())")).strip() == "1"
    mod.write_text("def f():\n    return 2\n\n")
    import os

    os.utime(mod, (mod.stat().st_mtime + 5, mod.stat().st_mtime + 5))
    assert stdout_of(ok(kc, "print(m.f())")).strip() == "2"


# --------------------------------------------------------------------- IPython.display


def test_ipython_display_classes_give_rich_display_data(kc: BlockingKernelClient) -> None:
    msgs = ok(
        kc,
        "from IPython.display import display, HTML, Markdown, JSON, Latex, Image\n"
        "display(HTML('<b>x</b>'), Markdown('*m*'), JSON({'a': 1}), Latex('$x$'))\n"
        f"display(Image(data={base64.b64decode(_PNG)!r}))",
    )
    shown = of_type(msgs, "display_data")
    assert [sorted(d["data"]) for d in shown] == [
        ["text/html", "text/plain"],
        ["text/markdown", "text/plain"],
        ["application/json", "text/plain"],
        ["text/latex", "text/plain"],
        ["image/png", "text/plain"],
    ]
    assert shown[0]["data"]["text/html"] == "<b>x</b>"
    assert shown[2]["data"]["application/json"] == {"a": 1}
    assert base64.b64decode(shown[4]["data"]["image/png"]).startswith(PNG_MAGIC)


def test_display_handle_update_and_clear_output(kc: BlockingKernelClient) -> None:
    msgs = ok(
        kc,
        "from IPython.display import display, clear_output\n"
        "h = display('first', display_id=True)\n"
        "h.update('second')\n"
        "clear_output(wait=True)\n"
        "print(type(h).__name__)",
    )
    assert types(msgs)[2:5] == ["display_data", "update_display_data", "clear_output"]
    first, second, clear = msgs[2]["content"], msgs[3]["content"], msgs[4]["content"]
    assert first["transient"]["display_id"] == second["transient"]["display_id"]
    assert second["data"]["text/plain"] == "'second'"
    assert clear == {"wait": True}
    assert stdout_of(msgs).strip() == "DisplayHandle"


def test_corral_display_works_under_ipykernel(tmp_path: Path) -> None:
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        msg_id = kc.execute(
            "from corral.display import display, HTML, clear_output\n"
            "h = display(HTML('<i>c</i>'), display_id='d1')\n"
            "h.update(HTML('<i>d</i>'))\n"
            "clear_output()"
        )
        msgs = iopub_until_idle(kc, msg_id)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert types(msgs)[2:5] == ["display_data", "update_display_data", "clear_output"]
    assert msgs[2]["content"]["data"]["text/html"] == "<i>c</i>"
    assert msgs[3]["content"]["transient"] == {"display_id": "d1"}


# --------------------------------------------------------------------- matplotlib


def _pngs(msgs: list[dict], msg_type: str = "display_data") -> list[bytes]:
    return [
        base64.b64decode(c["data"]["image/png"])
        for c in of_type(msgs, msg_type)
        if "image/png" in c["data"]
    ]


def test_matplotlib_is_inline_by_default(kc: BlockingKernelClient) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("matplotlib_inline")
    msgs = ok(kc, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    pngs = _pngs(msgs)
    assert len(pngs) == 1 and pngs[0].startswith(PNG_MAGIC)
    msgs = ok(kc, "plt.plot([3, 2, 1]);")  # drawn, no show(): shown after the cell
    assert len(_pngs(msgs)) == 1
    msgs = ok(kc, "import matplotlib\nprint(matplotlib.get_backend())")
    assert "inline" in stdout_of(msgs)


def test_figure_as_last_expression_and_figure_formats(kc: BlockingKernelClient) -> None:
    pytest.importorskip("matplotlib_inline")
    ok(kc, "%matplotlib inline")
    msgs = ok(
        kc,
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([1, 2]); plt.close(fig)\nfig",
    )
    assert len(_pngs(msgs, "execute_result")) == 1
    ok(kc, "%config InlineBackend.figure_formats = ['svg']")
    msgs = ok(kc, "plt.plot([1, 2]); plt.show()")
    svgs = [c["data"] for c in of_type(msgs, "display_data") if "image/svg+xml" in c["data"]]
    assert len(svgs) == 1 and "<svg" in svgs[0]["image/svg+xml"]
    ok(kc, "%config InlineBackend.figure_formats = ['png']")


def test_matplotlib_widget_gives_ipympl_figures(kc: BlockingKernelClient) -> None:
    """``%matplotlib widget``: ipympl's interactive canvas, a widget over the kernel's comms."""
    pytest.importorskip("ipympl")
    msgs = ok(kc, "%matplotlib widget\nimport matplotlib.pyplot as plt\nprint(plt.get_backend())")
    assert "ipympl" in stdout_of(msgs)
    try:
        msgs = ok(kc, "fig = plt.figure()\nplt.plot([1, 2]);")
        opened = of_type(msgs, "comm_open")
        models = [c["data"]["state"].get("_model_name") for c in opened]
        assert "MPLCanvasModel" in models
        shown = of_type(msgs, "display_data")
        assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    finally:
        ok(kc, "%matplotlib inline")
    msgs = ok(kc, "plt.plot([2, 1]); plt.show()")
    assert len(_pngs(msgs)) == 1  # back to inline images
    reply, _ = run(kc, "%matplotlib qt")
    assert reply["content"]["ename"] == "UsageError"  # no GUI event loop in a kernel


# --------------------------------------------------------------------- comms


def _comm_msgs(kc: BlockingKernelClient, msg_id: str) -> list[dict]:
    return [m for m in iopub_until_idle(kc, msg_id) if m["msg_type"].startswith("comm_")]


def test_frontend_opened_comm_with_registered_target(kc: BlockingKernelClient) -> None:
    ok(
        kc,
        "import comm\n"
        "got = []\n"
        "def target(c, msg):\n"
        "    got.append(('open', msg['content']['data']))\n"
        "    @c.on_msg\n"
        "    def _(m):\n"
        "        got.append(('msg', m['content']['data']))\n"
        "        c.send({'echo': m['content']['data']})\n"
        "        print('handled')\n"
        "    c.on_close(lambda m: got.append(('close', m['content']['data'])))\n"
        "comm.get_comm_manager().register_target('corral-test', target)",
    )
    comm_id = uuid.uuid4().hex
    msg = kc.session.msg(
        "comm_open", {"comm_id": comm_id, "target_name": "corral-test", "data": {"a": 1}}
    )
    kc.shell_channel.send(msg)
    assert _comm_msgs(kc, msg["header"]["msg_id"]) == []  # not closed: the target exists
    info = kc.comm_info("corral-test")
    assert reply_to(kc.shell_channel, info)["content"]["comms"] == {
        comm_id: {"target_name": "corral-test"}
    }
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"x": 2}})
    kc.shell_channel.send(msg)
    all_msgs = iopub_until_idle(kc, msg["header"]["msg_id"])
    echoed = [m["content"] for m in all_msgs if m["msg_type"] == "comm_msg"]
    assert echoed == [{"comm_id": comm_id, "data": {"echo": {"x": 2}}}]
    assert stdout_of(all_msgs) == "handled\n"
    msg = kc.session.msg("comm_close", {"comm_id": comm_id, "data": {"bye": 1}})
    kc.shell_channel.send(msg)
    iopub_until_idle(kc, msg["header"]["msg_id"])
    msgs = ok(kc, "print(got)")
    assert stdout_of(msgs).strip() == (
        "[('open', {'a': 1}), ('msg', {'x': 2}), ('close', {'bye': 1})]"
    )


def test_unknown_target_is_closed(kc: BlockingKernelClient) -> None:
    comm_id = uuid.uuid4().hex
    msg = kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "nobody", "data": {}})
    kc.shell_channel.send(msg)
    closes = [m for m in _comm_msgs(kc, msg["header"]["msg_id"]) if m["msg_type"] == "comm_close"]
    assert [m["content"]["comm_id"] for m in closes] == [comm_id]


def test_kernel_side_create_comm(kc: BlockingKernelClient) -> None:
    reply, msgs = run(
        kc,
        "import comm\n"
        "c = comm.create_comm(target_name='corral-k', data={'hi': 1})\n"
        "c.send({'n': 1}, buffers=[b'raw'])\n"
        "c.close()\n"
        "print(type(c).__name__)",
    )
    got = [m for m in msgs if m["msg_type"].startswith("comm_")]
    assert [m["msg_type"] for m in got] == ["comm_open", "comm_msg", "comm_close"]
    assert got[0]["content"]["target_name"] == "corral-k"
    assert got[0]["content"]["data"] == {"hi": 1}
    assert got[1]["content"]["data"] == {"n": 1} and bytes(got[1]["buffers"][0]) == b"raw"
    assert stdout_of(msgs).strip() == "KernelComm"


def test_ipywidgets_sync_both_ways(kc: BlockingKernelClient) -> None:
    pytest.importorskip("ipywidgets")
    reply, msgs = run(
        kc,
        "import ipywidgets as w\n"
        "s = w.IntSlider(value=3)\n"
        "changes = []\n"
        "s.observe(lambda ch: changes.append(ch['new']), 'value')\n"
        "s",
    )
    assert reply["content"]["status"] == "ok"
    opens = [m["content"] for m in msgs if m["msg_type"] == "comm_open"]
    slider = [o for o in opens if o["data"]["state"].get("_model_name") == "IntSliderModel"]
    assert len(slider) == 1 and slider[0]["data"]["state"]["value"] == 3
    model_id = slider[0]["comm_id"]
    result = of_type(msgs, "execute_result")[0]["data"]
    assert (
        json.loads(json.dumps(result))["application/vnd.jupyter.widget-view+json"]["model_id"]
        == model_id
    )
    msg = kc.session.msg(
        "comm_msg",
        {"comm_id": model_id, "data": {"method": "update", "state": {"value": 42}}},
    )
    kc.shell_channel.send(msg)
    iopub_until_idle(kc, msg["header"]["msg_id"])
    msgs = ok(kc, "print(s.value, changes)")
    assert stdout_of(msgs).strip() == "42 [42]"
    msgs = ok(kc, "s.value = 7")
    updates = [
        m["content"]["data"]
        for m in msgs
        if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == model_id
    ]
    assert {"method": "update", "state": {"value": 7}, "buffer_paths": []} in updates


def test_tqdm_notebook_bar_moves(kc: BlockingKernelClient) -> None:
    pytest.importorskip("ipywidgets")
    msgs = ok(kc, "from tqdm.notebook import tqdm\nfor i in tqdm(range(3)):\n    pass")
    values = [
        m["content"]["data"]["state"]["value"]
        for m in msgs
        if m["msg_type"] == "comm_msg" and "value" in m["content"]["data"].get("state", {})
    ]
    numbers = [v for v in values if isinstance(v, (int, float))]
    assert numbers and numbers[-1] == 3  # the progress bar's model reached the end


# --------------------------------------------------------------------- control channel


def test_usage_request(kc: BlockingKernelClient) -> None:
    reply = control_request(kc, "usage_request")
    content = reply["content"]
    assert reply["msg_type"] == "usage_reply"
    assert content["kernel_memory"] > 0 and content["cpu_count"] >= 1
    assert set(content["host_virtual_memory"]) >= {"total", "available"}
    assert isinstance(content["kernel_cpu"], float)


def test_kernel_info_features(kc: BlockingKernelClient) -> None:
    reply = control_request(kc, "kernel_info_request")
    content = reply["content"]
    assert content["language_info"]["pygments_lexer"] == "ipython3"
    assert "kernel usage" in content["supported_features"]
    assert len(content["help_links"]) > 1


_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5Er"
    "kJggg=="
)


def test_unsupported_request_gets_an_error_reply(kc: BlockingKernelClient) -> None:
    reply = control_request(kc, "create_subshell_request")
    assert reply["msg_type"] == "create_subshell_reply"
    assert reply["content"]["status"] == "error"
    assert "create_subshell_request" in reply["content"]["evalue"]


def test_output_widget_captures_by_parent_msg_id(kc: BlockingKernelClient) -> None:
    pytest.importorskip("ipywidgets")
    reply, msgs = run(
        kc,
        "import ipywidgets as w\nout = w.Output()\nwith out:\n    print('inside')\nout",
    )
    assert reply["content"]["status"] == "ok"
    msg_id = reply["parent_header"]["msg_id"]
    states = [m["content"]["data"].get("state", {}) for m in msgs if m["msg_type"] == "comm_msg"]
    assert {"msg_id": msg_id} in states  # the frontend routes this cell's output to `out`
    assert stdout_of(msgs) == "inside\n"
