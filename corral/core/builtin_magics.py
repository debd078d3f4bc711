"""The magics every interpreter has: timing, running files, directories, environment,
namespace, history, loading and writing files, and shell escapes.

Each is a plain function ``(interpreter, line[, cell])`` registered by
:func:`register_builtin_magics`, exactly as a plugin registers its own. Their docstrings
are what ``%magic`` and ``%name?`` show, so they are written for users.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = [
    "TimeitResult",
    "format_time",
    "getoutput",
    "pump",
    "register_builtin_magics",
    "system",
    "user_names",
]

hide_from_tracebacks(__file__)


# ------------------------------------------------------------------ helpers


def parse_options(line: str, spec: str) -> tuple[dict[str, str], str]:
    """Leading ``-x`` options of ``line`` by a getopt-like ``spec`` ("n:r:q"); rest as is.

    Only the front is parsed, so the statement after the options keeps its quoting.
    """
    opts: dict[str, str] = {}
    rest = line.strip()
    while len(rest) > 1 and rest[0] == "-" and rest[1].isalpha():
        flag = rest[1]
        where = spec.find(flag)
        if where < 0:
            raise UsageError(f"option -{flag} not recognized")
        rest = rest[2:]
        if where + 1 < len(spec) and spec[where + 1] == ":":
            rest = rest.lstrip()
            value, _, rest = rest.partition(" ")
            if not value:
                raise UsageError(f"option -{flag} requires an argument")
            opts[flag] = value
        else:
            opts[flag] = ""
            if rest and not rest[0].isspace():
                rest = "-" + rest  # combined flags: -qo
        rest = rest.lstrip()
    return opts, rest


def format_time(seconds: float) -> str:
    """``1.23 ms`` style, three significant digits, like a stopwatch reads."""
    if seconds >= 60:
        minutes, secs = divmod(seconds, 60)
        return f"{int(minutes)}min {secs:.3g} s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("\u03bcs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _path_arg(rest: str, what: str) -> tuple[Path, list[str]]:
    import shlex

    args = shlex.split(rest)
    if not args:
        raise UsageError(f"{what} needs a file name")
    return Path(args[0]).expanduser(), args[1:]


# ------------------------------------------------------------------ shell escapes


def pump(fd: int, stream: Any) -> None:
    """Copy what arrives on ``fd`` to ``stream`` as it comes, decoded as UTF-8."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := os.read(fd, 65536):
        stream.write(decoder.decode(chunk))
    tail = decoder.decode(b"", final=True)
    if tail:
        stream.write(tail)


def system(interp: Any, cmd: str) -> None:
    """``!cmd``: run ``cmd`` in a shell, streaming its output as it comes.

    The exit status is left in ``_exit_code``.
    """
    import subprocess
    import threading

    proc = subprocess.Popen(
        cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=pump, args=(proc.stdout.fileno(), sys.stdout), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr.fileno(), sys.stderr), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    try:
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
    interp.user_ns["_exit_code"] = code


