"""The ``%px`` family: run notebook cells on the engines of a view.

``%px code``, ``%%px [options]`` (a whole cell), ``%autopx`` (every following cell until
``%autopx`` again), ``%pxresult`` (the outputs of the last non-blocking ``%px``) and
``%pxconfig`` (defaults), as in ipyparallel. They work in two shells:

* **IPython / ipykernel**: ``%load_ext corral`` registers them (on a view of ``Client()``
  made on first use), or ``view.activate(suffix)`` / ``rc.activate()`` on a chosen view;
* **corral's kernel** (and so ``corral console``): registered at kernel start through the
  ``corral_add_magics`` hook; ``%autopx`` uses the interpreter's ``input_transformers``,
  which take the same functions as IPython's ``input_transformers_cleanup``.

Behaviour users asked ipyparallel for: engine output **streams** into the cell while the
code runs (a ``[stdout:0]`` label when the engine or stream changes, the text under it,
or on its line in a kernel, as ipyparallel lays it out); **errors always
show** (outputs first, then the remote traceback is raised, rendered by IPython through
``_render_traceback_``); cells running longer than ``--progress-after`` seconds show a
progress bar; Ctrl-C / Kernel > Interrupt sends ``SIGINT`` (``--signal-on-interrupt``)
to the engines running the cell.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from corral.errors import CorralError

__all__ = ["ParallelMagics", "parse_targets"]  # the extension entry: .defaults

NO_LAST_RESULT = "%pxresult recalls the last %px result, and there is none yet."


# ------------------------------------------------------------------------- hosts


class _Host:
    """What the magics need from the shell they run in."""

    usage_error: type[Exception] = ValueError

    @property
    def user_ns(self) -> dict[str, Any]:
        raise NotImplementedError

    def run_local(self, code: str) -> None:
        raise NotImplementedError

    def display_bundle(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any],
        display_id: str | None = None,
        update: bool = False,
    ) -> None:
        """Show a MIME bundle (``update``: replace the display shown as ``display_id``)."""
        text = data.get("text/plain")
        if text is not None:
            print(text)

    def display(self, obj: Any) -> None:
        print(repr(obj))

    def cell_transformers(self) -> list[Callable[[list[str]], list[str]]]:
        """The shell's list of whole-cell transformers (``%autopx`` adds one)."""
        raise NotImplementedError

    @property
    def in_kernel(self) -> bool:
        """Whether output goes to a kernel's frontend (a notebook, a console), where
        ipyparallel shows an engine's stream text on its label's line."""
        return False


class IPythonHost(_Host):
    """IPython's InteractiveShell (a terminal, or ipykernel in a notebook)."""

    def __init__(self, shell: Any) -> None:
        from IPython.core.error import UsageError

        self.shell = shell
        self.usage_error = UsageError

    @property
    def user_ns(self) -> dict[str, Any]:
        return self.shell.user_ns  # type: ignore[no-any-return]

    def run_local(self, code: str) -> None:
        self.shell.run_cell(code)

    def display_bundle(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any],
        display_id: str | None = None,
        update: bool = False,
    ) -> None:
        from IPython.display import display

        extra = {"display_id": display_id, "update": update} if display_id else {}
        display(data, raw=True, metadata=metadata, **extra)

    def display(self, obj: Any) -> None:
        from IPython.display import display

        display(obj)

    def cell_transformers(self) -> list[Callable[[list[str]], list[str]]]:
        return self.shell.input_transformers_cleanup  # type: ignore[no-any-return]

    @property
    def in_kernel(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None  # ipykernel's shell


class CorralHost(_Host):
    """corral's own interpreter (its kernel and console)."""

    def __init__(self, interpreter: Any) -> None:
        from corral.core.magics import UsageError

        self.interpreter = interpreter
        self.usage_error = UsageError

    @property
    def user_ns(self) -> dict[str, Any]:
        return self.interpreter.user_ns  # type: ignore[no-any-return]

    def run_local(self, code: str) -> None:
        self.interpreter.run_source(code, filename="<%%px --local>")

    def display_bundle(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any],
        display_id: str | None = None,
        update: bool = False,
    ) -> None:
        from corral.core.display import display, update_display

        if update and display_id is not None:
            update_display(data, display_id=display_id, raw=True, metadata=metadata)
        else:
            display(data, raw=True, metadata=metadata, display_id=display_id)

    def display(self, obj: Any) -> None:
        from corral.core.display import display

        display(obj)

    def cell_transformers(self) -> list[Callable[[list[str]], list[str]]]:
        return self.interpreter.input_transformers  # type: ignore[no-any-return]

    @property
    def in_kernel(self) -> bool:
        return True  # corral's interpreter runs in its kernel (notebooks, the console)


