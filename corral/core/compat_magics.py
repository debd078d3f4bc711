"""Magics notebooks written for IPython expect: %pip, %config, %load_ext, %matplotlib, ...

Registered in the same registry as every other magic (:mod:`.builtin_magics` calls
:func:`register_compat_magics`), so ``%lsmagic`` lists them and plugins may replace them.
Those that act on IPython's objects (``%config``, ``%matplotlib``, extensions) go through
``get_ipython()``'s shell (:mod:`.ipython_shell`) and import IPython or matplotlib only
when they run.
"""

from __future__ import annotations

import sys
from typing import Any

from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["enable_matplotlib", "register_compat_magics"]

hide_from_tracebacks(__file__)

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# ipympl's interactive figures: ipywidgets over the kernel's comms, no GUI event loop.
WIDGET_BACKEND = "module://ipympl.backend_nbagg"


def _shell(interp: Any) -> Any:
    from corral.core.ipython_shell import shell_for

    return shell_for(interp)


# ------------------------------------------------------------------ packages


def pip_magic(interp: Any, line: str) -> None:
    """%pip install PACKAGE...: run pip in the kernel's own Python environment.

    Unlike ``!pip``, this always installs for the interpreter running the kernel.
    A newly installed package may need a kernel restart if an older version was imported.
    """
    import shlex

    from corral.core.builtin_magics import system

    if not line.strip():
        raise UsageError("usage: %pip install PACKAGE... (any pip command)")
    system(interp, f"{shlex.quote(sys.executable)} -m pip {line}")
    if line.split()[0] in ("install", "uninstall"):
        print("Note: you may need to restart the kernel to use updated packages.")


# ------------------------------------------------------------------ configuration


#: The names ``%config`` reaches the shell by: IPython's class and ipykernel's.
_SHELL_SECTIONS = ("InteractiveShell", "ZMQInteractiveShell")


def config_magic(interp: Any, line: str) -> Any:
    """%config Class.trait = value: configure IPython-style configurables.

    ``%config`` alone lists the configurable classes; ``%config Class`` shows its options,
    e.g. ``%config InlineBackend.figure_formats = ['svg']``.
    """
    shell = _shell(interp)
    line = line.strip()
    configurables = [c for c in shell.configurables if c is not shell]
    if not line:
        names = sorted({type(c).__name__ for c in configurables})
        print("Available objects for config:\n    " + "\n    ".join(names))
        return None
    if "=" not in line:
        for c in configurables:
            if type(c).__name__ == line:
                help_text = getattr(type(c), "class_get_help", None)
                print(help_text(c) if help_text else repr(c))
                return None
        raise UsageError(f"Invalid config statement: {line!r}; no configurable named {line!r}")
    from traitlets.config import Config

    target, _, expression = line.partition("=")
    section, _, trait = target.strip().partition(".")
    if not section.isidentifier() or not trait.isidentifier():
        raise UsageError(f"Invalid config statement: {line!r} (expected Class.trait = value)")
    value = eval(expression, interp.user_ns)
    config = Config()
    config[section] = Config({trait: value})
    shell.config.merge(config)
    if section in _SHELL_SECTIONS and isinstance(
        getattr(type(shell), trait, None), property
    ):  # the shell's own settings: %config InteractiveShell.ast_node_interactivity = 'all'
        setattr(shell, trait, value)
    for c in configurables:
        updater = getattr(c, "update_config", None)
        if updater is not None:
            updater(config)
    return None


# ------------------------------------------------------------------ extensions


def _ext_name(line: str, magic: str) -> str:
    name = line.strip()
    if not name:
        raise UsageError(f"%{magic} needs a module name")
    return name


def load_ext_magic(interp: Any, line: str) -> None:
    """%load_ext MODULE: load an IPython extension (its ``load_ipython_extension(ip)``)."""
    name = _ext_name(line, "load_ext")
    result = _shell(interp).extension_manager.load_extension(name)
    if result == "already loaded":
        print(f"The {name} extension is already loaded. To reload it, use:\n  %reload_ext {name}")
    elif result == "no load function":
        print(f"The {name} module is not an IPython extension.")


def unload_ext_magic(interp: Any, line: str) -> None:
    """%unload_ext MODULE: unload an extension (its ``unload_ipython_extension(ip)``)."""
    name = _ext_name(line, "unload_ext")
    result = _shell(interp).extension_manager.unload_extension(name)
    if result == "no unload function":
        print(f"The {name} extension doesn't define how to unload it.")
    elif result == "not loaded":
        print(f"The {name} extension is not loaded.")


