"""Capturing a piece of code's output instead of showing it (``%%capture``).

Streams are captured by swapping ``sys.stdout``/``sys.stderr`` for string buffers;
displays by making a stand-in, whose notification center nobody else observes, the
current display target for the duration (:func:`corral.core.display.set_current`), so
neither reaches the frontend.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from corral.core.events import CLEAR_OUTPUT, DISPLAY_DATA, UPDATE_DISPLAY_DATA
from corral.notification.center import NotificationCenter

__all__ = ["CapturedIO", "RichOutput", "capture_output"]


class RichOutput:
    """One captured display: its MIME bundle and metadata; shown again by ``display()``."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return f"<RichOutput {sorted(self.data)}>"


class CapturedIO:
    """What ``%%capture NAME`` leaves in ``NAME``: ``stdout``, ``stderr``, ``outputs``."""

    def __init__(self) -> None:
        self._stdout = io.StringIO()
        self._stderr = io.StringIO()
        self.outputs: list[RichOutput] = []

    @property
    def stdout(self) -> str:
        return self._stdout.getvalue()

    @property
    def stderr(self) -> str:
        return self._stderr.getvalue()

    def show(self) -> None:
        """Write the captured text and re-display the captured outputs, in that order."""
        from corral.core.display import display

        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)
        for output in self.outputs:
            display(output)

    __call__ = show

    def __repr__(self) -> str:
        return f"<CapturedIO stdout={len(self.stdout)} chars, {len(self.outputs)} outputs>"


class _Target:
    """The stand-in display target while capturing (anything with a ``center``)."""

    def __init__(self, interp: Any, captured: CapturedIO, keep_display: bool) -> None:
        self.center = NotificationCenter()
        self.user_ns = getattr(interp, "user_ns", {})
        self._interp = interp
        #: The interpreter behind this target, for code that needs the interpreter itself
        #: (its IPython shell), not where displays go meanwhile.
        self.stands_in_for = interp
        self._captured = captured
        for kind in (DISPLAY_DATA, UPDATE_DISPLAY_DATA, CLEAR_OUTPUT):
            self.center.add_observer(self._on_display if keep_display else self._drop, kind, None)

    def _on_display(self, kind: str, sender: Any, **info: Any) -> None:
        if kind == DISPLAY_DATA:
            self._captured.outputs.append(RichOutput(info["data"], info.get("metadata") or {}))

    def _drop(self, kind: str, sender: Any, **info: Any) -> None:
        # --no-display: the output goes to the frontend as usual.
        self._interp.center.post(kind, self._interp, **info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._interp, name)


@contextmanager
def capture_output(
    interp: Any, *, stdout: bool = True, stderr: bool = True, display: bool = True
) -> Iterator[CapturedIO]:
    """Capture what runs inside into a :class:`CapturedIO` (each kind can be let through)."""
    from corral.core import display as display_mod

    captured = CapturedIO()
    saved_streams = sys.stdout, sys.stderr
    saved_target = display_mod.get_current()
    if stdout:
        sys.stdout = captured._stdout
    if stderr:
        sys.stderr = captured._stderr
    display_mod.set_current(_Target(interp, captured, display))
    try:
        yield captured
    finally:
        sys.stdout, sys.stderr = saved_streams
        display_mod.set_current(saved_target)
