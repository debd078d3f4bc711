"""More of IPython's magics that notebooks use: display settings (``%precision``,
``%pprint``), namespace (``%xdel``, ``%reset_selective``), introspection (``%pinfo``,
``%pdef``, ``%psearch``...), ``%tb`` and the modes a kernel only reports (``%autoawait``,
``%gui``...). History magics are in :mod:`.magics_history`, profiling in
:mod:`.magics_prun`, debugging in :mod:`.magics_debug`, logging in :mod:`.magics_log`.

Cell-magic spellings IPython also accepts (``%%file``, ``%%HTML``, ``%%SVG``) are
registered here as the same functions as their lower-case originals.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from corral.core import display as _display
from corral.core.builtin_magics import parse_options
from corral.core.magics import MagicsRegistry, UsageError, switch_arg
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["register_more_magics"]

hide_from_tracebacks(__file__)


# ------------------------------------------------------------------ display settings

_state: dict[str, Any] = {"float_format": None, "pretty": True, "doctest": None}


def _apply_plain_options(interp: Any) -> None:
    """Tell corral's formatter, and IPython's when it formats instead, the settings."""
    fmt, pretty = _state["float_format"], _state["pretty"]
    _display.set_plain_options(float_format=fmt, pretty=pretty)
    # The formatter is IPython's DisplayFormatter.format: its plain-text formatter has the
    # same two settings.
    owner = getattr(_display._formatter, "__self__", None)
    plain = getattr(owner, "formatters", {}).get("text/plain")
    if plain is not None:
        plain.pprint = pretty
        plain.float_precision = "" if fmt is None else fmt


def precision_magic(interp: Any, line: str) -> str:
    """How many digits floats show: ``%precision 3``, a format (``%precision %e``), or
    ``%precision`` alone for Python's own ``repr``. Applies to numpy arrays too (when numpy
    is imported); the format in use is returned.
    """
    arg = line.strip()
    numpy = sys.modules.get("numpy")
    if "%" in arg:
        try:
            arg % 3.14159
        except Exception:
            raise UsageError(f"Precision must be int or format string, not {arg!r}") from None
        fmt: str | None = arg
    elif arg:
        try:
            digits = int(arg)
        except ValueError:
            raise UsageError(f"Precision must be int or format string, not {arg!r}") from None
        if digits < 0:
            raise UsageError("Precision must be a non-negative int")
        fmt = f"%.{digits}f"
        if numpy is not None:
            numpy.set_printoptions(precision=digits)
    else:
        fmt = None
        if numpy is not None:
            numpy.set_printoptions(precision=8)
    _state["float_format"] = fmt
    _apply_plain_options(interp)
    return fmt or "%r"


def pprint_magic(interp: Any, line: str) -> None:
    """Turn pretty printing of results off (plain ``repr``) or back on."""
    _state["pretty"] = not _state["pretty"]
    _apply_plain_options(interp)
    print(f"Pretty printing has been turned {'ON' if _state['pretty'] else 'OFF'}")


def doctest_mode_magic(interp: Any, line: str) -> None:
    """Toggle doctest mode: results as bare ``repr`` and plain tracebacks, so output can
    be pasted into doctests. A notebook has no prompts to change."""
    if _state["doctest"] is None:
        _state["doctest"] = (_state["pretty"], interp.xmode)
        _state["pretty"], interp.xmode = False, "Plain"
        on = True
    else:
        _state["pretty"], interp.xmode = _state["doctest"]
        _state["doctest"] = None
        on = False
    _apply_plain_options(interp)
    print(f"Exception reporting mode: {interp.xmode}")
    print(f"Doctest mode is: {'ON' if on else 'OFF'}")


def colors_magic(interp: Any, line: str) -> None:
    """Colour of tracebacks: ``%colors nocolor`` turns colour off, ``%colors linux`` (or
    ``lightbg``, ``neutral``) back on. Colours are the kernel's; themes are not distinct."""
    theme = line.strip().lower()
    themes = ("nocolor", "linux", "lightbg", "neutral")
    if theme.split(":")[0] not in themes:
        raise UsageError(
            f"%colors: you must specify a color theme. Available themes: {list(themes)}"
        )
    interp.colors = theme != "nocolor"


