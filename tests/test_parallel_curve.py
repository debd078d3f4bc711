"""CurveZMQ on every cluster socket: proven on the wire with tcpdump.

A real cluster runs a task whose argument, result and stdout carry a random marker while
tcpdump captures the loopback. With ``encryption="none"`` the marker is in the capture
(messages are signed, not encrypted: this half proves the capture would see it); with
``encryption="curve"`` it is nowhere in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest

from corral.plugins.parallel.cluster import Cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)

TCPDUMP = shutil.which("tcpdump")


def echo(text: str) -> str:
    print(text, flush=True)
    return text + "-result"


class Capture:
    """tcpdump on the loopback, writing raw packets to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        assert TCPDUMP is not None
        self.proc = subprocess.Popen(
            [TCPDUMP, "-i", "lo", "-U", "-n", "-s", "0", "-w", str(path), "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lo, ..." once it captures
        if "listening" not in line:
            self.proc.kill()
            self.proc.wait()
            pytest.skip(f"tcpdump cannot capture on lo here: {line.strip()!r}")
        self._until_written(b"CAPTURE-START-" + uuid.uuid4().hex.encode())

    def _until_written(self, token: bytes) -> None:
        """Send ``token`` over the loopback until tcpdump has written it. tcpdump says
        "listening" before packets really reach it, and on a busy machine it lags behind
        the traffic: stopping it too early would lose what it had not processed yet."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        try:
            deadline = time.monotonic() + 60
            while not (self.path.exists() and token in self.path.read_bytes()):
                assert time.monotonic() < deadline, "tcpdump never wrote the probe"
                with socket.create_connection(server.getsockname(), timeout=5) as probe:
                    probe.sendall(token)
                server.accept()[0].close()
                time.sleep(0.2)
        finally:
            server.close()

    def stop(self) -> bytes:
        self._until_written(b"CAPTURE-END-" + uuid.uuid4().hex.encode())
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=30)
        return self.path.read_bytes()


@pytest.fixture
def corral_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    return tmp_path


@pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed (.ci/run installs it)")
@pytest.mark.skipif(os.geteuid() != 0, reason="capturing loopback traffic needs root")
@pytest.mark.parametrize("encryption", ["none", "curve"])
def test_marker_on_the_wire_only_without_curve(corral_dir: Path, encryption: str) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    capture = Capture(corral_dir / f"{encryption}.pcap")
    try:
        cluster = Cluster(
            n=1, profile=f"curve-{encryption}", hb_period=0.2, hb_misses=5, encryption=encryption
        )
        client = cluster.start_and_connect()
        try:
            assert client.cluster_info.get("encryption") == encryption
            ar = client.load_balanced_view().apply_async(echo, marker)
            assert ar.get(timeout=60) == marker + "-result"
            # stdout reaches the client over iopub, after the reply: wait for it
            end = time.monotonic() + 30
            while marker not in "".join(ar.stdout if isinstance(ar.stdout, list) else [ar.stdout]):
                assert time.monotonic() < end, "the task's stdout never arrived"
                time.sleep(0.01)
        finally:
            cluster.stop()
    finally:
        raw = capture.stop()
    assert len(raw) > 10_000, "the capture saw no cluster traffic"
    if encryption == "none":
        assert marker.encode() in raw
    else:
        assert marker.encode() not in raw
