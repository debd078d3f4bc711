"""Text streams and stdin routing used while the interpreter runs a cell.

During ``execute`` the interpreter swaps ``sys.stdout``/``sys.stderr`` for
:class:`PostingStream` objects, which post every write as a ``STREAM`` notification the
moment it happens, and swaps ``input``/``getpass`` for functions that ask the transport
(through ``input_handler``) instead of a terminal the kernel does not have.

Why no buffering: the core has no clock and no I/O loop (sans-I/O), so it cannot flush a
buffer later; coalescing writes into messages is the transport's job. A write therefore
costs one lock and one post, which keeps 100k ``print`` calls fast and in order.
"""

from __future__ import annotations

import builtins
import getpass
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from corral.core.events import STREAM
from corral.core.interrupts import protect
from corral.core.tracebacks import hide_from_tracebacks
from corral.errors import CorralError
from corral.notification.center import NotificationCenter

__all__ = [
    "FdCapture",
    "PostingStream",
    "StdinNotImplementedError",
    "post_text",
    "redirect_output",
    "route_stdin",
    "sync_output",
]

#: ``(prompt, password) -> line``: how the transport answers ``input()``.
InputHandler = Callable[[str, bool], str]

hide_from_tracebacks(__file__)
# A write holds the output lock and posts: an interrupt must not tear it.
protect(__file__)

# One lock for stdout and stderr of every stream, so that writes from several threads reach
# observers one at a time and in the order they were made. Reentrant: an observer that
# itself prints must not deadlock.
_write_lock = threading.RLock()


#: What ``fileno()`` of each stream gives: descriptors 1 and 2, unless :class:`FdCapture`
#: points stderr at the process's original stderr (see :meth:`PostingStream.fileno`).
_filenos = {"stdout": 1, "stderr": 2}
_forked = False  # this process is a fork of the one whose streams these are
#: :meth:`FdCapture.sync` while a capture runs: what ``flush()`` also does.
_sync_descriptors: Callable[[], None] | None = None


def _after_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)


