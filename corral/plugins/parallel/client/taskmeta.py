"""One task's metadata: a dict, as ipyparallel's, whose stream text is joined when read.

Output arrives as many ``stream`` messages (64 KiB each at most). Appending each to a
``str`` kept in a dict copies all the text so far every time: quadratic, measured at
seconds of the client's I/O thread for 30 MB of output, while the rest of that output
waited behind it. Here each piece is kept in a list, and the text is joined once when
someone reads it (and again only with what came since).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

__all__ = ["STREAMS", "TaskMetadata", "new_metadata"]

#: The keys whose text arrives in pieces.
STREAMS = ("stdout", "stderr")

_lock = threading.Lock()


class TaskMetadata(dict[str, Any]):
    """A plain dict for its readers; :meth:`append_stream` for the I/O thread."""

    __slots__ = ("_pieces",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: stream name -> text pieces not yet joined into the dict's value
        self._pieces: dict[str, list[str]] = {}

    def append_stream(self, name: str, text: str) -> None:
        """Add ``text`` to stream ``name`` (``"stdout"`` or ``"stderr"``) in O(1)."""
        with _lock:
            self._pieces.setdefault(name, []).append(text)

    def _join(self) -> None:
        if not self._pieces:
            return
        with _lock:
            for name, pieces in self._pieces.items():
                super().__setitem__(name, super().__getitem__(name) + "".join(pieces))
            self._pieces.clear()

    def __getitem__(self, key: str) -> Any:
        if self._pieces and key in STREAMS:
            self._join()
        return super().__getitem__(key)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (and copied) as its joined items: the pieces are the I/O thread's."""
        return (type(self), (dict(self.items()),))

    def __getattr__(self, name: str) -> Any:
        """``md.started`` as ``md["started"]``: ipyparallel's metadata reads both ways
        (its examples write ``ar.metadata.started``)."""
        if name.startswith("_"):  # private and special names, _pieces before __init__
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"task metadata has no key {name!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        if self._pieces and key in STREAMS:
            self._join()
        return super().get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if self._pieces and key in STREAMS:
            self._join()
        super().__setitem__(key, value)

    def __iter__(self) -> Any:
        # Overridden so that dict(md), {**md} and json take the keys-and-lookups path,
        # which joins, rather than copying the stored values as they are.
        self._join()
        return super().__iter__()

    def keys(self) -> Any:
        self._join()
        return super().keys()

    def items(self) -> Any:
        self._join()
        return super().items()

    def values(self) -> Any:
        self._join()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._join()
        return dict(self)

    def __eq__(self, other: object) -> bool:
        self._join()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._join()
        return super().__repr__()


def new_metadata(submitted: datetime | None = None) -> TaskMetadata:
    """The metadata of one task before anything is known about it."""
    return TaskMetadata(
        {
            "msg_id": None,
            "engine_id": None,
            "engine_uuid": None,
            "status": None,
            "submitted": submitted,
            "started": None,
            "completed": None,
            "received": None,
            "stdout": "",
            "stderr": "",
            "outputs": [],
            "execute_result": None,
            "error": None,
            "data": {},
            "outputs_ready": False,
            # ipyparallel's, about the request (see asyncresult._request_fields)
            "label": None,
            "after": [],
            "follow": [],
            "is_broadcast": False,
            "execute_input": None,
        }
    )
