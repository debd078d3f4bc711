"""Engines load corral's plugins at start: ``corral_configure`` runs in the engine, and a
request type a plugin serves through ``corral_engine_request_handlers`` is answered by a
real engine in a real cluster.

The toy distribution (``tests/data/toy_engine_plugin``) is installed into a site
directory on the engines' ``PYTHONPATH`` with its dist-info, so ``importlib.metadata``
finds its entry point exactly as it finds a pip-installed one.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from parallel_client_harness import ROOT, LiveCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

TOY = ROOT / "tests" / "data" / "toy_engine_plugin" / "corral_toy_engine.py"
WAIT = 60.0


@pytest.fixture
def toy_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TOY, site)
    info = site / "corral_toy_engine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corral-toy-engine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[corral]\ntoyengine = corral_toy_engine\n")
    (info / "RECORD").write_text("")
    return site


@pytest.fixture
def live(tmp_path: Path, toy_site: Path) -> Iterator[LiveCluster]:
    """Engines with the toy installed; the controller and this process without it."""
    path = os.pathsep.join(filter(None, [str(toy_site), str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster = LiveCluster(tmp_path / "corral", n=1, engine_env={"PYTHONPATH": path})
    yield cluster
    cluster.stop()


def engine_pid() -> int:
    return os.getpid()


def echo(live: LiveCluster, text: str) -> Any:
    rc = live.client
    result = rc._submit("mux", "toy_echo_request", {"text": text}, {}, rc._routes([0], ()))
    return result.get(timeout=WAIT)


def test_an_engine_serves_a_request_type_its_plugin_adds(live: LiveCluster) -> None:
    rc = live.client
    answer = echo(live, "hello")
    pid = rc[0].apply_sync(engine_pid)  # its own apply_request: not taken over
    assert answer == {"text": "hello", "engine_id": 0, "pid": pid, "configured": True}
    assert echo(live, "again")["text"] == "again"
