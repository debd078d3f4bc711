"""Notebooks as their users write them, run by nbclient on corral's kernel and on ipykernel.

Each test runs one small notebook on both kernels (each in a directory of its own) and
compares what a frontend would store, cell by cell: output types, MIME bundles and their
metadata, execution counts, stream text, error names and values. Where the two kernels
differ on purpose (addresses, timings, ipykernel's pty line ends) only the shape is
compared. What tests/test_notebook_parity.py and tests/test_kernel_ipython_compat.py
already cover is not repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT
from jupyter_helpers import corral_and_ipykernel_specs, run_notebook, stream_text

for _name in ("nbclient", "nbformat", "ipykernel", "matplotlib", "matplotlib_inline", "tqdm"):
    pytest.importorskip(_name)

Cells = list[tuple[str, bool]]  # (source, compare the text too, not only the shape)
Run = Callable[[list[str]], tuple[list[Any], list[Any]]]


@pytest.fixture
def both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run cells on corral's kernel, then on ipykernel; each kernel starts in its own
    directory (files a notebook writes do not meet) and the outputs of both come back."""
    corral_and_ipykernel_specs(tmp_path, monkeypatch)

    def run(cells: list[str]) -> tuple[list[Any], list[Any]]:
        results = []
        for kernel in ("corral", "ipy"):
            work = tmp_path / f"work-{kernel}"
            work.mkdir()
            monkeypatch.chdir(work)
            results.append(run_notebook(kernel, cells, TIMEOUT))
        return results[0], results[1]

    return run


def outline(outputs: list[Any], exact: bool) -> list[tuple[Any, ...]]:
    """What a frontend keeps of a cell's outputs; consecutive writes to one stream are one."""
    sig: list[tuple[Any, ...]] = []
    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            text = out["text"].replace("\r\n", "\n") if exact else ""
            if sig and sig[-1][:2] == ("stream", out["name"]):
                sig[-1] = ("stream", out["name"], sig[-1][2] + text)
            else:
                sig.append(("stream", out["name"], text))
        elif kind == "error":
            sig.append(("error", out["ename"], out["evalue"] if exact else None))
        else:
            data = out["data"]
            plain = data.get("text/plain") if exact else None
            sig.append((kind, sorted(data), dict(out["metadata"]), plain))
    return sig


def differences(cells: Cells, corral: list[Any], ipykernel: list[Any]) -> list[Any]:
    """The cells whose outlines differ between the kernels, with both outlines."""
    return [
        (source, outline(ours, exact), outline(theirs, exact))
        for (source, exact), ours, theirs in zip(cells, corral, ipykernel, strict=True)
        if outline(ours, exact) != outline(theirs, exact)
    ]


def test_a_plotting_and_display_notebook_matches_ipykernel(both: Run) -> None:
    cells: Cells = [
        ("%matplotlib inline\nimport matplotlib.pyplot as plt", True),
        ("plt.plot([1, 3, 2])\nplt.title('line')\nplt.show()\nplt.get_fignums()", False),
        ("fig, ax = plt.subplots()\nax.bar([1, 2], [3, 4]);", False),
        ("print(plt.get_fignums())", True),  # closed after the cell that drew them
        (
            "from IPython.display import display, HTML, JSON, Image, Markdown, clear_output\n"
            "for i in range(3):\n    clear_output(wait=True)\n    print('step', i)\n"
            "    display(HTML(f'<b>{i}</b>'))",
            True,
        ),
        ("h = display(Markdown('*a*'), display_id=True)\nh.update(Markdown('*b*'))", True),
        ("JSON({'rows': [1, 2]}, expanded=True)", True),
        (
            "import base64\npng = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAf"
            "FcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==')\n"
            "Image(png, width=40)",
            True,
        ),
        ("display(HTML('<i>x</i>'), metadata={'isolated': True})", True),
        ("from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='work'):\n    pass", False),
        (
            "import threading\nready = threading.Event()\n"
            "def worker():\n    ready.wait()\n    print('from the thread')\n"
            "t = threading.Thread(target=worker)\nt.start()",
            True,
        ),
        ("ready.set(); t.join()\nprint('joined')", True),
        ("10", True),
        ("20", True),
        ("print(_, __, Out[13], _13, In[13])", True),
        ("print('héllo 🐍 ✓')\n'日本語 🎉'", True),
        ("print('x' * 50_000)", True),
    ]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert "image/png" in corral[1][0]["data"]
    assert "image/png" in corral[2][0]["data"]
    assert stream_text(corral[3]) == "[]\n"
    assert corral[12][-1]["execution_count"] == 13


