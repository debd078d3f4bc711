"""Shell magics IPython notebooks use: aliases (``%ls``, ``%cp``...), ``%system`` / ``%sx``,
package managers (``%conda``, ``%uv``...), ``%set_env`` and the directory stack.

They run commands through the same :func:`~corral.core.builtin_magics.system` and
:func:`~corral.core.builtin_magics.getoutput` as ``!cmd`` and ``x = !cmd``, so output is
streamed the same way and ``_exit_code`` is set the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from corral.core.builtin_magics import getoutput, system
from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["DEFAULT_ALIASES", "Alias", "bookmarks", "register_shell_magics"]

hide_from_tracebacks(__file__)

_LS = "ls -F --color" if sys.platform != "darwin" else "ls -F -G"
_LL = _LS.replace("-F", "-F -o")

#: IPython's default aliases on POSIX, so ``%ls`` and ``%ll`` read as they do there.
DEFAULT_ALIASES: dict[str, str] = {
    "mkdir": "mkdir",
    "rmdir": "rmdir",
    "mv": "mv",
    "rm": "rm",
    "cp": "cp",
    "cat": "cat",
    "ls": _LS,
    "ll": _LL,
    "lf": f"{_LL} %l | grep ^-",
    "lk": f"{_LL} %l | grep ^l",
    "ldir": f"{_LL} %l | grep /$",
    "lx": f"{_LL} %l | grep ^-..x",
}


# ------------------------------------------------------------------ aliases


class Alias:
    """A line magic that runs a shell command template (what ``%alias`` makes).

    ``%s`` in the template takes the arguments one by one, ``%l`` takes the whole line;
    without either, the arguments are appended. A class rather than a closure so that
    ``%alias`` can tell aliases from other magics and show their commands.
    """

    def __init__(self, name: str, command: str) -> None:
        self.name = name
        self.command = command
        self.__doc__ = f"Alias for `!{command}`."
        self.nargs = command.count("%s") - command.count("%%s")
        if self.nargs and "%l" in command:
            raise UsageError(
                "The %s and %l specifiers are mutually exclusive in alias definitions."
            )

    def expand(self, line: str) -> str:
        """The shell command for ``%name line``."""
        command = self.command
        if "%l" in command:
            return command.replace("%l", line)
        if not self.nargs:
            return f"{command} {line}".rstrip()
        words = line.split(None, self.nargs)
        if len(words) < self.nargs:
            raise UsageError(
                f"Alias <{self.name}> requires {self.nargs} arguments, {len(words)} given."
            )
        filled = command.replace("%%s", "\0") % tuple(words[: self.nargs])
        return " ".join([filled.replace("\0", "%s"), *words[self.nargs :]]).rstrip()

    def __call__(self, interp: Any, line: str) -> None:
        system(interp, self.expand(line))


def _aliases(registry: MagicsRegistry) -> list[tuple[str, str]]:
    found = []
    for name in registry.names()["line"]:
        func = registry.line(name)
        if isinstance(func, Alias):
            found.append((name, func.command))
    return found


def alias_magic(interp: Any, line: str) -> list[tuple[str, str]] | None:
    """Define a shell alias as a line magic: ``%alias NAME COMMAND``.

    ``%s`` in COMMAND takes the arguments in turn, ``%l`` the whole line
    (``%alias parts echo first %s second %s`` then ``%parts A B``). ``%alias`` alone
    lists the aliases and returns them as ``(name, command)`` pairs.
    """
    registry: MagicsRegistry = interp.magics
    name, _, command = line.strip().partition(" ")
    if not name:
        aliases = _aliases(registry)
        print(f"Total number of aliases: {len(aliases)}")
        return aliases
    if not command.strip():
        raise UsageError(f"%alias {name}: missing the command to run")
    current = registry.line(name)
    if current is not None and not isinstance(current, Alias):
        raise UsageError(f"The name {name} can't be aliased because it is another magic command.")
    registry.register_line(name, Alias(name, command.strip()))
    return None


def unalias_magic(interp: Any, line: str) -> None:
    """Remove an alias made by ``%alias`` (or a default one): ``%unalias NAME``."""
    name = line.strip()
    registry: MagicsRegistry = interp.magics
    if not isinstance(registry.line(name), Alias):
        raise UsageError(f"{name!r} is not an alias")
    registry.remove_line(name)


def rehashx_magic(interp: Any, line: str) -> None:
    """Make every executable on ``$PATH`` an alias (``%rehashx``), as IPython does.

    Names that are already magics (``%cd``, ``%time``...) keep their magic.
    """
    registry: MagicsRegistry = interp.magics
    taken = set(registry.names()["line"])
    for folder in reversed(os.environ.get("PATH", "").split(os.pathsep)):
        try:
            entries = list(os.scandir(folder or "."))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name in taken or not os.access(entry.path, os.X_OK) or entry.is_dir():
                continue
            try:
                registry.register_line(name, Alias(name, name))
            except ValueError:  # not a magic name (``[``, ``c++``)
                continue


# ------------------------------------------------------------------ system


def system_magic(interp: Any, line: str, cell: str | None = None) -> list[str]:
    """Run a shell command and return its output lines: ``%sx cmd``, ``%system cmd``.

    Like ``x = !cmd``. As ``%%sx`` / ``%%system`` / ``%%!`` the cell is the script.
    """
    command = line if cell is None else f"{line}\n{cell}".strip("\n")
    if not command.strip():
        raise UsageError("%sx needs a command to run")
    return getoutput(interp, command)


def system_cell(interp: Any, line: str, cell: str) -> list[str]:
    """Run the cell as a shell script and return its output lines (``%%sx``, ``%%!``)."""
    return system_magic(interp, line, cell)


def sc_magic(interp: Any, line: str) -> str | list[str] | None:
    """Capture a command's output in a variable: ``%sc [-l] [-v] NAME=COMMAND``.

    The text (or with ``-l`` the list of lines) goes to NAME; ``-v`` prints it too.
    IPython's older spelling of ``NAME = !COMMAND``; without ``NAME=`` the text is returned.
    """
    from corral.core.builtin_magics import parse_options

    opts, rest = parse_options(line, "lv")
    name, found, command = rest.partition("=")
    if not found:
        name, command = "", rest
    name = name.strip()
    if found and not name.isidentifier():
        raise UsageError(f"%sc: {name!r} is not a variable name")
    if not command.strip():
        raise UsageError("usage: %sc [-l] [-v] NAME=COMMAND")
    lines = getoutput(interp, command)
    value: str | list[str] = lines if "l" in opts else "".join(f"{x}\n" for x in lines)
    if not name:
        return value
    interp.user_ns[name] = value
    if "v" in opts:
        print(f"{name} ==\n{value!r}" if "l" not in opts else f"{name} ==\n{value}")
    return None


# ------------------------------------------------------------------ package managers

_NEEDS_PREFIX = {"install", "list", "remove", "uninstall", "update", "upgrade"}
_NEEDS_YES = {"install", "remove", "uninstall", "update", "upgrade"}
_ENV_FLAGS = {"-p", "--prefix", "-n", "--name"}


def _conda_executable(tool: str) -> str:
    """Where ``tool`` is: the one the activated environment names, beside Python, or PATH."""
    import shutil

    variable = "MAMBA_EXE" if "mamba" in tool else "CONDA_EXE"
    named = os.environ.get(variable)
    if named and Path(named).is_file():
        return named
    beside = Path(sys.executable).parent / tool
    if beside.is_file():
        return str(beside)
    return shutil.which(tool) or tool


def conda_command(tool: str, line: str, executable: str) -> str:
    """The command line ``%conda LINE`` runs: aimed at the kernel's environment
    (``--prefix sys.prefix``) and, since a kernel cannot answer prompts, with ``--yes``.
    """
    import shlex

    args = shlex.split(line)
    command, rest = (args[0], args[1:]) if args else ("", [])
    extra: list[str] = []
    if command in _NEEDS_YES and not {"-y", "--yes"} & set(rest):
        extra.append("--yes")
    if command in _NEEDS_PREFIX and not _ENV_FLAGS & set(rest):
        extra += ["--prefix", sys.prefix]
    return shlex.join([executable, command, *extra, *rest]) if args else shlex.quote(executable)


def _conda_like(tool: str) -> Any:
    def magic(interp: Any, line: str) -> None:
        if not (Path(sys.prefix) / "conda-meta" / "history").exists():
            raise UsageError(
                "The Python kernel does not appear to be a conda environment. "
                "Please use %pip install instead."
            )
        system(interp, conda_command(tool, line, _conda_executable(tool)))
        print("\nNote: you may need to restart the kernel to use updated packages.")

    magic.__doc__ = f"%{tool} install PACKAGE...: run {tool} on the kernel's own conda environment."
    return magic


def uv_command(line: str) -> str:
    """The command ``%uv LINE`` runs: ``uv pip`` is pointed at the kernel's Python
    (``--python sys.executable``), so it installs where the kernel imports from even when
    another virtual environment is active.
    """
    import importlib.util
    import shlex
    import shutil

    args = shlex.split(line)
    if importlib.util.find_spec("uv") is not None:
        uv = [sys.executable, "-m", "uv"]
    else:
        uv = [shutil.which("uv") or "uv"]
    if args[:1] == ["pip"] and len(args) > 1 and "--python" not in args and "-p" not in args:
        args = [*args[:2], "--python", sys.executable, *args[2:]]
    return shlex.join([*uv, *args])


def uv_magic(interp: Any, line: str) -> None:
    """%uv pip install PACKAGE...: run uv for the kernel's own Python environment."""
    if not line.strip():
        raise UsageError("usage: %uv pip install PACKAGE... (any uv command)")
    system(interp, uv_command(line))
    print("Note: you may need to restart the kernel to use updated packages.")


