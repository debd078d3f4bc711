"""One writer and reader for the two key files: kernel connection files (Jupyter's format)
and cluster files. Both formats stay what they were."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from corral.plugins.parallel.clusterfile import (
    PORT_NAMES,
    ClusterInfo,
    new_run,
    read_cluster_file,
    write_cluster_file,
)
from corral.transports.zmq.connection import (
    ConnectionInfo,
    read_connection_file,
    write_connection_file,
)
from corral.transports.zmq.keyfile import endpoint

#: A cluster file as corral wrote it before the merge (every field, in order).
OLD_CLUSTER_FILE = {
    "cluster_id": "c1",
    "key": "ab" * 32,
    "signature_scheme": "hmac-sha256",
    "transport": "tcp",
    "ip": "127.0.0.1",
    **{name: 40000 + i for i, name in enumerate(PORT_NAMES)},
    "hb_period": 0.5,
    "hb_misses": 3,
    "controller_pid": 1234,
    "encryption": "none",
    "added_by_another_tool": True,
}


def test_a_connection_file_is_jupyters_and_jupyter_client_reads_it(tmp_path: Path) -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    info = ConnectionInfo(shell_port=1, iopub_port=2, stdin_port=3, control_port=4, hb_port=5)
    path = write_connection_file(tmp_path / "kernel.json", info)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = json.loads(path.read_text())
    assert list(raw) == [
        "transport",
        "ip",
        "shell_port",
        "iopub_port",
        "stdin_port",
        "control_port",
        "hb_port",
        "key",
        "signature_scheme",
        "kernel_name",
    ]  # no curve keys while there are none
    assert raw["key"] == info.key.decode()
    km = jupyter_client.KernelManager()
    km.load_connection_file(str(path))
    assert (km.shell_port, km.hb_port, km.session.key) == (1, 5, info.key)
    assert read_connection_file(path) == info


def test_a_connection_file_jupyter_client_wrote_loads(tmp_path: Path) -> None:
    connect = pytest.importorskip("jupyter_client.connect")
    fname, cfg = connect.write_connection_file(
        str(tmp_path / "jc.json"), shell_port=7, key=b"jk" * 32
    )
    info = read_connection_file(fname)
    assert info.shell_port == 7 and info.key == b"jk" * 32 == cfg["key"].encode()
    assert info.url("shell") == f"tcp://{cfg['ip']}:7"
    with pytest.raises(ValueError, match="kernel channel"):
        info.url("mux")


def test_an_existing_cluster_file_still_loads_and_writes_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "cluster-c1.json"
    path.write_text(json.dumps(OLD_CLUSTER_FILE))
    info = read_cluster_file(path)
    assert info.key == b"ab" * 32 and info.hb_misses == 3 and info.mux == OLD_CLUSTER_FILE["mux"]
    assert info.url("mux") == f"tcp://127.0.0.1:{OLD_CLUSTER_FILE['mux']}"
    assert info.ports() == {name: OLD_CLUSTER_FILE[name] for name in PORT_NAMES}
    written = write_cluster_file(tmp_path / "again.json", info)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    expected = {k: v for k, v in OLD_CLUSTER_FILE.items() if k != "added_by_another_tool"}
    assert json.loads(written.read_text()) == expected
    assert list(json.loads(written.read_text())) == list(expected)  # the same order
    assert "key" not in info.to_dict(include_key=False)
    with pytest.raises(ValueError, match="controller socket"):
        info.url("shell")


def test_a_cluster_file_names_its_controller_run(tmp_path: Path) -> None:
    """Each start of a controller writes a new run (door.RUN) last; a file without one
    (above) reads as None and is written back without it."""
    info = ClusterInfo(cluster_id="c1", run=new_run())
    again = read_cluster_file(write_cluster_file(tmp_path / "cluster-c1.json", info))
    assert again == info and len(info.run or "") == 32 and info.run != new_run()
    assert list(json.loads((tmp_path / "cluster-c1.json").read_text()))[-1] == "run"


def test_keys_are_bytes_compared_by_value_and_never_shown() -> None:
    a = ClusterInfo(cluster_id="x", key="k" * 64)
    b = ClusterInfo(cluster_id="x", key=b"k" * 64)
    assert a == b and a.key == b"k" * 64
    assert a != ClusterInfo(cluster_id="x", key=b"j" * 64)
    c = ConnectionInfo(key="s" * 64)
    assert c.key == b"s" * 64
    assert c != ConnectionInfo(key="t" * 64)
    for record, key in ((a, "k" * 64), (c, "s" * 64)):
        assert key not in repr(record)
        with pytest.raises(TypeError):
            hash(record)


def test_an_ipc_endpoint_is_a_path_prefix_and_a_port() -> None:
    assert endpoint("ipc", "/tmp/k", 3) == "ipc:///tmp/k-3"
    assert ConnectionInfo(transport="ipc", ip="/tmp/k", hb_port=3).url("hb") == "ipc:///tmp/k-3"
    assert ClusterInfo(transport="ipc", ip="/tmp/c", mux=4).url("mux") == "ipc:///tmp/c-4"


def test_a_file_that_is_not_an_object_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="cluster file"):
        read_cluster_file(path)
    with pytest.raises(ValueError, match="connection file"):
        read_connection_file(path)
