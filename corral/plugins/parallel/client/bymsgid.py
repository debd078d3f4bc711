"""``rc.results`` and ``rc.metadata``: ipyparallel's dicts by msg_id, as read-only views.

ipyparallel keeps every result and metadata dict a client ever received in two dicts that
grow until ``purge_local_results``. corral keeps no second copy: these views look a msg_id
up in the results the client still holds (pending ones, and finished ones the caller still
references, the newest 50,000), so memory stays bounded and a value is never stale. A task
whose result object was dropped is found through ``rc.get_result(msg_id)`` (the hub's
database), as in ipyparallel after a purge.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["MetadataView", "ResultsView"]


class _ByMsgId(Mapping[str, Any]):
    """msg_id -> something about that task, for the tasks ``client`` still holds."""

    #: Whether unfinished tasks are keys (metadata: yes, from submission; results: no).
    include_pending = False

    def __init__(self, client: Any) -> None:
        self._client = client

    def _holder(self, msg_id: str) -> Any:
        client = self._client
        return client._pending.get(msg_id) or client._recent.get(msg_id)

    @staticmethod
    def _slots(result: Any, msg_id: str) -> list[int]:
        """The slots of ``result`` that belong to ``msg_id`` (several for a broadcast)."""
        if len(result.msg_ids) == 1 and len(result._done_slots) > 1:
            return list(range(len(result._done_slots)))
        index = result._slot_of.get(msg_id)
        return [] if index is None else [index]

    def _pick(self, result: Any, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, msg_id: str) -> Any:
        result = self._holder(msg_id) if isinstance(msg_id, str) else None
        slots = self._slots(result, msg_id) if result is not None else []
        if not slots or not (self.include_pending or all(result._done_slots[i] for i in slots)):
            raise KeyError(msg_id)
        values = [self._pick(result, i) for i in slots]
        return values[0] if len(values) == 1 else values

    def _keys(self) -> list[str]:
        client = self._client
        keys = dict.fromkeys(client._recent.keys())
        keys.update(dict.fromkeys(client._pending))
        return list(keys)

    def __iter__(self) -> Iterator[str]:
        for msg_id in self._keys():
            try:
                self[msg_id]
            except KeyError:
                continue
            yield msg_id

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, msg_id: object) -> bool:
        try:
            self[msg_id]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} tasks>"


class ResultsView(_ByMsgId):
    """``rc.results[msg_id]``: a finished task's value, or its :class:`RemoteError`
    (ipyparallel stores the error in place of the value too).

    .. versionadded:: 0.2
    """

    def _pick(self, result: Any, index: int) -> Any:
        error = result._errors[index]
        return error if error is not None else result._values[index]


class MetadataView(_ByMsgId):
    """``rc.metadata[msg_id]``: the task's metadata dict (``engine_id``, ``submitted``,
    ``started``, ``completed``, ``stdout``...), from submission on.

    .. versionadded:: 0.2
    """

    include_pending = True

    def _pick(self, result: Any, index: int) -> Any:
        return result._metadata_slot(index)