# ------------------------------------------------------------------ environment, directories


def set_env_magic(interp: Any, line: str) -> None:
    """Set an environment variable: ``%set_env NAME=value`` or ``%set_env NAME value``."""
    arg = line.strip()
    sep = "=" if "=" in arg else " "
    name, found, value = arg.partition(sep)
    if not name.strip() or not found:
        raise UsageError("usage is 'set_env var=val'")
    name, value = name.strip(), value.strip()
    os.environ[name] = value
    print(f"env: {name}={value}")


def _stack(interp: Any) -> list[str]:
    stack: list[str] = interp.user_ns.setdefault("_dirs", [])
    return stack


def _chdir(interp: Any, target: str) -> None:
    try:
        os.chdir(os.path.expanduser(target))
    except OSError as exc:
        raise UsageError(f"{exc.strerror}: {target}") from None
    interp.user_ns.setdefault("_dh", []).append(os.getcwd())


def dirs_magic(interp: Any, line: str) -> list[str]:
    """The directory stack ``%pushd`` fills, most recent first."""
    return list(_stack(interp))


def pushd_magic(interp: Any, line: str) -> list[str]:
    """Remember this directory and change to another: ``%pushd DIR`` (``%popd`` returns)."""
    here = os.getcwd()
    target = line.strip().strip("'\"") or "~"
    marks = bookmarks()
    if target not in marks or Path(target).is_dir():
        target = os.path.expanduser(target)
    else:
        target = marks[target]
    _chdir(interp, target)
    stack = _stack(interp)
    stack.insert(0, here)
    print(os.getcwd())
    return list(stack)


