"""The blocking kernel client: talks to one kernel over its five ZeroMQ channels.

Split in two, as h11 is split from httpcore:

* :class:`_ClientBase` holds everything that is not I/O: the session, how requests are built,
  how frames are signed and checked, and the connection *state* the kernel manager changes
  from its watcher thread (kernel died, kernel restarted on new ports). The async client in
  :mod:`corral.transports.zmq.aclient` reuses it unchanged.
* :class:`BlockingKernelClient` is the thin blocking shell: sockets, polling and waiting.

Why the state is kept apart from the sockets: ZeroMQ sockets must only be used by the
thread that uses the client, but deaths and restarts are noticed by the manager's thread.
So the manager only flips state and pokes a wake-up pipe; the client's own thread sees the
change at its next poll, fails waits that can never be answered with
:class:`KernelDiedError`, and rebuilds its sockets against the new ports before its next
request. A client therefore never hangs on a dead kernel, and the same client object keeps
working after an automatic restart.
"""

from __future__ import annotations

import getpass
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import zmq

from corral.errors import CorralError
from corral.transports.zmq.client_protocol import (
    Handshake,
    InteractiveRun,
    interactive_hooks,
    parent_id,
)
from corral.transports.zmq.wire import ReplayGuard, Signer, WireError, deserialize, make_message
from corral.transports.zmq.wire import serialize as serialize_message

__all__ = [
    "BlockingKernelClient",
    "KernelDiedError",
    "MessageTimeout",
    "default_output_hook",
    "describe_exit",
    "channel_url",
]

log = logging.getLogger("corral.client")

Message = dict[str, Any]
OutputHook = Callable[[Message], Any]
StdinHook = Callable[[Message], Any]

#: The channels a client connects, and the socket type that speaks to the kernel's side.
CHANNELS = ("shell", "control", "stdin", "iopub")
_SOCKET_TYPES = {
    "shell": zmq.DEALER,
    "control": zmq.DEALER,
    "stdin": zmq.DEALER,
    "iopub": zmq.SUB,
    "hb": zmq.REQ,
}

#: Signatures remembered per connection to refuse replays; bounded so memory stays flat.
_REPLAY_WINDOW = 50_000


