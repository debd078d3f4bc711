"""The asyncio kernel client: the blocking client's surface, waiting with ``await``.

Requests (``execute``, ``complete``, ...) only queue a message on a ZeroMQ socket, so they
stay plain methods returning the msg_id, as in jupyter_client's ``AsyncKernelClient``;
everything that waits for the kernel (``get_*_msg``, ``get_reply``, ``wait_for_ready``,
``execute_interactive``, ``heartbeat``) is a coroutine. Message building, signing and the
connection state live in :class:`~corral.transports.zmq.client._ClientBase`, shared with
the blocking client; only the waiting differs.

The kernel manager reports deaths and restarts from its own thread. Here that report is
handed to the event loop with ``call_soon_threadsafe``, which completes the futures that
pending waits race against, so a wait on a dead kernel ends at once with
:class:`~corral.transports.zmq.client.KernelDiedError`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from corral.transports.zmq.client import (
    KernelDiedError,
    Message,
    MessageTimeout,
    OutputHook,
    StdinHook,
    _apply_curve,
    _ClientBase,
    _remaining_s,
    _stdin_is_tty,
    channel_url,
    default_output_hook,
    prompt_for_input,
)
from corral.transports.zmq.client_protocol import (
    Handshake,
    InteractiveRun,
    interactive_hooks,
    parent_id,
)

__all__ = ["AsyncKernelClient", "KernelDiedError", "MessageTimeout"]


async def _call_hook(hook: Any, msg: Message) -> Any:
    """Call a hook that may be a plain function or a coroutine function."""
    result = hook(msg)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _prompt_in_thread(msg: Message) -> str:
    """The default stdin hook, off the event loop so that other tasks keep running."""
    return await asyncio.get_running_loop().run_in_executor(None, prompt_for_input, msg)


class AsyncKernelClient(_ClientBase[zmq.asyncio.Socket]):
    """A kernel client for asyncio code: ``await kc.execute_interactive("1 + 1")``.

    Use it from one event loop (the sockets belong to the loop that first used them).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        connection_info: Any = None,
        *,
        connection_file: str | Path | None = None,
        session: str | None = None,
        username: str | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        super().__init__(
            connection_info, connection_file=connection_file, session=session, username=username
        )
        self.context: zmq.asyncio.Context = context or zmq.asyncio.Context.instance()
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._hb: zmq.asyncio.Socket | None = None
        self._socket_generation = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncKernelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; the client cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._close_sockets()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake_waiters)
        except RuntimeError:  # the loop closed in between: nobody is waiting
            pass

    def _wake_waiters(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)

    def _ensure_sockets(self) -> bool:
        """Connect (or reconnect after a restart); True if new sockets were made."""
        info = self._require_info()  # before the loop: a missing file fails here
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        return self._connect_sockets(info)

    # ------------------------------------------------------------------ receiving

    async def _wait_readable(
        self, socks: list[zmq.asyncio.Socket], deadline: float | None, epoch: int
    ) -> set[zmq.asyncio.Socket]:
        """Sockets of ``socks`` ready to read; empty at the deadline.

        Raises :class:`KernelDiedError` as soon as the manager reports a death or restart.
        """
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        # Registered before the check: a report arriving later completes ``wake``.
        self._waiters.add(wake)
        try:
            self._check(epoch)
            left = _remaining_s(deadline)
            poller = zmq.asyncio.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
            timeout_ms = -1 if left is None else int(left * 1000) + 1
            polling = asyncio.ensure_future(poller.poll(timeout_ms))
            either: set[asyncio.Future[Any]] = {polling, wake}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not polling.done():
                    polling.cancel()
            self._check(epoch)
            if polling.cancelled() or not polling.done():
                return set()
            return {sock for sock, _ in polling.result()}
        finally:
            self._waiters.discard(wake)

    async def _read(self, channel: str, sock: zmq.asyncio.Socket) -> Message | None:
        return self._unpack(channel, await sock.recv_multipart())

    async def _recv(self, channel: str, timeout: float | None, epoch: int | None = None) -> Message:
        backlog = self._backlog[channel]
        if backlog:
            return backlog.popleft()
        epoch = self._epoch if epoch is None else epoch
        self._check(epoch)
        self._ensure_sockets()
        sock = self._sockets[channel]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = await self._wait_readable([sock], deadline, epoch)
            if sock in ready:
                msg = await self._read(channel, sock)
                if msg is not None:
                    return msg
            elif deadline is not None and time.monotonic() >= deadline:
                raise MessageTimeout(f"no message on the {channel} channel within {timeout}s")

    async def get_shell_msg(self, timeout: float | None = None) -> Message:
        """The next reply on the shell channel."""
        return await self._recv("shell", timeout)

    async def get_control_msg(self, timeout: float | None = None) -> Message:
        """The next reply on the control channel."""
        return await self._recv("control", timeout)

    async def get_iopub_msg(self, timeout: float | None = None) -> Message:
        """The next message the kernel published."""
        return await self._recv("iopub", timeout)

    async def get_stdin_msg(self, timeout: float | None = None) -> Message:
        """The next ``input_request`` the kernel sent to this client."""
        return await self._recv("stdin", timeout)

    async def get_reply(
        self, msg_id: str, timeout: float | None = None, channel: str = "shell"
    ) -> Message:
        """The reply to request ``msg_id``; other replies stay queued for ``get_*_msg``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        epoch = self._epoch
        skipped: list[Message] = []
        try:
            while True:
                msg = await self._recv(channel, _remaining_s(deadline), epoch)
                if parent_id(msg) == msg_id:
                    return msg
                skipped.append(msg)
        finally:
            self._backlog[channel].extendleft(reversed(skipped))

    async def heartbeat(self, timeout: float = 1.0) -> bool:
        """Whether the kernel's heartbeat echoes a ping within ``timeout`` seconds."""
        info = self._require_info()
        if self._hb is None:
            self._hb = self.context.socket(zmq.REQ)
            self._hb.linger = 0
            _apply_curve(self._hb, info)
            self._hb.connect(channel_url(info, "hb"))
        await self._hb.send(b"ping")
        if await self._hb.poll(int(timeout * 1000)):
            await self._hb.recv()
            return True
        self._hb.close(linger=0)
        self._hb = None
        return False

    # ------------------------------------------------------------------ readiness

    async def wait_for_ready(self, timeout: float | None = 60) -> Message:
        """Wait until the kernel answers ``kernel_info`` and its iopub reaches us.

        Returns the ``kernel_info_reply``. See the blocking client for why iopub matters.
        """
        self._ensure_sockets()
        return await self._handshake(timeout)

    async def _handshake(self, timeout: float | None) -> Message:
        epoch = self._epoch
        shell, iopub = self._sockets["shell"], self._sockets["iopub"]
        talk = Handshake(
            lambda: self._message("kernel_info_request", {}), timeout, time.monotonic()
        )
        shell.send_multipart(self._pack(talk.start()))
        try:
            while not talk.done:
                now = time.monotonic()
                if talk.expired(now):
                    raise MessageTimeout(talk.timeout_message)
                again = talk.resend(now)
                if again is not None:
                    shell.send_multipart(self._pack(again))
                ready = await self._wait_readable([shell, iopub], talk.wake_at(), epoch)
                for channel, sock in (("shell", shell), ("iopub", iopub)):
                    if sock not in ready:
                        continue
                    got = await self._read(channel, sock)
                    if got is not None and not talk.receive(channel, got, time.monotonic()):
                        self._backlog[channel].append(got)
        finally:
            self._handshake_ids |= talk.ids
        self._synced_generation = self._generation
        assert talk.reply is not None
        return talk.reply

    # -------------------------------------------------------- interactive execution

    async def execute_interactive(
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
        """Run ``code``, pass its outputs to ``output_hook`` as they come; the reply.

        Hooks may be plain or ``async`` functions; otherwise as
        :meth:`BlockingKernelClient.execute_interactive
        <corral.transports.zmq.client.BlockingKernelClient.execute_interactive>`.
        """
        allow_stdin, output_hook, stdin_hook = interactive_hooks(
            allow_stdin,
            output_hook,
            stdin_hook,
            default_output=default_output_hook,
            default_stdin=_prompt_in_thread,
            stdin_is_tty=_stdin_is_tty,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._ensure_sockets() or self._synced_generation != self._generation:
            await self._handshake(_remaining_s(deadline))
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
        while True:
            if run.expired(time.monotonic()):
                raise MessageTimeout(run.timeout_message)
            ready = await self._wait_readable([iopub, stdin], deadline, epoch)
            if stdin in ready:
                req = await self._read("stdin", stdin)
                if run.wants_answer(req):
                    answer = await _call_hook(stdin_hook, req)
                    if answer is not None:
                        self.input(str(answer))
            if iopub in ready:
                out = await self._read("iopub", iopub)
                step = run.on_iopub(out)
                if step == "idle":
                    break
                if step == "output":
                    assert out is not None  # on_iopub says "output" only for a message
                    await _call_hook(output_hook, out)
        return await self.get_reply(msg_id, _remaining_s(deadline))
