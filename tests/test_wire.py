"""The wire format as pure functions: framing, signing, replay and size checks, JSON."""

from __future__ import annotations

import hmac
import json
import math
import random
from collections import deque
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.transports.zmq import wire
from corral.transports.zmq.wire import (
    DELIMITER,
    PROTOCOL_VERSION,
    BadSignature,
    MalformedMessage,
    MessageTooLarge,
    ReplayedMessage,
    ReplayGuard,
    Signer,
    WireError,
    deserialize,
    json_dumps,
    json_loads,
    make_header,
    make_message,
    new_id,
    serialize,
)

KEY = b"0123456789abcdef"


def signed_frames(content=None, identities=(b"peer",), signer=None, **kw):
    msg = make_message("execute_request", content or {"code": "1"}, session="s", **kw)
    return msg, serialize(msg, signer or Signer(KEY), identities)


def test_header_fields():
    h = make_header("kernel_info_request", "sess", msg_id="m1")
    assert h["msg_id"] == "m1" and h["msg_type"] == "kernel_info_request"
    assert h["session"] == "sess" and h["username"] == "corral"
    assert h["version"] == PROTOCOL_VERSION == "5.4"
    assert datetime.fromisoformat(h["date"]).tzinfo is not None
    assert len(new_id()) == 32 and new_id() != new_id()


def test_make_message_parent_and_defaults():
    parent = make_message("execute_request", {}, session="a")
    reply = make_message("execute_reply", {"status": "ok"}, session="b", parent=parent)
    assert reply["parent_header"] == parent["header"]
    assert reply["msg_id"] == reply["header"]["msg_id"]
    assert reply["msg_type"] == "execute_reply"
    assert reply["metadata"] == {} and reply["buffers"] == []
    assert make_message("x", {}, session="s")["parent_header"] == {}
    # A bare header is accepted as parent too.
    assert (
        make_message("x", {}, session="s", parent=parent["header"])["parent_header"]
        == (parent["header"])
    )


def test_round_trip_with_identities_and_buffers():
    signer = Signer(KEY)
    msg = make_message(
        "apply_request",
        {"a": [1, 2.5, None, "é"]},
        session="s",
        metadata={"m": True},
        buffers=[b"raw", memoryview(b"view"), bytearray(b"ba")],
    )
    frames = serialize(msg, signer, [b"id1", b"id2"])
    assert frames[:3] == [b"id1", b"id2", DELIMITER]
    idents, back = deserialize([bytes(f) for f in frames], signer)
    assert idents == [b"id1", b"id2"]
    for key in ("header", "parent_header", "content", "msg_id", "msg_type"):
        assert back[key] == msg[key]
    # plus the buffers' digests, which the signed metadata carries on kernel channels
    digests = back["metadata"].pop("corral_buffer_digests")
    assert back["metadata"] == msg["metadata"] and len(digests) == 3
    assert [bytes(b) for b in back["buffers"]] == [b"raw", b"view", b"ba"]


def test_signature_is_hmac_sha256_over_four_parts():
    msg, frames = signed_frames()
    parts = frames[3:7]
    expected = hmac.new(KEY, b"".join(parts), "sha256").hexdigest().encode()
    assert frames[2] == expected


