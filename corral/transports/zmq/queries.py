"""The requests a server answers from its interpreter alone: completion, inspection,
history, "is this code complete?".

No socket, no server state: each function takes the interpreter and the request's content
and returns the reply's content. The kernel server answers them on shell; the parallel
engine answers the same ones on its queues, with the same functions, so a frontend asking
an engine (a console's completion, a client's ``inspect``) gets what a kernel gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "QUERIES",
    "complete_content",
    "history_content",
    "inspect_content",
    "is_complete_content",
]

Content = dict[str, Any]


def _cursor(content: Content, code: str) -> int:
    pos = content.get("cursor_pos")
    return len(code) if pos is None else int(pos)


def complete_content(interpreter: Any, content: Content) -> Content:
    """``complete_reply``: matches at ``cursor_pos`` (the end of ``code`` by default)."""
    code = content.get("code", "")
    return {"status": "ok", **interpreter.complete(code, _cursor(content, code))}


def inspect_content(interpreter: Any, content: Content) -> Content:
    """``inspect_reply``: what is known of the name at ``cursor_pos``."""
    code = content.get("code", "")
    detail = int(content.get("detail_level", 0))
    return {"status": "ok", **interpreter.inspect(code, _cursor(content, code), detail)}


def history_content(interpreter: Any, content: Content) -> Content:
    """``history_reply``: entries by ``hist_access_type`` (tail, range or search)."""
    c = content
    entries = interpreter.history(
        c.get("hist_access_type", "tail"),
        output=bool(c.get("output", False)),
        raw=bool(c.get("raw", True)),
        session=int(c.get("session", 0) or 0),
        start=int(c.get("start", 0) or 0),
        stop=c.get("stop"),
        n=c.get("n"),
        pattern=c.get("pattern"),
        unique=bool(c.get("unique", False)),
    )
    return {"status": "ok", "history": [list(e) for e in entries]}


def is_complete_content(interpreter: Any, content: Content) -> Content:
    """``is_complete_reply``: complete, incomplete (with an indent), invalid or unknown."""
    result: Content = interpreter.is_complete(content.get("code", ""))
    return result


#: Request type -> the function that answers it.
QUERIES: dict[str, Callable[[Any, Content], Content]] = {
    "complete_request": complete_content,
    "inspect_request": inspect_content,
    "history_request": history_content,
    "is_complete_request": is_complete_content,
}
