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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from corral.frontends.kernel_link import KernelLink, resolve_connection_file
from corral.frontends.output import HtmlOutput, TerminalOutput
from corral.transports.zmq.client import KernelDiedError, MessageTimeout, prompt_for_input

__all__ = ["EXIT_TIMEOUT", "file_code", "run_code", "run_command", "terminal_prompt"]

#: Exit status when ``--timeout`` runs out (as coreutils' ``timeout`` does).
EXIT_TIMEOUT = 124


def file_code(path: Path, source: str, argv: Sequence[str] | None = None) -> str:
    """The cell that runs ``source`` as the file ``path`` would (``%%source_file``).

    The kernel compiles the source under the file's name, so tracebacks name the file,
    quote its lines and show no frame of the runner; ``__file__`` is set for code that
    finds data next to itself. It runs in the kernel's namespace, so names it defines
    stay for the next run. ``argv`` is the script's ``sys.argv`` while it runs (as
    ``python FILE ARG...`` would set it: the file as typed, then its arguments); by
    default the file's path alone.
    """
    filename = str(path.resolve())
    argv = [str(path)] if argv is None else list(argv)
    return f"%%source_file {(filename, argv)!r}\n{source}"


def terminal_prompt(msg: dict[str, Any]) -> str:
    """Answer ``input()`` in the code at the terminal, even when stdin is not one.

    When stdin is a pipe (the code itself came on it, or an editor started the run), the
    controlling terminal ``/dev/tty`` is asked instead, as ``ssh`` and ``sudo`` do.
    """
    if sys.stdin is not None and sys.stdin.isatty():
        return prompt_for_input(msg)
    content = msg["content"]
    prompt = content.get("prompt", "")
    if content.get("password"):
        import getpass

        return getpass.getpass(prompt)  # getpass itself reads /dev/tty
    # Two files: a text file opened "r+" would have to be seekable, and a terminal is not.
    with (
        open("/dev/tty", "w", encoding="utf-8") as out,
        open("/dev/tty", encoding="utf-8", errors="replace") as tty,
    ):
        out.write(prompt)
        out.flush()
        return tty.readline().rstrip("\n")


def terminal_available() -> bool:
    """Whether a terminal can answer ``input()`` (stdin, or the controlling terminal)."""
    if sys.stdin is not None and sys.stdin.isatty():
        return True
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


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
                stdin_hook=terminal_prompt if allow_stdin else None,
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
    script_args = list(getattr(args, "script_args", None) or [])
    if args.file == "-":
        if script_args:
            # Code from stdin runs as a cell, which has no sys.argv of its own to set.
            print("corral run: arguments need a FILE, not '-'", file=sys.stderr)
            return 2
        code = sys.stdin.read()
    else:
        path = Path(args.file)
        try:
            code = file_code(path, path.read_text(), [args.file, *script_args])
        except OSError as error:
            print(f"corral run: cannot read {args.file}: {error.strerror}", file=sys.stderr)
            return 2
    allow_stdin = terminal_available()
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
            return run_code(
                link, code, timeout=args.timeout, output=output, allow_stdin=allow_stdin
            )
        finally:
            if isinstance(output, HtmlOutput):
                output.end()
