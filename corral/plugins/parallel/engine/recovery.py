"""What an engine does when its controller is lost, and when one comes back.

The hub watch (:mod:`.heartbeat`) reports silence, a controller's return (or a new one's
first beat) and, after the grace period, a loss for good. A lost controller is not the
end of a cluster: the engine keeps running and keeps its namespace and its finished
replies, re-registers under the same id with a controller restarted on the same cluster
(saying which tasks it holds), and sends again the replies the old controller may have
died with. Only when the grace is over does it exit, removing the cluster file if its
controller is dead.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING

import zmq

from corral.transports.zmq import wire

from ._wire import ROLES, recv_messages
from .clusterinfo import EngineError, load_cluster_file
from .registering import await_registration

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ControllerRecovery"]

log = logging.getLogger("corral.parallel.engine")

_NOBLOCK = int(zmq.NOBLOCK)
#: Replies sent this long before a dead controller's last beat are sent again: what it
#: may have received but not yet stored (its database writes batch over 50 ms).
_RESEND_MARGIN = 2.0
#: A re-registration unanswered this long (seconds) is sent again.
_ASK_AGAIN = 1.0


class ControllerRecovery:
    """``engine``'s side of a controller's loss and return (hub watch callbacks)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: the main thread is to register with a restarted hub (see on_back)
        self.register_due = False
        #: replies sent since then go again to a restarted controller
        self.resend_since = 0.0

    def catch_up(self) -> None:
        """Main thread, once a controller came back: register if the watch could not,
        and send again what the old controller may have lost."""
        if self.register_due:
            self.register_due = False
            self.register_again()
        count = self.engine.replies.resend(self.resend_since)
        if count:
            log.warning("sent %d recent replies again to the restarted controller", count)

    def on_silent(self, reason: str) -> None:
        """Hub watch: the controller went quiet. Keep running (and keep finished replies
        queued on the sockets, which reconnect by themselves) for the grace period."""
        log.warning(
            "%s; waiting up to %g s for a controller to come back (controller_grace)",
            reason,
            self.engine.controller_grace,
        )

    def on_back(self, last_old_beat: float) -> None:
        """Hub watch: a (new) hub beats. Register with it from the main thread, and send
        again the replies the old controller may have died with: those sent since shortly
        before its last beat."""
        self.resend_since = last_old_beat - _RESEND_MARGIN
        # The sockets belong to whoever holds _sock_lock; the main thread lets go of it
        # only while user code runs. Then (a task may run for hours, and a controller
        # must know its engines before it ends) this thread registers; otherwise the
        # main thread does, between tasks. Replies go again from the main thread.
        if self.engine._sock_lock.acquire(timeout=0.05):
            try:
                self.register_again()
            finally:
                self.engine._sock_lock.release()
        else:
            self.register_due = True
        self.engine._rejoin = True
        self.engine.wake()

    def _take_queued(self) -> None:
        """Read every request waiting on the queue sockets into ``_pending`` (in order),
        so that a registration can say which tasks this engine holds."""
        for sock in (self.engine.mux, self.engine.task, self.engine.broadcast):
            while True:
                try:
                    messages, errors = recv_messages(
                        sock,
                        self.engine.signer,
                        self.engine.replay,
                        _NOBLOCK,
                        ROLES["engine_requests"],
                        *self.engine.bindings[sock],
                    )
                except zmq.Again:
                    break
                for exc in errors:
                    self.engine.refuse(sock, exc, "a queue")
                self.engine._pending.extend((sock, msg) for msg in messages)

    def register_again(self) -> None:
        """Re-register with a restarted controller, asking for the same id and saying
        which tasks this engine holds (by whichever thread holds ``_sock_lock``; a replay
        guard of its own)."""
        # What this engine runs or has queued: a restarted hub records these as owed by
        # it (the dead controller may not have stored that it gave them out).
        self._take_queued()
        serving = self.engine._serving
        holding = [] if serving is None else [serving]
        holding += [m.msg_id for _, m in list(self.engine._pending)]
        # And what it answered since the old controller's last moments: those replies
        # go again (see ReplyHold.resend), and may be all the new hub ever hears of them.
        since = self.resend_since
        holding += [m for _, _, m in self.engine.replies.sent_since(since)]
        content = {"id": self.engine.id, "holding": holding}
        ask = partial(self.engine.send_registration, content)
        end = time.monotonic() + self.engine.registration_timeout
        msg = await_registration(self.engine, ask, {ask()}, end, wire.ReplayGuard(), _ASK_AGAIN)
        if msg is None:
            log.error("the restarted controller did not answer the registration")
            self.engine.request_stop("re-registration unanswered", 1)
            return
        reply = msg.content
        if reply.get("status", "ok") != "ok" or not isinstance(reply.get("id"), int):
            log.error("the restarted controller refused this engine: %s", reply.get("evalue"))
            self.engine.request_stop("re-registration refused", 1)
            return
        self.engine.task_feed.wanted = reply.get("task_feed") is True
        self.engine.learn_run(reply)  # the restarted controller's: the old one's is refused
        if reply["id"] != self.engine.id:
            log.warning("engine %s re-registered as engine %d", self.engine.id, reply["id"])
            self.engine.id = int(reply["id"])
            self.engine._identify()
        else:
            log.warning("engine %d re-registered with the restarted controller", self.engine.id)
        self.engine.announce()

    def on_lost(self, reason: str) -> None:
        """Hub watch: the controller or the parent is gone; nobody will stop us."""
        log.warning("%s; the engine exits", reason)
        if self.engine.watch.silent_since is not None:
            self._forget_dead_cluster()
        self.engine.request_stop(reason, 1)
        self.engine.interrupt()
        self.engine.exit_later(1)

    def _forget_dead_cluster(self) -> None:
        """After the grace: remove the cluster file if its controller is dead, so no
        client finds a cluster that is gone (a restarted controller writes a new one)."""
        path = self.engine.cluster_file
        if path is None:
            return
        from corral.core.processes import process_alive

        try:
            pid = int(load_cluster_file(path).get("controller_pid") or 0)
            if pid and not process_alive(pid) and path.exists():
                path.unlink()
                log.warning("removed %s: its controller (pid %d) is gone", path, pid)
        except (OSError, ValueError, EngineError):
            pass  # another engine removed it first, or it is not ours to read
