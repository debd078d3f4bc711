"""Which tasks an engine has started: what makes moving a queued task exactly-once.

Why: a client that moves a task from one controller to another (the aggregate view,
parallel/aggregate.py) aborts it at the first and must know, from the engines' answers,
whether it can still start there. The engine's main thread records a task as started
*before* it looks at the aborted ids; the control thread marks ids aborted *before* it
looks at the started ones. Whatever the interleaving, one of the two sees the other's
write (each is one dict or set operation under the GIL): either the control thread
reports the task started (the client then waits for its outcome, which may still be
"aborted"), or the main thread sees it aborted and never runs it. A task reported not
started never runs on this engine.

Only the most recent :data:`KEEP` ids are kept: a task whose reply is not back at the
client has started at most a few prefetch windows ago, never many thousands of tasks ago.
"""

from __future__ import annotations

from corral.core.fifo import trim_oldest

__all__ = ["KEEP", "StartedIds"]

#: Started msg_ids remembered (about 1 MB of ids); far beyond a scheduler's prefetch.
KEEP = 16384


class StartedIds:
    """The last msg_ids started: at most ``keep``, at least ``keep - keep // 64``, oldest
    forgotten first (insertion-ordered dict trimmed in chunks: O(1) amortized to add)."""

    __slots__ = ("_ids", "keep")

    def __init__(self, keep: int = KEEP) -> None:
        self._ids: dict[str, None] = {}
        self.keep = keep

    def add(self, msg_id: str) -> None:
        ids = self._ids
        ids[msg_id] = None
        if len(ids) > self.keep:  # in chunks: one at a time walks every hole (core.fifo)
            slack = self.keep // 64
            trim_oldest(ids, self.keep - slack, slack)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
