"""The public API: every name of the three lazy tables resolves, and importing a package
imports none of them until asked."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["corral", "corral.plugins", "corral.plugins.parallel.client"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_and_is_listed(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_root_exports_the_error_base_and_the_plugins_kernel_manager() -> None:
    import corral
    from corral.errors import CorralError
    from corral.plugins.kernels import KernelManager

    assert corral.CorralError is CorralError and corral.KernelManager is KernelManager
    assert corral.EngineError.__module__ == "corral.plugins.parallel.client.errors"


def test_import_corral_loads_no_exported_module() -> None:
    code = "import sys, corral; print(sorted(m for m in sys.modules if m.startswith('corral.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "corral.plugins" not in out and "corral.transports" not in out, out
    assert "corral.core" not in out, out