def getoutput(interp: Any, cmd: str) -> list[str]:
    """``x = !cmd``: the lines ``cmd`` printed (stdout and stderr together), as an
    :class:`~corral.core.slist.SList` (``.s``, ``.n``, ``.grep()``... as in IPython)."""
    import subprocess

    from corral.core.slist import SList

    done = subprocess.run(
        cmd,
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    interp.user_ns["_exit_code"] = done.returncode
    return SList(done.stdout.splitlines())


# ------------------------------------------------------------------ timing


def _cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, to the microsecond where the OS says so.

    ``os.times()`` counts clock ticks (10 ms): a quick statement would read "0 ns".
    """
    try:
        import resource
    except ImportError:  # Windows
        times = os.times()
        return times.user, times.system
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def time_magic(interp: Any, line: str, cell: str | None = None) -> Any:
    """Time one run of a statement or expression: ``%time expr`` or a ``%%time`` cell.

    Prints CPU (user, sys) and wall time; the value of the last expression is the result.
    """
    import time

    source = cell if cell is not None else line
    if not source.strip():
        raise UsageError("%time needs a statement to time")
    wall0, cpu0 = time.perf_counter(), _cpu_times()
    try:
        value = interp.run_source(source, filename="<timed exec>")
    finally:
        cpu1, wall1 = _cpu_times(), time.perf_counter()
        user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        print(
            f"CPU times: user {format_time(user)}, sys: {format_time(sys_)}, "
            f"total: {format_time(user + sys_)}\nWall time: {format_time(wall1 - wall0)}"
        )
    return value


def time_cell(interp: Any, line: str, cell: str) -> Any:
    """Time one run of the cell. See ``%time``."""
    return time_magic(interp, line, cell)


class TimeitResult:
    """What ``%timeit -o`` returns: every run's per-loop time, and summaries."""

    def __init__(self, loops: int, repeat: int, all_runs: list[float]) -> None:
        self.loops = loops
        self.repeat = repeat
        self.all_runs = all_runs  # total seconds of each run of `loops` loops
        self.timings = [t / loops for t in all_runs]
        self.best = min(self.timings)
        self.worst = max(self.timings)
        self.average = sum(self.timings) / len(self.timings)
        variance = sum((t - self.average) ** 2 for t in self.timings) / len(self.timings)
        self.stdev = variance**0.5

    def __str__(self) -> str:
        runs = "run" if self.repeat == 1 else "runs"
        loops = "loop" if self.loops == 1 else "loops"
        return (
            f"{format_time(self.average)} ± {format_time(self.stdev)} per loop "
            f"(mean ± std. dev. of {self.repeat} {runs}, {self.loops} {loops} each)"
        )

    __repr__ = __str__


def timeit_magic(interp: Any, line: str, cell: str | None = None) -> TimeitResult | None:
    """Time a statement many times: ``%timeit [-n N] [-r R] [-q] [-o] stmt``.

    Without ``-n`` the number of loops is chosen so that one run takes at least 0.2 s.
    ``-r`` sets the number of runs (default 7); the mean ± standard deviation of the time
    per loop is printed (the best is in ``-o``'s result). ``-q`` prints nothing, ``-o`` returns a
    ``TimeitResult``. As ``%%timeit``, the line is setup code and the cell is timed.
    """
    import timeit

    from corral.core.magics import transform_cell, transform_source

    opts, rest = parse_options(line, "n:r:qo")
    stmt, setup = (cell, rest) if cell is not None else (rest, "pass")
    if not stmt.strip():
        raise UsageError("%timeit needs a statement to time")
    try:
        number = int(opts["n"]) if "n" in opts else 0
        repeat = int(opts.get("r", 7))
    except ValueError:
        raise UsageError("-n and -r take whole numbers") from None
    if repeat < 1 or number < 0:
        raise UsageError("-n and -r must be positive")
    timer = timeit.Timer(
        transform_source(stmt), transform_cell(setup or "pass"), globals=interp.user_ns
    )
    if not number:
        number, _ = timer.autorange()
    result = TimeitResult(number, repeat, timer.repeat(repeat=repeat, number=number))
    if "q" not in opts:
        print(result)
    return result if "o" in opts else None


def timeit_cell(interp: Any, line: str, cell: str) -> TimeitResult | None:
    """Time the cell many times; the ``%%timeit`` line is setup code. See ``%timeit``."""
    return timeit_magic(interp, line, cell)


# ------------------------------------------------------------------ files


def run_magic(interp: Any, line: str) -> None:
    """Run a Python file: ``%run [-i] file.py [args...]``.

    The file runs as ``__main__`` with ``sys.argv`` set to the file and its arguments, in a
    fresh namespace whose names are then copied into yours; ``-i`` runs it in your
    namespace instead, so it sees your variables.
    """
    import linecache

    opts, rest = parse_options(line, "i")
    path, args = _path_arg(rest, "%run")
    if not path.is_file():
        raise UsageError(f"File `{path}` not found.")
    if path.suffix in (".ipynb", ".ipy"):
        _run_ipython_file(interp, path)
        return
    source = path.read_text()
    filename = str(path)
    linecache.checkcache(filename)
    code = compile(source, filename, "exec", dont_inherit=True)
    if "i" in opts:
        namespace = interp.user_ns
        saved_file = namespace.get("__file__")
        namespace["__file__"] = filename
    else:
        namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}
    saved_argv, saved_path0 = sys.argv, str(path.parent.resolve())
    sys.argv = [filename, *args]
    sys.path.insert(0, saved_path0)
    try:
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    finally:
        sys.argv = saved_argv
        if saved_path0 in sys.path:
            sys.path.remove(saved_path0)
        if "i" in opts:
            if saved_file is None:
                namespace.pop("__file__", None)
            else:
                namespace["__file__"] = saved_file
        else:
            interp.user_ns.update(
                (k, v)
                for k, v in namespace.items()
                if not (k.startswith("__") and k.endswith("__"))
            )


