"""A notebook of what notebooks written for ipykernel do, for parity tests and benchmarks.

Each cell is ``(source, check)``: ``check`` says how its outputs are compared between
kernels: ``"text"`` compares output types, MIME types and text; ``"shape"`` compares
output types and MIME types only (timings, ids, addresses differ run to run).
"""

from __future__ import annotations

from typing import Any

CELLS: list[tuple[str, str]] = [
    ("x = 1 + 1\nx", "text"),
    # The first pyplot import, no show(): the figure belongs under this cell.
    ("import matplotlib.pyplot as plt\nplt.plot([0, 1]);", "shape"),
    ("print('hello')", "text"),
    (
        "from IPython.display import display, HTML, Markdown, JSON, Latex, Image\n"
        "display(HTML('<b>bold</b>'))",
        "shape",
    ),
    ("Markdown('*emphasis*')", "shape"),
    ("display(JSON({'a': [1, 2]}))", "shape"),
    ("Latex(r'$\\alpha$')", "shape"),
    ("h = display('first', display_id=True)\nh.update('second')", "text"),
    (
        "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')",
        "text",
    ),
    ("ip = get_ipython()\nprint(type(ip).__name__, 'IPKernelApp' in ip.config)", "text"),
    ("import IPython\nprint(IPython.get_ipython() is get_ipython())", "text"),
    ("def f():\n    return get_ipython().user_ns is globals()\nf()", "text"),
    ("%matplotlib", "text"),
    ("%matplotlib inline", "text"),
    ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", "shape"),
    ("plt.plot([3, 2, 1]);", "shape"),
    ("fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.close(fig)\nfig", "shape"),
    ("%config InlineBackend.figure_formats = ['png']", "text"),
    ("%%capture cap\nprint('hidden')\ndisplay(HTML('<i>hidden</i>'))", "text"),
    ("print(cap.stdout, len(cap.outputs))", "text"),
    ("%%bash\necho from bash", "text"),
    ("%%bash\necho failing >&2\nexit 3", "text"),
    ("%%html\n<i>html cell</i>", "shape"),
    ("import ipywidgets as w\ns = w.IntSlider(value=3)\ns", "shape"),
    ("s.value = 5\nprint(s.value)", "text"),
    ("from tqdm.notebook import tqdm\nfor _ in tqdm(range(3)):\n    pass", "shape"),
    (
        "import comm\nc = comm.create_comm(target_name='nobody')\n"
        "print(type(c).__name__ != 'DummyComm')",
        "text",
    ),
    ("%load_ext autoreload\n%autoreload 2", "text"),
    ("%timeit -n 1 -r 2 pass", "shape"),
    (
        "import tempfile, os\n%cd {tempfile.gettempdir()}\nprint(os.getcwd() == "
        "os.path.realpath(tempfile.gettempdir()) or os.getcwd() == tempfile.gettempdir())",
        "shape",
    ),
    ("from tqdm.auto import tqdm as auto_tqdm\nfor _ in auto_tqdm(range(2)):\n    pass", "shape"),
    ("%%script python3\nprint(1 + 1)", "text"),
    ("%%python3\nimport sys; print('from', 'python', file=sys.stderr)", "text"),
    ("%xmode Minimal", "text"),
    ("def g():\n    1 / 0\ng()", "shape"),
    ("%xmode Context", "text"),
    ("sorted(set(%who_ls) & {'fig', 'cap', 's'})", "text"),
    ("%alias_magic tm timeit", "text"),
    ("%config InteractiveShell.ast_node_interactivity = 'all'", "text"),
    ("1\nprint('between')\nx2 = 5\n2", "text"),
    ("%config InteractiveShell.ast_node_interactivity = 'last_expr_or_assign'", "text"),
    ("y2 = 7", "text"),
    ("%config InteractiveShell.ast_node_interactivity = 'last_expr'", "text"),
    ("41 + 1", "text"),
    ("_", "text"),
    ("import sys; print('err', file=sys.stderr)", "text"),
    ("%env CORRAL_NB=bar", "text"),
    ("%env CORRAL_NB", "text"),
    (
        "SVG = __import__('IPython.display', fromlist=['SVG']).SVG\n"
        "SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>')",
        "shape",
    ),
    ("from IPython import display as d\nd.display_markdown('**x**', raw=True)", "shape"),
    (
        "display(HTML('<p>1</p>'), display_id='fixed')\n"
        "display(HTML('<p>2</p>'), display_id='fixed', update=True)",
        "shape",
    ),
    (
        "class SelfShown:\n    def _ipython_display_(self):\n        print('shown by itself')\n"
        "SelfShown()",
        "text",
    ),
    ("get_ipython().run_cell('print(5)')", "shape"),
    ("%precision 3", "text"),
    ("[3.14159, 2.0]", "text"),
    ("%precision", "text"),
    ("3.14159", "text"),
    ("%pprint", "text"),
    ("%pprint", "text"),
    ("x3 = %sx echo one\nx3", "text"),
    ("%%!\necho two\necho three", "text"),
    ("%system echo four", "text"),
    ("%alias parts echo first %s second %s", "text"),
    ("%parts A B", "shape"),  # ipykernel runs shell commands in a pty: \r\n
    ("%unalias parts", "text"),
    ("%set_env CORRAL_NB2=baz", "text"),
    ("pwd", "shape"),
    ("%mkdir -p corral_nb_dir", "text"),
    ("%ls -d corral_nb_dir", "shape"),
    ("%rmdir corral_nb_dir", "text"),
    ("zz1 = zz2 = 1\n%reset_selective -f ^zz1\nprint('zz1' in dir(), 'zz2' in dir())", "text"),
    ("%xdel zz2", "text"),
    ("%psearch zz*", "text"),
    ("%%file corral_nb_file.txt\nhello", "text"),
    ("%cat corral_nb_file.txt\n%rm corral_nb_file.txt", "shape"),
    ("%%HTML\n<b>upper</b>", "shape"),
    ("%autoawait", "text"),
    ("%doctest_mode", "text"),
    ("%doctest_mode", "text"),
    # Pasted from a console or docs, or from inside a function: IPython runs these.
    (">>> p1 = 2\n>>> p1 * 3", "text"),
    ("In [1]: p2 = 4\nIn [2]: for _ in range(1):\n   ...:     print(p2 + 1)\n   ...:", "text"),
    ("    ind = 1\n    ind + 1", "text"),
    # Cells run inside the kernel's running event loop, as under ipykernel.
    ("import asyncio\nasyncio.get_running_loop().is_running()", "text"),
    ("bg_task = asyncio.create_task(asyncio.sleep(0, result='task done'))", "text"),
    ("await bg_task", "text"),
    (
        "async def coro():\n    return 7\nc = coro()\ntry:\n    asyncio.run(c)\n"
        "except RuntimeError as e:\n    print(e)\nfinally:\n    c.close()",
        "text",
    ),
    ("await coro()", "text"),
    # `_i` is the cell before; a failing %%capture cell still keeps what it captured.
    ("'marker'", "text"),
    ("_i", "text"),
    ("%%capture cap_err\nprint('before')\n1 / 0", "shape"),
    ("cap_err.stdout", "text"),
    ("%%capture cap_val\nprint('out')\n1 + 1", "text"),
    ("[o.data for o in cap_val.outputs], cap_val.stdout", "text"),
    # What is written to descriptors 1 and 2 (not through sys.stdout) shows too.
    ("import os\nos.system('echo from os.system')", "text"),
    ("import subprocess\nsubprocess.run('echo from a subprocess', shell=True).returncode", "text"),
    (
        "import multiprocessing as mp\ndef child_says():\n    print('from a forked child')\n"
        "p = mp.get_context('fork').Process(target=child_says)\np.start(); p.join(); p.exitcode",
        "text",
    ),
    (
        "import faulthandler, sys\nfaulthandler.enable()\nfaulthandler.disable()\n"
        "sys.stdout.fileno() > 0",
        "text",
    ),
    # `x = !cmd` gives IPython's list of lines, with its helpers.
    (
        "sl = !printf 'b 2\\na 1\\nc 10\\n'\nprint(type(sl).__name__, sl.s, sl.n.count('\\n'))\n"
        "print(sl.grep('A'), sl.grep('a', prune=True), sl.fields(1), sl.sort(1, nums=True))",
        "text",
    ),
    ("1 / 0", "shape"),
]


def notebook() -> Any:
    """The cells as an nbformat notebook."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source, _ in CELLS]
    return nb


def signature(outputs: list[dict[str, Any]], check: str) -> list[tuple[Any, ...]]:
    """What is compared of a cell's outputs (streams of one name are joined)."""
    sig: list[tuple[Any, ...]] = []
    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            text = out["text"] if check == "text" else ""
            if sig and sig[-1][:2] == ("stream", out["name"]):
                sig[-1] = ("stream", out["name"], sig[-1][2] + text)
            else:
                sig.append(("stream", out["name"], text))
        elif kind == "error":
            sig.append(("error", out["ename"]))
        else:
            data = out.get("data", {})
            plain = data.get("text/plain") if check == "text" else None
            sig.append((kind, tuple(sorted(data)), plain))
    return sig