# ------------------------------------------------------------------------- arguments


class _ArgumentError(CorralError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never exit the kernel over a typo
        raise _ArgumentError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise _ArgumentError(message or self.format_help())


def _exec_parser(prog: str, cell: bool) -> _Parser:
    parser = _Parser(prog=prog, add_help=True)
    parser.add_argument("-b", "--block", action="store_const", const=True, dest="block")
    parser.add_argument("-a", "--noblock", action="store_const", const=False, dest="block")
    parser.add_argument("--stream", action="store_const", const=True, dest="stream")
    parser.add_argument("--no-stream", action="store_const", const=False, dest="stream")
    parser.add_argument("-t", "--targets", type=str)
    parser.add_argument("--verbose", action="store_const", const=True, dest="verbose")
    parser.add_argument("--no-verbose", action="store_const", const=False, dest="verbose")
    parser.add_argument("--progress-after", dest="progress_after", type=float)
    parser.add_argument("--signal-on-interrupt", dest="signal_on_interrupt", type=str)
    if cell:
        _output_arguments(parser)
        parser.add_argument("--local", action="store_true")
    return parser


def _output_arguments(parser: _Parser) -> None:
    parser.add_argument("-r", action="store_const", dest="groupby", const="order")
    parser.add_argument("-e", action="store_const", dest="groupby", const="engine")
    parser.add_argument(
        "--group-outputs", dest="groupby", choices=["engine", "order", "type"], default="type"
    )
    parser.add_argument("-o", "--out", "--save-name", dest="save_name", type=str)


_SLICE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?$")


def parse_targets(text: str, ids: list[int]) -> Any:
    """Engine ids from ``--targets`` text: ``all``, ``3``, ``0,2``, ``[0, 2]``, ``::2``,
    ``-1`` (the last engine). Parsed, never evaluated."""
    text = text.strip()
    if text in ("all", "'all'", '"all"'):
        return "all"
    match = _SLICE.match(text.strip("[]"))
    if match:
        parts = [int(p) if p else None for p in match.groups()]
        return ids[slice(*parts)]
    items = [p for p in re.split(r"[\s,]+", text.strip("[]()")) if p]
    try:
        values = [int(p) for p in items]
    except ValueError:
        raise _ArgumentError(f"--targets: not engine ids: {text!r}") from None
    values = [ids[v] if v < 0 else v for v in values]
    if len(values) == 1 and not text.startswith(("[", "(")) and "," not in text:
        return values[0]
    return values


# ------------------------------------------------------------------------- magics


class ParallelMagics:
    """``%px`` & co. bound to one view; shell-neutral (see :class:`IPythonHost`,
    :class:`CorralHost`)."""

    def __init__(
        self,
        view: Any,
        suffix: str = "",
        host: _Host | None = None,
        view_factory: Callable[[], Any] | None = None,
    ) -> None:
        self._view = view
        self._view_factory = view_factory
        self.suffix = suffix
        self.host = host
        self.last_result: Any = None
        self.verbose = False
        self.stream_output = True
        self.progress_after = 2.0
        self.signal_on_interrupt: str | int | None = "SIGINT"
        self.autopx = False

    # ---------------------------------------------------------------- plumbing

    @property
    def view(self) -> Any:
        if self._view is not None and self._view_factory is not None:
            # A default view (never activated) whose client can no longer work, e.g. its
            # cluster was stopped and the notebook started another: take the default again.
            if not getattr(self._view.client, "usable", True):
                self._view = None
        if self._view is None:
            if self._view_factory is None:
                raise self._usage("no active view: call view.activate() or rc.activate()")
            try:
                self._view = self._view_factory()
            except (OSError, TimeoutError) as exc:
                raise self._usage(
                    f"no cluster to run %px on ({exc}); start one ('corral cluster start') "
                    "or call view.activate() on a view of your cluster"
                ) from None
        return self._view

    def _usage(self, message: str) -> Exception:
        cls = self.host.usage_error if self.host is not None else ValueError
        return cls(message)

    def _parse(self, parser: _Parser, line: str) -> argparse.Namespace:
        try:
            return parser.parse_args(shlex.split(line))
        except _ArgumentError as exc:
            raise self._usage(str(exc)) from None

    def names(self) -> dict[str, dict[str, Callable[..., Any]]]:
        """``{"line": {name: func(line)}, "cell": {name: func(line, cell)}}``."""
        s = self.suffix
        line = {
            f"px{s}": self.px,
            f"pxresult{s}": self.pxresult,
            f"pxconfig{s}": self.pxconfig,
            f"autopx{s}": self.toggle_autopx,
        }
        if not s:
            line["result"] = self.pxresult  # ipyparallel keeps %result too
        return {"line": line, "cell": {f"px{s}": self.cell_px}}

    # ---------------------------------------------------------------- the magics

    def px(self, line: str = "") -> Any:
        """``%px code``: run one line on the view's engines."""
        return self.parallel_execute(line)

    def cell_px(self, line: str = "", cell: str = "") -> Any:
        """``%%px [--targets T] [--block|--noblock] [--local] [--group-outputs G]
        [--stream|--no-stream] [--progress-after S] [--save-name NAME]``: run the cell."""
        args = self._parse(_exec_parser(f"%%px{self.suffix}", cell=True), line)
        view = self.view
        if args.targets:
            try:
                targets = parse_targets(args.targets, view.client.ids)
            except _ArgumentError as exc:
                raise self._usage(str(exc)) from None
            view = view._on(targets)
        block = view.block if args.block is None else args.block
        result = self.parallel_execute(
            cell,
            view=view,
            block=False if args.local else block,
            groupby=args.groupby,
            save_name=args.save_name,
            stream=args.stream,
            progress_after=args.progress_after,
            signal=args.signal_on_interrupt,
            verbose=args.verbose,
        )
        if args.local:
            assert self.host is not None
            self.host.run_local(cell)
            if block:
                return self._wait_and_show(result, view, args.groupby, args.stream, None, None)
        return None if block else result

    def pxresult(self, line: str = "") -> None:
        """``%pxresult [--group-outputs G] [--save-name NAME]``: the last ``%px``'s outputs
        (waiting for it), or store its result object as NAME."""
        parser = _Parser(prog=f"%pxresult{self.suffix}")
        _output_arguments(parser)
        args = self._parse(parser, line)
        if self.last_result is None:
            raise self._usage(NO_LAST_RESULT)
        if args.save_name:
            self.host_ns()[args.save_name] = self.last_result
            return
        result = self.last_result
        result.wait()
        result.wait_for_output(10)  # output trails the reply a little
        self._show(result, args.groupby, Echo(labelled=not result._single))
        _raise_remote_error(result)  # a failed %px raises here too, as a blocking one

    def pxconfig(self, line: str = "") -> None:
        """``%pxconfig [--targets T] [--block|--noblock] [--stream|--no-stream]
        [--verbose|--no-verbose] [--progress-after S] [--signal-on-interrupt SIG]``."""
        args = self._parse(_exec_parser(f"%pxconfig{self.suffix}", cell=False), line)
        view = self.view
        if args.targets:
            try:
                view.targets = parse_targets(args.targets, view.client.ids)
            except _ArgumentError as exc:
                raise self._usage(str(exc)) from None
            view._md_cache = {}
        if args.block is not None:
            view.block = args.block
        if args.verbose is not None:
            self.verbose = args.verbose
        if args.stream is not None:
            self.stream_output = args.stream
        if args.progress_after is not None:
            self.progress_after = args.progress_after
        if args.signal_on_interrupt is not None:
            sig = args.signal_on_interrupt
            self.signal_on_interrupt = int(sig) if sig.isdigit() else sig

    def toggle_autopx(self, line: str = "") -> None:
        """``%autopx``: every following cell runs on the engines, until ``%autopx``."""
        if self.host is None:
            raise self._usage("%autopx needs a shell (IPython or corral's kernel)")
        transformers = self.host.cell_transformers()
        if self.autopx:
            if self._transform in transformers:
                transformers.remove(self._transform)
            self.autopx = False
            print(f"%autopx{self.suffix} disabled")
        else:
            transformers.append(self._transform)
            self.autopx = True
            print(f"%autopx{self.suffix} enabled")

    def _transform(self, lines: list[str]) -> list[str]:
        """Input transformer while %autopx is on: the cell becomes a ``%%px`` cell (both
        shells read cell magics after their cleanup transformers). ``%autopx`` itself, and
        empty cells, pass unchanged."""
        cell = "".join(lines)
        if not cell.strip() or re.match(rf"^\s*%autopx{re.escape(self.suffix)}\s*$", cell):
            return lines
        return [f"%%px{self.suffix}\n", *lines]

    def host_ns(self) -> dict[str, Any]:
        if self.host is None:
            raise self._usage("no shell to store the result in")
        return self.host.user_ns

    # ---------------------------------------------------------------- execution

    def parallel_execute(
        self,
        code: str,
        *,
        view: Any = None,
        block: bool | None = None,
        groupby: str = "type",
        save_name: str | None = None,
        stream: bool | None = None,
        progress_after: float | None = None,
        signal: str | int | None = None,
        verbose: bool | None = None,
    ) -> Any:
        """What ``%px`` and ``%%px`` do: execute, then (blocking) stream, show, raise."""
        view = self.view if view is None else view
        block = view.block if block is None else block
        if self.verbose if verbose is None else verbose:
            kind = "Parallel" if block else "Async parallel"
            print(f"{kind} execution on engine(s): {view.targets}")
        result = view.execute(code, silent=False, block=False)
        result.fname = f"%px{self.suffix}"
        self.last_result = result
        if save_name:
            self.host_ns()[save_name] = result
        if not block:
            return result
        return self._wait_and_show(result, view, groupby, stream, progress_after, signal)

    def _wait_and_show(
        self,
        result: Any,
        view: Any,
        groupby: str,
        stream: bool | None,
        progress_after: float | None,
        signal: str | int | None,
    ) -> None:
        stream = self.stream_output if stream is None else stream
        progress_after = self.progress_after if progress_after is None else progress_after
        signal = self.signal_on_interrupt if signal is None else signal
        # As ipyparallel: streamed text labelled always (on the label's line in a
        # kernel); otherwise as display_outputs shows it, a single engine's unlabelled.
        inline = stream and self.host is not None and self.host.in_kernel
        echo = Echo(labelled=stream or not result._single, inline=inline)
        try:
            self._wait(result, stream, progress_after, echo)
        except KeyboardInterrupt:
            if signal is None:
                raise
            print(f"Keyboard interrupt: sending {signal} to the engines", file=sys.stderr)
            view.client.send_signal(signal, targets=sorted(_engines_of(result, view)))
            result.wait(5)
        self._show(result, groupby, echo)
        if result.done():
            _raise_remote_error(result)  # after the outputs: errors always show

    def _wait(self, result: Any, stream: bool, progress_after: float, echo: Echo) -> None:
        """Wait for the result and its output; print output as it arrives if ``stream``
        (``echo`` keeps how much of each stream was printed)."""
        cond = result._progress_condition()
        result._watch_streams = True
        started = time.monotonic()
        bar = None
        try:
            while True:
                finished = result.done() and result._outputs_done()
                if stream:
                    self._print_streams(result, echo, final=finished)
                if finished:
                    return
                if result.done() and time.monotonic() - started > 60:
                    return  # output that never comes must not hang the cell
                if bar is None and progress_after >= 0:
                    if time.monotonic() - started >= progress_after:
                        bar = _progress_bar(result)
                if bar is not None:
                    bar.update(result.progress - bar.n)
                with cond:
                    cond.wait(0.1)
        finally:
            result._watch_streams = False
            if bar is not None:
                bar.update(result.progress - bar.n)
                bar.close()

    def _print_streams(self, result: Any, echo: Echo, final: bool, by_type: bool = False) -> None:
        """Print what each engine wrote since the last call, in ipyparallel's layout (see
        :class:`~.asyncresult.StreamBlocks`), as it arrives: a line not ended yet too (a
        progress printed with ``end=""``), continued under the same label, or cut by
        another engine's label on a line of its own, as ipyparallel does. ``by_type``:
        every engine's stdout, then every stderr (``--group-outputs type``), rather than
        engine after engine."""
        mds = [result._metadata_slot(i) for i in range(len(result._md))]
        printed = echo.printed
        streams = (("stdout", sys.stdout), ("stderr", sys.stderr))
        if by_type:
            pairs = [(i, s) for s in streams for i in range(len(mds))]
        else:
            pairs = [(i, s) for i in range(len(mds)) for s in streams]
        for index, (name, out) in pairs:
            md = mds[index]
            text = md[name]
            start = printed.get((index, name), 0)
            end = len(text)
            if end <= start:
                continue
            printed[(index, name)] = end
            label = f"[{name}:{md['engine_id']}] " if echo.labelled else ""
            echo.blocks.write(text[start:end], label, out)
            out.flush()
        if final:
            echo.blocks.end(sys.stdout)

    def _show(self, result: Any, groupby: str, echo: Echo) -> None:
        """Show what was not streamed (all of it without ``--stream``): output text, rich
        displays, execute results."""
        from .asyncresult import display_id_of, folded_outputs

        self._print_streams(result, echo, final=True, by_type=groupby != "engine")
        mds = [result._metadata_slot(i) for i in range(len(result._md))]
        shown = [folded_outputs(md["outputs"]) for md in mds]
        order = list(range(len(mds)))
        if groupby == "order":
            width = max((len(outputs) for outputs in shown), default=0)
            rows = [(i, k) for k in range(width) for i in order if k < len(shown[i])]
        else:
            rows = [(i, k) for i in order for k in range(len(shown[i]))]
        for index, position in rows:
            output = shown[index][position]
            display_id = display_id_of(output)
            if output["msg_type"] == "update_display_data" and display_id is not None:
                # the engine updated a display an earlier cell showed: update it there
                self._display_bundle(
                    output.get("data") or {}, output.get("metadata") or {}, display_id, True
                )
                continue
            if output["msg_type"] not in ("display_data", "update_display_data"):
                continue
            if echo.labelled:
                self._label(f"[output:{mds[index]['engine_id']}]")
            self._display_bundle(output.get("data") or {}, output.get("metadata") or {}, display_id)
        for md in mds:
            executed = md.get("execute_result")
            if executed is None:
                continue
            from .asyncresult import ExecuteReply

            if self.host is not None:
                self.host.display(ExecuteReply(md))
            else:
                print(repr(ExecuteReply(md)))

    def _display_bundle(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any],
        display_id: str | None = None,
        update: bool = False,
    ) -> None:
        """Show an engine's display; under the engine's ``display_id``, so that a later
        update of it from the engine (``update``) replaces it in place."""
        if self.host is not None:
            self.host.display_bundle(data, metadata, display_id, update)
        elif "text/plain" in data:
            print(data["text/plain"])

    def _label(self, text: str) -> None:
        """An engine's ``[output:N]`` label: a display of its own in a shell that shows
        displays, as ipyparallel sends it (as stdout text, a frontend would merge it
        into the engines' printed text before it); a line of text elsewhere."""
        sys.stdout.flush()  # the streams printed before it come first
        self._display_bundle({"text/plain": text}, {})


