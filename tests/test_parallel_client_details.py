"""A burst of registration notices costs the hub one or two engine-list requests, not one
per engine (client.Client._fetch_details): with 1,000 engines registering, one request
per notice made the hub build 1,000 replies listing 1,000 engines each."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from corral.plugins.parallel.client.client import Client


def bare_client() -> tuple[Client, list[Any]]:
    """A Client with only what the notification path touches, its requests recorded."""
    client = Client.__new__(Client)
    client._closed = False
    client._lost = None
    client._details_pending = False
    client._details_again = False
    client._engines_changed = threading.Condition()
    client._engines = {}
    client._dead = set()
    client.cluster_info = {}
    sent: list[Any] = []

    def request(channel: str, msg_type: str, content: Any, callback: Any) -> str:
        sent.append((channel, msg_type, callback))
        return str(len(sent))

    client._request = request  # type: ignore[method-assign]
    return client, sent


def notice(engine_id: int) -> Any:
    content = {"id": engine_id, "uuid": f"u{engine_id}", "hostname": "h"}
    return SimpleNamespace(msg_type="registration_notification", content=content)


def listing(ids: range) -> Any:
    engines = {str(i): {"uuid": f"u{i}", "hostname": "h", "pid": 100 + i} for i in ids}
    return SimpleNamespace(content={"engines": engines, "cluster": {}})


def test_a_burst_of_notices_sends_one_request_then_one_more() -> None:
    client, sent = bare_client()
    for engine_id in range(1000):
        client._on_notification(notice(engine_id))
    assert len(sent) == 1 and sent[0][:2] == ("registration", "connection_request")
    assert len(client._engines) == 1000  # known at once from the notices themselves
    sent[0][2](listing(range(600)))  # the reply, sent while the later notices came
    assert len(sent) == 2  # one more, for the details of those that came meanwhile
    sent[1][2](listing(range(1000)))
    assert len(sent) == 2
    assert all(info.pid == 100 + i for i, info in client._engines.items())


def test_a_quiet_reply_sends_nothing_more_and_the_next_notice_asks_again() -> None:
    client, sent = bare_client()
    client._on_notification(notice(0))
    sent[0][2](listing(range(1)))
    assert len(sent) == 1
    client._on_notification(notice(1))
    assert len(sent) == 2


def test_a_closed_client_asks_nothing() -> None:
    client, sent = bare_client()
    client._closed = True
    client._on_notification(notice(0))
    assert sent == []
