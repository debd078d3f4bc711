"""One frontend's hold on one kernel: a kernel it started, or an existing one it joined.

Frontends (the console, ``corral run``) need the same four things whichever way they got
their kernel: a client, a way to interrupt, a way to learn that the kernel died or came
back, and a way to let go. The two ways differ in ownership:

* a kernel the frontend started belongs to it: a :class:`KernelManager` interrupts it with
  SIGINT, restarts it when it crashes (posting ``KERNEL_DIED`` / ``KERNEL_RESTARTED``), and
  is shut down when the frontend ends;
* an existing kernel (``--existing CONNECTION_FILE``) belongs to someone else: it is
  interrupted with an ``interrupt_request`` on the control channel, watched through its
  heartbeat only, and left running at the end.

:class:`KernelLink` hides that difference so the frontends hold no ``if existing`` branches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from corral.notification import NotificationCenter, shared_center
from corral.plugins.kernels import KernelManager
from corral.transports.zmq.client import (
    BlockingKernelClient,
    KernelDiedError,
    MessageTimeout,
    channel_url,
    kernel_public_key,
)
from corral.transports.zmq.kernel_events import KERNEL_DIED, KERNEL_RESTARTED

__all__ = ["KernelLink", "KernelState", "resolve_connection_file"]

#: Seconds to wait for a crashed kernel to be replaced before giving up on it.
RESTART_WAIT = 60.0
#: Seconds to wait for an existing kernel to acknowledge an ``interrupt_request``.
INTERRUPT_REPLY_WAIT = 5.0


def resolve_connection_file(name: str | Path, profile: str = "default") -> Path:
    """The connection file ``name`` names: a path, or a file in the profile's ``security/``.

    Lets users type ``--existing kernel-1234.json`` instead of the full path, as the
    kernel's startup message and ``corral kernel`` commands show only the file name.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    from corral.core.profiles import profile_dir

    for candidate in (name, f"{name}.json", f"kernel-{name}.json"):
        in_profile = profile_dir(profile) / "security" / str(candidate)
        if in_profile.is_file():
            return in_profile
    raise FileNotFoundError(f"no connection file {name} (nor in profile {profile!r})")


