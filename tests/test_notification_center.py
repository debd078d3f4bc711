"""The notification center: matching, order, references, errors, threads, O(1) dispatch."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from corral.notification import NotificationCenter, shared_center


class Recorder:
    """An observer object whose bound method the center must hold weakly."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def notify(self, type, sender, **info):  # noqa: A002
        self.seen.append((type, sender, info))


@pytest.fixture
def center() -> NotificationCenter:
    return NotificationCenter(strict=True)


def test_observer_gets_type_sender_and_info(center):
    seen = []
    center.add_observer(lambda t, s, **i: seen.append((t, s, i)), "stream")
    center.post("stream", "kernel", name="stdout", text="hi")
    assert seen == [("stream", "kernel", {"name": "stdout", "text": "hi"})]


def test_type_and_sender_filters_with_wildcards(center):
    alpha, beta = object(), object()
    calls: list[str] = []
    center.add_observer(lambda t, s, **i: calls.append("all"))
    center.add_observer(lambda t, s, **i: calls.append("type a"), "a")
    center.add_observer(lambda t, s, **i: calls.append("alpha"), None, alpha)
    center.add_observer(lambda t, s, **i: calls.append("a from alpha"), "a", alpha)

    center.post("a", alpha)
    assert calls == ["all", "type a", "alpha", "a from alpha"]
    calls.clear()
    center.post("a", beta)
    assert calls == ["all", "type a"]
    calls.clear()
    center.post("b", alpha)
    assert calls == ["all", "alpha"]
    calls.clear()
    center.post("b", beta)
    assert calls == ["all"]


def test_observers_run_in_registration_order_across_categories(center):
    sender = object()
    order: list[int] = []
    center.add_observer(lambda t, s, **i: order.append(1), "x", sender)
    center.add_observer(lambda t, s, **i: order.append(2))
    center.add_observer(lambda t, s, **i: order.append(3), "x")
    center.add_observer(lambda t, s, **i: order.append(4), None, sender)
    center.post("x", sender)
    assert order == [1, 2, 3, 4]


def test_class_and_constant_types(center):
    class ExecutionStarted:
        pass

    seen = []
    center.add_observer(lambda t, s, **i: seen.append(t), ExecutionStarted)
    center.post(ExecutionStarted, None)
    center.post("ExecutionStarted", None)
    assert seen == [ExecutionStarted]


def test_unhashable_type_is_refused_clearly(center):
    with pytest.raises(TypeError, match="hashable"):
        center.add_observer(print, ["stream"])
    with pytest.raises(TypeError, match="callable"):
        center.add_observer("not callable", "stream")


def test_string_senders_match_by_value(center):
    seen = []
    center.add_observer(lambda t, s, **i: seen.append(s), "t", "engine-1")
    name = "".join(["engine", "-", "1"])  # an equal but distinct str object
    center.post("t", name)
    center.post("t", "engine-2")
    assert seen == ["engine-1"]


def test_adding_twice_registers_once_and_remove(center):
    calls = []

    def observer(t, s, **i):
        calls.append(t)

    center.add_observer(observer, "t")
    center.add_observer(observer, "t")
    center.post("t", None)
    assert calls == ["t"]
    assert center.remove_observer(observer, "t") is True
    assert center.remove_observer(observer, "t") is False
    center.post("t", None)
    assert calls == ["t"]
    assert center.observer_count() == 0


def test_remove_matches_type_and_sender_exactly(center):
    sender = object()
    calls = []

    def observer(t, s, **i):
        calls.append(s)

    center.add_observer(observer, "t", sender)
    center.add_observer(observer, "t")
    assert center.remove_observer(observer, "t", sender)
    center.post("t", sender)
    assert calls == [sender]  # the all-senders registration remains


def test_decorator_form(center):
    seen = []

    @center.observer("t")
    def on_t(t, s, **info):
        seen.append(info)

    center.post("t", None, value=3)
    assert seen == [{"value": 3}]
    assert callable(on_t)


def test_bound_methods_are_held_weakly(center):
    recorder = Recorder()
    center.add_observer(recorder.notify, "t")
    center.post("t", None, n=1)
    assert recorder.seen == [("t", None, {"n": 1})]
    del recorder
    gc.collect()
    assert center.observer_count() == 0
    center.post("t", None)  # nothing left to call, nothing raises
    assert not center.has_observers("t")


def test_plain_functions_and_lambdas_are_held_strongly(center):
    seen = []
    center.add_observer(lambda t, s, **i: seen.append(t), "t")
    gc.collect()
    center.post("t", None)
    assert seen == ["t"]


def test_bound_method_removal(center):
    recorder = Recorder()
    center.add_observer(recorder.notify, "t")
    assert center.remove_observer(recorder.notify, "t")
    center.post("t", None)
    assert recorder.seen == []


def test_dead_sender_registration_is_dropped_so_ids_cannot_be_reused(center):
    class Sender:
        pass

    sender = Sender()
    stale_id = id(sender)
    calls = []
    center.add_observer(lambda t, s, **i: calls.append(s), "t", sender)
    del sender
    gc.collect()
    assert center.observer_count() == 0
    # Allocate objects until one reuses the dead sender's id (or give up, which is fine:
    # then nothing could have matched anyway).
    keep = []
    for _ in range(10_000):
        candidate = Sender()
        keep.append(candidate)
        if id(candidate) == stale_id:
            center.post("t", candidate)
            break
    assert calls == []


