"""The SSH launcher against real OpenSSH servers: on 127.0.0.1, and across network
namespaces so that engines on two "hosts" register with a controller on a third over
real TCP. The servers, keys and namespaces are made here and removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from cluster_waits import announce_then_sleep, await_ids, wait_started
from sshd_helpers import Sshd, client_config, free_port, make_keys, sshd_missing

from corral.plugins.parallel.cluster import Cluster, ClusterError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    # sshd does not pass PYTHONPATH on: the far side would import the installed corral,
    # not this checkout. A wrapper interpreter ([launcher:ssh] python) sets it there.
    wrapper = tmp_path / "python-here"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CORRAL_LAUNCHER_SSH_PYTHON", str(wrapper))
    return tmp_path / "corral"


@pytest.fixture(scope="module")
def loopback_sshd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ssh")
    host_key, client_key = make_keys(directory / "keys")
    port = free_port()
    server = Sshd(directory / "keys", host_key, "127.0.0.1", port)
    config = client_config(directory, client_key, {"node-a": ("127.0.0.1", port)})
    yield config
    server.stop()


def _engine_pids(rc) -> list[int]:
    return [info.pid for info in rc.engines.values()]


def _assert_gone(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


def _bootstrap_of(pid: int) -> str:
    return " ".join(psutil.Process(pid).parent().cmdline())


def test_engines_start_over_ssh_and_stop_with_the_cluster(loopback_sshd):
    cluster = Cluster(
        engines="ssh",
        hosts=["node-a:2"],
        ssh_args=["-F", str(loopback_sshd)],
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=10,
    )
    assert cluster.n == 2  # the host's slots
    rc = cluster.start_and_connect()
    try:
        pids = _engine_pids(rc)
        assert len(pids) == 2
        # Each engine runs under its monitor, under the remote bootstrap that sshd
        # started, not under us.
        for pid in pids:
            assert "corral.plugins.parallel.launchers.monitor" in _bootstrap_of(pid)
            remote = psutil.Process(pid).parent().parent()
            assert "corral.plugins.parallel.launchers.remote" in " ".join(remote.cmdline())
            assert remote.parent().name().startswith(("sshd", "bash"))
        assert sorted(rc[:].apply_sync(lambda: 6 * 7)) == [42, 42]
        # The key never went over a command line, and the remote copy is owner-only.
        for proc in psutil.process_iter(["cmdline"]):
            assert cluster.cluster_info["key"] not in " ".join(proc.info["cmdline"] or [])
        files = rc[:].apply_sync(lambda: __import__("sys").argv)
        for argv in files:
            path = argv[argv.index("--file") + 1]
            assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        cluster.add_engines(1)
        assert len(rc.wait_for_engines(3, timeout=60)) == 3
        pids = _engine_pids(rc)
        logs = cluster.logs()
        assert any("ssh" in path.name for path in logs.values())
    finally:
        cluster.stop()
    _assert_gone(pids)
    for argv in files:  # the bootstrap removed its private copy of the cluster file
        assert not Path(argv[argv.index("--file") + 1]).exists()


def test_killed_ssh_session_takes_its_engines_with_it(loopback_sshd):
    cluster = Cluster(
        engines="ssh",
        hosts=["node-a:1"],
        ssh_args=["-F", str(loopback_sshd)],
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=10,
    )
    rc = cluster.start_and_connect()
    try:
        pids = _engine_pids(rc)
        session = cluster.engines[0].sessions[0]
        os.kill(session.popen.pid, 9)  # ssh dies: the remote side sees its stdin end
        _assert_gone(pids)
    finally:
        cluster.stop()


def test_remote_engine_killed_is_restarted_by_its_monitor_with_the_cause(loopback_sshd, tmp_path):
    cluster = Cluster(
        engines="ssh",
        hosts=["node-a:1"],
        ssh_args=["-F", str(loopback_sshd)],
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=50,
        **{"engine.restart": 1, "engine.restart_backoff": 0.0},
    )
    rc = cluster.start_and_connect()
    try:
        victim = rc.ids[0]
        pid = rc[victim].apply_sync(os.getpid)
        fifo = tmp_path / "started"
        os.mkfifo(fifo)
        task = rc[victim].apply_async(announce_then_sleep, str(fifo), 60)
        wait_started(fifo)  # running: the death can only fail it with its cause
        os.kill(pid, 9)
        with pytest.raises(Exception, match="killed by SIGKILL"):
            task.get(timeout=60)
        await_ids(rc, lambda ids: len(ids) == 1 and victim not in ids)  # the restarted one
        assert rc[rc.ids[0]].apply_sync(os.getpid) != pid
        pids = _engine_pids(rc)
    finally:
        cluster.stop()
    _assert_gone(pids)


def test_controller_over_ssh_with_local_engines(loopback_sshd, corral_dir):
    """controller = ssh: the controller runs behind sshd (under its monitor there); its
    cluster file comes back on the session, so local engines and clients connect."""
    cluster = Cluster(
        n=2,
        controller="ssh",
        engines="local",
        controller_host="node-a",
        ssh_args=["-F", str(loopback_sshd)],
        hb_period=0.2,
        hb_misses=10,
    )
    rc = cluster.start_and_connect()
    try:
        assert sorted(rc[:].apply_sync(lambda: 6 * 7)) == [42, 42]
        controller = psutil.Process(cluster.cluster_info["controller_pid"])
        chain = [" ".join(p.cmdline()) for p in controller.parents()[:3]]
        assert "corral.plugins.parallel.launchers.monitor" in chain[0]
        assert "corral.plugins.parallel.launchers.remote" in chain[1]
        # The local copy is owner-only and the key never reached the log.
        assert oct(os.stat(cluster.cluster_file).st_mode & 0o777) == "0o600"
        log = cluster.controller.log_file.read_text()
        assert cluster.cluster_info["key"] not in log and "started" in log
        pids = [controller.pid, *(p.pid for p in controller.children(recursive=True))]
        pids += _engine_pids(rc)
    finally:
        cluster.stop()
    _assert_gone(pids)
    assert not cluster.cluster_file.exists()


def test_unreachable_host_fails_with_ssh_message(loopback_sshd, tmp_path):
    config = Path(loopback_sshd).read_text().replace("node-a", "node-b", 1)
    bad = tmp_path / "bad_config"
    closed_port = free_port()
    bad.write_text(
        config.replace(f"Port {config.split('Port ')[1].split()[0]}", f"Port {closed_port}")
    )
    cluster = Cluster(
        engines="ssh",
        hosts=["node-b:1"],
        ssh_args=["-F", str(bad)],
        controller_mode="threads",
        engine_timeout=30,
    )
    with pytest.raises(ClusterError) as info:
        cluster.start_and_connect()
    # ssh's own words, with the address it tried.
    assert f"connect to host 127.0.0.1 port {closed_port}: Connection refused" in str(info.value)


def test_remote_bootstrap_exits_with_its_engines_status_when_they_end_first(tmp_path):
    """Engines that end while the session is still open (a failed start, stop_engines):
    the bootstrap exits with their status. Before, its stdin reader thread held the
    buffered stdin's lock at shutdown and Python aborted (status -6, "Fatal Python error:
    _enter_buffered_busy") in every such session's log."""
    request = {
        "cluster": {"registration": 1, "transport": "tcp", "ip": "127.0.0.1", "key": "k"},
        "count": 1,
        "args": ["--no-such-option"],  # the engine exits at once, with status 2
        "monitor": [],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.plugins.parallel.launchers.remote"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.flush()  # and kept open, as the ssh session keeps it
    try:
        output = proc.stdout.read().decode()
        assert proc.wait(60) == 2, output
    finally:
        proc.stdin.close()
        proc.kill()
    assert "corral-remote: engines exited with [2]" in output
    assert "Fatal Python error" not in output


def test_remote_hosts_with_a_loopback_controller_are_refused_before_start(loopback_sshd):
    cluster = Cluster(engines="ssh", hosts=["far-away-node:2"], ssh_args=["-F", str(loopback_sshd)])
    with pytest.raises(ClusterError, match=r"far-away-node.*\[cluster\] location"):
        cluster.start()
    assert cluster.controller is None  # nothing was started


# ------------------------------------------------------------------ network namespaces


def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    probe = f"corralprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts(tmp_path):
    """Two namespaces ("hosts") on a bridge with this one: 10.213.x.0/24, sshd in each."""
    reason = _netns_missing()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    bridge, subnet = f"cbr{tag}", f"10.213.{int(tag[:2], 16)}"
    namespaces = {f"cns{tag}a": f"{subnet}.2", f"cns{tag}b": f"{subnet}.3"}
    servers: list[Sshd] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for k, (ns, address) in enumerate(namespaces.items()):
            outer, inner = f"cv{tag}{k}o", f"cv{tag}{k}i"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{address}/24", "dev", inner, netns=ns)
            _ip("link", "set", inner, "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
        host_key, client_key = make_keys(tmp_path / "keys")
        aliases = {}
        for k, (ns, address) in enumerate(namespaces.items()):
            servers.append(Sshd(tmp_path / "keys", host_key, address, 22, netns=ns))
            aliases[f"host{k}"] = (address, 22)
        config = client_config(tmp_path, client_key, aliases)
        yield {"config": config, "controller": f"{subnet}.1", "namespaces": list(namespaces)}
    finally:
        for server in servers:
            server.stop()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_engines_in_two_namespaces_register_over_tcp(two_hosts):
    cluster = Cluster(
        engines="ssh",
        hosts=["host0:2", "host1:2"],
        ssh_args=["-F", str(two_hosts["config"])],
        ip="*",
        location=two_hosts["controller"],
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=10,
    )
    rc = cluster.start_and_connect()
    try:
        assert cluster.cluster_info["ip"] == two_hosts["controller"]
        # Each engine's network namespace: two distinct ones, neither this process's.
        here = os.readlink("/proc/self/ns/net")
        seen = rc[:].apply_sync(lambda: __import__("os").readlink("/proc/self/ns/net"))
        assert len(seen) == 4
        assert len(set(seen)) == 2 and here not in seen
        pids = _engine_pids(rc)
    finally:
        cluster.stop()
    _assert_gone(pids)