class KernelState:
    """Deaths and restarts seen so far, counted under a condition so a thread can wait.

    Counting (rather than a flag) is what makes waiting race-free: the client's
    ``KernelDiedError`` can reach the frontend before or after the manager's notifications,
    and "a restart for every death" is true or false whatever the order.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.deaths = 0
        self.restarts = 0
        #: False once a death was announced with no restart to follow.
        self.restarting = True
        self.last_message = ""

    def died(self, message: str, restarting: bool) -> None:
        with self._cond:
            self.deaths += 1
            self.restarting = restarting
            self.last_message = message
            self._cond.notify_all()

    def restarted(self) -> None:
        with self._cond:
            self.restarts += 1
            self.restarting = True
            self._cond.notify_all()

    def wait_recovered(self, deaths_before: int, timeout: float = RESTART_WAIT) -> bool:
        """Wait until a death after ``deaths_before`` was followed by a restart.

        Returns False when the kernel is gone for good (or nothing came within ``timeout``).
        """
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.deaths > deaths_before
                    and (self.restarts >= self.deaths or not self.restarting)
                ),
                timeout,
            )
            return self.deaths > deaths_before and self.restarts >= self.deaths


class _HeartbeatWatch(threading.Thread):
    """Watches an existing kernel's heartbeat; ``misses`` silent pings in a row = dead.

    Nobody else would notice an existing kernel dying (no manager owns its process), and a
    client waiting for its reply would wait forever.
    """

    def __init__(self, info: Any, on_dead: Callable[[], None], interval: float = 1.0) -> None:
        super().__init__(name="corral-frontend-heartbeat", daemon=True)
        self.url = channel_url(info, "hb")
        self.server_key = kernel_public_key(info)
        self.on_dead = on_dead
        self.interval = interval
        self.misses = 5
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def _socket(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.REQ)
        sock.linger = 0
        if self.server_key:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = self.server_key.encode("ascii")
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.url)
        return sock

    def run(self) -> None:
        sock = self._socket()
        missed = 0
        try:
            while not self.stopped.is_set():
                sock.send(b"ping")
                if sock.poll(int(self.interval * 1000)):
                    sock.recv()
                    missed = 0
                    self.stopped.wait(self.interval)
                    continue
                missed += 1
                sock.close(linger=0)
                sock = self._socket()
                if missed >= self.misses and not self.stopped.is_set():
                    self.on_dead()
                    return
        finally:
            sock.close(linger=0)


class KernelLink:
    """A client plus the means to interrupt, follow and release its kernel.

    Build one with :meth:`start` (a new kernel this frontend owns) or :meth:`existing`.
    ``state`` counts deaths and restarts; ``on_died`` / ``on_restarted`` (set by the
    frontend) are called from a watcher thread with a readable message.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        client: BlockingKernelClient,
        *,
        manager: KernelManager | None = None,
        connection_file: Path | None = None,
        center: NotificationCenter | None = None,
    ) -> None:
        self.client = client
        self.manager = manager
        self.connection_file = connection_file
        self.center = center if center is not None else shared_center
        self.state = KernelState()
        self.on_died: Callable[[str, bool], None] | None = None
        self.on_restarted: Callable[[], None] | None = None
        #: Leave a kernel this frontend started running at :meth:`close` (``exit`` asked).
        self.keep_kernel = False
        self._interrupter: BlockingKernelClient | None = None
        self._watch: _HeartbeatWatch | None = None
        if manager is not None:
            self.center.add_observer(self._kernel_died, KERNEL_DIED, sender=manager)
            self.center.add_observer(self._kernel_restarted, KERNEL_RESTARTED, sender=manager)

    # ------------------------------------------------------------------ building

    @classmethod
    def start(
        cls,
        *,
        profile: str = "default",
        autorestart: bool = True,
        center: NotificationCenter | None = None,
        ready_timeout: float = 60.0,
    ) -> KernelLink:
        """Start a kernel this frontend owns and wait until it answers."""
        manager = KernelManager(profile=profile, autorestart=autorestart, center=center)
        manager.start()
        try:
            client = manager.client()
            link = cls(client, manager=manager, center=manager.center)
            client.wait_for_ready(ready_timeout)
        except BaseException:
            manager.shutdown(now=True)
            raise
        return link

    @classmethod
    def existing(cls, connection_file: str | Path, *, ready_timeout: float = 30.0) -> KernelLink:
        """Join the running kernel described by ``connection_file`` (never shut down)."""
        path = Path(connection_file).expanduser()
        client = BlockingKernelClient(connection_file=path)
        link = cls(client, connection_file=path)
        client.wait_for_ready(ready_timeout)
        link._watch = _HeartbeatWatch(client.connection_info, link._existing_died)
        link._watch.start()
        return link

    # --------------------------------------------------------------------- queries

    @property
    def owns_kernel(self) -> bool:
        """Whether this frontend started the kernel (and so shuts it down at the end)."""
        return self.manager is not None

    # --------------------------------------------------------------------- actions

    def interrupt(self) -> None:
        """Interrupt the running cell; safe to call from a signal handler.

        An existing kernel gets an ``interrupt_request`` through a client of its own, so
        the main client's sockets are never touched from inside a signal handler.
        """
        if self.manager is not None:
            if self.manager.is_alive():
                self.manager.interrupt()
            return
        if self._interrupter is None:
            self._interrupter = BlockingKernelClient(self.client.connection_info)
        try:
            msg_id = self._interrupter.interrupt_request()
            # Waiting for the reply is what makes sure the request left this process: a
            # frontend that exits right after (``corral run --timeout``) would drop it.
            self._interrupter.get_reply(msg_id, timeout=INTERRUPT_REPLY_WAIT, channel="control")
        except (KernelDiedError, MessageTimeout, zmq.ZMQError):
            pass

    def close(self) -> None:
        """Let go: shut down a kernel this frontend started, leave an existing one running."""
        if self._watch is not None:
            self._watch.stop()
        if self.manager is not None:
            self.center.remove_observer(self._kernel_died, KERNEL_DIED, sender=self.manager)
            self.center.remove_observer(
                self._kernel_restarted, KERNEL_RESTARTED, sender=self.manager
            )
            if not self.keep_kernel:
                self.manager.shutdown()
        if self._interrupter is not None:
            self._interrupter.close()
        self.client.close()

    def __enter__(self) -> KernelLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ notifications

    def _kernel_died(self, type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        restarting = bool(info.get("restarting"))
        message = str(info.get("message") or "kernel died")
        # The frontend speaks first, then the waiting thread is released: so the notice
        # is printed before the next prompt, never after it.
        if self.on_died is not None:
            self.on_died(message, restarting)
        self.state.died(message, restarting)

    def _kernel_restarted(self, type: str, sender: Any, **info: Any) -> None:  # noqa: A002
        if self.on_restarted is not None:
            self.on_restarted()
        self.state.restarted()

    def _existing_died(self) -> None:
        message = "the kernel stopped answering its heartbeat"
        # Fail the client's pending waits instead of leaving them hanging (the same call a
        # KernelManager makes for the clients it hands out).
        self.client._kernel_died(KernelDiedError(message, reason="heartbeat"))
        if self.on_died is not None:
            self.on_died(message, False)
        self.state.died(message, restarting=False)
