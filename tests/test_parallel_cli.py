"""``corral cluster start --daemon | list | status | stop`` and ``corral demo``, run as
real commands in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from corral.plugins.parallel.demo import chunk_bounds, count_primes, count_primes_in

REPO = Path(__file__).resolve().parents[1]


def corral(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORRAL_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_prime_helpers():
    assert count_primes(0, 30) == 10
    bounds = chunk_bounds(10_000, 7)
    assert len(bounds) == 7 and bounds[0][0] == 0 and bounds[-1][1] == 10_000
    assert sum(count_primes_in(b) for b in bounds) == 1229


def test_daemon_start_list_status_stop(tmp_path):
    started = corral(tmp_path, "cluster", "start", "--daemon", "-n", "2", "--cluster-id", "t1")
    assert started.returncode == 0, started.stderr + started.stdout
    assert started.stdout.splitlines()[0] == "t1"
    assert "corral.Client(profile='default', cluster_id='t1')" in started.stdout
    record = json.loads((tmp_path / "profile_default" / "run" / "cluster-t1.json").read_text())
    pids = [record["manager_pid"], record["controller"], *record["engines"]]
    try:
        assert len(record["engines"]) == 2
        assert all(psutil.pid_exists(pid) for pid in pids)

        listed = corral(tmp_path, "cluster", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith("t1 "))
        assert row.split()[1] == "2" and "running" in row

        # The record of a cluster whose script was killed before its stop: listed as
        # stale, and no reason to ask which cluster `status` means.
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        stale = {"cluster_id": "old", "controller": gone.pid, "engines": []}
        run_dir = tmp_path / "profile_default" / "run"
        (run_dir / "cluster-old.json").write_text(json.dumps(stale))
        listed = corral(tmp_path, "cluster", "list")
        assert any(
            line.startswith("old ") and "stale" in line for line in listed.stdout.splitlines()
        )
        status = corral(tmp_path, "cluster", "status")  # the only live cluster: no id needed
        (run_dir / "cluster-old.json").unlink()
        assert status.returncode == 0, status.stderr
        assert "engines up: 2" in status.stdout
        assert "completed" in status.stdout
    finally:
        stopped = corral(tmp_path, "cluster", "stop", "--cluster-id", "t1")
    assert stopped.returncode == 0, stopped.stderr
    assert "cluster t1 stopped" in stopped.stdout
    procs = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not (tmp_path / "profile_default" / "security" / "cluster-t1.json").exists()
    listed = corral(tmp_path, "cluster", "list")
    assert "no clusters" in listed.stdout


def test_stop_without_clusters_and_unknown_id(tmp_path):
    result = corral(tmp_path, "cluster", "stop", "--all")
    assert result.returncode == 0
    result = corral(tmp_path, "cluster", "status", "--cluster-id", "nope")
    assert result.returncode == 1
    assert "no cluster 'nope'" in result.stderr


@pytest.mark.parametrize("extra", [[], ["--no-serial"]])
def test_demo_counts_primes_and_reports_speedup(tmp_path, extra):
    result = corral(tmp_path, "demo", "-n", "2", "--limit", "20000", "--chunks", "8", *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "2,262 primes below 20,000" in result.stdout
    assert "cluster of 2 engines ready" in result.stdout
    if not extra:
        assert "speed-up" in result.stdout
    # The demo's cluster is gone.
    assert not list((tmp_path / "profile_default" / "security").glob("cluster-*.json"))
    assert not list((tmp_path / "profile_default" / "run").glob("*.pid"))


def test_daemon_from_profile_file_reattach_engines_and_clean(tmp_path, monkeypatch):
    """A daemon started from the profile's corral.ini; another process re-attaches with
    Cluster.from_profile, lists engines, stops one by id, and stops the cluster; `clean`
    removes what a killed cluster left."""
    from corral.plugins.parallel.cluster import Cluster

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    created = corral(tmp_path, "profile", "create", "ini")
    assert created.returncode == 0, created.stderr
    (tmp_path / "profile_ini" / "corral.ini").write_text(
        "[cluster]\nn = 2\ncontroller_mode = threads\nhb_period = 0.2\nhb_misses = 10\n"
    )
    started = corral(tmp_path, "--profile", "ini", "cluster", "start", "--daemon")
    assert started.returncode == 0, started.stderr + started.stdout
    cluster_id = started.stdout.splitlines()[0]
    assert "2 engines" in started.stdout  # n came from the file
    cluster = Cluster.from_profile("ini")
    try:
        assert cluster.cluster_id == cluster_id and cluster.is_running
        engines = corral(tmp_path, "--profile", "ini", "cluster", "engines")
        assert engines.returncode == 0, engines.stderr
        rows = [line.split() for line in engines.stdout.splitlines()[1:]]
        assert len(rows) == 2 and all(row[2].isdigit() for row in rows)
        first = int(rows[0][0])
        assert cluster.stop_engines([first]) == [first]
        assert first not in cluster.connect_client().ids
    finally:
        cluster.stop()
    assert not cluster.is_running
    assert not list((tmp_path / "profile_ini" / "security").glob("cluster-*.json"))

    # A cluster whose manager and controller died leaves files; clean removes them.
    stale = tmp_path / "profile_ini" / "run" / "cluster-dead.json"
    stale.write_text(json.dumps({"cluster_id": "dead", "manager_pid": 999999999}))
    (tmp_path / "profile_ini" / "run" / "controller-dead.pid").write_text("999999999\n")
    cleaned = corral(tmp_path, "--profile", "ini", "cluster", "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "cluster-dead.json" in cleaned.stdout
    assert not stale.exists()
    assert not (tmp_path / "profile_ini" / "run" / "controller-dead.pid").exists()


def test_status_of_a_cluster_whose_controller_was_killed(tmp_path, monkeypatch):
    """A script's cluster whose controller was killed with -9 leaves its record and
    cluster file: `status` and `engines` said so only after a 10 s wait, in a traceback.
    Now they say at once that the controller is gone and what cleans up; `stop` does."""
    from corral.plugins.parallel.cluster import Cluster

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    cluster = Cluster(n=1, cluster_id="k9", hb_period=0.2, hb_misses=10)
    cluster.start_and_connect()
    try:
        controller = psutil.Process(cluster.cluster_info["controller_pid"])
        controller.kill()
        controller.wait(30)
        for command in ("status", "engines"):
            shown = corral(tmp_path, "cluster", command, timeout=8)
            assert shown.returncode == 1, shown.stdout
            assert "Traceback" not in shown.stderr, shown.stderr
            assert f"its controller (pid {controller.pid}) is not running" in shown.stderr
            assert "cluster stop --cluster-id k9` cleans up" in shown.stderr
    finally:
        cluster.stop()
    assert corral(tmp_path, "cluster", "list").stdout.startswith("no clusters")


def test_daemon_start_whose_reader_left_ends_quietly(tmp_path):
    """`corral cluster start --daemon | head -1` (the first line is the id): once head
    has gone, writing the rest raised BrokenPipeError, a traceback and status 1 for a
    cluster that had started. Now: status 141 as for SIGPIPE, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    env = {**os.environ, "CORRAL_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    try:
        started = subprocess.run(
            [sys.executable, "-m", "corral", "cluster", "start", "--daemon", "-n", "1"]
            + ["--cluster-id", "piped"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    try:
        assert started.returncode == 141, started.stderr
        assert "Traceback" not in started.stderr and "BrokenPipe" not in started.stderr
        listed = corral(tmp_path, "cluster", "list").stdout
        assert "piped" in listed and "running" in listed, listed
    finally:
        assert corral(tmp_path, "cluster", "stop", "--cluster-id", "piped").returncode == 0


def test_the_stop_command_a_cluster_prints_stops_it_in_its_profile(tmp_path):
    """`corral cluster start` in the foreground (and so a daemon's log) printed
    `stop: corral cluster stop --cluster-id ID` without the profile: run as printed, it
    looked in the default profile and found no such cluster."""
    assert corral(tmp_path, "profile", "create", "other").returncode == 0
    started = corral(tmp_path, "--profile", "other", "cluster", "start", "--daemon", "-n", "1")
    assert started.returncode == 0, started.stderr
    cluster_id = started.stdout.splitlines()[0]
    try:
        log = tmp_path / "profile_other" / "log" / f"cluster-{cluster_id}.log"
        lines = log.read_text().splitlines()
        printed = next(line for line in lines if line.startswith("stop:")).split()[1:]
        assert printed[0] == "corral"  # corral --profile other cluster stop --cluster-id ID
        stopped = corral(tmp_path, *printed[1:])
        assert stopped.returncode == 0, stopped.stderr
        assert f"cluster {cluster_id} stopped" in stopped.stdout
    finally:
        corral(tmp_path, "--profile", "other", "cluster", "stop", "--all")