def reload_ext_magic(interp: Any, line: str) -> None:
    """%reload_ext MODULE: unload, re-import and load an extension again."""
    _shell(interp).extension_manager.reload_extension(_ext_name(line, "reload_ext"))


def _by_extension(interp: Any, extension: str, name: str, stand_in: Any, line: str) -> Any:
    """Run ``%name line`` from IPython's ``extension``, loaded on first use: the
    extension registers its own ``%name`` in place of ``stand_in`` (ours)."""
    shell = _shell(interp)
    shell.extension_manager.load_extension(extension)
    if interp.magics.line(name) is stand_in:
        raise UsageError(f"the {extension} extension did not register %{name}")
    return shell.run_line_magic(name, line)


def autoreload_magic(interp: Any, line: str) -> Any:
    """%autoreload [0|1|2|3]: reload changed modules before each cell (loads the extension)."""
    return _by_extension(interp, "autoreload", "autoreload", autoreload_magic, line)


def store_magic(interp: Any, line: str) -> Any:
    """%store [-r|-d|-z] [NAME]: IPython's storemagic, which ipykernel loads at start.

    Notebooks call ``%store`` without loading anything; the extension (and IPython) is
    loaded on first use here, and its own ``%store`` replaces this one.
    """
    return _by_extension(interp, "storemagic", "store", store_magic, line)


def autosave_magic(interp: Any, line: str) -> None:
    """%autosave SECONDS: ask the classic notebook to save every SECONDS (0: never).

    Many notebooks written for the classic Notebook start with it; ipykernel answers
    with the notebook's JavaScript call and a line saying what was asked. Frontends
    that save on their own (JupyterLab, VS Code) ignore the call, and the cell runs on.
    """
    from corral.core.display import display

    try:
        seconds = int(line.strip())
    except ValueError:
        raise UsageError(f"%autosave requires an integer, got {line.strip()!r}") from None
    call = f"IPython.notebook.set_autosave_interval({seconds * 1000})"
    display({"application/javascript": call}, raw=True)
    print(f"Autosaving every {seconds} seconds" if seconds else "Autosave disabled")


# ------------------------------------------------------------------ matplotlib


def enable_matplotlib(shell: Any, gui: str | None = None) -> tuple[str, str]:
    """Switch matplotlib to ``gui`` (``inline`` by default); ``(gui, backend)``."""
    gui = (gui or "inline").strip()
    import matplotlib

    if gui == "inline":
        backend = INLINE_BACKEND
    elif gui in ("widget", "ipympl"):
        backend = WIDGET_BACKEND
    elif gui in ("agg", "svg", "pdf", "ps", "cairo", "template"):
        backend = gui
    elif gui.startswith("module://"):
        backend = gui
    else:
        raise UsageError(
            f"%matplotlib {gui}: a corral kernel has no GUI event loop; "
            "use %matplotlib inline or widget (or agg, svg, pdf, module://...)"
        )
    import matplotlib.pyplot as plt

    plt.switch_backend(backend)
    if backend in (INLINE_BACKEND, WIDGET_BACKEND):
        from IPython.core.pylabtools import activate_matplotlib
        from matplotlib_inline.backend_inline import configure_inline_support

        # interactive: figures show at the end of the cell
        activate_matplotlib(backend)  # type: ignore[no-untyped-call]
        # inline's hooks on, or off for widget
        configure_inline_support(shell, backend)  # type: ignore[no-untyped-call]
    else:
        matplotlib.interactive(False)
    return gui, backend


def matplotlib_magic(interp: Any, line: str) -> None:
    """%matplotlib [inline|widget]: draw figures in the notebook (inline is the default).

    ``widget`` (or ``ipympl``) gives ipympl's interactive figures, when it is installed.
    """
    if line.strip() in ("-l", "--list"):
        print("Available matplotlib backends: inline, widget, agg, svg, pdf, module://...")
        return
    _, backend = enable_matplotlib(_shell(interp), line.strip() or None)
    if not line.strip():  # IPython says which backend a bare %matplotlib chose
        print(f"Using matplotlib backend: {backend}")


# ------------------------------------------------------------------ cell magics