def test_non_weakrefable_sender_is_matched_by_identity_and_kept_alive(center):
    sender = [1, "lists can be neither hashed nor weakly referenced"]
    calls = []
    center.add_observer(lambda t, s, **i: calls.append(s), "t", sender)
    center.post("t", sender)
    center.post("t", list(sender))  # equal, but another object
    assert calls == [sender]
    sender_id = id(sender)
    del sender
    gc.collect()
    # The center holds it, so its id cannot be handed to a new object meanwhile.
    assert center.observer_count() == 1
    assert center._senders[sender_id][0][1].startswith("lists")


def test_raising_observer_is_logged_and_others_still_run(caplog):
    center = NotificationCenter()
    calls = []

    def broken(t, s, **i):
        raise RuntimeError("observer bug")

    center.add_observer(broken, "t")
    center.add_observer(lambda t, s, **i: calls.append("after"), "t")
    with caplog.at_level(logging.ERROR, logger="corral.notification"):
        center.post("t", None)
    assert calls == ["after"]
    assert "observer bug" in caplog.text
    assert "Traceback" in caplog.text


def test_single_raising_observer_is_logged(caplog):
    center = NotificationCenter()

    def broken(t, s, **i):
        raise ValueError("lonely")

    center.add_observer(broken, "t")
    with caplog.at_level(logging.ERROR, logger="corral.notification"):
        center.post("t", None)
    assert "lonely" in caplog.text


def test_strict_mode_reraises(center):
    def broken(t, s, **i):
        raise RuntimeError("boom")

    center.add_observer(broken, "t")
    with pytest.raises(RuntimeError, match="boom"):
        center.post("t", None)


def test_has_observers(center):
    sender = object()
    assert not center.has_observers("t")
    center.add_observer(print, "t", sender)
    assert center.has_observers("t")
    assert center.has_observers("t", sender)
    assert not center.has_observers("t", object())
    assert not center.has_observers("u")
    center.add_observer(print)
    assert center.has_observers("u", object())


def test_clear(center):
    center.add_observer(print, "t")
    center.clear()
    assert center.observer_count() == 0
    assert not center.has_observers("t")


def test_post_cost_does_not_depend_on_unrelated_observers(center):
    """O(1): the structure a post consults for an unobserved sender stays one lookup.

    Timing is not asserted (shared, noisy machines); instead the route a post reads is
    checked to be a per-sender dict, whose lookup is O(1) whatever its size.
    """
    senders = [object() for _ in range(10_000)]
    for sender in senders:
        center.add_observer(print, "t", sender)
    route = center._routes["t"]
    assert isinstance(route.by_sender, dict)
    assert len(route.by_sender) == 10_000
    assert route.all_senders == ()
    center.post("t", object())  # an unobserved sender reaches nobody


def test_lone_function_fast_path_follows_every_change(center):
    """A type observed by one plain function from every sender is posted through a dict of
    its own (no class tests, the commonest observed case); adding a sender-specific or a
    wildcard observer moves it back to the general route, and removing them returns it."""
    alpha, beta = object(), object()
    calls: list[tuple[str, object]] = []

    def lone(t, s, **i):
        calls.append(("lone", s))

    def own(t, s, **i):
        calls.append(("own", s))

    def every(t, s, **i):
        calls.append(("every", t))

    center.add_observer(lone, "t")
    assert center._direct == {"t": lone}
    center.post("t", alpha, n=1)
    center.post("u", alpha)
    assert calls == [("lone", alpha)]

    calls.clear()
    center.add_observer(own, "t", alpha)
    assert center._direct == {}
    center.post("t", alpha)
    center.post("t", beta)
    assert calls == [("lone", alpha), ("own", alpha), ("lone", beta)]

    calls.clear()
    center.remove_observer(own, "t", alpha)
    assert center._direct == {"t": lone}
    center.add_observer(every)
    assert center._direct == {}
    center.post("t", alpha)
    center.post("u", beta)
    assert calls == [("lone", alpha), ("every", "t"), ("every", "u")]

    calls.clear()
    center.remove_observer(every)
    center.remove_observer(lone, "t")
    center.post("t", alpha)
    assert calls == [] and center._direct == {}

    center.clear()
    center.add_observer(lone, "t")  # after clear() silenced post, adding must revive it
    center.post("t", beta)
    assert calls == [("lone", beta)]


def test_threads_can_add_and_remove_while_others_post():
    center = NotificationCenter(strict=True)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"posts": 0}

    def poster():
        try:
            while not stop.is_set():
                center.post("t", "s", n=1)
                counts["posts"] += 1
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=poster) for _ in range(2)]
    for thread in threads:
        thread.start()
    received = []
    for round_number in range(300):

        def observer(t, s, round_number=round_number, **i):
            received.append(round_number)

        center.add_observer(observer, "t", "s" if round_number % 2 else None)
        center.add_observer(observer)
        center.remove_observer(observer, "t", "s" if round_number % 2 else None)
        center.remove_observer(observer)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts["posts"] > 0
    assert center.observer_count() == 0


def test_shared_center_is_a_center():
    assert isinstance(shared_center, NotificationCenter)