class Echo:
    """What one ``%px`` cell has printed of its engines' output: how much of each stream
    (``printed``), the label layout (``blocks``), and whether labels are shown at all
    (as ipyparallel: always while streaming, else unless the view names one engine)."""

    __slots__ = ("printed", "blocks", "labelled")

    def __init__(self, labelled: bool, inline: bool = False) -> None:
        from .asyncresult import StreamBlocks

        self.printed: dict[tuple[int, str], int] = {}
        self.blocks = StreamBlocks(inline)
        self.labelled = labelled


def in_ipython_kernel() -> bool:
    """Whether this process is an IPython kernel (ipykernel's shell is running): where
    ipyparallel shows streamed text on its label's line. IPython is not imported for it."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return getattr(shell, "kernel", None) is not None


def _raise_remote_error(result: Any) -> None:
    """Raise the error of a finished ``%px`` (if it failed), without the local frames it
    was raised through: where the client waited for the result (``concurrent.futures``)
    is not the user's code, and a traceback printer that does not ask the error for its
    own rendering (corral's kernel) would show those frames before the engines' errors.
    The error's text holds every engine's failure and the remote traceback."""
    from .errors import KernelError

    try:
        result.get()
    except KernelError as exc:
        raise exc.with_traceback(None) from None


def _engines_of(result: Any, view: Any) -> set[int]:
    engines = set(result._running_engines())
    if not engines:
        targets = view.client._resolve_targets(view.targets)
        engines = {targets} if isinstance(targets, int) else set(targets)
    return engines


def _progress_bar(result: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=len(result), desc=result.fname or "%px", unit="engine", file=sys.stderr)


# ------------------------------------------------------------------------- registration


def register_ipython(shell: Any, magics: ParallelMagics) -> ParallelMagics:
    """Register ``magics`` with IPython's ``shell``."""
    magics.host = IPythonHost(shell)
    for kind, table in magics.names().items():
        for name, func in table.items():
            shell.register_magic_function(func, magic_kind=kind, magic_name=name)
    return magics


def register_corral(registry: Any, magics: ParallelMagics) -> ParallelMagics:
    """Register ``magics`` in a corral interpreter's magics registry."""

    def bind_line(func: Callable[[str], Any]) -> Callable[[Any, str], Any]:
        def line_magic(interpreter: Any, line: str) -> Any:
            magics.host = CorralHost(interpreter)
            return func(line)

        return line_magic

    def bind_cell(func: Callable[[str, str], Any]) -> Callable[[Any, str, str], Any]:
        def cell_magic(interpreter: Any, line: str, cell: str) -> Any:
            magics.host = CorralHost(interpreter)
            return func(line, cell)

        return cell_magic

    names = magics.names()
    for name, func in names["line"].items():
        registry.register_line(name, bind_line(func))
    for name, func in names["cell"].items():
        registry.register_cell(name, bind_cell(func))
    return magics


def activate(view: Any, suffix: str = "") -> ParallelMagics | None:
    """``view.activate(suffix)``: %px{suffix} & co. on ``view`` in the running shell."""
    shell = _ipython_shell()
    magics = ParallelMagics(view, suffix)
    if shell is not None:
        return register_ipython(shell, magics)
    from corral.core.display import get_current

    interpreter = get_current()
    if interpreter is not None and hasattr(interpreter, "magics"):
        magics.host = CorralHost(interpreter)
        return register_corral(interpreter.magics, magics)
    import warnings

    warnings.warn("the %px magics need IPython or corral's kernel", stacklevel=3)
    return None


def _ipython_shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