def capture_cell(interp: Any, line: str, cell: str) -> Any:
    """%%capture [--no-stdout] [--no-stderr] [--no-display] [NAME]: capture a cell's output.

    The output is kept in ``NAME`` (a ``CapturedIO``: ``.stdout``, ``.stderr``,
    ``.outputs``, ``.show()``) instead of being shown. The cell's result is one of the
    outputs, as in IPython (``--no-display`` shows it as the cell's result instead).
    """
    from corral.core.capture import RichOutput, capture_output
    from corral.core.display import format_object
    from corral.core.interpreter import _suppressed

    words = line.split()
    flags = {w for w in words if w.startswith("--")}
    names = [w for w in words if not w.startswith("--")]
    unknown = flags - {"--no-stdout", "--no-stderr", "--no-display"}
    if unknown or len(names) > 1:
        raise UsageError("usage: %%capture [--no-stdout] [--no-stderr] [--no-display] [NAME]")
    with capture_output(
        interp,
        stdout="--no-stdout" not in flags,
        stderr="--no-stderr" not in flags,
        display="--no-display" not in flags,
    ) as captured:
        try:
            value = interp.run_source(cell, filename="<capture>")
        finally:  # as IPython: what a failing cell printed before failing is kept too
            if names:
                interp.user_ns[names[0]] = captured
    if value is None or _suppressed(cell):
        return None
    if "--no-display" in flags:
        return value
    captured.outputs.append(RichOutput(*format_object(value)))
    return None


def script_cell(interp: Any, line: str, cell: str) -> None:
    """%%script PROGRAM [ARGS...]: run the cell through PROGRAM (the cell is its stdin).

    Its output is streamed as it comes; a non-zero exit status raises
    ``subprocess.CalledProcessError``, as under IPython. ``%%bash``,
    ``%%sh``, ``%%python``, ``%%python3``, ``%%python2``, ``%%pypy``, ``%%perl`` and ``%%ruby``
    are shortcuts.
    """
    import shlex

    options, argv = _script_options(shlex.split(line))
    if not argv:
        raise UsageError("usage: %%script [--out NAME] [--err NAME] [--no-raise-error] PROGRAM")
    _run_script(interp, argv, cell, options)


#: IPython's options of %%script (and its shortcuts), each with whether it takes a value.
_SCRIPT_OPTIONS = {"--out": True, "--err": True, "--no-raise-error": False}
_BACKGROUND = ("--bg", "--proc")


def _script_options(words: list[str]) -> tuple[dict[str, Any], list[str]]:
    """IPython's ``%%script`` options found anywhere on the line, and the other words,
    which belong to the program (``%%bash -s arg`` passes ``-s arg`` to bash).

    ``--out NAME`` / ``--err NAME`` keep the script's stdout / stderr in the variable
    NAME instead of showing it, ``--no-raise-error`` lets a failing script pass. Scripts
    in the background (``--bg``, ``--proc``) are refused with a clear error: passed on,
    they were options the program did not know.
    """
    options: dict[str, Any] = {}
    rest: list[str] = []
    words = list(words)
    while words:
        word = words.pop(0)
        name, has_value, value = word.partition("=")
        if name in _BACKGROUND:
            raise UsageError(
                f"%%script {name}: scripts in the background are not supported by corral; "
                "run the cell in the foreground (--out NAME keeps its output)"
            )
        if name not in _SCRIPT_OPTIONS:
            rest.append(word)
        elif not _SCRIPT_OPTIONS[name]:
            options[name] = True
        elif has_value or words:
            options[name] = value if has_value else words.pop(0)
        else:
            raise UsageError(f"%%script {name} needs a variable name")
    return options, rest


def _shortcut(program: str) -> Any:
    def magic(interp: Any, line: str, cell: str) -> None:
        import shlex

        options, args = _script_options(shlex.split(line))
        _run_script(interp, [_program(program), *args], cell, options)

    magic.__doc__ = f"%%{program}: run the cell with {program}, its output streamed as it comes."
    return magic


def _program(name: str) -> str:
    # %%python means the kernel's own Python, as IPython has it.
    return sys.executable if name in ("python", "python3") else name


