"""The interpreter: runs user code and posts everything it does, as it happens (sans-I/O).

It knows no sockets. ``execute`` returns an :class:`ExecutionResult` and, meanwhile, posts
``EXECUTE_STARTED``, ``STREAM``, ``DISPLAY_DATA``..., ``EXECUTE_RESULT``, ``ERROR`` and
finally ``EXECUTE_FINISHED`` (see :mod:`corral.core.events`) with the interpreter itself as
the sender. A transport turns those into wire messages; a test just observes them.

A cell runs as a module whose last expression, if any, is evaluated separately so its
value reaches the display hook (``Out``, ``_``, ``EXECUTE_RESULT``). Magic syntax is
rewritten to plain Python first (:mod:`corral.core.magics`). Heavy modules (jedi, sqlite3,
asyncio, subprocess) are imported where they are needed, so creating an interpreter is cheap.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import linecache
import sys
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

from corral.core.builtin_magics import getoutput, register_builtin_magics, system
from corral.core.display import display, displays_itself, format_object, set_current
from corral.core.events import (
    ERROR,
    EXECUTE_FINISHED,
    EXECUTE_RESULT,
    EXECUTE_STARTED,
)
from corral.core.history import HistoryManager
from corral.core.interactivity import DEFAULT as DEFAULT_MODE
from corral.core.interactivity import current_mode, steps
from corral.core.iostreams import (
    StdinNotImplementedError,
    redirect_output,
    route_stdin,
    sync_output,
)
from corral.core.magics import (
    NO_VAR_EXPAND,
    MagicsRegistry,
    UsageError,
    automagic,
    clean_cell,
    split_cell_magic,
    transform_cell,
    transform_source,
    var_expand,
)
from corral.core.tracebacks import (
    cell_filename,
    format_exception,
    hide_from_tracebacks,
    name_cell,
    own_traceback,
)
from corral.notification.center import NotificationCenter, shared_center

__all__ = [
    "ExecutionResult",
    "Interpreter",
    "StdinNotImplementedError",
    "UsageError",
    "get_interpreter",
]

hide_from_tracebacks(__file__)
hide_from_tracebacks(sys.modules["corral.core.magics"].__file__ or "")

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def _forget_shown_warnings() -> None:
    """Let each cell show its warnings again, as under ipykernel.

    Python's ``default`` action shows a warning once per code location for the life of
    the process. In a notebook that hides it for good: re-run a cell (its old output
    cleared by the frontend) or call the same function from a later cell, and the warning
    is gone. IPython changes the warning filters while it prepares every cell, which
    empties every module's once-per-location memory; leaving a ``catch_warnings`` block
    does the same here, through the public API. Within one cell a warning still shows
    once; the ``once`` action still means once per process.
    """
    with warnings.catch_warnings():
        pass


def _run_unsuspended(run: Any) -> Any:
    """The result of a coroutine that never waits (a cell without ``await``), run with no
    event loop: a cell pays for asyncio only once asyncio is in use."""
    try:
        run.send(None)
    except StopIteration as done:
        return done.value
    run.close()
    raise RuntimeError("this cell awaits, but its event loop is already running a cell")


async def _outcome(run: Any) -> tuple[BaseException | None, Any, Any]:
    """``(error, None, context)`` or ``(None, result, context)`` of ``run``.

    An error is handed back, not raised in the task, so its traceback starts at the cell
    (not in asyncio) and asyncio never logs it as a task exception nobody retrieved. The
    task's context variables come back too: a task runs in a copy of them, and what a
    cell sets (numpy's print options, a ``decimal`` context) must outlive the cell.
    """
    import contextvars

    try:
        return None, await run, contextvars.copy_context()
    except BaseException as error:  # noqa: B036 - KeyboardInterrupt and SystemExit too
        return error, None, contextvars.copy_context()


def _adopt(context: Any) -> None:
    """Set in this thread's context every variable whose value differs in ``context``."""
    missing = object()
    for var, value in context.items():
        if var.get(missing) is not value:
            var.set(value)


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """What ``execute`` returns: the content of a Jupyter ``execute_reply``.

    A stdlib dataclass, not attrs: this module is on every kernel's startup path, where
    importing attrs would cost more than a tenth of the whole startup.
    """

    status: str  # "ok" | "error" | "aborted"
    execution_count: int
    payload: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    user_expressions: dict[str, Any] = dataclasses.field(default_factory=dict)
    ename: str = ""
    evalue: str = ""
    traceback: list[str] = dataclasses.field(default_factory=list)


def get_interpreter() -> Interpreter | None:
    """The interpreter running now, or the one that ran last (None before any exists)."""
    from corral.core.display import get_current

    current: Interpreter | None = get_current()
    return current


class _Accessor:
    """``__corral__`` in the user namespace: what rewritten magic syntax calls."""

    __slots__ = ("_interp",)

    def __init__(self, interp: Interpreter) -> None:
        self._interp = interp

    def __repr__(self) -> str:
        return "<corral interpreter accessor>"

    def _expand(self, text: str, frame: Any) -> str:
        namespace = {**frame.f_globals, **frame.f_locals}
        return var_expand(text, namespace)

    def line_magic(self, name: str, line: str) -> Any:
        if name not in NO_VAR_EXPAND:
            line = self._expand(line, sys._getframe(1))
        return self._interp.magics.call_line(self._interp, name, line)

    def cell_magic(self, name: str, line: str, cell: str) -> Any:
        """A cell magic run from inside another (``%%time`` over ``%%px``)."""
        return self._interp.magics.call_cell(self._interp, name, line, cell)

    def system(self, cmd: str) -> None:
        system(self._interp, self._expand(cmd, sys._getframe(1)))

    def getoutput(self, cmd: str) -> list[str]:
        return getoutput(self._interp, self._expand(cmd, sys._getframe(1)))

    def help(self, name: str, detail_level: int) -> None:
        self._interp._help(name, detail_level)


class _Exit:
    """``exit`` / ``quit`` in the user namespace: ask the frontend to leave.

    Python's own ``exit()`` raises SystemExit, which in a kernel is only a traceback; a
    frontend leaves when the reply carries an ``ask_exit`` payload, as ipykernel sends it.
    Typed bare (``exit``), it does the same, as in IPython.
    """

    __slots__ = ("_interp", "_name")

    def __init__(self, interp: Interpreter, name: str) -> None:
        self._interp = interp
        self._name = name

    def __repr__(self) -> str:
        return f"Use {self._name}() or Ctrl-D to leave."

    def __call__(self, keep_kernel: bool = False) -> None:
        """Leave the frontend; with ``keep_kernel=True`` the kernel keeps running."""
        self._interp.add_payload({"source": "ask_exit", "keepkernel": bool(keep_kernel)})


def _suppressed(code: str) -> bool:
    """A cell whose last line ends with ``;`` shows no result."""
    import io
    import tokenize

    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type not in (
                tokenize.COMMENT,
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.ENDMARKER,
                tokenize.DEDENT,
                tokenize.INDENT,
            ):
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return code.rstrip().endswith(";")
    return last is not None and last.string == ";"


def _future_flags(tree: ast.Module) -> int:
    import __future__

    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                feature = getattr(__future__, alias.name, None)
                flags |= getattr(feature, "compiler_flag", 0)
    return flags


_watching_ipython = False


def _watch_ipython() -> None:
    """Adopt IPython for the current interpreter's shell once user code imports IPython."""
    global _watching_ipython
    if _watching_ipython:
        return
    _watching_ipython = True
    from corral.core.import_hooks import when_imported

    when_imported("IPython", _on_ipython_imported)


def _on_ipython_imported(module: Any) -> None:
    from corral.core.display import get_current

    interp = get_current()
    # Under %%capture the display target is a stand-in that forwards to its interpreter:
    # adopting IPython for the stand-in made IPython's shell one that dies with the
    # capture, and the interpreter's own shell could never become IPython's afterwards
    # (inline figures stopped showing, %matplotlib raised TraitError).
    while getattr(interp, "stands_in_for", None) is not None:
        interp = interp.stands_in_for
    if interp is not None and not interp._shell_adopted:
        from corral.core.ipython_shell import adopt_ipython

        adopt_ipython(interp)


def _is_macro(value: Any) -> bool:
    """Whether ``value`` is a ``%macro`` (imported only when a value is named Macro)."""
    from corral.core.magics_history import Macro

    return isinstance(value, Macro)


class Interpreter:
    """Runs cells in ``user_ns`` and posts what happens to ``center``.

    ``sender`` is the interpreter's stable name (``self.name``) for bridges that carry
    notifications to other processes; in this process, posts use the object itself.
    """

    def __init__(
        self,
        center: NotificationCenter | None = None,
        *,
        user_ns: dict[str, Any] | None = None,
        history: HistoryManager | None = None,
        sender: str = "interpreter",
    ) -> None:
        self.center = center if center is not None else shared_center
        self.name = sender
        self.history_manager = history if history is not None else HistoryManager()
        self.execution_count = 1
        self.input_handler: Callable[[str, bool], str] | None = None
        #: Whole-cell rewriters run on each cell before its magic syntax is read, with
        #: the signature of IPython's ``input_transformers_cleanup`` (lines in, lines out)
        #: so one transformer serves both shells; ``%autopx`` turns cells into ``%%px``.
        self.input_transformers: list[Callable[[list[str]], list[str]]] = []
        self.colors = False
        #: How tracebacks are shown (``%xmode``): "Minimal" is the error line alone.
        self.xmode = "Context"
        #: A one-line cell may call a line magic without its ``%`` (``%automagic``).
        self.automagic = True
        #: Start pdb on the failing frame after each error (``%pdb``).
        self.call_pdb = False
        self.magics = MagicsRegistry()
        register_builtin_magics(self.magics)
        self.user_ns: dict[str, Any] = user_ns if user_ns is not None else {}
        self._payload: list[dict[str, Any]] = []
        self._serial = 0
        self._flags = 0
        self._loop: Any = None
        self._hidden: frozenset[str] = frozenset()
        #: The kernel serving this interpreter, if any (``get_ipython().kernel``).
        self.kernel: Any = None
        #: ``get_ipython()``'s shell and its events, made on first use (ipython_shell).
        self._shell: Any = None
        self._shell_adopted = False
        self.shell_events: Any = None
        #: Which statements of a cell show their value (``get_ipython()`` sets it).
        self.ast_node_interactivity = DEFAULT_MODE
        #: ``code -> filename`` for cells while a debugger maps cells to files (else None).
        self.cell_namer: Callable[[str], str] | None = None
        self._init_namespace([""])
        set_current(self)
        _watch_ipython()

    # ------------------------------------------------------------------ namespace

    def _init_namespace(self, inputs: list[str]) -> None:
        ns = self.user_ns
        ns.setdefault("__name__", "__main__")
        ns.setdefault("__builtins__", builtins)
        self._out: dict[int, Any] = {}
        self._in = inputs
        self._unders: tuple[Any, Any, Any] = ("", "", "")
        self._last_input = ""  # the cell before: what `_i` names while the next one runs
        ns.update(
            {
                "In": self._in,
                "_ih": self._in,
                "Out": self._out,
                "_oh": self._out,
                "_": "",
                "__": "",
                "___": "",
                "_i": "",
                "_ii": "",
                "_iii": "",
                "display": display,
                "get_interpreter": get_interpreter,
                "get_ipython": self.get_ipython,
                "exit": _Exit(self, "exit"),
                "quit": _Exit(self, "quit"),
                "__corral__": _Accessor(self),
            }
        )
        self._hidden = frozenset(ns)

    def get_ipython(self) -> Any:
        """The IPython-compatible shell over this interpreter (``get_ipython()``)."""
        from corral.core.ipython_shell import shell_for

        return shell_for(self)

    def hidden_names(self) -> frozenset[str]:
        """Names the interpreter put in ``user_ns`` itself (``%who`` does not list them)."""
        return self._hidden

    def reset_namespace(self) -> None:
        """Forget the user's variables and outputs; keep inputs and the counter (``%reset``)."""
        inputs = self._in
        self.user_ns.clear()
        self._init_namespace(inputs)

    def reset(self) -> None:
        """Start afresh: empty namespace, counter back to 1, a new history session."""
        self.user_ns.clear()
        self._init_namespace([""])
        self.execution_count = 1
        self.history_manager.new_session()

    # ------------------------------------------------------------------ execution

    def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool = True,
    ) -> ExecutionResult:
        """Run ``code`` as one cell; what it prints and shows is posted as it happens.

        ``silent`` runs quietly (no result, no history, counter unchanged); with
        ``store_history=False`` the cell is neither numbered nor stored.
        """
        store = store_history and not silent
        count = self.execution_count
        if self.cell_namer is not None:
            filename = self.cell_namer(code)
            name_cell(filename, count)
        elif store:
            filename = cell_filename(count)
        else:
            self._serial += 1
            filename = cell_filename(count, self._serial)
        self._payload = []
        set_current(self)
        _forget_shown_warnings()
        self.center.post(EXECUTE_STARTED, self, code=code, execution_count=count, silent=silent)
        cell = clean_cell(code)
        cell = self._transform_input(cell) if self.input_transformers else cell
        linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
        magic_cell = split_cell_magic(cell)
        if not magic_cell and self.automagic and "\n" not in cell.strip():
            cell = automagic(cell, self._callable_magic) or cell
        source = cell if magic_cell else transform_cell(cell)
        if store:
            self._store_input(count, source, code)
        status, error, expressions = "ok", None, {}
        handler = self.input_handler if allow_stdin else None
        events = self.shell_events if self.shell_events and self.shell_events.active() else None
        run_info: Any = None
        failure: BaseException | None = None
        try:
            with redirect_output(self.center, self), route_stdin(handler):
                if events is not None:
                    run_info = self._pre_events(events, code, store, silent)
                try:
                    if magic_cell:
                        name, line, body = magic_cell
                        has_value = True
                        value = self.magics.call_cell(self, name, line, body)
                    else:
                        shown = (
                            None if silent else partial(self._displayhook, count=count, store=store)
                        )
                        has_value, value = self._run(source, filename, self.user_ns, shown)
                    if has_value and not silent and not _suppressed(cell):
                        self._displayhook(value, count, store)
                    if user_expressions:
                        expressions = self._user_expressions(user_expressions)
                except BaseException as exc:  # noqa: B036 - KeyboardInterrupt is the user's
                    status, error = "error", self._report(exc)
                    failure = exc
                    if self.call_pdb and isinstance(exc, Exception) and not silent:
                        self._post_mortem(exc)
                if events is None and self.shell_events and self.shell_events.active():
                    # Registered by this very cell (importing pyplot registers the inline
                    # backend's figure flush): IPython runs them after it too, so a figure
                    # drawn in the first cell shows there, not under the next one.
                    events, run_info = self.shell_events, self._run_info(code, store, silent)
                if events is not None:
                    run_info.error_in_exec = failure
                    self._post_events(events, run_info, silent)
        except KeyboardInterrupt as exc:  # arrived while streams were being swapped
            status, error = "error", self._report(exc)
        finally:
            if store:
                self.execution_count = count + 1
        self.center.post(EXECUTE_FINISHED, self, execution_count=count, status=status)
        payload, self._payload = self._payload, []
        if error is None:
            return ExecutionResult(status, count, payload, expressions)
        return ExecutionResult(status, count, payload, {}, *error)

    def _post_mortem(self, exc: BaseException) -> None:
        """``%pdb``: debug the error just shown; a failure of pdb itself is shown too."""
        from corral.core.magics_debug import post_mortem

        if isinstance(exc, UsageError):
            return
        try:
            post_mortem(exc.__traceback__)
        except Exception as failure:  # no stdin, say: the frontend hears why
            self._report(failure)

    def _callable_magic(self, name: str) -> bool:
        """Whether a bare ``name`` calls the line magic: one exists and no variable or
        builtin of that name hides it."""
        return (
            self.magics.line(name) is not None
            and name not in self.user_ns
            and not hasattr(builtins, name)
        )

    def _transform_input(self, code: str) -> str:
        """``code`` after every input transformer, in order (a copy of the list is run, so
        a transformer may remove itself)."""
        lines = code.splitlines(True)
        for transformer in list(self.input_transformers):
            lines = transformer(lines)
        return "".join(lines)

    def _pre_events(self, events: Any, code: str, store: bool, silent: bool) -> Any:
        """IPython's ``pre_execute`` / ``pre_run_cell``; the result ``post_run_cell`` gets."""
        run_info = self._run_info(code, store, silent)
        events.trigger("pre_execute")
        if not silent:
            events.trigger("pre_run_cell", run_info.info)
        return run_info

    def _run_info(self, code: str, store: bool, silent: bool) -> Any:
        """The ``ExecutionResult`` that ``post_run_cell`` callbacks get for this cell."""
        from corral.core.ipython_shell import ExecutionInfo, ExecutionResult

        info = ExecutionInfo(code, store, silent)
        return ExecutionResult(info, self.execution_count if store else None)

    def _post_events(self, events: Any, result: Any, silent: bool) -> None:
        events.trigger("post_execute")
        if not silent:
            events.trigger("post_run_cell", result)

    def show_exception(self, exc: BaseException) -> None:
        """Show ``exc`` as an error output of the running cell (``showtraceback``)."""
        self._report(exc)

    def _store_input(self, count: int, source: str, raw: str) -> None:
        ns = self.user_ns
        while len(self._in) < count:
            self._in.append("")
        self._in[count:] = [raw]
        # As IPython: `_i` is the cell before this one (this one is `_iN` and `In[-1]`).
        ns["_iii"], ns["_ii"], ns["_i"] = ns.get("_ii", ""), ns.get("_i", ""), self._last_input
        self._last_input = raw
        ns[f"_i{count}"] = raw
        self.history_manager.store_input(count, source, raw)

    def _run(
        self,
        source: str,
        filename: str,
        ns: dict[str, Any],
        show: Callable[[Any], None] | None = None,
    ) -> tuple[bool, Any]:
        """Run ``source``; ``(True, value)`` when it ends with an expression.

        With ``show`` (a cell the user sees), ``ast_node_interactivity`` decides which
        statements show their value (see :mod:`.interactivity`); ``show`` gets those
        before the last as they finish.
        """
        flags = self._flags | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(source, filename, "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
        self._flags |= _future_flags(tree)
        mode = current_mode(self.ast_node_interactivity) if show is not None else DEFAULT_MODE
        run = self._run_steps(tree.body, mode, filename, flags, ns, show)
        if "asyncio" not in sys.modules and "async" not in source and "await" not in source:
            outcome: tuple[bool, Any] = _run_unsuspended(run)  # no asyncio: no loop to run in
            return outcome
        return self._run_in_loop(run)

    async def _run_steps(
        self,
        body: list[ast.stmt],
        mode: str,
        filename: str,
        flags: int,
        ns: dict[str, Any],
        show: Callable[[Any], None] | None,
    ) -> tuple[bool, Any]:
        """The statements of a cell, in order; the value of the one that shows it."""
        what: Any  # statements, a name or an expression, by kind
        for kind, what in steps(body, mode):
            if kind == "exec":
                if what:
                    module = ast.Module(body=what, type_ignores=[])
                    await self._eval(
                        compile(module, filename, "exec", flags, dont_inherit=True), ns
                    )
                continue
            if kind == "assigned":
                return True, ns.get(what)
            expression = compile(ast.Expression(what), filename, "eval", flags, dont_inherit=True)
            value = await self._eval(expression, ns)
            if kind == "value":
                return True, value
            assert show is not None
            show(value)
        return False, None

    async def _eval(self, code: Any, ns: dict[str, Any]) -> Any:
        result = eval(code, ns)
        if code.co_flags & _CO_COROUTINE:  # top-level await: the cell's loop is running
            result = await result
        return result

    def _run_in_loop(self, run: Any) -> tuple[bool, Any]:
        """Run a cell's statements as a task of the interpreter's event loop.

        As under ipykernel, where cells run inside the kernel's running loop: top-level
        ``await`` works, ``asyncio.get_running_loop()`` and ``asyncio.create_task()`` work
        in any cell, tasks a cell starts go on while later cells run, and
        ``asyncio.run()`` fails as it does there. A cell run from inside a running cell
        (``get_ipython().run_cell``) cannot start the loop again: it runs unsuspended.
        """
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        if loop.is_running():
            nested: tuple[bool, Any] = _run_unsuspended(run)
            return nested
        task = loop.create_task(_outcome(run))
        try:
            failure, result, context = loop.run_until_complete(task)
        except KeyboardInterrupt as interrupt:  # it landed in the loop, not in the cell
            task.cancel()  # the cell stops where it waits; its frames show where
            failure, _, context = loop.run_until_complete(task)
            _adopt(context)
            raise interrupt.with_traceback(failure and failure.__traceback__) from None
        _adopt(context)
        if failure is not None:
            raise failure.with_traceback(failure.__traceback__)
        return result  # type: ignore[no-any-return]  # what _run_steps returned

    def run_source(self, source: str, *, filename: str = "<string>") -> Any:
        """Run magic-capable ``source`` in ``user_ns``; the last expression's value or None.

        For magics such as ``%%time`` that run code the user wrote inside another cell.
        """
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        return self._run(transform_source(source), filename, self.user_ns)[1]

    def add_payload(self, item: dict[str, Any]) -> None:
        """Attach a Jupyter payload (``page``, ``set_next_input``...) to this execution."""
        self._payload.append(item)

    def _displayhook(self, value: Any, count: int, store: bool) -> None:
        if value is None:
            return
        if isinstance(value, _Exit):  # a bare `exit` leaves, as in IPython
            value()
            return
        if type(value).__name__ == "Macro" and _is_macro(value):  # a bare macro name runs it
            value = value.run(self)
            if value is None:
                return
        ns = self.user_ns
        if store and value is not self._out:  # Out[N] = Out would only show recursion
            self._out[count] = value
            ns[f"_{count}"] = value
        # As IPython: a `_` the user bound (`for _ in ...`) is theirs; it is not overwritten.
        if all(ns.get(n, "") is v for n, v in zip(("_", "__", "___"), self._unders, strict=True)):
            self._unders = (value, self._unders[0], self._unders[1])
            ns["_"], ns["__"], ns["___"] = self._unders
        sync_output()  # what the cell's subprocesses printed shows before its result
        if displays_itself(value):  # it published what it wanted: no result of ours
            return
        data, metadata = format_object(value)
        self.center.post(EXECUTE_RESULT, self, execution_count=count, data=data, metadata=metadata)
        if store:
            self.history_manager.store_output(count, data["text/plain"])

    def _user_expressions(self, expressions: dict[str, str]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name, expr in expressions.items():
            try:
                value = eval(
                    compile(expr, "<user expression>", "eval", dont_inherit=True), self.user_ns
                )
                data, metadata = format_object(value)
                results[name] = {"status": "ok", "data": data, "metadata": metadata}
            except Exception as exc:
                results[name] = {
                    "status": "error",
                    "ename": type(exc).__name__,
                    "evalue": str(exc),
                    "traceback": format_exception(exc, colors=self.colors),
                }
        return results

    def _report(self, exc: BaseException) -> tuple[str, str, list[str]]:
        """Post ``ERROR`` for ``exc``; ``(ename, evalue, traceback)``."""
        ename, evalue = type(exc).__name__, str(exc)
        if isinstance(exc, UsageError):
            traceback = [f"UsageError: {evalue}"]
        else:
            own = own_traceback(exc)
            if own is not None:
                traceback = own
            else:
                traceback = format_exception(exc, colors=self.colors)
                if self.xmode == "Minimal":
                    traceback = traceback[-1:]
            sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
        self.center.post(ERROR, self, ename=ename, evalue=evalue, traceback=traceback)
        return ename, evalue, traceback

    def _help(self, name: str, detail_level: int) -> None:
        from corral.core.inspection import find_object, info_text

        if name.startswith("%"):
            import inspect

            bare = name.lstrip("%")
            func = self.magics.cell(bare) if name.startswith("%%") else self.magics.line(bare)
            if func is None:
                raise UsageError(f"Magic `{name}` not found.")
            text = f"{name}\n" + (inspect.getdoc(func) or "(no documentation)")
        else:
            found, obj = find_object(name, self.user_ns)
            if not found:
                print(f"Object `{name}` not found.")
                return
            text = info_text(obj, name, detail_level)
        self.add_payload({"source": "page", "data": {"text/plain": text}, "start": 0})

    # ------------------------------------------------------------------ queries

    def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        """Jupyter ``complete_reply`` content: matches around the cursor."""
        from corral.core.completion import complete

        return complete(code, cursor_pos, self.user_ns, self.magics.names())

    def inspect(
        self, code: str, cursor_pos: int | None = None, detail_level: int = 0
    ) -> dict[str, Any]:
        """Jupyter ``inspect_reply`` content for the name at the cursor."""
        from corral.core.inspection import find_object, info_text, name_at

        name = name_at(code, cursor_pos)
        found, obj = find_object(name, self.user_ns) if name else (False, None)
        data = {"text/plain": info_text(obj, name, detail_level)} if found else {}
        return {"status": "ok", "found": found, "data": data, "metadata": {}}

    def is_complete(self, code: str) -> dict[str, str]:
        """Jupyter ``is_complete_reply`` content: may ``code`` run now, or does it go on?"""
        from corral.core.completion import input_status

        return input_status(code)

    def history(
        self,
        hist_access_type: str = "tail",
        *,
        output: bool = False,
        raw: bool = True,
        session: int = 0,
        start: int = 0,
        stop: int | None = None,
        n: int | None = 10,
        pattern: str | None = None,
        unique: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Jupyter ``history_reply`` rows: (session, line, input) or with (input, output)."""
        hm = self.history_manager
        if hist_access_type == "tail":
            return hm.tail(n, output=output, raw=raw)
        if hist_access_type == "range":
            return hm.range(session, start, stop, output=output, raw=raw)
        if hist_access_type == "search":
            return hm.search(pattern or "*", n, unique, output=output, raw=raw)
        raise ValueError(
            f"hist_access_type must be tail, range or search, not {hist_access_type!r}"
        )