def _ipython_cells(path: Path) -> list[str]:
    """The code of an IPython file: a notebook's code cells in order, a ``.ipy`` whole."""
    if path.suffix == ".ipy":
        return [path.read_text(encoding="utf-8")]
    import json

    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"%run: {path} is not a notebook: {exc}") from None
    if not isinstance(notebook, dict) or notebook.get("nbformat") != 4:
        raise UsageError(f"%run: {path} is not a version 4 notebook (save it with Jupyter)")
    cells = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append("".join(source) if isinstance(source, list) else source)
    return cells


def _run_ipython_file(interp: Any, path: Path) -> None:
    """``%run`` of a notebook or ``.ipy`` file: its cells run in your namespace, as IPython
    runs them, magics included; their values are not shown and the first error stops it.

    Notebooks share helpers this way (``%run ./utils.ipynb``); compiled as Python, the
    notebook's JSON failed on its first ``null``.
    """
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)
    try:
        for number, cell in enumerate(_ipython_cells(path), 1):
            interp.run_source(cell, filename=f"{path} (cell {number})")
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def writefile_cell(interp: Any, line: str, cell: str) -> None:
    """Write the cell to a file: ``%%writefile [-a] filename`` (``-a`` appends)."""
    opts, rest = parse_options(line, "a")
    path, _ = _path_arg(rest, "%%writefile")
    if "a" in opts:
        print(f"Appending to {path}")
    else:
        print(f"{'Overwriting' if path.exists() else 'Writing'} {path}")
    text = cell if cell.endswith("\n") or not cell else cell + "\n"
    with open(path, "a" if "a" in opts else "w", encoding="utf-8") as f:
        f.write(text)


def source_file_cell(interp: Any, line: str, cell: str) -> None:
    """Run the cell as the file it came from: ``%%source_file 'PATH'`` or
    ``%%source_file ('PATH', ['ARGV0', 'ARG', ...])``.

    What ``corral run FILE [ARG...]`` sends: the file's text, compiled under its own name,
    so tracebacks quote the file's lines and name the file, with no frame of the runner
    around it; ``__file__`` is set; names it defines stay in the namespace. With an argv,
    ``sys.argv`` is that list while the cell runs (a script reads its arguments there, as
    under ``python FILE ARG...``) and the kernel's own is restored afterwards.
    """
    import ast
    import linecache

    text = line.strip()
    try:
        spec = ast.literal_eval(text) if text[:1] in "'\"(" else text
    except (ValueError, SyntaxError):
        raise UsageError(f"%%source_file needs a file name, got {text!r}") from None
    filename, argv = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, None)
    if not isinstance(filename, str) or not filename:
        raise UsageError("%%source_file needs a file name")
    if argv is not None and not (
        isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    ):
        raise UsageError(f"%%source_file: argv must be a list of strings, got {argv!r}")
    ns = interp.user_ns
    ns["__file__"] = filename
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    code = compile(cell, filename, "exec", dont_inherit=True)
    # In a script, exit() ends the script (Python's own, raising SystemExit), not the
    # frontend as the notebook's exit() does.
    saved = {name: ns.pop(name) for name in ("exit", "quit") if name in ns}
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = argv
    try:
        exec(code, ns)
    except SystemExit as exc:  # sys.exit(0) is a script's normal end, as in Python
        if exc.code not in (None, 0):
            raise
    finally:
        sys.argv = saved_argv
        ns.update(saved)


