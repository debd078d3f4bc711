"""``corral demo``: worker processes report over the bridge; the count is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from corral.plugins.builtin.demo_work import chunk_bounds, count_primes

REPO = Path(__file__).resolve().parents[1]


def test_count_primes_and_chunks():
    assert count_primes(0, 30) == 10
    assert sum(count_primes(lo, hi) for lo, hi in chunk_bounds(10_000, 7)) == 1229
    assert chunk_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]


def test_demo_runs_workers_and_reports_speedup(tmp_path):
    env = {**os.environ, "CORRAL_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "-n", "2", "--limit", "20000", "--chunks", "8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "2,262 primes below 20,000" in result.stdout
    assert "8/8 chunks" in result.stdout
    assert "worker-0: 4, worker-1: 4" in result.stdout
    assert "speed-up" in result.stdout


def test_demo_rejects_fewer_chunks_than_workers(tmp_path):
    env = {**os.environ, "CORRAL_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "-n", "4", "--chunks", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--chunks must be at least" in result.stderr