def test_verify_uses_constant_time_compare(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(wire.hmac, "compare_digest", spy)
    _, frames = signed_frames()
    deserialize(frames, Signer(KEY))
    assert calls and calls[0][1] == frames[2]


@pytest.mark.parametrize("index", [3, 4, 5, 6])
def test_tampered_part_is_rejected(index):
    _, frames = signed_frames()
    frames[index] = frames[index].replace(b"}", b',"x":1}', 1)
    with pytest.raises(BadSignature):
        deserialize(frames, Signer(KEY))


def test_wrong_key_unsigned_and_truncated_signature():
    _, frames = signed_frames()
    with pytest.raises(BadSignature):
        deserialize(frames, Signer(b"other key"))
    unsigned = list(frames)
    unsigned[2] = b""
    with pytest.raises(BadSignature, match="unsigned"):
        deserialize(unsigned, Signer(KEY))
    short = list(frames)
    short[2] = frames[2][:-2]
    with pytest.raises(BadSignature):
        deserialize(short, Signer(KEY))


def test_signing_disabled_with_empty_key():
    signer = Signer(b"")
    assert not signer.enabled
    msg, frames = signed_frames(signer=signer)
    assert frames[2] == b""
    guard = ReplayGuard()
    # Without a key there is nothing to replay-check: an unsigned resend is accepted.
    deserialize(frames, signer, guard)
    deserialize(frames, signer, guard)


def test_unknown_scheme():
    with pytest.raises(ValueError):
        Signer(KEY, "hmac-nope")
    with pytest.raises(ValueError):
        Signer(KEY, "rsa")
    _, frames = signed_frames(signer=Signer(KEY, "hmac-sha512"))
    deserialize(frames, Signer(KEY, "hmac-sha512"))


def test_missing_delimiter():
    _, frames = signed_frames()
    frames.remove(DELIMITER)
    with pytest.raises(MalformedMessage, match="delimiter"):
        deserialize(frames, Signer(KEY))


def test_too_few_parts():
    _, frames = signed_frames()
    with pytest.raises(MalformedMessage, match="got 3"):
        deserialize(frames[:5], Signer(KEY))


def _resign(parts):
    return [b"id", DELIMITER, Signer(KEY).sign(parts), *parts]


@pytest.mark.parametrize(
    "parts, match",
    [
        ([b"{not json", b"{}", b"{}", b"{}"], "header is not valid"),
        ([b"[1,2]", b"{}", b"{}", b"{}"], "header must be a JSON object"),
        ([b'{"msg_id":"1"}', b"{}", b"{}", b"{}"], "msg_type"),
        ([b'{"msg_id":"1","msg_type":"x"}', b"\xff\xfe", b"{}", b"{}"], "parent_header"),
        ([b'{"msg_id":"1","msg_type":"x"}', b"{}", b"{}", b"3"], "content must be"),
        ([b'{"msg_id":"1","msg_type":"x"}', b"{}", b"[" * 100_000, b"{}"], "metadata"),
    ],
)
def test_bad_json_is_malformed(parts, match):
    with pytest.raises(MalformedMessage, match=match):
        deserialize(_resign(parts), Signer(KEY))


def test_replay_is_rejected():
    guard = ReplayGuard()
    _, frames = signed_frames()
    deserialize(frames, Signer(KEY), guard)
    with pytest.raises(ReplayedMessage):
        deserialize(frames, Signer(KEY), guard)
    # A fresh message from the same peer is fine.
    _, other = signed_frames()
    deserialize(other, Signer(KEY), guard)


def test_forged_message_does_not_poison_the_replay_guard():
    guard = ReplayGuard()
    _, frames = signed_frames()
    forged = list(frames)
    forged[6] = b'{"code":"evil"}'
    with pytest.raises(BadSignature):
        deserialize(forged, Signer(KEY), guard)
    deserialize(frames, Signer(KEY), guard)


def test_replay_guard_is_bounded():
    guard = ReplayGuard(maxlen=3)
    for sig in (b"a", b"b", b"c", b"d"):
        guard.check(sig)
    assert len(guard) == 3 and b"a" not in guard
    guard.check(b"a")  # forgotten, so accepted again
    with pytest.raises(ReplayedMessage):
        guard.check(b"d")
    with pytest.raises(ValueError):
        ReplayGuard(0)


@pytest.mark.parametrize("maxlen", [1, 2, 3, 8, 100, 3000])  # 3000: the table grows 3 times
def test_replay_guard_matches_a_model(maxlen: int) -> None:
    """The flat hash table (with its back-shifting deletes) against a set and a deque.

    A small pool of signatures, drawn at random, makes the same key arrive again both
    while remembered (refused) and after being forgotten (accepted), over and over, and
    crowds the table's probe runs so every deletion case is hit.
    """
    rng = random.Random(maxlen)
    pool = [f"{rng.getrandbits(64):016x}".encode() + b"0" * 48 for _ in range(3 * maxlen + 4)]
    pool.append(b"not hex at all")  # the hashed path
    guard = ReplayGuard(maxlen)
    seen: set[bytes] = set()
    order: deque[bytes] = deque()
    for _ in range(5000):
        sig = rng.choice(pool)
        if sig in seen:
            with pytest.raises(ReplayedMessage):
                guard.check(sig)
            continue
        guard.check(sig)
        seen.add(sig)
        order.append(sig)
        if len(order) > maxlen:
            seen.discard(order.popleft())
        assert len(guard) == len(seen)
    assert all(sig in guard for sig in seen)
    assert not any(sig in guard for sig in pool if sig not in seen)


def test_oversized_message():
    _, frames = signed_frames(content={"code": "x" * 1000})
    with pytest.raises(MessageTooLarge, match="exceeds"):
        deserialize(frames, Signer(KEY), max_size=500)
    deserialize(frames, Signer(KEY), max_size=10_000)


def test_errors_are_value_errors():
    for cls in (MalformedMessage, BadSignature, ReplayedMessage, MessageTooLarge):
        assert issubclass(cls, WireError) and issubclass(cls, ValueError)


def test_json_dumps_compact_dates_and_nan():
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    out = json_dumps({"a": [1, 2], "when": when, "s": "é"})
    assert out == '{"a":[1,2],"when":"2024-01-02T03:04:05+00:00","s":"é"}'.encode()
    naive = json_loads(json_dumps({"d": datetime(2024, 1, 2)}))["d"]
    assert datetime.fromisoformat(naive).tzinfo is not None
    assert json_loads(json_dumps({"x": math.nan, "y": [math.inf]})) == {"x": None, "y": [None]}
    assert json_loads(memoryview(b'{"k":1}')) == {"k": 1}


def test_json_dumps_rejects_bytes_clearly():
    with pytest.raises(TypeError, match="buffer"):
        json_dumps({"data": b"raw"})
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_dumps({"o": object()})


def test_serialize_rejects_non_buffer():
    msg = make_message("x", {}, session="s", buffers=["text"])
    with pytest.raises(TypeError, match="buffer protocol"):
        serialize(msg, Signer(KEY))


frame = st.one_of(
    st.binary(max_size=64),
    st.just(DELIMITER),
    st.sampled_from([b"{}", b"[]", b"null", b'{"msg_id":"1","msg_type":"x"}', b"\xff"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame, max_size=10), st.booleans(), st.booleans())
def test_fuzz_deserialize_raises_only_wire_errors(frames, sign, keyed):
    signer = Signer(KEY if keyed else b"")
    if sign and DELIMITER in frames:
        i = frames.index(DELIMITER)
        parts = frames[i + 2 : i + 6]
        if len(parts) == 4:
            frames[i + 1] = signer.sign(parts)
    try:
        idents, msg = deserialize(frames, signer, ReplayGuard(), max_size=400)
    except WireError:
        return
    assert isinstance(msg["header"], dict) and isinstance(idents, list)
    json.dumps(msg["content"])


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        ),
        max_size=5,
    )
)
def test_fuzz_round_trip(content):
    signer = Signer(KEY)
    msg = make_message("x", content, session="s")
    _, back = deserialize(serialize(msg, signer), signer)
    assert back["content"] == json_loads(json_dumps(content))


