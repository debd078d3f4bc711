"""Cluster settings: one declaration, checked alike from corral.ini, the environment,
``Cluster(...)`` keyword arguments and ``corral cluster start`` flags, before anything
starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from corral.core.config import ConfigError
from corral.core.profiles import profile_dir
from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.retention import prune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "no-system.ini"))
    for name in list(os.environ):
        if name.startswith(("CORRAL_CLUSTER_", "CORRAL_LAUNCHER_", "CORRAL_ENGINE_")):
            monkeypatch.delenv(name)
    return tmp_path / "corral"


def write_ini(profile: str, text: str) -> Path:
    path = profile_dir(profile) / "corral.ini"
    path.write_text(text)
    return path


def corral(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_profile_file_sets_cluster_and_launcher_options():
    path = write_ini(
        "p",
        "[cluster]\nn = 3\nhb_period = 0.5\ncontroller_mode = threads\n"
        "[launcher:ssh]\nhosts = node1:4, node2:8\n[engine]\ntimeout = 7\n",
    )
    cluster = Cluster(profile="p")
    assert (cluster.n, cluster.hb_period, cluster.controller_mode) == (3, 0.5, "threads")
    assert cluster.config.get("launcher:ssh", "hosts") == ["node1:4", "node2:8"]
    assert cluster.config.get("engine", "timeout") == 7.0
    assert cluster.config.source("cluster", "n").startswith(f"{path}:2")
    # Keyword arguments beat the file; the ssh launcher's default n is its slots.
    assert Cluster(profile="p", hb_period=2).hb_period == 2
    ssh = Cluster(profile="p", engines="ssh", n=None)
    assert ssh.n == 3  # [cluster] n from the file still wins over the slots
    write_ini("q", "[launcher:ssh]\nhosts = node1:4, node2:8\n")
    assert Cluster(profile="q", engines="ssh").n == 12


def test_bad_file_value_fails_naming_file_line_key_and_accepted_values(corral_dir):
    path = write_ini("p", "[cluster]\nn = 2\nhb_period = 0\n")
    with pytest.raises(ConfigError) as info:
        Cluster(profile="p")
    message = str(info.value)
    assert f"{path}:3" in message
    assert "[cluster] hb_period" in message and ">= 0.01" in message
    path = write_ini("p", "[cluster]\nengines = slurmish\n")
    with pytest.raises(ConfigError, match=r"corral.ini:2.*unknown launcher 'slurmish'.*ssh"):
        Cluster(profile="p")
    path = write_ini("p", "[launcher:ssh]\nhosts = node1:0\n")
    with pytest.raises(ConfigError, match=r"corral.ini:2.*\[launcher:ssh\] hosts.*host:engines"):
        Cluster(profile="p", engines="ssh")
    # Nothing was started: no log, pid or cluster file.
    pdir = profile_dir("p")
    assert not [p for sub in ("log", "run", "security") for p in (pdir / sub).iterdir()]


def test_broken_profile_fails_for_cluster_and_kernel_manager():
    from corral import KernelManager  # the plugins layer's: it knows every option

    path = write_ini("broken", "[core]\nlog_levl = info\n")
    with pytest.raises(ConfigError, match=r"corral.ini:2.*log_levl.*did you mean 'log_level'"):
        Cluster(profile="broken")
    with pytest.raises(ConfigError, match=str(path).replace("\\", "\\\\") + ":2"):
        KernelManager(profile="broken")


def test_keyword_arguments_are_checked_like_the_file():
    assert Cluster(n="4").n == 4  # text is parsed, as from a file
    assert Cluster(n=0).n == 0  # engines come later, through add_engines()
    for kwargs, expected in [
        ({"n": -1}, r"\[cluster\] n: bad value '-1'; expected an integer >= 0"),
        ({"hb_period": 0}, r"hb_period.*>= 0.01"),
        ({"db": "postgres"}, r"\[cluster\] db.*one of sqlite, memory, none"),
        ({"engines": "nope"}, r"unknown launcher 'nope'; known launchers: htcondor, local, lsf"),
        ({"ip": "1.2.3.4; rm -rf /"}, r"\[cluster\] ip"),
        ({"bogus": 1}, r"unknown option 'bogus' for this cluster; accepted:.*hb_period"),
        # another launcher's option: say which, and how to choose it
        ({"hosts": "a,b"}, r"'hosts'.*an option of the ssh launcher.*engines='ssh'"),
        ({"mpiexec": "mpirun"}, r"'mpiexec'.*an option of the mpi launcher"),
        ({"controller_mode": "fibres"}, r"controller_mode.*processes, threads"),
        ({"engines": "ssh", "hosts": ["a:x:y"]}, r"\[launcher:ssh\] hosts"),
        ({"engine.timeout": -1}, r"\[engine\] timeout"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            Cluster(**kwargs)


def test_environment_reaches_launcher_sections(monkeypatch):
    monkeypatch.setenv("CORRAL_LAUNCHER_SSH_HOSTS", "a:2, b")
    monkeypatch.setenv("CORRAL_CLUSTER_HB_MISSES", "4")
    cluster = Cluster(engines="ssh")
    assert cluster.n == 3
    assert cluster.hb_misses == 4
    assert cluster.config.source("launcher:ssh", "hosts") == (
        "environment variable CORRAL_LAUNCHER_SSH_HOSTS"
    )
    monkeypatch.setenv("CORRAL_CLUSTER_HB_MISSES", "0")
    with pytest.raises(ConfigError, match="CORRAL_CLUSTER_HB_MISSES"):
        Cluster()


def test_profile_create_lists_every_cluster_option_and_loads_back(tmp_path):
    result = corral(tmp_path, "profile", "create", "fresh")
    assert result.returncode == 0, result.stderr
    text = (Path(result.stdout.strip()) / "corral.ini").read_text()
    for needle in (
        "[cluster]",
        "# hb_period = 1.0",
        "# engines = local",
        "# location = ",
        "[controller]",
        "[engine]",
        "[launcher:ssh]",
        "# hosts = localhost",
        "[launcher:mpi]",
        "# Accepts a number >= 0.01.",
    ):
        assert needle in text, needle
    # Uncommenting the defaults gives a valid file.
    active = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    (Path(result.stdout.strip()) / "corral.ini").write_text(active)
    assert Cluster(profile="fresh").hb_period == 1.0


def test_cli_refuses_bad_values_and_unknown_profiles_before_starting(tmp_path, corral_dir):
    result = corral(tmp_path, "--profile", "nosuch", "cluster", "start", "-n", "1")
    assert result.returncode == 2
    assert "no profile 'nosuch'" in result.stderr and "corral profile create" in result.stderr
    assert not (corral_dir / "profile_nosuch").exists()

    result = corral(tmp_path, "cluster", "start", "--hb-period", "0", "-n", "1")
    assert result.returncode == 2
    assert "[cluster] hb_period: bad value '0'" in result.stderr
    assert "Traceback" not in result.stderr

    result = corral(tmp_path, "cluster", "start", "-n", "0", "--daemon")
    assert result.returncode == 2
    assert "[cluster] n: bad value '0'" in result.stderr
    assert not list((corral_dir / "profile_default" / "run").glob("cluster-*"))

    result = corral(tmp_path, "cluster", "start", "-n", "1", "-o", "hosts=a:1", "--daemon")
    assert result.returncode == 2  # a local cluster has no hosts option
    assert "unknown option 'hosts'" in result.stderr
    assert "--launcher ssh" in result.stderr


def test_unreachable_controller_names_address_and_setting():
    """An engine told a wrong address gives up after [engine] timeout, naming it."""
    cluster = Cluster(
        n=1,
        controller_mode="threads",
        engine_args=["--ip", "127.0.0.3"],
        **{"engine.timeout": 1.0},
    )
    with pytest.raises(Exception) as info:
        cluster.start_and_connect()
    message = str(info.value)
    assert "tcp://127.0.0.3:" in message
    assert "[cluster] location" in message


def test_retention_keeps_the_newest_logs_and_databases(corral_dir):
    pdir = profile_dir("r")
    for k in range(6):
        for path in (
            pdir / "log" / f"controller-old{k}.log",
            pdir / "db" / f"tasks-old{k}.sqlite",
        ):
            path.write_text("x")
            os.utime(path, (time.time() - 1000 + k, time.time() - 1000 + k))
    (pdir / "log" / "kernel-abc.log").write_text("not a cluster's")
    (pdir / "security" / "cluster-old0.json").write_text("{}")  # "running": kept
    (pdir / "log" / "engine-old0-3.log").write_text("running cluster's engine")
    assert prune(pdir, keep_logs=2, keep_dbs=1) == (3, 4)
    logs = sorted(p.name for p in (pdir / "log").iterdir())
    assert logs == [
        "controller-old0.log",
        "controller-old4.log",
        "controller-old5.log",
        "engine-old0-3.log",
        "kernel-abc.log",
    ]
    assert sorted(p.name for p in (pdir / "db").iterdir()) == [
        "tasks-old0.sqlite",
        "tasks-old5.sqlite",
    ]
    # A real start prunes through [cluster] keep_logs before writing its own logs.
    cluster = Cluster(n=1, profile="r", controller_mode="threads", keep_logs=0, db="memory")
    rc = cluster.start_and_connect()
    try:
        assert len(rc.ids) == 1
        names = {p.name for p in (pdir / "log").iterdir()}
        assert "controller-old5.log" not in names
        assert f"controller-{cluster.cluster_id}.log" in names
        assert set(cluster.logs()) >= {"controller", "engines 0.0"}
        assert all(path.exists() for path in cluster.logs().values())
    finally:
        cluster.stop()


def _ends(pid: int) -> bool:
    """Whether ``pid`` ends within 30 s (it may be gone already: no race on that)."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return psutil.wait_procs([process], timeout=30)[1] == []