# ------------------------------------------------------------------ namespace


def xdel_magic(interp: Any, line: str) -> None:
    """Delete a variable and the references corral keeps to it (``Out``, ``_``...), so its
    memory can be freed: ``%xdel NAME``."""
    name = line.strip()
    ns = interp.user_ns
    if name in interp.hidden_names():
        print(f"ValueError: Refusing to delete {name}")
        return
    if name not in ns:
        print(f"NameError: name '{name}' is not defined")
        return
    obj = ns.pop(name)
    out = ns.get("Out", {})
    for key in [k for k, v in out.items() if v is obj]:
        del out[key]
        ns.pop(f"_{key}", None)
    for under in ("_", "__", "___"):
        if ns.get(under) is obj:
            ns[under] = ""
    if getattr(interp, "_unders", None) is not None:
        interp._unders = tuple("" if v is obj else v for v in interp._unders)


def reset_selective_magic(interp: Any, line: str) -> None:
    """Delete the variables whose names match a regular expression:
    ``%reset_selective [-f] REGEX`` (``-f`` is accepted; a kernel never asks first)."""
    _, pattern = parse_options(line, "f")
    if not pattern:
        raise UsageError("%reset_selective needs a regular expression")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"%reset_selective: bad regular expression: {exc}") from None
    from corral.core.builtin_magics import user_names

    for name in user_names(interp, []):
        if regex.search(name):
            del interp.user_ns[name]


# ------------------------------------------------------------------ introspection


def _find(interp: Any, name: str) -> Any:
    from corral.core.inspection import find_object

    found, obj = find_object(name, interp.user_ns)
    if not found:
        raise UsageError(f"Object `{name}` not found.")
    return obj


def pinfo_magic(interp: Any, line: str) -> None:
    """What ``OBJ?`` shows: ``%pinfo OBJ``."""
    interp._help(line.strip(), 0)


def pinfo2_magic(interp: Any, line: str) -> None:
    """What ``OBJ??`` shows (with source): ``%pinfo2 OBJ``."""
    interp._help(line.strip(), 1)


def pdef_magic(interp: Any, line: str) -> None:
    """Print the call signature of a callable: ``%pdef FUNC``."""
    import inspect

    name = line.strip()
    obj = _find(interp, name)
    if not callable(obj):
        print("Object is not callable.")
        return
    try:
        print(f" {name.split('.')[-1]}{inspect.signature(obj)}")
    except (TypeError, ValueError):
        print("No definition header found for", name)


def pdoc_magic(interp: Any, line: str) -> None:
    """Print the docstring of an object: ``%pdoc OBJ``."""
    import inspect

    obj = _find(interp, line.strip())
    doc = inspect.getdoc(obj)
    if not doc:
        print("No documentation found for", line.strip())
        return
    print("Docstring:\n    " + doc.replace("\n", "\n    "))


def pfile_magic(interp: Any, line: str) -> None:
    """Show the file an object was defined in (or a file by name): ``%pfile OBJ``."""
    import inspect
    from pathlib import Path

    arg = line.strip()
    path = Path(arg).expanduser()
    if not path.is_file():
        obj = _find(interp, arg)
        try:
            path = Path(inspect.getsourcefile(obj) or inspect.getfile(obj))
        except TypeError:
            print("No file found for", arg)
            return
    try:
        text = path.read_text(errors="replace")
    except OSError:
        print("No file found for", arg)
        return
    interp.add_payload({"source": "page", "data": {"text/plain": text}, "start": 0})