def load_magic(interp: Any, line: str) -> None:
    """Replace this cell with a file's contents (or an object's source): ``%load file``.

    The frontend receives the text as the next input; run the cell again to execute it.
    """
    import inspect

    from corral.core.inspection import find_object

    arg = line.strip()
    if not arg:
        raise UsageError("%load needs a file name or an object name")
    path = Path(arg).expanduser()
    if path.is_file():
        text = path.read_text()
    else:
        found, obj = find_object(arg, interp.user_ns)
        if not found:
            raise UsageError(f"%load: no file or object named {arg!r}")
        try:
            text = inspect.getsource(obj)
        except (TypeError, OSError) as exc:
            raise UsageError(f"%load: no source for {arg!r} ({exc})") from None
    interp.add_payload(
        {"source": "set_next_input", "text": f"# %load {arg}\n{text}", "replace": True}
    )


# ------------------------------------------------------------------ directories, env


def cd_magic(interp: Any, line: str) -> None:
    """Change the working directory: ``%cd dir``, ``%cd`` (home), ``%cd -`` (previous)."""
    target = line.strip() or "~"
    if target.startswith("-b "):
        target = target[3:].strip()
    if target != "-" and not os.path.isdir(os.path.expanduser(target.strip("'\""))):
        from corral.core.magics_shell import bookmarks

        target = bookmarks().get(target, target)
    history = interp.user_ns.setdefault("_dh", [os.getcwd()])
    if target == "-":
        if len(history) < 2:
            raise UsageError("%cd -: no previous directory")
        target = history[-2]
    try:
        os.chdir(os.path.expanduser(target.strip("'\"")))
    except OSError as exc:
        raise UsageError(f"%cd: {exc.strerror}: {target}") from None
    history.append(os.getcwd())
    print(os.getcwd())


def pwd_magic(interp: Any, line: str) -> str:
    """The current working directory."""
    return os.getcwd()


def env_magic(interp: Any, line: str) -> Any:
    """Environment variables: ``%env`` (all), ``%env NAME`` (one), ``%env NAME=value``."""
    arg = line.strip()
    if not arg:
        return dict(os.environ)
    if "=" in arg or " " in arg:
        sep = "=" if "=" in arg else " "
        name, _, value = arg.partition(sep)
        name, value = name.strip(), value.strip()
        if not name:
            raise UsageError("%env: missing variable name")
        os.environ[name] = value
        print(f"env: {name}={value}")
        return None
    try:
        return os.environ[arg]
    except KeyError:
        raise UsageError(f"Environment does not have key: {arg}") from None


# ------------------------------------------------------------------ namespace


def user_names(interp: Any, types: list[str]) -> list[str]:
    hidden = interp.hidden_names()
    return sorted(
        name
        for name, value in interp.user_ns.items()
        if not name.startswith("_")
        and name not in hidden
        and (not types or type(value).__name__ in types)
    )


def who_magic(interp: Any, line: str) -> None:
    """List your variables, optionally only of some types: ``%who int str``."""
    names = user_names(interp, line.split())
    print("\t".join(names) if names else "Interactive namespace is empty.")


def whos_magic(interp: Any, line: str) -> None:
    """Like ``%who``, as a table with each variable's type and value."""
    names = user_names(interp, line.split())
    if not names:
        print("Interactive namespace is empty.")
        return
    rows = []
    for name in names:
        value = interp.user_ns[name]
        try:
            info = repr(value)
        except Exception as exc:
            info = f"<repr failed: {exc}>"
        info = info.replace("\n", " ")
        rows.append((name, type(value).__name__, info[:47] + "..." if len(info) > 50 else info))
    w1 = max(len("Variable"), *(len(r[0]) for r in rows)) + 3
    w2 = max(len("Type"), *(len(r[1]) for r in rows)) + 3
    print(f"{'Variable':<{w1}}{'Type':<{w2}}Data/Info")
    print("-" * (w1 + w2 + 12))
    for name, kind, info in rows:
        print(f"{name:<{w1}}{kind:<{w2}}{info}")


def reset_magic(interp: Any, line: str) -> None:
    """Delete all your variables (``-f`` is accepted; a kernel never asks first)."""
    parse_options(line, "fs")
    interp.reset_namespace()


# ------------------------------------------------------------------ history


def _ranges(spec: str) -> list[tuple[int, int, int | None]]:
    """``4``, ``1-4`` (inclusive), ``~1/2-5`` or ``3/1-2`` -> (session, start, stop)."""
    import re

    found: list[tuple[int, int, int | None]] = []
    for token in spec.split():
        match = re.fullmatch(r"(?:(~?)(\d+)/)?(\d+)(?:-(\d+))?", token)
        if match is None:
            raise UsageError(f"%history: cannot read range {token!r}")
        tilde, sess, start, end = match.groups()
        session = 0 if sess is None else (-int(sess) if tilde else int(sess))
        stop = int(end) + 1 if end else int(start) + 1
        found.append((session, int(start), stop))
    return found