def test_engines_by_id_stop_restart_and_signal():
    cluster = Cluster(n=3, controller_mode="threads", hb_period=0.2, hb_misses=5)
    rc = cluster.start_and_connect()
    try:
        first, second, third = sorted(rc.ids)
        pid = rc.engines[first].pid
        assert cluster.stop_engines([first]) == [first]
        assert _ends(pid)
        new = cluster.restart_engines([second])
        assert len(new) == 1 and new[0] not in (first, second, third)
        live = rc.wait_for_engines(2, timeout=60)
        assert sorted(live) == sorted([third, new[0]])
        victim = sorted(live)[0]
        victim_pid = rc.engines[victim].pid
        assert cluster.signal_engines(15, [victim]) == [victim]
        assert _ends(victim_pid)
        with pytest.raises(ValueError, match="no engine with id"):
            cluster.stop_engines([999])
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            cluster.add_engines(0)
    finally:
        cluster.stop()


def test_a_comment_after_a_value_is_refused_naming_the_line(corral_dir):
    """``hosts = node1:4   # comment`` (as docs/clusters.md once showed) kept the comment
    in the value: ``engines = local   # ...`` was an unknown launcher, ``ssh_args`` and
    ``python`` took it silently and failed on the remote host. Refused here, at once."""
    path = write_ini(
        "inline",
        "[cluster]\n# a comment line stays fine\nengines = ssh\n"
        "[launcher:ssh]\nssh_args = -o, BatchMode=yes    # fail rather than prompt\n",
    )
    with pytest.raises(ConfigError) as info:
        Cluster(profile="inline")
    message = str(info.value)
    assert f"{path}:5 (profile file): [launcher:ssh] ssh_args:" in message
    assert "write ssh_args = -o, BatchMode=yes and put the comment on the line above" in message
    # A "#" without whitespace before it is part of the value.
    write_ini("hash", "[launcher:slurm]\nargs = --comment=run#3\n")
    assert Cluster(profile="hash").config.get("launcher:slurm", "args") == ["--comment=run#3"]
    # Nor is a ";" (shell lines in values need it).
    write_ini("semicolon", "[launcher:slurm]\nargs = --comment=a ; b\n")
    assert Cluster(profile="semicolon").config.get("launcher:slurm", "args") == ["--comment=a ; b"]


def _address_not_here() -> str:
    """A documentation address (RFC 5737) that no interface of this host holds."""
    here = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return next(ip for ip in ("203.0.113.77", "198.51.100.77", "192.0.2.77") if ip not in here)


@pytest.mark.parametrize(
    ("ip", "said"),
    [
        (None, "the controller cannot listen there"),
        ("no-such-host.invalid", "not a known host name or address"),
    ],
)
def test_an_ip_the_controller_cannot_bind_fails_before_start(ip, said):
    """The controller found it out after starting, and the user read its traceback
    (ZMQError: Cannot assign requested address); now nothing starts."""
    ip = ip or _address_not_here()
    cluster = Cluster(n=1, ip=ip)
    with pytest.raises(ClusterError) as info:
        cluster.start()
    assert f"[cluster] ip = {ip} (argument" in str(info.value)
    assert said in str(info.value)
    assert cluster.controller is None  # nothing was started
