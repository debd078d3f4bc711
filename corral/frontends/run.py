"""The editor bridge: ``corral run FILE|-`` runs code in a kernel and streams what it prints.

Editors (the TextMate bundle, or any editor that can run a shell command) call it to send a
file or a selection to a kernel the user keeps running (``--existing CONNECTION_FILE``, so
state persists between runs), or to a fresh kernel that is shut down afterwards. Output is
written the moment the kernel publishes it; the exit status says whether the code raised
(1) or not (0), so editors and scripts can react to failures.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from corral.frontends.kernel_link import KernelLink, resolve_connection_file
from corral.frontends.output import HtmlOutput, TerminalOutput
from corral.transports.zmq.client import KernelDiedError, MessageTimeout, prompt_for_input

__all__ = ["EXIT_TIMEOUT", "file_code", "file_setup", "run_code", "run_command"]

#: Exit status when ``--timeout`` runs out (as coreutils' ``timeout`` does).
EXIT_TIMEOUT = 124


#: The name the source of a file travels under until the run takes it.
_SOURCE_NAME = "__corral_run_source__"


def file_setup(source: str) -> str:
    """Silent code that hands ``source`` to the kernel ahead of :func:`file_code`.

    Sent apart so that the visible cell is two short lines: a traceback quotes the cell
    around the failing line, and should not quote the whole file as one string literal.
    """
    return f"{_SOURCE_NAME} = {source!r}\n"


def file_code(path: Path) -> str:
    """Code that runs the source given by :func:`file_setup` as the file ``path`` would.

    The kernel compiles the source under the file's name, so tracebacks name the file and
    show its lines, and ``__file__`` is set for code that finds data next to itself. It
    runs in the kernel's namespace, so names it defines stay for the next run.
    """
    filename = str(path.resolve())
    return (
        f"__file__ = {filename!r}\n"
        f"exec(compile(globals().pop({_SOURCE_NAME!r}), __file__, 'exec'), globals())\n"
    )


class _InterruptForwarder:
    """While installed, Ctrl-C interrupts the kernel instead of this process.

    The first Ctrl-C is forwarded (the code in the kernel gets a KeyboardInterrupt and the
    run ends normally, with its traceback); a second one gives up waiting.
    """

    def __init__(self, link: KernelLink) -> None:
        self.link = link
        self.count = 0
        self._previous: Any = None

    def __enter__(self) -> _InterruptForwarder:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self.link.interrupt()


def run_code(
    link: KernelLink,
    code: str,
    *,
    timeout: float | None = None,
    output: TerminalOutput | None = None,
    allow_stdin: bool = False,
) -> int:
    """Run ``code`` through ``link``, streaming its output; the exit status (0, 1 or 124)."""
    output = output if output is not None else TerminalOutput()
    try:
        with _InterruptForwarder(link):
            reply = link.client.execute_interactive(
                code,
                timeout=timeout,
                output_hook=output,
                allow_stdin=allow_stdin,
                stdin_hook=prompt_for_input if allow_stdin else None,
            )
    except MessageTimeout:
        output.error(f"corral run: the code did not finish within {timeout:g}s\n")
        link.interrupt()
        return EXIT_TIMEOUT
    except KernelDiedError as error:
        output.error(f"corral run: {error}\n")
        return 1
    content = reply.get("content", {})
    status = content.get("status")
    if status == "error" and not output.errored:
        # The kernel can fail without publishing a traceback (an interrupt in between).
        output.error(f"{content.get('ename', 'Error')}: {content.get('evalue', '')}\n")
    return 0 if status == "ok" and not output.errored else 1


def run_command(args: argparse.Namespace, config: Any) -> int:
    """``corral run``: the entry point the plugin registers."""
    setup = ""
    if args.file == "-":
        code = sys.stdin.read()
        allow_stdin = False  # stdin held the code; there is nobody to answer input()
    else:
        path = Path(args.file)
        try:
            setup = file_setup(path.read_text())
            code = file_code(path)
        except OSError as error:
            print(f"corral run: cannot read {args.file}: {error.strerror}", file=sys.stderr)
            return 2
        allow_stdin = sys.stdin.isatty()
    profile = getattr(args, "profile", "default")
    if args.existing:
        link = KernelLink.existing(resolve_connection_file(args.existing, profile))
    else:
        link = KernelLink.start(profile=profile, autorestart=False)
    output = HtmlOutput() if args.html else TerminalOutput()
    with link:
        if isinstance(output, HtmlOutput):
            output.begin()
        try:
            if setup:
                link.client.execute_interactive(setup, silent=True, store_history=False)
            return run_code(
                link, code, timeout=args.timeout, output=output, allow_stdin=allow_stdin
            )
        finally:
            if isinstance(output, HtmlOutput):
                output.end()