def test_errors_exits_and_await_match_ipykernel(both: Run) -> None:
    cells: Cells = [
        ("import asyncio\nasync def three():\n    await asyncio.sleep(0)\n    return 3", True),
        ("await three()", True),
        ("coro = three()\ntry:\n    asyncio.run(coro)\nfinally:\n    coro.close()", True),
        ("raise KeyboardInterrupt", True),
        ("print('alive')", True),
        ("print(__name__)\n__file__", True),
        ("def bad():\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n"
         "        raise ValueError('wrapped') from e\nbad()", True),
        ("def f(:\n    pass", False),  # the evalue names each kernel's cell file
        ("x = input('name? ')", False),  # both refuse; the wording is each kernel's
    ]  # fmt: skip
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert corral[2][0]["evalue"] == "asyncio.run() cannot be called from a running event loop"
    assert corral[8][0]["ename"] == "StdinNotImplementedError"


def test_sys_exit_fails_the_cell_and_the_kernel_goes_on(both: Run) -> None:
    """ipykernel adds a warning on stderr (how to leave IPython); the error is the same."""
    cells = [
        "import sys\nprint('before')\nsys.exit(3)",
        "raise SystemExit('bye')",
        "print('after')",
    ]
    corral, ipykernel = both(cells)
    for outputs in (corral, ipykernel):
        assert [o["text"] for o in outputs[0] if o.get("name") == "stdout"] == ["before\n"]
        errors = [[(o["ename"], o["evalue"]) for o in cell if "ename" in o] for cell in outputs]
        assert errors == [[("SystemExit", "3")], [("SystemExit", "bye")], []]
        assert stream_text(outputs[2]) == "after\n"


def test_warnings_show_on_stderr_once_per_cell(both: Run) -> None:
    """A warning shows once in the cell that raises it, and again when a later cell (or
    the same cell run again) raises it, as under ipykernel: the re-run cell's old output
    is gone, so a warning shown once per process would be lost."""
    cells = [
        "import warnings\ndef careful():\n    warnings.warn('careful', UserWarning)\n"
        "careful()\ncareful()",
        "careful()",
        "careful()",
        "warnings.warn('old', DeprecationWarning)",
    ]
    corral, ipykernel = both(cells)
    for outputs in (corral, ipykernel):
        for cell in outputs[:3]:
            assert [o["name"] for o in cell] == ["stderr"]
            assert stream_text(cell).count("UserWarning: careful") == 1
        assert "DeprecationWarning: old" in stream_text(outputs[3])


def test_store_keeps_a_variable_without_loading_the_extension(both: Run) -> None:
    """``%store`` works in a fresh notebook: ipykernel loads storemagic at start."""
    cells: Cells = [
        ("kept = {'a': [1, 2]}\n%store kept", True),
        ("del kept\n%store -r kept\nkept", True),
        ("%store", True),
        ("%store -d kept\n%store -r kept", True),
        ("%alias qa_say echo said %s\n%store qa_say", True),
    ]
    # IPython 9 stores the alias but does not find it again (``no stored variable or
    # alias``): that cell is corral's alone.
    restore = "%unalias qa_say\n%store -r qa_say\n%qa_say it"
    corral, ipykernel = both([source for source, _ in cells] + [restore])
    assert differences(cells, corral[:-1], ipykernel[:-1]) == []
    assert stream_text(corral[0]) == "Stored 'kept' (dict)\n"
    assert corral[1][0]["data"]["text/plain"] == "{'a': [1, 2]}"
    assert stream_text(corral[5]) == "said it\n"  # an alias is stored and restored too