def psearch_magic(interp: Any, line: str) -> None:
    """Find names by wildcard: ``%psearch [-i] [-a] PATTERN [TYPE]`` (``a*``, ``np.*int*``).

    ``-i`` ignores case, ``-a`` includes names starting with ``_``; TYPE keeps only
    objects of that type's name (``int``, ``function``...).
    """
    import fnmatch

    from corral.core.inspection import find_object

    opts, rest = parse_options(line, "ia")
    words = rest.split()
    if not words:
        raise UsageError("%psearch needs a pattern")
    pattern, types = words[0], set(words[1:])
    base, _, leaf = pattern.rpartition(".")
    if base:
        found, obj = find_object(base, interp.user_ns)
        names = {n: getattr(obj, n, None) for n in dir(obj)} if found else {}
        prefix = base + "."
    else:
        hidden = interp.hidden_names()
        names = {n: v for n, v in interp.user_ns.items() if n not in hidden}
        prefix = ""
    ignore_case = "i" in opts
    wanted = leaf.lower() if ignore_case else leaf
    for name in sorted(names):
        if name.startswith("_") and "a" not in opts and not leaf.startswith("_"):
            continue
        if not fnmatch.fnmatchcase(name.lower() if ignore_case else name, wanted):
            continue
        if types and type(names[name]).__name__ not in types:
            continue
        print(prefix + name)


def _page(interp: Any, text: str) -> None:
    interp.add_payload({"source": "page", "data": {"text/plain": text}, "start": 0})


def page_magic(interp: Any, line: str) -> None:
    """Show an object in the pager: ``%page [-r] OBJ`` (``-r``: its ``str``, not pretty)."""
    import pprint

    opts, rest = parse_options(line, "r")
    obj = _find(interp, rest.strip()) if rest.strip() else interp.user_ns.get("_")
    _page(interp, str(obj) if "r" in opts else pprint.pformat(obj))


def pycat_magic(interp: Any, line: str) -> None:
    """Show a file in the pager: ``%pycat FILE``."""
    from pathlib import Path

    path = Path(line.strip()).expanduser()
    if not line.strip() or not path.is_file():
        raise UsageError(f"%pycat: file {line.strip()!r} not found")
    _page(interp, path.read_text(errors="replace"))


def quickref_magic(interp: Any, line: str) -> None:
    """Show every magic with the first line of its description, in the pager."""
    import inspect

    registry: MagicsRegistry = interp.magics
    rows = ["corral's magics (%magic for all of each description)", ""]
    names = registry.names()
    for prefix, kind, lookup in (("%", "line", registry.line), ("%%", "cell", registry.cell)):
        for name in names[kind]:
            doc = (inspect.getdoc(lookup(name)) or "").strip().splitlines()
            rows.append(f"{prefix + name:<20}{doc[0] if doc else ''}")
    _page(interp, "\n".join(rows) + "\n")


# ------------------------------------------------------------------ tracebacks


def tb_magic(interp: Any, line: str) -> None:
    """Print the last traceback again: ``%tb [MODE]`` (MODE as in ``%xmode``)."""
    from corral.core.tracebacks import format_exception

    exc = getattr(sys, "last_value", None)
    if exc is None:
        raise UsageError("No traceback available to show.")
    lines = format_exception(exc, colors=interp.colors)
    if (line.strip().lower() or interp.xmode.lower()) == "minimal":
        lines = lines[-1:]
    print("\n".join(lines))


# ------------------------------------------------------------------ modes a kernel reports


def automagic_magic(interp: Any, line: str) -> None:
    """Whether a one-line cell may call a line magic without ``%`` (``ls``, ``pwd``):
    ``%automagic`` toggles, ``%automagic on|off`` sets. On by default, as in IPython."""
    interp.automagic = switch_arg(interp.automagic, line, "automagic")
    if interp.automagic:
        print("\nAutomagic is ON, % prefix IS NOT needed for line magics.")
    else:
        print("\nAutomagic is OFF, % prefix IS needed for line magics.")


def autoawait_magic(interp: Any, line: str) -> None:
    """Top-level ``await`` in cells: always on in corral, on asyncio's event loop.

    ``%autoawait`` reports it; ``%autoawait asyncio`` (or ``True``) is accepted; turning
    it off or choosing another loop (trio, curio) is not supported.
    """
    arg = line.strip().lower()
    if not arg:
        print("IPython autoawait is `on`, and set to use `asyncio`")
    elif arg not in ("asyncio", "true", "on", "1"):
        raise UsageError(
            f"%autoawait {line.strip()}: corral always runs top-level await on asyncio; "
            "other loops and turning it off are not supported"
        )


