"""ipyparallel's dependency rules for the load-balanced scheduler, apart from its hot path.

The task scheduler (:mod:`.queues`) handles the common case inline: ``after``/``follow``
as plain lists of msg_ids, every one of which must succeed. This module holds the rest,
so that none of it costs a plain task anything:

* **Flagged dependencies**, sent as ``{"dependencies": [...], "all": bool, "success":
  bool, "failure": bool}`` (a client's ``Dependency(ids, all=, success=, failure=)``):
  met when all (or, with ``all=False``, any) of the tasks ended in a way the flags
  accept; **impossible** as soon as enough of them ended in a way the flags refuse, and
  then the task fails with ``ImpossibleDependency``. :func:`state` is the rule, a pure
  function; :class:`FlaggedDependencies` keeps the tasks that wait on such dependencies.
  A ``follow`` dependency also says *where*: on the engine the tasks ran on (``all``),
  or on one of them (``any``).
* **Engines that reject a task**: ``@require``/``@depend`` conditions are checked on the
  engine, which answers ``dependencies_met: false`` in the reply metadata when they do
  not hold there. The scheduler then keeps that reply from the client and sends the task
  to another eligible engine; once every engine has rejected it, the task fails with
  ``ImpossibleDependency`` (ipyparallel's behaviour). See :meth:`FlaggedDependencies.rejected`.

As everywhere in the scheduler, a msg_id it does not know (never seen, or forgotten past
its memory of recent outcomes) counts as having succeeded on no particular engine: the
task database is the record of older tasks, and a task must not wait forever on an id it
will never hear about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .queues import Job, TaskScheduler

__all__ = [
    "EMPTY",
    "FAILED",
    "IMPOSSIBLE",
    "MET",
    "PENDING",
    "SUCCEEDED",
    "UNKNOWN",
    "WAITING",
    "FlaggedDependencies",
    "Spec",
    "parse",
    "state",
]

# What became of one dependency.
PENDING, SUCCEEDED, FAILED, UNKNOWN = range(4)
# What that means for the task waiting on it.
MET, WAITING, IMPOSSIBLE = "met", "waiting", "impossible"


@dataclass(frozen=True)
class Spec:
    """One ``after`` or ``follow`` dependency: msg_ids and ipyparallel's three flags."""

    ids: tuple[str, ...] = ()
    all: bool = True
    success: bool = True
    failure: bool = False

    @property
    def plain(self) -> bool:
        """Whether the scheduler's own path handles it (every id must succeed)."""
        return self.all and self.success and not self.failure


#: No dependency at all (the usual case, shared).
EMPTY = Spec()


def parse(value: Any) -> Spec:
    """The dependency a request's ``after``/``follow`` metadata names: a msg_id, a list
    of them, or a flagged dict. Anything else (malformed input) names none."""
    if value is None:
        return EMPTY
    if isinstance(value, str):
        return Spec((value,))
    if isinstance(value, list):
        return Spec(tuple(v for v in value if isinstance(v, str))) if value else EMPTY
    if isinstance(value, dict):
        ids = value.get("dependencies")
        ids = [v for v in ids if isinstance(v, str)] if isinstance(ids, list) else []
        flags = [value.get(k, d) for k, d in (("all", True), ("success", True), ("failure", False))]
        if not all(isinstance(f, bool) for f in flags):
            return Spec(tuple(ids))
        return Spec(tuple(ids), *flags)
    return EMPTY


def state(spec: Spec, outcomes: list[int]) -> str:
    """:data:`MET`, :data:`WAITING` or :data:`IMPOSSIBLE` for ``spec``, given the outcome
    of each of its ids (in order; :data:`UNKNOWN` counts as met).

    An outcome is *accepted* when the flags allow it (``success`` accepts a success,
    ``failure`` a failure); ``all`` needs every id accepted, otherwise one is enough. It
    is impossible once an ended id is refused (``all``) or every id ended refused.
    """
    if not spec.ids:
        return MET
    accepted = refused = pending = 0
    for outcome in outcomes:
        if outcome == PENDING:
            pending += 1
        elif (
            outcome == UNKNOWN
            or (outcome == SUCCEEDED and spec.success)
            or (outcome == FAILED and spec.failure)
        ):
            accepted += 1
        else:
            refused += 1
    if spec.all:
        if refused:
            return IMPOSSIBLE
        return WAITING if pending else MET
    if accepted:
        return MET
    return WAITING if pending else IMPOSSIBLE


def _combine(*states: str) -> str:
    if IMPOSSIBLE in states:
        return IMPOSSIBLE
    return WAITING if WAITING in states else MET


