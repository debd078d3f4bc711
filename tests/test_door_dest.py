"""The door's destination binding and route seals, as pure functions.

The real-cluster attacks are in tests/test_parallel_replay.py; these pin down the rules:
a request is admitted only where its signed ``dest`` says, a queued one only with its
queue's seal for the receiving engine, and a refused request is not recorded by the
receiver's replay guard.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.plugins.parallel.client.channels import dest_for, role_for
from corral.plugins.parallel.client.messages import MessageBuilder
from corral.transports.zmq import wire
from corral.transports.zmq.door import (
    DEST,
    HUB,
    ROLES,
    RUN,
    RUN_ANY,
    SEAL_PREFIX,
    Misdirected,
    RoleRefused,
    WrongRun,
    admit,
    cluster_signer,
    dest_of,
    take_seal,
)

KEY = b"k" * 32
ENGINE_A = b"a" * 32
ENGINE_B = b"b" * 32


def request(dest: str | None, msg_type: str = "apply_request") -> tuple[list[bytes], bytes]:
    """The four JSON parts and signature of a genuine request signed for ``dest``."""
    signer = cluster_signer(KEY)
    _, frames = MessageBuilder(signer, "s").build(msg_type, {}, dest=dest)
    at = frames.index(wire.DELIMITER)
    return frames[at + 2 : at + 6], frames[at + 1]


def let_in(parts: list[bytes], sig: bytes, guard: Any = None, **kw: Any) -> dict[str, Any]:
    return admit(cluster_signer(KEY), guard, parts, sig, role=ROLES["engine_requests"], **kw)


def test_the_header_names_the_destination() -> None:
    parts, sig = request("task")
    assert let_in(parts, sig, dest="task")[DEST] == "task"


@pytest.mark.parametrize("signed_for", ["mux", None, "engine:" + "a" * 32, HUB])
def test_a_request_for_elsewhere_is_refused_and_not_recorded(signed_for: str | None) -> None:
    parts, sig = request(signed_for)
    guard = wire.ReplayGuard()
    with pytest.raises(Misdirected):
        let_in(parts, sig, guard, dest="task")
    # not recorded: had this been its place, the genuine copy would still be let in
    if signed_for is not None:
        let_in(parts, sig, guard, dest=signed_for)
        with pytest.raises(wire.ReplayedMessage):
            let_in(parts, sig, guard, dest=signed_for)


def test_misdirected_is_a_role_refusal() -> None:
    assert issubclass(Misdirected, RoleRefused)


def test_a_route_seal_admits_only_its_queue_and_engine() -> None:
    signer = cluster_signer(KEY)
    parts, sig = request("task")
    seal = signer.route_seal("task", ENGINE_A, sig)
    assert let_in(parts, sig, dest="task", sealed_to=ENGINE_A, seal=seal)
    for engine, queue_seal in [
        (ENGINE_B, seal),  # replayed to another engine
        (ENGINE_A, None),  # without a seal
        (ENGINE_A, signer.route_seal("mux", ENGINE_A, sig)),  # another queue's
        (ENGINE_A, signer.route_seal("task", ENGINE_A, sig + b"x")),  # another message's
        (ENGINE_A, cluster_signer(b"other key").route_seal("task", ENGINE_A, sig)),
    ]:
        with pytest.raises(Misdirected):
            let_in(parts, sig, dest="task", sealed_to=engine, seal=queue_seal)


def test_take_seal_takes_only_a_seal() -> None:
    seal = cluster_signer(KEY).route_seal("mux", ENGINE_A, b"sig")
    idents = [b"client", seal]
    assert take_seal(idents) == seal and idents == [b"client"]
    for idents in ([b"client"], [], [SEAL_PREFIX + b"short"], [b"\x00" + b"x" * 65]):
        before = list(idents)
        assert take_seal(idents) is None and idents == before


def test_without_a_key_nothing_is_bound() -> None:
    signer = cluster_signer(b"")
    _, frames = MessageBuilder(signer, "s").build("apply_request", {})
    at = frames.index(wire.DELIMITER)
    admit(signer, None, frames[at + 2 : at + 6], frames[at + 1], dest="task")


def test_client_channels() -> None:
    assert dest_for("registration") == HUB
    assert dest_for("task") == "task"
    assert dest_for("data:3:" + "a" * 32) == dest_of("engine", "a" * 32)
    assert role_for("iopub") is ROLES["iopub"]
    assert role_for("notification") is ROLES["notifications"]
    for channel in ("registration", "mux", "task", "control", "broadcast", "data:0:u"):
        role = role_for(channel)
        assert role is not None and role.allows("apply_reply")
        assert not role.allows("stream") and not role.allows("apply_request")
    assert not ROLES["iopub"].allows("apply_reply")
    assert ROLES["iopub"].allows("stream")


# -- runs: one start of the controller ----------------------------------------------------

RUN_A, RUN_B = "a" * 32, "b" * 32


def run_request(run: str | None, msg_type: str = "apply_request") -> tuple[list[bytes], bytes]:
    """A genuine request to the task queue made for controller run ``run`` (None: by a
    sender older than runs, whose header has no run key)."""
    signer = cluster_signer(KEY)
    if run is None:
        msg = wire.make_message(msg_type, {}, session="s")
        msg["header"][DEST] = "task"
        frames = wire.serialize(msg, signer)
    else:
        _, frames = MessageBuilder(signer, "s", run=run).build(msg_type, {}, dest="task")
    at = frames.index(wire.DELIMITER)
    return frames[at + 2 : at + 6], frames[at + 1]


def let_in_run(parts: list[bytes], sig: bytes, guard: Any = None, run: str = RUN_B) -> Any:
    return admit(
        cluster_signer(KEY), guard, parts, sig, role=ROLES["queue_client"], dest="task", run=run
    )


def test_a_request_names_its_run_and_is_admitted_by_it() -> None:
    parts, sig = run_request(RUN_B)
    assert let_in_run(parts, sig)[RUN] == RUN_B


@pytest.mark.parametrize("made_for", [RUN_A, "", None])
def test_a_request_of_another_run_is_refused_and_not_recorded(made_for: str | None) -> None:
    parts, sig = run_request(made_for)
    guard = wire.ReplayGuard()
    with pytest.raises(WrongRun) as refused:
        let_in_run(parts, sig, guard)
    assert refused.value.header is not None  # genuine: the hub answers with the reason
    assert isinstance(refused.value, Misdirected)
    assert ("older than the controller" in str(refused.value)) == (made_for is None)
    if made_for:  # not recorded: its own run still admits it, once
        let_in_run(parts, sig, guard, run=made_for)
        with pytest.raises(wire.ReplayedMessage):
            let_in_run(parts, sig, guard, run=made_for)


def test_registrations_need_the_run_and_connections_any() -> None:
    assert let_in_run(*run_request(RUN_B, "registration_request"))
    for run in (RUN_A, "", None):
        with pytest.raises(WrongRun):
            let_in_run(*run_request(run, "registration_request"))
    for run in (RUN_A, ""):
        assert let_in_run(*run_request(run, "connection_request"))
    with pytest.raises(WrongRun, match="older than the controller"):
        let_in_run(*run_request(None, "connection_request"))
    assert RUN_ANY == {"connection_request"}


def test_runs_are_checked_only_with_a_key_and_a_run() -> None:
    parts, sig = run_request(RUN_A)
    assert admit(cluster_signer(KEY), None, parts, sig, dest="task")  # no run: not checked
    assert admit(cluster_signer(b""), None, parts, b"", dest="task", run=RUN_B)  # no key


def test_route_seals_are_stamped_in_sealing_order_and_the_stamp_is_covered() -> None:
    signer = cluster_signer(KEY)
    parts, sig = request("task")
    seals = [signer.route_seal("task", ENGINE_A, sig) for _ in range(50)]
    stamps = [signer.open_route_seal(s, "task", ENGINE_A, sig) for s in seals]
    assert stamps == sorted(set(stamps)) and stamps[0] > 0  # strictly increasing
    forged = bytearray(seals[0])
    forged[len(SEAL_PREFIX) + 7] ^= 1  # another stamp under the same MAC
    assert signer.open_route_seal(bytes(forged), "task", ENGINE_A, sig) == -1
    with pytest.raises(Misdirected):
        let_in(parts, sig, dest="task", sealed_to=ENGINE_A, seal=bytes(forged))


def test_an_engine_orders_queued_requests_by_their_seal_not_their_date() -> None:
    """The task scheduler may hold a request back behind many later ones of the same
    client: the engine's ordered guard (tiny here) lets every one in, because the queue
    sealed them in the order it sent them; a sealed request it has forgotten, resent by
    a peer on the link, stays refused."""
    queue = cluster_signer(KEY)
    requests = [request("task") for _ in range(6)]  # made (dated) in this order
    guard = wire.ReplayGuard(maxlen=2, ordered=True)
    sent = []
    for parts, sig in reversed(requests):  # sent in the opposite order
        seal = queue.route_seal("task", ENGINE_A, sig)
        let_in(parts, sig, guard, dest="task", sealed_to=ENGINE_A, seal=seal)
        sent.append((parts, sig, seal))
    parts, sig, seal = sent[0]  # forgotten by now (the guard holds two)
    assert sig not in guard
    with pytest.raises(wire.StaleMessage):
        let_in(parts, sig, guard, dest="task", sealed_to=ENGINE_A, seal=seal)