def test_kernel_shell_is_the_shell_libraries_reach(both: Run) -> None:
    """Libraries written for ipykernel reach the shell as ``get_ipython().kernel.shell``."""
    cell = "k = get_ipython().kernel\nprint(k.shell is get_ipython(), k.shell.user_ns is globals())"
    corral, ipykernel = both([cell])
    assert stream_text(corral[0]) == stream_text(ipykernel[0]) == "True True\n"


def test_shell_commands_files_and_autoreload_match_ipykernel(both: Run) -> None:
    cells: Cells = [
        ("!echo hi there", True),
        ("%%bash\necho out", True),  # stdout and stderr of one script race: apart
        ("%%bash\necho err >&2", True),
        ("%%writefile qa_mod.py\ndef val():\n    return 1", True),
        ("%load_ext autoreload\n%autoreload 2\nimport qa_mod\nqa_mod.val()", True),
        (
            "import os, pathlib\np = pathlib.Path('qa_mod.py')\n"
            "p.write_text('def val():\\n    return 2\\n')\n"
            "later = p.stat().st_mtime + 10\nos.utime(p, (later, later))",
            True,
        ),
        ("qa_mod.val()", True),
        ("%%time\nsum(range(10))", False),
        ("%timeit -n 1 -r 1 sum(range(10))", False),
        ("def hello(a, b=2):\n    '''Say hello.'''\nhelp(hello)", True),
        ("%env QA_NB=1", True),
        ("%env QA_NB", True),
        ("import os\nos.makedirs('sub', exist_ok=True)\n%cd sub", False),
        ("os.path.basename(os.getcwd())", True),
        ("%who", False),
    ]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert corral[6][0]["data"]["text/plain"] == "2"  # the edited module was reloaded


def test_run_a_notebook_runs_its_code_cells(both: Run) -> None:
    """``%run helpers.ipynb``: notebooks share code this way; its cells run in the
    notebook's namespace, magics and shell escapes included, and an error stops it."""
    write = (
        "import nbformat\ndef save(name, *cells):\n    nb = nbformat.v4.new_notebook()\n"
        "    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]\n"
        "    nb.cells.insert(1, nbformat.v4.new_markdown_cell('# notes'))\n"
        "    nbformat.write(nb, name)\n"
        "save('helpers.ipynb', 'def double(x):\\n    return 2 * x\\nprint(\"loaded\")\\n7',\n"
        "     '%%capture cap\\nprint(\"captured\")', 'shelled = !echo from shell')\n"
        "save('failing.ipynb', 'print(\"first\")', '1 / 0', 'print(\"never\")')"
    )
    cells: Cells = [
        (write, True),
        ("%run helpers.ipynb\ndouble(21), cap.stdout, shelled", True),
        ("%run failing.ipynb", False),  # ipykernel shows its error twice
    ]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells[:2], corral[:2], ipykernel[:2]) == []
    assert stream_text(corral[1]) == "loaded\n"
    assert corral[1][-1]["data"]["text/plain"] == "(42, 'captured\\n', ['from shell'])"
    for outputs in (corral, ipykernel):
        assert stream_text(outputs[2]) == "first\n"
        assert {o["ename"] for o in outputs[2] if "ename" in o} == {"ZeroDivisionError"}


def test_error_notes_and_self_rendered_tracebacks_show_as_in_ipykernel(both: Run) -> None:
    """Notes added to an error (``add_note``) show under its line; an error that renders
    its own traceback (``_render_traceback_``, as ipyparallel's remote errors) shows that."""
    cells = [
        "e = ValueError('bad value')\ne.add_note('while reading row 3')\nraise e",
        "class Remote(Exception):\n    def _render_traceback_(self):\n"
        "        return ['remote line 1', 'remote line 2']\nraise Remote('x')",
    ]
    corral, ipykernel = both(cells)
    for outputs in (corral, ipykernel):
        noted = outputs[0][0]
        assert (noted["ename"], noted["evalue"]) == ("ValueError", "bad value")
        assert "\n".join(noted["traceback"]).endswith("bad value\nwhile reading row 3")
        assert outputs[1][0]["traceback"] == ["remote line 1", "remote line 2"]