def autocall_magic(interp: Any, line: str) -> None:
    """Calling functions without parentheses (``f 1``): off in corral, as by default in
    IPython; ``%autocall 0`` is accepted, turning it on is not supported."""
    arg = line.strip().lower()
    if arg not in ("", "0", "off", "false"):
        raise UsageError(f"%autocall {line.strip()}: corral does not call without parentheses")
    print("Automatic calling is: OFF")


def gui_magic(interp: Any, line: str) -> None:
    """GUI event loop integration: a corral kernel has none.

    ``%gui`` alone (disable) is accepted; ``%gui qt`` and the like are not supported:
    use ``%matplotlib inline`` or ``%matplotlib widget`` for figures.
    """
    if line.strip():
        raise UsageError(
            f"%gui {line.strip()}: a corral kernel has no GUI event loop integration; "
            "use %matplotlib inline or %matplotlib widget"
        )


def pylab_magic(interp: Any, line: str) -> None:
    """``%pylab [inline|widget]``: ``%matplotlib`` plus numpy's and pylab's names imported
    into your namespace (deprecated in IPython; prefer ``%matplotlib inline``)."""
    from corral.core.compat_magics import enable_matplotlib
    from corral.core.ipython_shell import shell_for

    opts, rest = parse_options(line, "")
    enable_matplotlib(shell_for(interp), rest or None)
    print(
        "%pylab is deprecated, use %matplotlib inline and import the required libraries.\n"
        "Populating the interactive namespace from numpy and matplotlib"
    )
    before = {name: value for name, value in interp.user_ns.items() if not name.startswith("_")}
    exec(  # noqa: S102 - the imports %pylab is documented to do
        "import numpy\nimport matplotlib\nfrom matplotlib import pylab, mlab, pyplot\n"
        "np = numpy\nplt = pyplot\nfrom pylab import *\nfrom numpy import *\n",
        interp.user_ns,
    )
    ns = interp.user_ns
    clobbered = sorted(n for n, v in before.items() if n in ns and ns[n] is not v)
    if clobbered:
        print(f"{os.linesep}WARNING: pylab import has clobbered these variables: {clobbered}")


# ------------------------------------------------------------------ registration


def register_more_magics(registry: MagicsRegistry) -> None:
    """Add these magics, and IPython's other spellings of some cell magics."""
    for name, func in (
        ("precision", precision_magic),
        ("pprint", pprint_magic),
        ("doctest_mode", doctest_mode_magic),
        ("colors", colors_magic),
        ("xdel", xdel_magic),
        ("reset_selective", reset_selective_magic),
        ("pinfo", pinfo_magic),
        ("pinfo2", pinfo2_magic),
        ("pdef", pdef_magic),
        ("pdoc", pdoc_magic),
        ("pfile", pfile_magic),
        ("psearch", psearch_magic),
        ("page", page_magic),
        ("pycat", pycat_magic),
        ("quickref", quickref_magic),
        ("tb", tb_magic),
        ("autocall", autocall_magic),
        ("autoawait", autoawait_magic),
        ("automagic", automagic_magic),
        ("gui", gui_magic),
        ("pylab", pylab_magic),
    ):
        registry.register_line(name, func)
    load = registry.line("load")
    if load is not None:
        registry.register_line("loadpy", load)  # IPython's older name of %load
    for alias, original in (("file", "writefile"), ("HTML", "html"), ("SVG", "svg")):
        cell_func = registry.cell(original)
        if cell_func is not None:
            registry.register_cell(alias, cell_func)
    from corral.core.magics_debug import register_debug_magics
    from corral.core.magics_history import register_history_magics
    from corral.core.magics_log import register_log_magics
    from corral.core.magics_prun import register_prun_magics

    register_prun_magics(registry)
    register_debug_magics(registry)
    register_log_magics(registry)
    register_history_magics(registry)