class KernelDiedError(CorralError, RuntimeError):
    """The kernel died (or was restarted) while a request could still be answered.

    Raised by every wait that was pending when the manager noticed the death, and by new
    waits and requests until the kernel has been restarted. ``reason`` is ``"exited"``,
    ``"heartbeat"``, ``"restarted"`` or ``"restart-failed"``; ``exit_code`` is the
    process's return code when it is known (negative: killed by that signal).
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exit_code: int | None = None,
        reason: str = "exited",
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exit_code = exit_code
        self.reason = reason

    def copy(self) -> KernelDiedError:
        """A fresh exception with the same facts, so every raise gets its own traceback."""
        return KernelDiedError(
            str(self), pid=self.pid, exit_code=self.exit_code, reason=self.reason
        )


class MessageTimeout(CorralError, TimeoutError, queue.Empty):
    """No message arrived in time.

    A :class:`TimeoutError`, and also a :class:`queue.Empty` so that code written for
    jupyter_client's ``get_shell_msg`` (which raises ``Empty``) keeps working unchanged.
    """


def describe_exit(exit_code: int | None) -> str:
    """'exit code 1' or 'killed by SIGSEGV' (a negative Popen return code is a signal)."""
    if exit_code is None:
        return "still running"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}"
    return f"exit code {exit_code}"


def channel_url(info: Any, channel: str) -> str:
    """The address to *connect* to for ``channel`` of the kernel described by ``info``.

    A kernel bound to every interface (``0.0.0.0`` or ``*``) is reached on loopback.
    """
    port = getattr(info, f"{channel}_port")
    ip = info.ip
    if ip in ("0.0.0.0", "*", ""):
        ip = "127.0.0.1"
    if info.transport == "tcp":
        return f"tcp://{ip}:{port}"
    return f"{info.transport}://{ip}-{port}"


def _signer_for(info: Any) -> Signer:
    key = info.key
    if isinstance(key, str):
        key = key.encode("ascii")
    return Signer(key, getattr(info, "signature_scheme", None) or "hmac-sha256")


def _load_connection_info(path: str | Path) -> Any:
    from corral.transports.zmq.connection import read_connection_file

    return read_connection_file(path)


def default_output_hook(msg: Message) -> None:
    """Show one iopub message as a terminal would: streams as text, results as text/plain.

    Errors print their traceback (already formatted by the kernel) to stderr.
    """
    msg_type = msg["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(content.get("text", ""))
        stream.flush()
    elif msg_type in ("display_data", "execute_result", "update_display_data"):
        text = (content.get("data") or {}).get("text/plain")
        if text is not None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
    elif msg_type == "error":
        lines = content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()


def prompt_for_input(msg: Message) -> str:
    """Answer an ``input_request`` at the terminal: ``getpass`` for passwords, else ``input``.

    End of input answers the empty string rather than leaving the kernel waiting forever.
    """
    content = msg["content"]
    prompt = content.get("prompt", "")
    try:
        if content.get("password"):
            return getpass.getpass(prompt)
        return input(prompt)
    except EOFError:
        return ""


#: The kind of socket a client uses: blocking ``zmq.Socket`` or ``zmq.asyncio.Socket``.
_Socket = TypeVar("_Socket", bound="zmq.Socket[Any]")


class _ClientBase(Generic[_Socket]):
    """Session, request building, frame checking and connection state; no sockets at all.

    ``_generation`` counts connections (bumped when the kernel moves to new ports);
    ``_epoch`` counts everything that invalidates a pending wait (deaths and restarts). A
    wait remembers the epoch it started in and fails as soon as the epoch moves on.
    """

    # Made by the blocking and the asyncio client in their __init__, each with its own kind
    # of socket; the connecting and sending code here uses them through these names.
    context: zmq.Context[_Socket]
    _sockets: dict[str, _Socket]
    _hb: _Socket | None
    _socket_generation: int

    def __init__(
        self,
        connection_info: Any = None,
        *,
        connection_file: str | Path | None = None,
        session: str | None = None,
        username: str | None = None,
    ) -> None:
        from corral.transports.zmq.wire import new_id

        if connection_info is None and connection_file is not None:
            connection_info = _load_connection_info(connection_file)
        self.session: str = session or new_id()
        self.username: str = username or _default_username()
        #: Whether ``execute`` lets the kernel ask for input unless told otherwise.
        self.allow_stdin: bool = True
        self._state_lock = threading.Lock()
        self._info = connection_info
        self._generation = 0
        self._epoch = 0
        self._death: KernelDiedError | None = None
        # Why the last epoch ended: what a wait from an earlier epoch reports.
        self._last_error: KernelDiedError | None = None
        self._closed = False
        self._signer: Signer | None = None
        self._replay = ReplayGuard(_REPLAY_WINDOW)
        # kernel_info requests sent by the readiness handshake: their answers are noise.
        self._handshake_ids: set[str] = set()
        self._backlog: dict[str, deque[Message]] = {ch: deque() for ch in CHANNELS}
        # The connection generation whose iopub subscription is known to be live.
        self._synced_generation = -1

    # ------------------------------------------------------------ connection state

    @property
    def connection_info(self) -> Any:
        """Where the kernel listens now (changes when the manager restarts the kernel)."""
        return self._info

    def load_connection_file(self, path: str | Path) -> None:
        """Point this client at the kernel described by the connection file at ``path``."""
        self._kernel_restarted(_load_connection_info(path), invalidate=False)

    def _kernel_died(self, error: KernelDiedError) -> None:
        """Called by the manager's thread: fail pending and future waits with ``error``."""
        with self._state_lock:
            self._death = error
            self._last_error = error
            self._epoch += 1
        self._wake()

    def _kernel_restarted(self, info: Any, *, invalidate: bool = True) -> None:
        """Called by the manager's thread: the kernel now listens as ``info`` describes.

        Waits still pending belonged to the previous kernel and fail; the sockets are
        rebuilt by the client's own thread before its next use.
        """
        with self._state_lock:
            self._info = info
            self._generation += 1
            if invalidate:
                if self._death is None:  # restarted on purpose, not after a death
                    self._last_error = KernelDiedError(
                        "the kernel was restarted while this request was pending; "
                        "its answer is lost",
                        reason="restarted",
                    )
                self._epoch += 1
            self._death = None
        self._wake()

    def _wake(self) -> None:
        """Interrupt the client's current wait so it looks at the state again."""

    def _check(self, epoch: int | None) -> None:
        """Raise :class:`KernelDiedError` if the kernel is dead or moved since ``epoch``."""
        death = self._death
        if death is not None:
            raise death.copy()
        if epoch is not None and epoch != self._epoch:
            last = self._last_error
            raise (
                last.copy()
                if last is not None
                else KernelDiedError(
                    "the kernel went away while this request was pending", reason="restarted"
                )
            )

    def _require_info(self) -> Any:
        if self._closed:
            raise RuntimeError("this kernel client is closed")
        if self._info is None:
            raise RuntimeError(
                "this kernel client has no connection info: pass connection_info= or "
                "connection_file=, or get the client from KernelManager.client()"
            )
        return self._info

    # ------------------------------------------------------------------- messages

    def _message(self, msg_type: str, content: dict[str, Any]) -> Message:
        return make_message(msg_type, content, session=self.session, username=self.username)

    def _pack(self, msg: Message) -> list[Any]:
        assert self._signer is not None
        return serialize_message(msg, self._signer)

    def _unpack(self, channel: str, frames: list[bytes]) -> Message | None:
        """The message in ``frames``, or None (logged) if it is forged, replayed or noise."""
        assert self._signer is not None
        try:
            _, msg = deserialize(frames, self._signer, self._replay)
        except WireError as exc:
            log.warning("dropped a bad message on the %s channel: %s", channel, exc)
            return None
        if self._handshake_ids and parent_id(msg) in self._handshake_ids:
            return None
        return msg

    def _routing_id(self, generation: int) -> bytes:
        """The identity of the shell and stdin sockets: the kernel sends input requests to
        the identity a request came from, so both share it.

        It changes with every connection: after a restart on the same ports, the previous
        sockets may still be connected to the new kernel while they close, and a ROUTER
        drops a newcomer whose identity is already taken.
        """
        return f"{self.session}-{generation}".encode("ascii")

    def _new_connection_state(self) -> None:
        """Forget what belonged to the previous kernel: signer, replay window, backlogs."""
        self._signer = _signer_for(self._info)
        self._replay = ReplayGuard(_REPLAY_WINDOW)
        self._handshake_ids.clear()
        for backlog in self._backlog.values():
            backlog.clear()

    # ------------------------------------------------------------ request contents

    def _execute_msg(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, str] | None,
        allow_stdin: bool | None,
        stop_on_error: bool,
    ) -> Message:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        return self._message(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": store_history,
                "user_expressions": dict(user_expressions or {}),
                "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
                "stop_on_error": stop_on_error,
            },
        )

    def _complete_msg(self, code: str, cursor_pos: int | None) -> Message:
        pos = len(code) if cursor_pos is None else cursor_pos
        return self._message("complete_request", {"code": code, "cursor_pos": pos})

    def _inspect_msg(self, code: str, cursor_pos: int | None, detail_level: int) -> Message:
        pos = len(code) if cursor_pos is None else cursor_pos
        return self._message(
            "inspect_request", {"code": code, "cursor_pos": pos, "detail_level": detail_level}
        )

    def _history_msg(
        self, raw: bool, output: bool, hist_access_type: str, extra: dict[str, Any]
    ) -> Message:
        content = {"raw": raw, "output": output, "hist_access_type": hist_access_type}
        content.update(extra)
        return self._message("history_request", content)

    def _comm_info_msg(self, target_name: str | None) -> Message:
        content = {} if target_name is None else {"target_name": target_name}
        return self._message("comm_info_request", content)

    # ---------------------------------------------------------------- connecting

    def _connect_sockets(self, info: Any = None) -> bool:
        """Make this generation's sockets unless they exist; True if new ones were made."""
        info = info or self._require_info()
        generation = self._generation
        if self._sockets and self._socket_generation == generation:
            return False
        self._close_sockets()
        self._new_connection_state()
        identity = self._routing_id(generation)
        for channel in CHANNELS:
            sock = self.context.socket(_SOCKET_TYPES[channel])
            sock.linger = 1000
            if channel in ("shell", "stdin"):
                # The kernel answers stdin requests to the shell sender's identity.
                sock.identity = identity
            if channel == "iopub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            _apply_curve(sock, info)
            sock.connect(channel_url(info, channel))
            self._sockets[channel] = sock
        self._socket_generation = generation
        return True

    def _ensure_sockets(self) -> bool:
        """Connect (or reconnect after a restart); True if new sockets were made."""
        raise NotImplementedError  # each client connects in its own way

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._hb is not None:
            self._hb.close(linger=0)
            self._hb = None

    # -------------------------------------------------------------------- sending
    # Sending is the same for the blocking and the asyncio client: a request is written
    # to its socket at once; only waiting for the answers differs.

    def _send(self, channel: str, msg: Message) -> str:
        self._check(None)
        self._ensure_sockets()
        self._sockets[channel].send_multipart(self._pack(msg), copy=False)
        return msg["msg_id"]

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
    ) -> str:
        """Send an ``execute_request``; returns its msg_id (the replies' parent)."""
        msg = self._execute_msg(
            code, silent, store_history, user_expressions, allow_stdin, stop_on_error
        )
        return self._send("shell", msg)

    def kernel_info(self) -> str:
        """Send a ``kernel_info_request``; returns its msg_id."""
        return self._send("shell", self._message("kernel_info_request", {}))

    def complete(self, code: str, cursor_pos: int | None = None) -> str:
        """Ask for completions at ``cursor_pos`` (default: end of ``code``)."""
        return self._send("shell", self._complete_msg(code, cursor_pos))

    def inspect(self, code: str, cursor_pos: int | None = None, detail_level: int = 0) -> str:
        """Ask for help on the name at ``cursor_pos`` (default: end of ``code``)."""
        return self._send("shell", self._inspect_msg(code, cursor_pos, detail_level))

    def history(
        self,
        raw: bool = True,
        output: bool = False,
        hist_access_type: str = "range",
        **kwargs: Any,
    ) -> str:
        """Ask for history: ``range`` (session, start, stop), ``tail`` (n) or ``search``."""
        return self._send("shell", self._history_msg(raw, output, hist_access_type, kwargs))

    def is_complete(self, code: str) -> str:
        """Ask whether ``code`` is a complete statement (for console line continuation)."""
        return self._send("shell", self._message("is_complete_request", {"code": code}))

    def comm_info(self, target_name: str | None = None) -> str:
        """Ask which comms are open (optionally only for one target)."""
        return self._send("shell", self._comm_info_msg(target_name))

    def shutdown(self, restart: bool = False) -> str:
        """Ask the kernel to shut down (on the control channel, so it is heard when busy).

        This only asks; :meth:`KernelManager.shutdown` also makes sure the process is gone.
        """
        return self._send("control", self._message("shutdown_request", {"restart": restart}))

    def interrupt_request(self) -> str:
        """Ask the kernel to interrupt itself (for kernels with ``interrupt_mode: message``)."""
        return self._send("control", self._message("interrupt_request", {}))

    def input(self, text: str) -> None:
        """Answer the kernel's pending ``input_request`` with ``text``."""
        self._send("stdin", self._message("input_reply", {"value": text}))


