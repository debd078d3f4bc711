"""ns per post: corral's NotificationCenter beside a plain call and blinker, in one run.

Prints a table; never passes or fails. Scenarios:

* no observers at all: ``center.post`` vs a plain call with the same arguments, and
  blinker's ``Signal.send`` with no receivers;
* one observer: ``center.post`` reaching one function vs blinker's one-receiver send;
* a sender nobody observes, with 10 and with 10,000 observers registered for other
  senders: the cost must not grow with them.

Run: ``python benchmarks/notification.py`` (or ``tox -e bench``).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.notification import NotificationCenter  # noqa: E402

try:
    import blinker
except ImportError:  # pragma: no cover - the bench env installs it
    blinker = None

NUMBER = 200_000
REPEAT = 7


def best_ns(statement: Callable[[], None]) -> float:
    """Best-of-REPEAT nanoseconds per call: the least-disturbed run on a noisy machine."""
    runs = timeit.repeat(statement, number=NUMBER, repeat=REPEAT)
    return min(runs) / NUMBER * 1e9


def measure() -> dict[str, float]:
    results: dict[str, float] = {}
    sender = object()

    def plain(type, sender, **info):  # noqa: A002 - same signature as an observer
        return None

    results["plain call"] = best_ns(lambda: plain("stream", sender, text="x"))

    empty = NotificationCenter()
    results["corral post, no observers"] = best_ns(lambda: empty.post("stream", sender, text="x"))

    other_types = NotificationCenter()
    other_types.add_observer(plain, "display")
    results["corral post, observers of other types only"] = best_ns(
        lambda: other_types.post("stream", sender, text="x")
    )

    one = NotificationCenter()
    one.add_observer(plain, "stream")
    results["corral post, one observer"] = best_ns(lambda: one.post("stream", sender, text="x"))

    for count in (10, 10_000):
        crowded = NotificationCenter()
        keep_alive = [object() for _ in range(count)]
        for other in keep_alive:
            crowded.add_observer(plain, "stream", other)
        results[f"corral post, unobserved sender, {count} observers of others"] = best_ns(
            lambda crowded=crowded: crowded.post("stream", sender, text="x")
        )

    if blinker is not None:
        silent = blinker.Signal()
        results["blinker send, no receivers"] = best_ns(lambda: silent.send(sender, text="x"))
        heard = blinker.Signal()

        def receiver(sender, **info):
            return None

        heard.connect(receiver)
        results["blinker send, one receiver"] = best_ns(lambda: heard.send(sender, text="x"))
    return results


def main() -> None:
    rounds = [measure() for _ in range(3)]
    results = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    width = max(len(name) for name in results)
    print(f"{'scenario':<{width}}  ns/post")
    for name, ns in results.items():
        print(f"{name:<{width}}  {ns:8.1f}")
    plain = results["plain call"]
    print()
    print("ratios (goal in brackets):")
    silent = results["corral post, no observers"] / plain
    print(f"  no observers / plain call            {silent:5.2f}  [<= 1.2]")
    if "blinker send, one receiver" in results:
        ratio = results["corral post, one observer"] / results["blinker send, one receiver"]
        print(f"  one observer / blinker one receiver  {ratio:5.2f}  [<= 0.3]")
    ten = results["corral post, unobserved sender, 10 observers of others"]
    many = results["corral post, unobserved sender, 10000 observers of others"]
    print(f"  10,000 others / 10 others            {many / ten:5.2f}  [<= 1.2]")


if __name__ == "__main__":
    main()
