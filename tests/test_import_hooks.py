"""Callbacks around a module's first import, without importing it (corral.core.import_hooks)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from corral.core.import_hooks import before_import, when_imported


@pytest.fixture
def module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"corral_hooked_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\nVALUE = os.environ.get('HOOKED', 'unset')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_callbacks_run_around_the_first_import_only(module_name: str, monkeypatch) -> None:
    seen = []
    before_import(module_name, lambda: monkeypatch.setenv("HOOKED", "before"))
    when_imported(module_name, lambda m: seen.append(m.VALUE))
    assert module_name not in sys.modules  # registering imported nothing
    module = __import__(module_name)
    assert seen == ["before"] and module.VALUE == "before"
    # The module's loader is the real one again, not the hook's wrapper.
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert type(module.__spec__.loader).__name__ == "SourceFileLoader"
    when_imported(module_name, lambda m: seen.append("now"))  # already imported: at once
    assert seen == ["before", "now"]


def test_a_failing_callback_does_not_break_the_import(module_name: str, caplog) -> None:
    def boom(module: object) -> None:
        raise RuntimeError("adapter bug")

    when_imported(module_name, boom)
    module = __import__(module_name)
    assert module.VALUE == "unset"  # the import went through
    assert "post-import hook" in caplog.text and "adapter bug" in caplog.text


def test_unwatched_imports_are_untouched() -> None:
    import importlib

    spec = importlib.util.find_spec("json")
    assert spec is not None and type(spec.loader).__name__ == "SourceFileLoader"