def _default_username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry, e.g. in some containers
        return "corral"


class BlockingKernelClient(_ClientBase[zmq.Socket]):
    """A client that waits: send requests, then block until the kernel's messages arrive.

    Use one client from one thread (ZeroMQ sockets are not thread-safe); use one client per
    thread if several threads talk to the kernel. Sockets are created on first use.

    Every wait takes ``timeout`` in seconds (``None``: forever) and raises
    :class:`MessageTimeout` when it runs out, and :class:`KernelDiedError` when the kernel
    dies while waiting (the manager of the kernel tells the client).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        connection_info: Any = None,
        *,
        connection_file: str | Path | None = None,
        session: str | None = None,
        username: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(
            connection_info, connection_file=connection_file, session=session, username=username
        )
        self.context: zmq.Context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._hb: zmq.Socket | None = None
        self._socket_generation = -1
        # A pipe the manager's thread writes to; polled with the sockets to end waits early.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> BlockingKernelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; the client cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._close_sockets()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes the waiter just the same; a closed one has no waiter

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _ensure_sockets(self) -> bool:
        """Connect (or reconnect after a restart); True if new sockets were made."""
        return self._connect_sockets()

    @property
    def channels_running(self) -> bool:
        """Whether sockets are connected (they are made on first use)."""
        return bool(self._sockets)

    # ------------------------------------------------------------------ receiving

    def _recv(self, channel: str, timeout: float | None, epoch: int | None = None) -> Message:
        backlog = self._backlog[channel]
        if backlog:
            return backlog.popleft()
        epoch = self._epoch if epoch is None else epoch
        self._check(epoch)
        self._ensure_sockets()
        sock = self._sockets[channel]
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check(epoch)
            ready = dict(poller.poll(_remaining_ms(deadline)))
            if self._wake_r in ready:
                self._drain_wake()
                continue
            if sock in ready:
                msg = self._unpack(channel, sock.recv_multipart(copy=True))
                if msg is not None:
                    return msg
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise MessageTimeout(f"no message on the {channel} channel within {timeout}s")

    def get_shell_msg(self, timeout: float | None = None) -> Message:
        """The next reply on the shell channel."""
        return self._recv("shell", timeout)

    def get_control_msg(self, timeout: float | None = None) -> Message:
        """The next reply on the control channel."""
        return self._recv("control", timeout)

    def get_iopub_msg(self, timeout: float | None = None) -> Message:
        """The next message the kernel published (outputs and status, for every client)."""
        return self._recv("iopub", timeout)

    def get_stdin_msg(self, timeout: float | None = None) -> Message:
        """The next ``input_request`` the kernel sent to this client."""
        return self._recv("stdin", timeout)

    def get_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> Message:
        """The reply to request ``msg_id``; other replies stay queued for ``get_*_msg``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        epoch = self._epoch
        skipped: list[Message] = []
        try:
            while True:
                msg = self._recv(channel, _remaining_s(deadline), epoch)
                if parent_id(msg) == msg_id:
                    return msg
                skipped.append(msg)
        finally:
            self._backlog[channel].extendleft(reversed(skipped))

    def heartbeat(self, timeout: float = 1.0) -> bool:
        """Whether the kernel's heartbeat echoes a ping within ``timeout`` seconds."""
        info = self._require_info()
        if self._hb is None:
            self._hb = self.context.socket(zmq.REQ)
            self._hb.linger = 0
            _apply_curve(self._hb, info)
            self._hb.connect(channel_url(info, "hb"))
        self._hb.send(b"ping")
        if self._hb.poll(int(timeout * 1000)):
            self._hb.recv()
            return True
        # A REQ socket that got no answer cannot send again: start over next time.
        self._hb.close(linger=0)
        self._hb = None
        return False

    # ------------------------------------------------------------------ readiness

    def wait_for_ready(self, timeout: float | None = 60) -> Message:
        """Block until the kernel answers ``kernel_info`` *and* its iopub reaches us.

        The second half matters: a SUB socket misses whatever the kernel publishes before
        the subscription has propagated, so without it the first execution's outputs could
        be lost. Returns the ``kernel_info_reply``.
        """
        self._ensure_sockets()
        return self._handshake(timeout)

    def _handshake(self, timeout: float | None) -> Message:
        epoch = self._epoch
        shell, iopub = self._sockets["shell"], self._sockets["iopub"]
        poller = zmq.Poller()
        for item in (shell, iopub, self._wake_r):
            poller.register(item, zmq.POLLIN)
        talk = Handshake(
            lambda: self._message("kernel_info_request", {}), timeout, time.monotonic()
        )
        shell.send_multipart(self._pack(talk.start()))
        try:
            while not talk.done:
                self._check(epoch)
                now = time.monotonic()
                if talk.expired(now):
                    raise MessageTimeout(talk.timeout_message)
                again = talk.resend(now)
                if again is not None:
                    shell.send_multipart(self._pack(again))
                ready = dict(poller.poll(_remaining_ms(talk.wake_at())))
                if self._wake_r in ready:
                    self._drain_wake()
                for channel, sock in (("shell", shell), ("iopub", iopub)):
                    if sock not in ready:
                        continue
                    got = self._unpack(channel, sock.recv_multipart())
                    if got is not None and not talk.receive(channel, got, time.monotonic()):
                        self._backlog[channel].append(got)
        finally:
            # Late answers to the extra requests are dropped by _unpack.
            self._handshake_ids |= talk.ids
        self._synced_generation = self._generation
        assert talk.reply is not None
        return talk.reply

    # -------------------------------------------------------- interactive execution

    def execute_interactive(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
        timeout: float | None = None,
        output_hook: OutputHook | None = None,
        stdin_hook: StdinHook | None = None,
    ) -> Message:
        """Run ``code`` and show its outputs as they arrive; returns the ``execute_reply``.

        Every iopub message caused by this request goes to ``output_hook`` in order
        (default: :func:`default_output_hook`, which prints like a terminal). An
        ``input_request`` goes to ``stdin_hook``: if it returns a string, that string is
        sent as the answer; if it returns None it is assumed to have called
        :meth:`input` itself (default: :func:`prompt_for_input`). Stdin is allowed when a
        hook is given or stdin is a terminal, unless ``allow_stdin`` says otherwise.

        Returns once the kernel is idle again after this request, so no output is missed.
        Raises :class:`MessageTimeout` (a ``TimeoutError``) after ``timeout`` seconds, and
        :class:`KernelDiedError` if the kernel dies meanwhile.
        """
        allow_stdin, output_hook, stdin_hook = interactive_hooks(
            allow_stdin,
            output_hook,
            stdin_hook,
            default_output=default_output_hook,
            default_stdin=prompt_for_input,
            stdin_is_tty=_stdin_is_tty,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._ensure_sockets() or self._synced_generation != self._generation:
            self._handshake(_remaining_s(deadline))
        epoch = self._epoch
        msg_id = self.execute(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions,
            allow_stdin=allow_stdin,
            stop_on_error=stop_on_error,
        )
        run = InteractiveRun(msg_id, timeout, deadline)
        iopub, stdin = self._sockets["iopub"], self._sockets["stdin"]
        poller = zmq.Poller()
        for item in (iopub, stdin, self._wake_r):
            poller.register(item, zmq.POLLIN)
        while True:
            self._check(epoch)
            if run.expired(time.monotonic()):
                raise MessageTimeout(run.timeout_message)
            ready = dict(poller.poll(_remaining_ms(deadline)))
            if self._wake_r in ready:
                self._drain_wake()
                continue
            if stdin in ready:
                req = self._unpack("stdin", stdin.recv_multipart())
                if run.wants_answer(req):
                    answer = stdin_hook(req)
                    if answer is not None:
                        self.input(str(answer))
            if iopub in ready:
                out = self._unpack("iopub", iopub.recv_multipart())
                step = run.on_iopub(out)
                if step == "idle":
                    break
                if step == "output":
                    assert out is not None  # on_iopub says "output" only for a message
                    output_hook(out)
        return self.get_reply(msg_id, _remaining_s(deadline))


def _remaining_ms(deadline: float | None) -> int | None:
    """Milliseconds until ``deadline`` for zmq's poll (None: wait forever)."""
    if deadline is None:
        return None
    return max(0, int((deadline - time.monotonic()) * 1000) + 1)


def _remaining_s(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def kernel_public_key(info: Any) -> str | None:
    """The kernel's CurveZMQ public key from ``info`` (None: the kernel is not encrypted)."""
    return getattr(info, "curve_publickey", None) or getattr(info, "curve_server_key", None)


def _apply_curve(sock: zmq.Socket, info: Any) -> None:
    """Encrypt with CurveZMQ when the connection file names the kernel's public key."""
    server_key: str | bytes | None = kernel_public_key(info)
    if not server_key:
        return
    if isinstance(server_key, str):
        server_key = server_key.encode("ascii")
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret
