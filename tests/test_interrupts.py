"""Interrupt safety by registration: regions declared by their modules, the shared guard."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import FrameType

import pytest

from corral.core import interrupts
from corral.transports.zmq.requests import InterruptGuard


def _frame_of(path: Path) -> FrameType:
    """A frame whose code comes from the file ``path``."""
    path.write_text("import sys\nframe = sys._getframe()\n")
    scope: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    frame = scope["frame"]
    assert isinstance(frame, FrameType)
    return frame


def test_a_declared_file_is_protected_and_its_neighbours_are_not(tmp_path: Path) -> None:
    inside = tmp_path / "region.py"
    outside = tmp_path / "regional.py"
    assert not interrupts.is_protected(_frame_of(inside))
    interrupts.protect(str(inside))
    interrupts.protect(str(inside))  # idempotent
    assert interrupts.protected_regions().count(str(inside)) == 1
    assert interrupts.is_protected(_frame_of(inside))
    assert not interrupts.is_protected(_frame_of(outside))
    assert not interrupts.is_protected(None)


def test_a_declared_directory_covers_its_files_only(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    interrupts.protect(str(pkg))
    assert interrupts.is_protected(_frame_of(pkg / "mod.py"))
    assert not interrupts.is_protected(_frame_of(tmp_path / "pkg2.py"))


def test_the_layers_declare_their_own_regions() -> None:
    import zmq

    import corral.core.iostreams
    import corral.notification
    import corral.plugins.parallel.engine._wire as engine_wire
    import corral.transports.zmq.iopub

    frames = [
        corral.core.iostreams.__file__,
        corral.notification.center.__file__,
        corral.transports.zmq.iopub.__file__,
        engine_wire.__file__,
        zmq.__file__,
    ]
    regions = interrupts.protected_regions()
    for name in frames:
        assert str(name).startswith(regions), name
    # User code and the engine's task handlers are not protected.
    assert not __file__.startswith(regions)
    assert not corral.plugins.parallel.engine.engine.__file__.startswith(regions)


def test_the_guard_ignores_a_signal_between_requests() -> None:
    guard = InterruptGuard()
    guard.on_sigint(2, sys._getframe())  # no exception: an interrupt never kills


def test_the_guard_raises_in_user_code() -> None:
    guard = InterruptGuard()
    guard.executing = True
    with pytest.raises(KeyboardInterrupt):
        guard.on_sigint(2, sys._getframe())


def test_the_guard_resends_a_signal_that_landed_in_protected_code(tmp_path: Path) -> None:
    protected = tmp_path / "transport.py"
    interrupts.protect(str(protected))
    guard = InterruptGuard()
    guard.executing = True
    again = threading.Event()
    guard.interrupt = again.set  # type: ignore[method-assign]
    guard.on_sigint(2, _frame_of(protected))  # not raised here ...
    assert again.wait(5)  # ... but sent again a moment later