# ------------------------------------------------------------- ordered guards: horizons


def _dated(seconds: float) -> str:
    """A header ``date`` ``seconds`` after a fixed moment, as corral's senders write it."""
    from datetime import datetime, timedelta, timezone

    moment = datetime(2026, 12, 6, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat()


def _sig(n: int) -> bytes:
    return f"{n + 0x1000:016x}".encode() + b"0" * 48  # never the all-zero key


def test_an_ordered_guard_refuses_what_it_has_forgotten() -> None:
    """Without horizons, a message pushed out of the bounded memory by ``maxlen`` newer
    ones is accepted again: a replay after enough traffic."""
    guard = ReplayGuard(maxlen=4, ordered=True)
    guard.check(_sig(1), "victim", _dated(1))
    for n in range(2, 10):  # pushes the first out of memory
        guard.check(_sig(n), "victim", _dated(n))
    assert _sig(1) not in guard
    with pytest.raises(wire.StaleMessage, match="older than what this receiver remembers"):
        guard.check(_sig(1), "victim", _dated(1))
    # Another session's horizon is its own: its messages of the same date are new.
    guard.check(_sig(100), "other", _dated(1))
    # And the guard still takes the victim's new messages.
    guard.check(_sig(101), "victim", _dated(10))


def test_an_unordered_guard_keeps_its_old_behaviour() -> None:
    """Where a queue may hold messages back, forgetting must not turn into refusing."""
    guard = ReplayGuard(maxlen=4)
    for n in range(1, 10):
        guard.check(_sig(n), "s", _dated(n))
    guard.check(_sig(1), "s", _dated(1))  # forgotten, accepted: the documented limit
    guard.check(_sig(50), "s", _dated(0.5))  # an old date alone is no reason to refuse


def test_undated_messages_are_guarded_by_signature_alone() -> None:
    guard = ReplayGuard(maxlen=2, ordered=True)
    for n, date in enumerate([None, "not a date", 5, _dated(1)]):
        guard.check(_sig(n), "s", date)
    with pytest.raises(ReplayedMessage):
        guard.check(_sig(3), "s", _dated(1))
    guard.check(_sig(0), "s", None)  # forgotten and undated: nothing to compare


@pytest.mark.parametrize("maxlen", [1, 3, 64, 1000])
def test_an_ordered_guard_matches_a_model(maxlen: int) -> None:
    """Many sessions, each dating its messages in order, interleaved at random, against a
    model (a deque and per-session horizons): every resend of anything ever seen is
    refused, remembered or not, and a genuine message only when it shares its date with
    one already forgotten (at real sizes, 100,000 messages later within a microsecond:
    never)."""
    rng = random.Random(maxlen)
    clocks = {f"session-{k}": 0.0 for k in range(7)}
    guard = ReplayGuard(maxlen, ordered=True)
    sent: list[tuple[bytes, str, str]] = []
    remembered: deque[tuple[str, str]] = deque()
    horizons: dict[str, str] = {}
    for n in range(1, 6000):
        if sent and rng.random() < 0.3:
            sig, session, date = rng.choice(sent)
            with pytest.raises(ReplayedMessage):
                guard.check(sig, session, date)
            continue
        session = rng.choice(list(clocks))
        clocks[session] += rng.choice([0.0, 0.000001, 0.5])  # equal dates happen
        date = _dated(clocks[session])
        if date <= horizons.get(session, ""):  # same format: text order is time order
            assert date == horizons[session]
            with pytest.raises(wire.StaleMessage):
                guard.check(_sig(n), session, date)
            continue
        guard.check(_sig(n), session, date)
        sent.append((_sig(n), session, date))
        remembered.append((session, date))
        if len(remembered) > maxlen:
            gone_session, gone_date = remembered.popleft()
            horizons[gone_session] = max(gone_date, horizons.get(gone_session, ""))
    assert len(guard) == min(maxlen, len(remembered))


def test_the_session_table_stays_bounded_and_dropped_sessions_stay_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One message each from many short-lived senders: the table of horizons is pruned to
    the sessions still remembered, and what the dropped ones sent stays refused."""
    monkeypatch.setattr(ReplayGuard, "_FIRST_SESSIONS", 64)
    guard = ReplayGuard(maxlen=10, ordered=True)
    first = (_sig(0), "short-lived-0", _dated(0))
    guard.check(*first)
    for n in range(1, 3 * ReplayGuard._FIRST_SESSIONS):
        guard.check(_sig(n), f"short-lived-{n}", _dated(n))
    assert len(guard._sessions) <= ReplayGuard._FIRST_SESSIONS
    with pytest.raises(wire.StaleMessage):
        guard.check(*first)
    guard.check(_sig(10**6), "newcomer", _dated(10**6))


@pytest.mark.parametrize("ordered", [False, True])
def test_refuse_before_gives_a_joining_receiver_a_start(
    ordered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a sender dated before the receiver's start is refused, on either kind of
    guard; its later messages and other senders' are not; the start is never folded
    into the floor that applies to every session."""
    monkeypatch.setattr(ReplayGuard, "_FIRST_SESSIONS", 64)
    guard = ReplayGuard(maxlen=2, ordered=ordered)
    guard.refuse_before("hub", _dated(100))
    with pytest.raises(wire.StaleMessage):
        guard.check(_sig(1), "hub", _dated(99.5))
    guard.check(_sig(2), "hub", _dated(100))
    guard.check(_sig(3), "engine", _dated(5))
    guard.refuse_before("hub", _dated(50))  # never moves a start back
    with pytest.raises(wire.StaleMessage):
        guard.check(_sig(4), "hub", _dated(60))
    guard.refuse_before("hub", "not a date")  # ignored
    for n in range(5, 5 + 3 * ReplayGuard._FIRST_SESSIONS):  # prunes an ordered table
        guard.check(_sig(n), f"other-{n}", _dated(10 + n / 10**6))
    guard.check(_sig(10**6), "late-engine", _dated(20))  # not refused by the hub's start
    with pytest.raises(wire.StaleMessage):
        guard.check(_sig(10**6 + 1), "hub", _dated(99))


def test_stamps_read_every_offset_as_the_same_instant() -> None:
    """The fast path (UTC fields) and the converted one agree; order is time order."""
    stamp = wire._stamp
    utc = stamp("2026-12-06T00:00:00.000001+00:00")
    assert utc == stamp("2026-12-06T00:00:00.000001Z")
    assert utc == stamp("2026-12-06T01:00:00.000001+01:00")
    assert utc == stamp("2026-12-06T00:00:00.000001")  # no offset: UTC
    assert stamp("2026-12-06T00:00:00+00:00") < utc < stamp("2026-12-06T00:00:01+00:00")
    assert stamp("1970-01-02T00:00:00+00:00") - stamp("1970-01-01T00:00:00+00:00") == 86400 * 10**6
    assert stamp("not a date") == stamp(None) == ReplayGuard._UNDATED
