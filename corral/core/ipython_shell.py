"""``get_ipython()`` for code written for IPython: a shell object over corral's interpreter.

Libraries and notebooks reach for ``get_ipython()`` to register magics, hook into cell
execution (``events.register("post_execute", ...)``), publish displays, read the config
or find the kernel. :class:`ZMQInteractiveShell` gives them that surface, backed by the
corral interpreter: its magics registry, its namespace, its notification center.

Nothing here imports IPython. Only when user code imports IPython itself (directly, or
through matplotlib-inline, ipywidgets, tqdm...) does :func:`adopt_ipython` make the same
shell object an instance of IPython's ``InteractiveShell`` as well (its class is swapped
for a subclass of both) and register it as IPython's singleton, so ``IPython.get_ipython()``
returns it and ``IPython.display`` publishes through it. IPython's ``__init__`` never runs:
the shell gets IPython's display formatter and traits, not its history, prompts or hooks.

The class is named ``ZMQInteractiveShell`` on purpose: the idiom
``get_ipython().__class__.__name__ == "ZMQInteractiveShell"`` is how many libraries tell a
Jupyter kernel from a terminal, and a corral kernel is a Jupyter kernel.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

from corral.core.events import CLEAR_OUTPUT, DISPLAY_DATA, UPDATE_DISPLAY_DATA

__all__ = [
    "AliasManager",
    "DisplayPublisher",
    "EventManager",
    "ExtensionManager",
    "MagicsManager",
    "ZMQInteractiveShell",
    "adopt_ipython",
    "shell_for",
]

#: The events IPython defines, with the arguments their callbacks get.
EVENTS = ("pre_execute", "pre_run_cell", "post_execute", "post_run_cell", "shell_initialized")

#: Extensions that ship inside IPython, found by their short name as IPython does.
_BUILTIN_EXTENSIONS = {"autoreload", "storemagic"}


class EventManager:
    """``shell.events``: callbacks run around every cell, as IPython runs them."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}

    def register(self, event: str, function: Callable[..., Any]) -> None:
        """Call ``function`` on every ``event`` (``pre_run_cell``, ``post_execute``...)."""
        if not callable(function):
            raise TypeError(f"need a callable, got {function!r}")
        if event not in self.callbacks:
            raise KeyError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
        if function not in self.callbacks[event]:
            self.callbacks[event].append(function)

    def unregister(self, event: str, function: Callable[..., Any]) -> None:
        """Stop calling ``function`` on ``event``; ValueError if it was not registered."""
        callbacks = self.callbacks[event]
        if function in callbacks:
            callbacks.remove(function)
            return
        raise ValueError(f"function {function!r} is not registered as {event} callback")

    def trigger(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Run the callbacks of ``event``; one that raises is reported and the rest run."""
        for function in list(self.callbacks[event]):
            try:
                function(*args, **kwargs)
            except Exception:
                print(f"Error in callback {function!r} (for {event}):", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)

    def active(self) -> bool:
        """Whether any callback is registered (the interpreter skips the events if not)."""
        return any(self.callbacks.values())


class ExecutionInfo:
    """What ``pre_run_cell`` callbacks receive (IPython's ``ExecutionInfo``)."""

    def __init__(self, raw_cell: str, store_history: bool, silent: bool) -> None:
        self.raw_cell = raw_cell
        self.store_history = store_history
        self.silent = silent
        self.shell_futures = True
        self.cell_id = None
        self.transformed_cell = raw_cell

    def __repr__(self) -> str:
        return f"<ExecutionInfo raw_cell={self.raw_cell[:50]!r} silent={self.silent}>"


class ExecutionResult:
    """What ``post_run_cell`` callbacks receive (IPython's ``ExecutionResult``)."""

    def __init__(self, info: ExecutionInfo, execution_count: int | None) -> None:
        self.info = info
        self.execution_count = execution_count
        self.error_before_exec: BaseException | None = None
        self.error_in_exec: BaseException | None = None
        self.result: Any = None

    @property
    def success(self) -> bool:
        return self.error_before_exec is None and self.error_in_exec is None

    def raise_error(self) -> None:
        """Re-raise the error of the execution, if there was one."""
        if self.error_before_exec is not None:
            raise self.error_before_exec
        if self.error_in_exec is not None:
            raise self.error_in_exec

    def __repr__(self) -> str:
        return f"<ExecutionResult execution_count={self.execution_count} success={self.success}>"


class DisplayPublisher:
    """``shell.display_pub``: what ``IPython.display`` publishes through."""

    def __init__(self, interpreter: Any) -> None:
        self._interp = interpreter

    def publish(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: str | None = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        """Post a display (or, with ``update``, the update of one) for the frontend."""
        if not isinstance(data, dict):
            raise TypeError(f"display data must be a dict of MIME types, not {type(data)}")
        kind = UPDATE_DISPLAY_DATA if update else DISPLAY_DATA
        center, sender = self._target()
        center.post(kind, sender, data=data, metadata=metadata or {}, transient=transient or {})

    def clear_output(self, wait: bool = False) -> None:
        """Clear the output area now, or when the next output arrives (``wait``)."""
        center, sender = self._target()
        center.post(CLEAR_OUTPUT, sender, wait=bool(wait))

    def _target(self) -> tuple[Any, Any]:
        # The current display target (a %%capture stand-in, say), else this interpreter.
        from corral.core.display import get_current

        current = get_current() or self._interp
        return current.center, current


def _line_adapter(func: Callable[..., Any]) -> Callable[[Any, str], Any]:
    """A corral line magic calling an IPython-style ``func(line)``."""
    local = getattr(func, "needs_local_scope", False)

    def magic(interp: Any, line: str) -> Any:
        return func(line, local_ns=interp.user_ns) if local else func(line)

    magic.__doc__ = func.__doc__
    return magic


def _cell_adapter(func: Callable[..., Any]) -> Callable[[Any, str, str], Any]:
    """A corral cell magic calling an IPython-style ``func(line, cell)``."""
    local = getattr(func, "needs_local_scope", False)

    def magic(interp: Any, line: str, cell: str) -> Any:
        return func(line, cell, local_ns=interp.user_ns) if local else func(line, cell)

    magic.__doc__ = func.__doc__
    return magic


class MagicsManager:
    """``shell.magics_manager``: IPython's view of corral's magics registry."""

    def __init__(self, shell: ZMQInteractiveShell) -> None:
        self._shell = shell

    @property
    def registry(self) -> Any:
        return self._shell.interpreter.magics

    @property
    def magics(self) -> dict[str, dict[str, Callable[..., Any]]]:
        """``{"line": {name: func}, "cell": {name: func}}`` (a snapshot)."""
        reg = self.registry
        names = reg.names()
        return {
            "line": {n: reg.line(n) for n in names["line"]},
            "cell": {n: reg.cell(n) for n in names["cell"]},
        }

    def register_function(
        self, func: Callable[..., Any], magic_kind: str = "line", magic_name: str | None = None
    ) -> None:
        """Register an IPython-style magic function (``func(line)`` / ``func(line, cell)``)."""
        if magic_kind not in ("line", "cell", "line_cell"):
            raise ValueError(f"magic_kind must be line, cell or line_cell, not {magic_kind!r}")
        name = magic_name or func.__name__
        if magic_kind in ("line", "line_cell"):
            self.registry.register_line(name, _line_adapter(func))
        if magic_kind in ("cell", "line_cell"):
            self.registry.register_cell(name, _cell_adapter(func))

    def register(self, *magic_objects: Any) -> None:
        """Register IPython ``Magics`` classes or instances (what extensions pass)."""
        for obj in magic_objects:
            instance = obj(shell=self._shell) if isinstance(obj, type) else obj
            table = getattr(instance, "magics", None) or {}
            for name, func in table.get("line", {}).items():
                if isinstance(func, str):
                    func = getattr(instance, func)
                self.registry.register_line(name, _line_adapter(func))
            for name, func in table.get("cell", {}).items():
                if isinstance(func, str):
                    func = getattr(instance, func)
                self.registry.register_cell(name, _cell_adapter(func))

    def lsmagic(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = self.registry.names()
        return names


class ExtensionManager:
    """``shell.extension_manager``: ``%load_ext`` and friends, as IPython defines them.

    An extension is a module with ``load_ipython_extension(shell)`` (and optionally
    ``unload_ipython_extension(shell)``).
    """

    def __init__(self, shell: ZMQInteractiveShell) -> None:
        self._shell = shell
        self.loaded: set[str] = set()

    def _import(self, name: str) -> Any:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name in _BUILTIN_EXTENSIONS and exc.name == name:
                return importlib.import_module(f"IPython.extensions.{name}")
            raise

    def load_extension(self, name: str) -> str | None:
        """Load ``name``; "already loaded" or "no load function" when nothing was done."""
        if name in self.loaded:
            return "already loaded"
        module = self._import(name)
        load = getattr(module, "load_ipython_extension", None)
        if load is None:
            return "no load function"
        load(self._shell)
        self.loaded.add(name)
        return None

    def unload_extension(self, name: str) -> str | None:
        """Unload ``name``; "not loaded" or "no unload function" when nothing was done."""
        if name not in self.loaded:
            return "not loaded"
        module = self._import(name)
        unload = getattr(module, "unload_ipython_extension", None)
        if unload is None:
            return "no unload function"
        unload(self._shell)
        self.loaded.discard(name)
        return None

    def reload_extension(self, name: str) -> None:
        """Unload, re-import and load ``name`` again (just load it if it was not loaded)."""
        if name in self.loaded:
            self.unload_extension(name)
            module = self._import(name)
            importlib.reload(module)
        self.load_extension(name)


class AliasManager:
    """``shell.alias_manager``: IPython's alias API over the aliases ``%alias`` makes.

    ``%store`` keeps and restores aliases through it (``%store -r NAME`` asks it first
    whether NAME is a stored alias). An alias is a line magic of the interpreter here.
    """

    def __init__(self, shell: ZMQInteractiveShell) -> None:
        self._shell = shell

    def define_alias(self, name: str, cmd: str) -> None:
        """Make ``%name`` run the shell command ``cmd`` (``%s``/``%l`` as in ``%alias``)."""
        from corral.core.magics_shell import alias_magic

        alias_magic(self._shell.interpreter, f"{name} {cmd}")

    soft_define_alias = define_alias

    def undefine_alias(self, name: str) -> None:
        """Forget the alias ``name``; ValueError if there is none."""
        self.retrieve_alias(name)
        self._shell.interpreter.magics.remove_line(name)

    def retrieve_alias(self, name: str) -> str:
        """The command of the alias ``name``; ValueError if there is none, as in IPython."""
        from corral.core.magics_shell import Alias

        magic = self._shell.interpreter.magics.line(name)
        if not isinstance(magic, Alias):
            raise ValueError(f"{name} is not an alias")
        return magic.command

    def is_alias(self, name: str) -> bool:
        """Whether ``%name`` is an alias."""
        try:
            self.retrieve_alias(name)
        except ValueError:
            return False
        return True

    @property
    def aliases(self) -> list[tuple[str, str]]:
        """``(name, command)`` of every alias."""
        from corral.core.magics_shell import _aliases

        return _aliases(self._shell.interpreter.magics)


class _Config(dict):  # type: ignore[type-arg]
    """A stand-in for traitlets' ``Config`` when traitlets is not installed."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.setdefault(name, _Config())

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def merge(self, other: dict[str, Any]) -> None:
        for key, value in other.items():
            if isinstance(value, dict) and isinstance(self.get(key), dict):
                self[key].update(value)
            else:
                self[key] = value


class ZMQInteractiveShell:
    """The object ``get_ipython()`` returns: IPython's shell API over a corral interpreter."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.events = EventManager()
        self.display_pub = DisplayPublisher(interpreter)
        self._corral_magics = MagicsManager(self)
        self._corral_extensions = ExtensionManager(self)
        self.configurables: list[Any] = []
        self._corral_config: Any = None

    def __repr__(self) -> str:
        return f"<corral {type(self).__name__} object>"

    def __getattr__(self, name: str) -> Any:
        """The rest of IPython's shell API (``display_formatter``, ``has_trait``...).

        Reached only for names this class lacks: asking for one is user code asking for
        IPython, so IPython is adopted then (the start stays IPython-free) and the name
        looked up again. Private names never import anything.
        """
        interpreter = self.__dict__.get("interpreter")
        if name.startswith("_") or interpreter is None or interpreter._shell_adopted:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            adopt_ipython(interpreter)
        except ImportError:
            interpreter._shell_adopted = True  # no IPython to adopt: do not try again
        return object.__getattribute__(self, name)

    # Properties, not instance attributes: once IPython is adopted, its traits of the same
    # names (data descriptors on a base class) would otherwise shadow the instance's values.

    @property
    def magics_manager(self) -> MagicsManager:
        return self._corral_magics

    @property
    def extension_manager(self) -> ExtensionManager:
        return self._corral_extensions

    @property
    def alias_manager(self) -> AliasManager:
        return AliasManager(self)

    @property
    def db(self) -> Any:
        """IPython's key/value store, where ``%store`` keeps variables; made on first use.

        IPython's own property needs a ``profile_dir`` this shell does not have. The store
        lives in the ``db`` directory of corral's default profile, beside the history, so
        stored variables outlive the kernel as they do under ipykernel.
        """
        db = self.__dict__.get("_corral_db")
        if db is None:
            from IPython.external.pickleshare import PickleShareDB

            from corral.core.profiles import profile_dir

            # IPython ships it untyped
            db = PickleShareDB(str(profile_dir("default") / "db"))  # type: ignore[no-untyped-call]
            self.__dict__["_corral_db"] = db
        return db

    @db.setter
    def db(self, value: Any) -> None:
        self.__dict__["_corral_db"] = value

    @property
    def input_transformers_cleanup(self) -> list[Callable[[list[str]], list[str]]]:
        """Cell transformers (lines in, lines out) run before magics are read: the
        interpreter's own list, so IPython-style code that appends to it works here."""
        return self.interpreter.input_transformers  # type: ignore[no-any-return]

    # -------------------------------------------------------------- namespace

    @property
    def user_ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self.interpreter.user_ns
        return ns

    @property
    def user_global_ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self.interpreter.user_ns
        return ns

    @property
    def user_ns_hidden(self) -> dict[str, Any]:
        ns = self.interpreter.user_ns
        return {name: ns.get(name) for name in self.interpreter.hidden_names()}

    @property
    def kernel(self) -> Any:
        """The kernel serving this shell (None when the interpreter runs without one)."""
        return getattr(self.interpreter, "kernel", None)

    @property
    def ast_node_interactivity(self) -> str:
        """Which statements of a cell show their value: ``last_expr`` (the default),
        ``all``, ``last``, ``none`` or ``last_expr_or_assign``, as in IPython."""
        return str(self.interpreter.ast_node_interactivity)

    @ast_node_interactivity.setter
    def ast_node_interactivity(self, mode: str) -> None:
        from corral.core.interactivity import check_mode

        self.interpreter.ast_node_interactivity = check_mode(mode)

    def has_trait(self, name: str) -> bool:
        """IPython's trait check; ``kernel`` is one when a kernel serves the shell.

        ``get_ipython().has_trait("kernel")`` is another way libraries tell a Jupyter kernel
        from a terminal; ipykernel's shell answers True, and so does this one.
        """
        if name == "kernel":
            return self.kernel is not None
        base = getattr(super(), "has_trait", None)  # IPython's, once it is adopted
        return bool(base is not None and base(name))

    @property
    def execution_count(self) -> int:
        return int(self.interpreter.execution_count)

    @property
    def config(self) -> Any:
        """The configuration (traitlets ``Config``) that ``%config`` changes.

        It has an ``IPKernelApp`` section when a kernel serves the shell: libraries look
        for that name to know they run under a Jupyter kernel rather than a terminal.
        """
        if self._corral_config is None:
            try:
                from traitlets.config import Config
            except ImportError:
                config: Any = _Config()
            else:
                config = Config()
            if self.kernel is not None:
                config["IPKernelApp"] = type(config)()
            self.__dict__["_corral_config"] = config
        return self._corral_config

    @config.setter
    def config(self, value: Any) -> None:
        self.__dict__["_corral_config"] = value

    def push(self, variables: dict[str, Any] | str, interactive: bool = True) -> None:
        """Put ``variables`` (a dict, or names in the caller's frame) into the namespace."""
        if isinstance(variables, str):
            frame = sys._getframe(1)
            names = variables.replace(",", " ").split()
            variables = {n: eval(n, frame.f_globals, frame.f_locals) for n in names}
        self.interpreter.user_ns.update(variables)

    def ev(self, expr: str) -> Any:
        """Evaluate ``expr`` in the user namespace."""
        return eval(expr, self.interpreter.user_ns)

    def ex(self, cmd: str) -> None:
        """Execute ``cmd`` in the user namespace."""
        exec(cmd, self.interpreter.user_ns)

    # ----------------------------------------------------------------- magics

    def run_line_magic(self, magic_name: str, line: str, _stack_depth: int = 1) -> Any:
        """Run ``%magic_name line`` and return its result."""
        return self.interpreter.magics.call_line(self.interpreter, magic_name, line)

    def run_cell_magic(self, magic_name: str, line: str, cell: str) -> Any:
        """Run ``%%magic_name line`` with ``cell`` as its body and return its result."""
        return self.interpreter.magics.call_cell(self.interpreter, magic_name, line, cell)

    def magic(self, arg_s: str) -> Any:
        """Old-style ``magic("name args")``."""
        name, _, line = arg_s.lstrip("%").partition(" ")
        return self.run_line_magic(name, line)

    def find_line_magic(self, magic_name: str) -> Any:
        return self.interpreter.magics.line(magic_name)

    def find_cell_magic(self, magic_name: str) -> Any:
        return self.interpreter.magics.cell(magic_name)

    def find_magic(self, magic_name: str, magic_kind: str = "line") -> Any:
        reg = self.interpreter.magics
        return reg.cell(magic_name) if magic_kind == "cell" else reg.line(magic_name)

    def register_magic_function(
        self, func: Callable[..., Any], magic_kind: str = "line", magic_name: str | None = None
    ) -> None:
        """Register ``func`` as a magic, IPython style (``func(line)``, ``func(line, cell)``)."""
        self.magics_manager.register_function(func, magic_kind, magic_name)

    def register_magics(self, *magic_objects: Any) -> None:
        """Register IPython ``Magics`` classes or instances."""
        self.magics_manager.register(*magic_objects)

    # ----------------------------------------------------------- running code

    def system(self, cmd: str) -> None:
        from corral.core.builtin_magics import system

        system(self.interpreter, cmd)

    def getoutput(self, cmd: str) -> list[str]:
        from corral.core.builtin_magics import getoutput

        return getoutput(self.interpreter, cmd)

    def run_cell(
        self, raw_cell: str, store_history: bool = False, silent: bool = False, **kwargs: Any
    ) -> ExecutionResult:
        """Run ``raw_cell`` inside the current execution (its output goes to this cell)."""
        info = ExecutionInfo(raw_cell, store_history, silent)
        result = ExecutionResult(info, self.execution_count)
        try:
            result.result = self.interpreter.run_source(raw_cell, filename="<run_cell>")
        except Exception as exc:
            result.error_in_exec = exc
            self.showtraceback()
        return result

    def showtraceback(self, exc_tuple: Any = None, *args: Any, **kwargs: Any) -> None:
        """Show the exception being handled (or ``exc_tuple``) as the cell's error output."""
        exc = exc_tuple[1] if exc_tuple else sys.exc_info()[1]
        if exc is not None:
            self.interpreter.show_exception(exc)

    def set_next_input(self, text: str, replace: bool = False) -> None:
        self.interpreter.add_payload({"source": "set_next_input", "text": text, "replace": replace})

    def enable_matplotlib(self, gui: str | None = None) -> tuple[str, str]:
        """``%matplotlib [gui]``: ``(gui, backend)`` now in use."""
        from corral.core.compat_magics import enable_matplotlib

        return enable_matplotlib(self, gui)

    def enable_gui(self, gui: str | None = None) -> None:
        """GUI event loops are not integrated in a corral kernel; inline needs none."""


def shell_for(interpreter: Any) -> ZMQInteractiveShell:
    """The shell of ``interpreter``, made on first use (IPython's kind if it is imported)."""
    shell = shell_for_plain(interpreter)
    if "IPython.core.interactiveshell" in sys.modules and not interpreter._shell_adopted:
        adopt_ipython(interpreter)
    return shell


def adopt_ipython(interpreter: Any) -> None:
    """Make the shell of ``interpreter`` IPython's ``InteractiveShell`` singleton too.

    Called once IPython has been imported. Leaves a real IPython shell alone (corral
    running inside IPython or ipykernel).
    """
    from IPython.core.formatters import DisplayFormatter
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import SingletonConfigurable

    shell = shell_for_plain(interpreter)
    interpreter._shell_adopted = True
    if isinstance(shell, InteractiveShell) or InteractiveShell.initialized():
        return
    hybrid = _hybrid_class(InteractiveShell)
    state = dict(shell.__dict__)
    shell.__class__ = hybrid
    # traitlets' per-instance state; IPython's __init__ never runs
    hybrid.setup_instance(shell)  # type: ignore[attr-defined]
    shell.__dict__.update(state)
    shell.display_formatter = DisplayFormatter(parent=shell)  # type: ignore[attr-defined]
    for klass in hybrid.mro():
        if (
            isinstance(klass, type)
            and issubclass(klass, SingletonConfigurable)
            and klass is not SingletonConfigurable
        ):
            klass._instance = shell  # type: ignore[assignment]
    from corral.core import display as corral_display

    corral_display.set_formatter(shell.display_formatter.format)
    # %precision and %pprint typed before IPython came in still hold.
    plain = shell.display_formatter.formatters["text/plain"]
    plain.pprint = corral_display._pretty
    if corral_display._float_format is not None:
        plain.float_precision = corral_display._float_format


def shell_for_plain(interpreter: Any) -> ZMQInteractiveShell:
    """The shell of ``interpreter`` without adopting IPython (see :func:`shell_for`)."""
    shell: ZMQInteractiveShell | None = interpreter._shell
    if shell is None:
        shell = ZMQInteractiveShell(interpreter)
        interpreter._shell = shell
        interpreter.shell_events = shell.events
    return shell


_hybrids: dict[type, type] = {}


def _hybrid_class(base: type) -> type:
    hybrid = _hybrids.get(base)
    if hybrid is None:
        hybrid = type(
            "ZMQInteractiveShell",
            (ZMQInteractiveShell, base),
            {
                "__doc__": ZMQInteractiveShell.__doc__,
                "__module__": __name__,
                "__init__": ZMQInteractiveShell.__init__,
            },
        )
        _hybrids[base] = hybrid
    return hybrid