class FlaggedDependencies:
    """The scheduler's companion for flagged dependencies and engine rejections.

    It reads the scheduler's state (``jobs``, ``results``, ``engines``) and acts through
    the scheduler's own steps (``_ready``, ``_fail``, ``_fill``), so a task it releases
    is dispatched, held, timed out and retried exactly like any other.
    """

    def __init__(self, scheduler: TaskScheduler, waiting_state: int) -> None:
        self.scheduler = scheduler
        #: the scheduler's state of a job that waits for its dependencies
        self.waiting_state = waiting_state
        #: msg_id -> the flagged jobs waiting on it
        self.waiting: dict[str, list[Job]] = {}
        #: job msg_id -> its (after, follow) specs, while it waits or runs
        self.specs: dict[str, tuple[Spec, Spec]] = {}

    # -- flagged dependencies ---------------------------------------------------------

    def _outcome(self, msg_id: str) -> int:
        sched = self.scheduler
        if msg_id in sched.jobs:
            return PENDING
        outcome = sched.results.get(hash(msg_id))
        if outcome is None:
            return UNKNOWN
        return FAILED if outcome is False else SUCCEEDED

    def admit(self, job: Job, after: Spec, follow: Spec) -> None:
        """A new task with flagged dependencies: run it, fail it, or keep it waiting."""
        self.specs[job.msg_id] = (after, follow)
        if self._settle(job):
            return
        for dep in dict.fromkeys((*after.ids, *follow.ids)):
            if dep in self.scheduler.jobs and dep != job.msg_id:
                self.waiting.setdefault(dep, []).append(job)

    def finished(self, msg_id: str) -> None:
        """Task ``msg_id`` ended (its outcome is remembered): settle who waited on it."""
        self.specs.pop(msg_id, None)
        for job in self.waiting.pop(msg_id, ()):
            if job.msg_id in self.specs and job.state == self.waiting_state:
                self._settle(job)

    def _settle(self, job: Job) -> bool:
        """Release or fail ``job`` if its dependencies allow; False while it must wait."""
        after, follow = self.specs[job.msg_id]
        outcome = self._outcome
        verdict = _combine(
            state(after, [outcome(d) for d in after.ids]),
            state(follow, [outcome(d) for d in follow.ids]),
        )
        if verdict == WAITING:
            return False
        sched = self.scheduler
        if verdict == IMPOSSIBLE:
            sched._fail(job, "ImpossibleDependency", "its dependencies can never be met")
            return True
        where = self._where(follow)
        if where is not None:
            allowed = where if job.targets is None else where & job.targets
            if not allowed or not any(sched.engines[e] in allowed for e in sched.order):
                why = "the engines its follow dependencies ran on are gone or not its targets"
                sched._fail(job, "ImpossibleDependency", why)
                return True
            job.targets = allowed
        sched._ready(job)
        return True

    def _where(self, follow: Spec) -> frozenset[int] | None:
        """Engine ids a met ``follow`` allows (None: anywhere)."""
        sched = self.scheduler
        places: set[int] = set()
        for dep in follow.ids:
            ran = sched.results.get(hash(dep))
            if not ran:  # unknown, failed (no engine kept) or ran nowhere
                continue
            eid = sched.engines.get(ran)  # type: ignore[arg-type]
            places.add(-1 if eid is None else eid)  # -1: an engine that is gone
        if not places:
            return None
        if follow.all and len(places) > 1:
            return frozenset()  # they ran on different engines: no one place has them all
        return frozenset(places)

    # -- engines that reject a task ---------------------------------------------------

    def rejected(self, engine: bytes, msg_id: str, metadata: bytes) -> bool:
        """Whether ``engine``'s reply to ``msg_id`` says the task's conditions do not hold
        there; then the reply is withheld and the task goes to another eligible engine
        (or fails with ``ImpossibleDependency`` when none is left)."""
        try:
            md = json.loads(metadata)
        except ValueError:
            return False
        if not isinstance(md, dict) or md.get("dependencies_met") is not False:
            return False
        sched = self.scheduler
        if not sched.owes(engine, msg_id):
            return False
        job = sched.jobs[msg_id]
        allowed = sched._others_for(job, engine)
        sched._take_back(job, engine)
        job.targets = allowed
        if job.pinned is not None:
            why = "the engine its follow dependencies ran on rejected it"
            sched._fail(job, "ImpossibleDependency", why, engine)
        elif not allowed:
            why = "every engine rejected it (its @require/@depend conditions do not hold)"
            sched._fail(job, "ImpossibleDependency", why, engine)
        else:
            sched._hold(job, front=True)
            sched._drain_backlog()
        if sched.pool or sched.pool_special:
            sched._fill(engine)
        return True
