"""Where a load-balanced task goes: the task scheduler's policies, as pure functions.

Each policy picks one engine among the *candidates* the scheduler hands it: the live
engines the task may run on that still have room in their prefetch window (see
:class:`~.queues.TaskScheduler`), in registration order. A policy sees, per candidate,
how many tasks the engine holds (``loads``) and when it was last given one
(``last_used``, a number that only grows), plus a random generator and a round-robin
cursor (an index into the candidates, already reduced modulo their count). It returns the
index of its choice. Nothing here touches sockets or the scheduler, so every policy is
tested on its own.

Policies (the built-in names ``--policy`` accepts; plugins add more through the
``corral_schedulers`` hook, see :func:`known_policies`):

* ``leastload`` (the default): the fewest outstanding tasks; ties go round-robin from the
  cursor, and an idle engine ends the search at once. Spreads a burst evenly and keeps
  every engine busy; the scheduler runs an inlined copy of it on its hot path.
* ``lru``: the engine given a task least recently, whatever its load.
* ``random``: uniformly at random.
* ``twobin``: the less loaded of two engines drawn at random ("power of two choices"):
  nearly least-load's balance at random's cost, with no herd on one idle engine.
* ``weighted``: at random, weighted by ``1 / (1 + load)``: idle engines are likely, busy
  ones still possible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = [
    "POLICIES",
    "Policy",
    "least_load",
    "lru",
    "get_policy",
    "known_policies",
    "plain_random",
    "two_bin",
    "weighted",
]

#: ``(loads, last_used, rng, cursor) -> index`` of the chosen candidate.
Policy = Callable[[Sequence[int], Sequence[float], random.Random, int], int]


def least_load(
    loads: Sequence[int], last_used: Sequence[float], rng: random.Random, cursor: int
) -> int:
    """The least loaded candidate; among equals, the first at or after ``cursor``
    (wrapping around). A candidate with no load ends the search."""
    n = len(loads)
    best = -1
    best_load = 0
    for i in range(n):
        index = (cursor + i) % n
        load = loads[index]
        if best < 0 or load < best_load:
            best, best_load = index, load
            if load == 0:
                break
    return best


def lru(loads: Sequence[int], last_used: Sequence[float], rng: random.Random, cursor: int) -> int:
    """The candidate given a task least recently (the first such, in candidate order)."""
    best = 0
    for index in range(1, len(last_used)):
        if last_used[index] < last_used[best]:
            best = index
    return best


def plain_random(
    loads: Sequence[int], last_used: Sequence[float], rng: random.Random, cursor: int
) -> int:
    """Any candidate, uniformly at random."""
    return rng.randrange(len(loads))


def two_bin(
    loads: Sequence[int], last_used: Sequence[float], rng: random.Random, cursor: int
) -> int:
    """The less loaded of two distinct candidates drawn at random (the first drawn on a
    tie); the only candidate when there is one."""
    n = len(loads)
    if n == 1:
        return 0
    a, b = rng.sample(range(n), 2)
    return b if loads[b] < loads[a] else a


def weighted(
    loads: Sequence[int], last_used: Sequence[float], rng: random.Random, cursor: int
) -> int:
    """A candidate at random with probability proportional to ``1 / (1 + load)``."""
    weights = [1.0 / (1 + load) for load in loads]
    pick = rng.random() * sum(weights)
    for index, weight in enumerate(weights):
        pick -= weight
        if pick < 0:
            return index
    return len(loads) - 1  # rounding left a sliver at the end


POLICIES: dict[str, Policy] = {
    "leastload": least_load,
    "lru": lru,
    "random": plain_random,
    "twobin": two_bin,
    "weighted": weighted,
}


def known_policies() -> dict[str, Policy]:
    """Every policy registered through ``corral_schedulers``, by name (the built-in ones
    register there too, from :mod:`corral.plugins.parallel.schedulers`); the first
    registration of a name wins, so a plugin cannot take over a built-in name."""
    from corral.plugins.manager import get_plugin_manager

    known: dict[str, Policy] = {}
    # pluggy calls the last registered plugin first; built-ins registered first.
    for mapping in reversed(get_plugin_manager().hook.corral_schedulers()):
        for name, policy in (mapping or {}).items():
            known.setdefault(name, policy)
    return known


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ``ValueError`` naming the known ones otherwise.

    A built-in name is answered without loading plugins (the controller starts sooner);
    any other is looked up among the plugins' ``corral_schedulers``."""
    policy = POLICIES.get(name)
    if policy is not None:
        return policy
    known = known_policies()
    policy = known.get(name)
    if policy is None:
        names = ", ".join(sorted(known))
        raise ValueError(f"unknown scheduling policy {name!r} (known: {names})")
    if not callable(policy):
        raise ValueError(f"scheduling policy {name!r} is registered as {policy!r}, not a function")
    return policy
