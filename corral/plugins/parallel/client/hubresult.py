"""Results fetched from the hub's task database instead of from a live reply.

The hub records every request and reply, so a task's result outlives the client that
submitted it. :class:`AsyncHubResult` asks the hub for the records of some msg_ids and
fills its slots from them exactly as a reply would; for tasks still running it asks
again later, backing off, from the client's I/O thread (no thread of its own waits).
"""

from __future__ import annotations

from typing import Any

from corral.core.serialize import deserialize

from .asyncresult import AsyncResult
from .messages import Parsed

__all__ = ["AsyncHubResult"]

_FIRST_DELAY = 0.02
_MAX_DELAY = 1.0


class AsyncHubResult(AsyncResult):
    """The result of tasks looked up by msg_id in the hub (see :meth:`Client.get_result`).

    .. versionadded:: 0.1
    """

    def __init__(self, client: Any, msg_ids: list[str]) -> None:
        super().__init__(client, list(msg_ids), single=len(msg_ids) == 1)
        self._delay = _FIRST_DELAY
        client._hub_results.add(self)  # failed with the rest if the controller goes
        self._ask()

    def _ask(self) -> None:
        from .errors import ControllerLost

        if self.done() or self._client.closed:
            return
        wanted = [m for m in self.msg_ids if not self._done_slots[self._slot_of[m]]]
        try:
            self._client._request(
                "registration", "result_request", {"msg_ids": wanted}, self._answer
            )
        except ControllerLost as lost:  # asking again after the controller went away
            self._abandon(lost)

    def _answer(self, msg: Parsed) -> None:
        """In the I/O thread: fill the completed tasks, ask again for pending ones."""
        content = msg.content
        results = content.get("results") or {}
        buffers = list(msg.buffers)
        offset = 0
        wanted = [m for m in self.msg_ids if not self._done_slots[self._slot_of[m]]]
        pending = False
        for msg_id in wanted:
            entry = results.get(msg_id) or {"status": "unknown"}
            record = entry.get("record", entry) if isinstance(entry, dict) else {}
            parts = record.get("parts")
            if isinstance(parts, list):
                count = sum(int(p.get("buffer_count") or 0) for p in parts)
            else:
                count = int(record.get("buffer_count") or 0)
            own = buffers[offset : offset + count]
            offset += count
            status = entry.get("status")
            if status == "completed" and isinstance(parts, list):
                self._fill_broadcast(msg_id, record, parts, own)
            elif status == "completed":
                self._fill(msg_id, record, own)
            elif status == "pending":
                pending = True
            else:
                index = self._slot_of[msg_id]
                self._errors[index] = _unknown(msg_id)
                self._slot_done(index)
        if content.get("status") == "error" and not results:
            for msg_id in wanted:
                index = self._slot_of[msg_id]
                self._errors[index] = _unknown(msg_id, str(content.get("evalue") or ""))
                self._slot_done(index)
            return
        if pending:
            delay, self._delay = self._delay, min(self._delay * 2, _MAX_DELAY)
            self._client._io.call_later(delay, self._ask)

    def _fill(self, msg_id: str, record: dict[str, Any], buffers: list[Any]) -> None:
        metadata = dict(record.get("result_metadata") or {})
        if record.get("engine_id") is not None:
            metadata.setdefault("engine_id", record["engine_id"])
        reply = Parsed(
            [],
            dict(record.get("result_header") or {}),
            {"msg_id": msg_id},
            metadata,
            dict(record.get("result_content") or {"status": record.get("result_status", "ok")}),
            buffers,
        )
        index = self._slot_of[msg_id]
        md = self._metadata_slot(index)
        md["stdout"] = record.get("stdout") or md["stdout"]
        md["stderr"] = record.get("stderr") or md["stderr"]
        md["submitted"] = record.get("submitted") or md["submitted"]
        md["label"] = record.get("label")
        md["outputs_ready"] = True  # the database holds all the output there is
        self._on_reply(msg_id, reply)

    def _fill_broadcast(
        self, msg_id: str, record: dict[str, Any], parts: list[dict[str, Any]], buffers: list[Any]
    ) -> None:
        """A broadcast's slot: the list of every engine's value, in target order (as a live
        broadcast gives it), or a CompositeError of the engines that failed."""
        from .errors import CompositeError

        values, errors, offset = [], [], 0
        for part in parts:
            count = int(part.get("buffer_count") or 0)
            value, error = _part_outcome(msg_id, part, buffers[offset : offset + count])
            offset += count
            values.append(value)
            if error is not None:
                errors.append(error)
        index = self._slot_of[msg_id]
        if errors:
            self._errors[index] = CompositeError(errors)
        else:
            self._values[index] = values
        md = self._metadata_slot(index)
        md["submitted"] = record.get("submitted") or md["submitted"]
        md["label"] = record.get("label")
        md["status"] = "error" if errors else "ok"
        md["engine_id"] = [p.get("engine_id") for p in parts]
        md["outputs_ready"] = True
        self._slot_done(index)


def _part_outcome(msg_id: str, part: dict[str, Any], buffers: list[Any]) -> tuple[Any, Any]:
    """``(value, None)`` or ``(None, RemoteError)`` for one engine's part of a broadcast."""
    from .errors import RemoteError, error_from_content

    content = part.get("result_content") or {"status": part.get("result_status", "ok")}
    engine_id = part.get("engine_id")
    if content.get("status", "ok") != "ok":
        return None, error_from_content(content, engine_id, msg_id)
    try:
        return (deserialize(buffers) if buffers else None), None
    except Exception as exc:  # a result this process cannot load
        return None, RemoteError(type(exc).__name__, str(exc), "", engine_id, msg_id=msg_id)


def _unknown(msg_id: str, why: str = "") -> Any:
    from .errors import RemoteError

    return RemoteError(
        "KeyError",
        f"no task {msg_id!r} in the hub's database {why}".strip()
        + " (a task still waiting in the scheduler of a controller that died was never "
        "recorded: submit it again)",
    )
