"""``[kernel]`` in corral.ini: exec_lines and working_dir reach every engine; the
KernelManager settings come from the profile unless given; the module stays below the
plugins layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.core.config import ConfigError
from corral.plugins.parallel.cluster import Cluster
from corral.transports.zmq.kernel_options import apply_startup, engine_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    return tmp_path / "corral"


def _profile(corral_dir: Path, name: str, text: str) -> None:
    directory = corral_dir / f"profile_{name}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "corral.ini").write_text(text)


def test_engines_run_the_profiles_exec_lines_in_its_working_dir(corral_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _profile(
        corral_dir,
        "k",
        f"[kernel]\nexec_lines = import math, answer = int(math.sqrt(1764))\n"
        f"working_dir = {work}\n",
    )
    cluster = Cluster(n=2, profile="k", hb_period=0.5)
    try:
        client = cluster.start_and_connect()
        assert client[:].pull("answer", block=True) == [42, 42]  # in the engines' namespace
        assert client[:].apply_sync(os.getcwd) == [str(work)] * 2
    finally:
        cluster.stop()


def test_bad_kernel_values_fail_before_anything_starts(corral_dir):
    _profile(corral_dir, "bad", "[kernel]\nheartbeat_interval = 0\n")
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        Cluster(n=1, profile="bad")


def test_a_failing_line_is_reported_and_the_rest_still_run(tmp_path):
    ns: dict = {}
    errors = apply_startup(ns, ["x = 1", "1/0", "y = x + 1"], "")
    assert ns["y"] == 2 and len(errors) == 1 and "ZeroDivisionError" in errors[0]
    assert engine_args({"exec_lines": ["a"], "working_dir": "~/w"}) == [
        "--exec-line",
        "a",
        "--working-dir",
        "~/w",
    ]


def test_kernel_manager_takes_the_profiles_settings_unless_given(corral_dir):
    # corral.KernelManager: the plugins layer's, which reads the profile's corral.ini
    # (the transports' own imports no plugin, so it knows only the declared defaults).
    from corral import KernelManager

    _profile(corral_dir, "km", "[kernel]\nrestart_limit = 2\nautorestart = no\n")
    km = KernelManager(profile="km")
    assert (km.restart_limit, km.autorestart, km.heartbeat_interval) == (2, False, 1.0)
    km = KernelManager(profile="km", restart_limit=7)
    assert km.restart_limit == 7


def test_kernel_options_import_nothing_from_the_plugins_layer():
    code = (
        "import sys, corral.transports.zmq.kernel_options;"
        "bad = [m for m in sys.modules if m.startswith('corral.plugins')];"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
