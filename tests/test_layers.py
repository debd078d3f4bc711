"""Arrows point down: the layer contract holds, and the named import cycles stay broken.

``tox -e lint`` runs the same contract (``lint-imports``); running it here as well means a
plain ``pytest`` catches an arrow pointing up before review does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter is a test dependency")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph() -> object:
    return grimp.build_graph("corral", exclude_type_checking_imports=True, cache_dir=None)


def test_the_layers_contract_is_kept() -> None:
    # In a process of its own: import-linter reconfigures logging (disabling the loggers
    # that exist), which would silence corral's loggers for the tests that run after.
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("upper", "lower"),
    [
        ("corral.plugins.parallel.client.client", "corral.plugins.parallel.client.views"),
        ("corral.plugins.parallel.client.client", "corral.plugins.parallel.client.asyncresult"),
        ("corral.plugins.parallel.client.client", "corral.plugins.parallel.client.magics"),
        ("corral.plugins.parallel.client.client", "corral.plugins.parallel.client.joblib_backend"),
        ("corral.plugins.parallel.launchers.local", "corral.plugins.parallel.launchers.base"),
        ("corral.plugins.parallel.launchers.registry", "corral.plugins.parallel.launchers.base"),
        ("corral.frontends.console", "corral.frontends.console_prompt"),
    ],
)
def test_former_cycles_run_one_way(graph: object, upper: str, lower: str) -> None:
    """Each pair was an import cycle; now the lower module reaches the upper by no chain."""
    assert graph.find_shortest_chain(importer=lower, imported=upper) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("corral.transports", "corral.plugins"),
        ("corral.plugins", "corral.frontends"),
        ("corral.core", "corral.transports"),
        ("corral.notification", "corral.core"),
    ],
)
def test_no_chain_leads_up(graph: object, importer: str, imported: str) -> None:
    chains = graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)  # type: ignore[attr-defined]
    assert chains == set()


def test_the_transports_do_not_read_the_root_package(graph: object) -> None:
    """``import corral`` is the public API (it names plugins and frontends); lower layers
    read the version from :mod:`corral._version`."""
    for layer in ("corral.transports", "corral.core", "corral.notification"):
        importers = {
            m
            for m in graph.find_modules_that_directly_import("corral")  # type: ignore[attr-defined]
            if m.startswith(layer)
        }
        assert importers == set(), layer


def test_views_use_the_client_only_through_its_link() -> None:
    """The views' contract with the client is :mod:`corral.plugins.parallel.client.link`:
    no private name of the client appears in the views (there were 47 such reaches)."""
    import re

    views = ROOT / "corral" / "plugins" / "parallel" / "client" / "views.py"
    assert re.findall(r"client\._[a-z]\w*", views.read_text()) == []
