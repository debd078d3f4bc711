"""A third-party distribution of the kind tests install: configuration
(``corral_configure``) and a request type of its own that engines serve
(``corral_engine_request_handlers``)."""

from __future__ import annotations

import os
from typing import Any

#: pids of the processes where corral_configure ran
CONFIGURED: list[int] = []


def corral_configure(config: Any) -> None:
    CONFIGURED.append(os.getpid())


def corral_engine_request_handlers(engine: Any) -> dict[str, Any]:
    from corral.core.serialize import serialize

    def echo(sock: Any, msg: Any) -> None:
        value = {
            "text": msg.content.get("text"),
            "engine_id": engine.id,
            "pid": os.getpid(),
            "configured": os.getpid() in CONFIGURED,
        }
        engine.reply(sock, msg, {"status": "ok"}, serialize(value))

    return {"queues": {"toy_echo_request": echo, "apply_request": echo}}