def popd_magic(interp: Any, line: str) -> None:
    """Change back to the directory the last ``%pushd`` left."""
    stack = _stack(interp)
    if not stack:
        raise UsageError("%popd on empty stack")
    _chdir(interp, stack.pop(0))
    print(f"popd -> {os.getcwd()}")


def dhist_magic(interp: Any, line: str) -> None:
    """Show the directories visited (``_dh``): ``%dhist [N]`` the last N, ``%dhist A B``."""
    history: list[str] = interp.user_ns.setdefault("_dh", [os.getcwd()])
    bounds = [int(w) for w in line.split()] if line.strip() else []
    start, stop = 0, len(history)
    if len(bounds) == 1:
        start = max(0, len(history) - bounds[0])
    elif len(bounds) >= 2:
        start, stop = bounds[0], bounds[1]
    print("Directory history (kept in _dh)")
    for index in range(start, min(stop, len(history))):
        print(f"{index}: {history[index]}")


def _bookmarks_file(create: bool = False) -> Path:
    """Where bookmarks are kept: the default profile, made only when one is written
    (``%cd`` reads bookmarks and must not create directories)."""
    from corral.core.profiles import base_dir, profile_dir

    folder = profile_dir("default") if create else base_dir() / "profile_default"
    return folder / "bookmarks.json"