def _write_fd(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class StdinNotImplementedError(CorralError, RuntimeError):
    """Raised by ``input()``/``getpass()`` when the frontend cannot answer (no stdin)."""


class PostingStream(io.TextIOBase):
    """A write-only text stream that posts ``STREAM(name, text)`` for every write."""

    def __init__(self, center: NotificationCenter, sender: Any, name: str) -> None:
        super().__init__()
        self._center = center
        self._sender = sender
        self.name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """A real descriptor, as ipykernel's streams have: ``faulthandler.enable()`` and
        ``subprocess.run(..., stdout=sys.stdout)`` ask for one (they raised). stdout is
        descriptor 1 (in a kernel, a pipe into the notebook); stderr, once a kernel
        captures descriptors, the process's original stderr, where a crash dump
        written as the process dies is still read."""
        return _filenos[self.name]

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if _forked:  # a forked worker: the bus and sockets here are its parent's copies
            _write_fd(1 if self.name == "stdout" else 2, text.encode("utf-8", "replace"))
            return len(text)
        if text:
            post_text(self._center, self._sender, self.name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing is buffered: every write was posted already."""


def post_text(center: NotificationCenter, sender: Any, name: str, text: str) -> None:
    """Post ``STREAM(name, text)`` as a stream's write does (in order with every write)."""
    with _write_lock:
        center.post(STREAM, sender, name=name, text=text)


def sync_output() -> None:
    """Post what descriptors 1 and 2 hold now, in a kernel that reads them
    (:class:`FdCapture`): the display hook calls it, so a cell's result comes after what
    its subprocesses printed. Never called holding the write lock (the reading thread
    may be waiting for it), so not from ``flush()``, which a stream's finalizer calls."""
    sync = _sync_descriptors
    if sync is not None:
        sync()


@contextmanager
def redirect_output(center: NotificationCenter, sender: Any) -> Iterator[None]:
    """Send ``sys.stdout``/``sys.stderr`` writes to ``center`` for the duration."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PostingStream(center, sender, "stdout")
    sys.stderr = PostingStream(center, sender, "stderr")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _refuse(prompt: str = "", password: bool = False) -> str:
    raise StdinNotImplementedError(
        "input() is not available here: the frontend does not support stdin requests "
        "(allow_stdin is False or no input handler is set)"
    )


@contextmanager
def route_stdin(handler: InputHandler | None) -> Iterator[None]:
    """Make ``input()`` and ``getpass.getpass()`` ask ``handler`` (or refuse) meanwhile."""
    ask = handler if handler is not None else _refuse

    def routed_input(prompt: object = "") -> str:
        return ask(str(prompt), False)

    def routed_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        return ask(prompt, True)

    saved = builtins.input, getpass.getpass
    builtins.input = routed_input
    getpass.getpass = routed_getpass
    try:
        yield
    finally:
        builtins.input, getpass.getpass = saved


class FdCapture:
    """Descriptors 1 and 2 of this process as pipes whose text goes to ``post(name, text)``.

    Output that bypasses ``sys.stdout`` (``os.system``, a subprocess, a C extension's
    ``printf``, a forked worker's prints) is written to the descriptors themselves; a
    notebook user expects it under the cell, as ipykernel shows it. A thread reads each
    pipe; :meth:`sync` lets the thread running a cell post what the pipes hold before
    its reply, so the output lands under that cell and not the next. The originals stay
    open for the process's own log (:meth:`original`).
    """

    def __init__(self, post: Callable[[str, str], None]) -> None:
        self._post = post
        self._lock = threading.Lock()  # one drainer per moment: the text stays in order
        self._pipes: dict[str, int] = {}
        self._saved: dict[str, int] = {}
        self._decoders: dict[str, Any] = {}

    def start(self) -> None:
        """Swap descriptors 1 and 2 for pipes and start reading them."""
        import codecs

        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, f"__{name}__", None)
            if stream is not None:
                stream.flush()
            self._saved[name] = os.dup(fd)
            read, write = os.pipe()
            os.dup2(write, fd)  # inheritable: children write into the pipe too
            os.close(write)
            os.set_blocking(read, False)
            self._pipes[name] = read
            self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
            pump = threading.Thread(
                target=self._pump, args=(name,), name=f"corral-{name}-fd", daemon=True
            )
            pump.pydev_do_not_trace = True  # type: ignore[attr-defined]
            pump.start()
        _filenos["stderr"] = self._saved["stderr"]
        global _sync_descriptors
        _sync_descriptors = self.sync

    def original(self, name: str) -> int:
        """The descriptor ``name`` (``"stdout"``/``"stderr"``) had before the capture."""
        return self._saved[name]

    def sync(self) -> None:
        """Post, from this thread, what the pipes hold now."""
        with self._lock:
            for name in list(self._pipes):
                self._drain(name)

    def stop(self) -> None:
        """Give descriptors 1 and 2 back (what is still in the pipes is posted first)."""
        self.sync()
        global _sync_descriptors
        _sync_descriptors = None
        _filenos["stderr"] = 2
        for name, fd in (("stdout", 1), ("stderr", 2)):
            saved = self._saved.pop(name, None)
            if saved is not None:
                os.dup2(saved, fd)
                os.close(saved)

    def _pump(self, name: str) -> None:
        import select

        pipe = self._pipes[name]
        while True:
            select.select([pipe], [], [])
            with self._lock:
                if self._drain(name):
                    continue
                del self._pipes[name]  # before closing: its number may be reused at once
            os.close(pipe)
            return

    def _drain(self, name: str) -> bool:
        """Post what pipe ``name`` holds; False at its end (every writer closed it)."""
        while True:
            try:
                data = os.read(self._pipes[name], 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            text = self._decoders[name].decode(data)
            if text:
                self._post(name, text)