def history_magic(interp: Any, line: str) -> None:
    """Show input history: ``%history [-n] [-o] [-u] [-l N] [-g pattern] [ranges]``.

    Ranges are ``4``, ``1-4`` (inclusive), ``~1/1-4`` (one session back) or ``3/1-4``
    (session 3). ``-n`` numbers lines, ``-o`` shows outputs, ``-l N`` the last N lines of
    all sessions, ``-g`` searches all sessions for a glob (``*`` around it implied),
    ``-u`` keeps one of each duplicate.
    """
    opts, rest = parse_options(line, "nol:g:u")
    hm = interp.history_manager
    output = "o" in opts
    if "g" in opts:
        pattern = " ".join(filter(None, [opts["g"], rest]))
        rows = hm.search(f"*{pattern}*", None, "u" in opts, output=output)
        running = (hm.session_id, interp.execution_count)
        rows = [row for row in rows if row[:2] != running]  # not the %history -g line itself
    elif "l" in opts:  # the last N before this very line, as IPython's get_tail gives
        count = int(opts["l"])
        running = (hm.session_id, interp.execution_count)
        rows = [row for row in hm.tail(count + 1, output=output) if row[:2] != running]
        rows = rows[-count:] if count > 0 else []
    elif rest:
        rows = [r for sess, a, b in _ranges(rest) for r in hm.range(sess, a, b, output=output)]
    else:
        rows = hm.range(0, 1, output=output)
    current = hm.session_id
    for session, number, entry in rows:
        source, out = entry if output else (entry, None)
        prefix = ""
        if "n" in opts or "g" in opts:
            prefix = f"{number}: " if session == current else f"{session}/{number}: "
        pad = "\n" + " " * len(prefix)
        print(prefix + source.replace("\n", pad))
        if out is not None:
            print(f"-> {out}")


# ------------------------------------------------------------------ help


def lsmagic_magic(interp: Any, line: str) -> None:
    """List every magic."""
    names = interp.magics.names()
    print("Available line magics:")
    print("  ".join("%" + n for n in names["line"]))
    print()
    print("Available cell magics:")
    print("  ".join("%%" + n for n in names["cell"]))


def magic_magic(interp: Any, line: str) -> None:
    """Describe every magic."""
    import inspect

    registry: MagicsRegistry = interp.magics
    names = registry.names()
    for kind, prefix, lookup in (("line", "%", registry.line), ("cell", "%%", registry.cell)):
        for name in names[kind]:
            doc = inspect.getdoc(lookup(name)) or "(no documentation)"
            print(f"{prefix}{name}:\n    " + doc.replace("\n", "\n    ") + "\n")


_LINE: dict[str, Callable[..., Any]] = {
    "time": time_magic,
    "timeit": timeit_magic,
    "run": run_magic,
    "cd": cd_magic,
    "pwd": pwd_magic,
    "env": env_magic,
    "who": who_magic,
    "whos": whos_magic,
    "reset": reset_magic,
    "history": history_magic,
    "hist": history_magic,
    "load": load_magic,
    "lsmagic": lsmagic_magic,
    "magic": magic_magic,
}
_CELL: dict[str, Callable[..., Any]] = {
    "time": time_cell,
    "timeit": timeit_cell,
    "writefile": writefile_cell,
    "source_file": source_file_cell,
}


def register_builtin_magics(registry: MagicsRegistry) -> None:
    """Add the built-in magics to ``registry`` (plugins may override them afterwards)."""
    for name, func in _LINE.items():
        registry.register_line(name, func)
    for name, func in _CELL.items():
        registry.register_cell(name, func)
    from corral.core.compat_magics import register_compat_magics

    register_compat_magics(registry)
    from corral.core.magics_shell import register_shell_magics

    register_shell_magics(registry)
    from corral.core.magics_more import register_more_magics

    register_more_magics(registry)
    from corral.core.magics_connect import register_connect_magics

    register_connect_magics(registry)