def bookmarks() -> dict[str, str]:
    import json

    try:
        marks: dict[str, str] = json.loads(_bookmarks_file().read_text())
    except (OSError, ValueError):
        return {}
    return marks


def bookmark_magic(interp: Any, line: str) -> None:
    """Name directories for ``%cd NAME`` / ``%pushd NAME``, kept across sessions.

    ``%bookmark NAME [DIR]`` (this directory by default), ``%bookmark -l`` lists,
    ``%bookmark -d NAME`` deletes one, ``%bookmark -r`` deletes all.
    """
    import json
    import shlex

    words = shlex.split(line)
    marks = bookmarks()
    if not words:
        raise UsageError("%bookmark: you must specify the bookmark name")
    if words[0] == "-l":
        width = max((len(k) for k in marks), default=0)
        print("Current bookmarks:")
        for key in sorted(marks):
            print(f"{key:<{width}} -> {marks[key]}")
        return
    if words[0] == "-r":
        marks = {}
    elif words[0] == "-d":
        if len(words) != 2:
            raise UsageError("%bookmark -d: you must specify the bookmark to delete")
        if words[1] not in marks:
            raise UsageError(f"%bookmark -d: Can't delete bookmark '{words[1]}'")
        del marks[words[1]]
    elif len(words) > 2:
        raise UsageError("%bookmark: too many arguments")
    else:
        marks[words[0]] = (
            os.path.abspath(os.path.expanduser(words[1])) if len(words) == 2 else os.getcwd()
        )
    from corral.core.private import write_private

    write_private(_bookmarks_file(create=True), json.dumps(marks, indent=1))


def killbgscripts_magic(interp: Any, line: str) -> None:
    """Kill scripts started in the background (``%%script --bg``); corral starts none."""
    print("All background processes were killed.")


def register_shell_magics(registry: MagicsRegistry) -> None:
    """Add the default aliases and these magics to ``registry``."""
    for name, command in DEFAULT_ALIASES.items():
        registry.register_line(name, Alias(name, command))
    for name, func in (
        ("alias", alias_magic),
        ("unalias", unalias_magic),
        ("rehashx", rehashx_magic),
        ("system", system_magic),
        ("sx", system_magic),
        ("sc", sc_magic),
        ("conda", _conda_like("conda")),
        ("mamba", _conda_like("mamba")),
        ("micromamba", _conda_like("micromamba")),
        ("uv", uv_magic),
        ("set_env", set_env_magic),
        ("dirs", dirs_magic),
        ("pushd", pushd_magic),
        ("popd", popd_magic),
        ("dhist", dhist_magic),
        ("bookmark", bookmark_magic),
        ("killbgscripts", killbgscripts_magic),
    ):
        registry.register_line(name, func)
    registry.register_cell("system", system_cell)
    registry.register_cell("sx", system_cell)