def _run_script(
    interp: Any, argv: list[str], cell: str, options: dict[str, Any] | None = None
) -> None:
    import io
    import subprocess
    import threading

    from corral.core.builtin_magics import pump

    options = options or {}
    kept = {name: io.StringIO() for name in ("--out", "--err") if name in options}
    out, err = kept.get("--out", sys.stdout), kept.get("--err", sys.stderr)

    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise UsageError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=pump, args=(proc.stdout.fileno(), out), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr.fileno(), err), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    try:
        try:
            proc.stdin.write(cell.encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for thread in pumps:
            thread.join()
        proc.stdout.close()
        proc.stderr.close()
        for name, buffer in kept.items():
            interp.user_ns[options[name]] = buffer.getvalue()
    if code and "--no-raise-error" not in options:
        # The error IPython's %%script raises: code that catches it runs on both kernels.
        raise subprocess.CalledProcessError(code, argv)


# ------------------------------------------------------------------ small line magics


def xmode_magic(interp: Any, line: str) -> None:
    """%xmode [Plain|Context|Verbose|Minimal]: how much of a traceback to show.

    ``Minimal`` shows only the error line; the others show the frames with context.
    """
    modes = {"plain": "Plain", "context": "Context", "verbose": "Verbose", "minimal": "Minimal"}
    wanted = line.strip().lower()
    if not wanted:
        order = list(modes.values())
        wanted = order[(order.index(interp.xmode) + 1) % len(order)].lower()
    if wanted not in modes:
        raise UsageError(f"%xmode takes one of {', '.join(modes.values())}, not {line.strip()!r}")
    interp.xmode = modes[wanted]
    print(f"Exception reporting mode: {interp.xmode}")


def who_ls_magic(interp: Any, line: str) -> list[str]:
    """%who_ls [TYPE...]: your variables' names, sorted (as a list, to use in code)."""
    from corral.core.builtin_magics import user_names

    return user_names(interp, line.split())


def alias_magic_magic(interp: Any, line: str) -> None:
    """%alias_magic NEW EXISTING: make %NEW (and %%NEW) call %EXISTING (and %%EXISTING)."""
    words = line.replace("%", " ").split()
    if len(words) != 2:
        raise UsageError("usage: %alias_magic NEW_NAME EXISTING_NAME")
    new, target = words
    reg = interp.magics
    line_func, cell_func = reg.line(target), reg.cell(target)
    if line_func is None and cell_func is None:
        raise UsageError(f"no magic named {target!r}")
    if line_func is not None:
        reg.register_line(new, line_func)
        print(f"Created `%{new}` as an alias for `%{target}`.")
    if cell_func is not None:
        reg.register_cell(new, cell_func)
        print(f"Created `%%{new}` as an alias for `%%{target}`.")


def psource_magic(interp: Any, line: str) -> None:
    """%psource OBJECT: print the source code of OBJECT."""
    import inspect

    from corral.core.inspection import find_object

    found, obj = find_object(line.strip(), interp.user_ns)
    if not found:
        raise UsageError(f"Object `{line.strip()}` not found.")
    try:
        source = inspect.getsource(obj)
        print(source if source.endswith("\n") else source + "\n", end="")
    except (OSError, TypeError):
        print("No source found for", line.strip())


def _rich_cell(mime: str) -> Any:
    def magic(interp: Any, line: str, cell: str) -> None:
        from corral.core.display import display

        display({mime: cell, "text/plain": f"<{mime} output>"}, raw=True)

    magic.__doc__ = f"%%{mime.split('/')[-1]}: show the cell as {mime}."
    return magic


def register_compat_magics(registry: MagicsRegistry) -> None:
    """Add these magics to ``registry``."""
    for name, func in (
        ("pip", pip_magic),
        ("config", config_magic),
        ("load_ext", load_ext_magic),
        ("unload_ext", unload_ext_magic),
        ("reload_ext", reload_ext_magic),
        ("autoreload", autoreload_magic),
        ("store", store_magic),
        ("autosave", autosave_magic),
        ("matplotlib", matplotlib_magic),
    ):
        registry.register_line(name, func)
    for name, func in (
        ("xmode", xmode_magic),
        ("who_ls", who_ls_magic),
        ("alias_magic", alias_magic_magic),
        ("psource", psource_magic),
    ):
        registry.register_line(name, func)
    for program in ("bash", "sh", "python", "python3", "python2", "pypy", "perl", "ruby"):
        registry.register_cell(program, _shortcut(program))
    for name, cell_func in (
        ("capture", capture_cell),
        ("script", script_cell),
        ("html", _rich_cell("text/html")),
        ("markdown", _rich_cell("text/markdown")),
        ("latex", _rich_cell("text/latex")),
        ("svg", _rich_cell("image/svg+xml")),
        ("javascript", _rich_cell("application/javascript")),
        ("js", _rich_cell("application/javascript")),
    ):
        registry.register_cell(name, cell_func)