def test_a_failing_repr_is_reported_not_hidden(both: Run) -> None:
    """A cell whose value has a broken ``__repr__`` says so (ipykernel shows the error;
    corral says which method raised and shows the default repr), once."""
    cells = [
        "class Broken:\n    def __repr__(self):\n        raise ValueError('repr broke')\nBroken()",
        "import IPython\nBroken()",
    ]
    corral, ipykernel = both(cells)
    for outputs in (corral, ipykernel):
        for cell in outputs:
            said = [o.get("evalue", "") + o.get("text", "") for o in cell]
            assert sum("repr broke" in text for text in said) == 1, cell


def test_figures_show_after_ipython_is_first_imported_under_capture(both: Run) -> None:
    """A notebook whose first IPython import is inside ``%%capture`` still plots inline
    afterwards (the figures were lost, and ``%matplotlib inline`` raised TraitError)."""
    cells: Cells = [
        ("%%capture cap\nfrom IPython.display import HTML\ndisplay(HTML('<b>k</b>'))", True),
        ("len(cap.outputs)", True),
        ("import matplotlib.pyplot as plt\nplt.plot([1]);", False),
        ("%matplotlib inline\nplt.plot([2]);", False),
    ]  # fmt: skip
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert "image/png" in corral[2][0]["data"]
    assert "image/png" in corral[3][0]["data"]


def test_history_last_lines_are_those_before_the_running_one(both: Run) -> None:
    cells: Cells = [("a = 1", True), ("b = 2", True), ("%history -l 2", True)]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert stream_text(corral[2]) == "a = 1\nb = 2\n"


def test_autosave_from_classic_notebooks_runs(both: Run) -> None:
    """``%autosave`` opens many notebooks written for the classic Notebook; a failing
    first cell stops a whole run (nbclient, "Run All")."""
    cells: Cells = [("%autosave 60", True), ("%autosave 0", True)]
    # A usage error is an error output here, a stderr line under ipykernel: not compared.
    corral, ipykernel = both([source for source, _ in cells] + ["%autosave soon"])
    assert differences(cells, corral[:2], ipykernel[:2]) == []
    assert corral[2][0]["evalue"] == "%autosave requires an integer, got 'soon'"
    assert stream_text(corral[0]) == "Autosaving every 60 seconds\n"
    assert corral[0][0]["data"] == {
        "application/javascript": "IPython.notebook.set_autosave_interval(60000)"
    }


def test_script_cells_keep_their_output_in_variables(both: Run) -> None:
    """``%%bash --out NAME`` and its kin, as notebooks use them to read a tool's output."""
    cells: Cells = [
        ("%%bash --out listing --err problems\necho found; echo warned >&2", True),
        ("listing, problems", True),
        ("%%bash --no-raise-error\necho failing; exit 3", True),
        ('%%script bash -s hello --out said\necho "$1"', True),
        ("said", True),
    ]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert corral[1][0]["data"]["text/plain"] == "('found\\n', 'warned\\n')"
    assert corral[4][0]["data"]["text/plain"] == "'hello\\n'"


def test_cell_magics_get_the_body_with_its_final_newline(both: Run) -> None:
    """What a user-defined cell magic is handed, and what ``%%html``-like cells show."""
    cells: Cells = [
        (
            "from IPython.core.magic import register_cell_magic\n@register_cell_magic\n"
            "def upper(line, cell):\n    return cell.upper()",
            True,
        ),
        ("%%upper\nabc", True),
        ("%%markdown\n# Title", False),
        ("%%javascript\nconsole.log(1)", False),  # text/plain names each kernel's class
    ]
    corral, ipykernel = both([source for source, _ in cells])
    assert differences(cells, corral, ipykernel) == []
    assert corral[1][0]["data"]["text/plain"] == "'ABC\\n'"
    for outputs in (corral, ipykernel):
        assert outputs[2][0]["data"]["text/markdown"] == "# Title\n"
        assert outputs[3][0]["data"]["application/javascript"] == "console.log(1)\n"
