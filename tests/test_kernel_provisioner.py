"""corral's jupyter_client provisioner: start_kernel returns once the kernel has bound.

These go through jupyter_client's own KernelManager and kernelspec lookup, so they need
corral installed as a distribution (its entry point is how jupyter_client finds the
provisioner); tox installs it.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_helpers import isolate_jupyter

pytest.importorskip("jupyter_client")
from helpers import TIMEOUT
from jupyter_client import KernelManager  # noqa: E402
from jupyter_client.provisioning import KernelProvisionerFactory  # noqa: E402

from corral.transports.zmq.kernel_main import parse_args  # noqa: E402
from corral.transports.zmq.kernelspec import (  # noqa: E402
    PROVISIONER_NAME,
    install_kernelspec,
    kernel_json,
    provisioner_available,
)

ROOT = Path(__file__).resolve().parents[1]

needs_provisioner = pytest.mark.skipif(
    not KernelProvisionerFactory.instance()._check_availability(PROVISIONER_NAME),
    reason="corral is not installed as a distribution here (tox installs it)",
)


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch) -> Path:
    """A private Jupyter path to put kernelspecs in; the kernel finds this checkout."""
    return isolate_jupyter(tmp_path, monkeypatch)


def add_spec(root: Path, name: str, spec: dict[str, Any]) -> None:
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@needs_provisioner
def test_start_kernel_returns_with_ports_bound(jupyter_path: Path) -> None:
    add_spec(jupyter_path, "corral-p", kernel_json("corral", provisioner=True))
    manager = KernelManager(kernel_name="corral-p")
    manager.start_kernel()
    try:
        assert type(manager.provisioner).__name__ == "CorralProvisioner"
        # No wait at all: the provisioner returned only after the kernel said "bound".
        assert accepts_connections(manager.shell_port)
        assert accepts_connections(manager.control_port)
        client = manager.client()
        client.start_channels()
        try:
            reply = client.kernel_info(reply=True, timeout=TIMEOUT)
            assert reply["content"]["implementation"] == "corral"
            reply = client.execute("x = 6 * 7", reply=True, timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok"
        finally:
            client.stop_channels()
    finally:
        manager.shutdown_kernel(now=True)


def provisioned(argv: list[str], **config: Any) -> dict[str, Any]:
    stanza: dict[str, Any] = {"provisioner_name": PROVISIONER_NAME}
    if config:
        stanza["config"] = config
    return {
        "argv": argv,
        "display_name": "probe",
        "language": "python",
        "metadata": {"kernel_provisioner": stanza},
    }


@needs_provisioner
def test_kernel_dying_before_it_binds_ends_the_wait(jupyter_path: Path) -> None:
    """End of file on the pipe: start_kernel returns at once, not after ready_timeout."""
    argv = [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"]
    add_spec(jupyter_path, "dies", provisioned(argv, ready_timeout=60.0))
    manager = KernelManager(kernel_name="dies")
    started = time.monotonic()
    manager.start_kernel()
    try:
        assert time.monotonic() - started < TIMEOUT
        assert manager.provisioner.process.wait(TIMEOUT) == 3
    finally:
        manager.cleanup_resources()


@needs_provisioner
def test_silent_kernel_is_handed_over_after_ready_timeout(
    jupyter_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kernel that never reports (not corral's) costs at most ready_timeout."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "{connection_file}"]
    add_spec(jupyter_path, "silent", provisioned(argv, ready_timeout=0.5))
    manager = KernelManager(kernel_name="silent")
    started = time.monotonic()
    manager.start_kernel()
    try:
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < TIMEOUT
        assert manager.is_alive()
        assert "did not report its ports bound" in caplog.text
    finally:
        manager.shutdown_kernel(now=True)


@needs_provisioner
def test_kernel_does_not_pass_the_descriptor_on(jupyter_path: Path) -> None:
    """User code never sees the launcher's variable (nor inherits its pipe)."""
    add_spec(jupyter_path, "corral-p", kernel_json("corral", provisioner=True))
    manager = KernelManager(kernel_name="corral-p")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        code = "import os; print(repr(os.environ.get('CORRAL_KERNEL_READY_FD')))"
        seen: list[str] = []
        client.execute_interactive(
            code,
            timeout=TIMEOUT,
            output_hook=lambda m: seen.append(m["content"].get("text", "")),
        )
        assert "".join(seen).strip() == "None"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_spec_names_provisioner_only_when_asked_or_available() -> None:
    with_it = kernel_json(provisioner=True)["metadata"]["kernel_provisioner"]
    assert with_it == {"provisioner_name": PROVISIONER_NAME}
    assert "kernel_provisioner" not in kernel_json(provisioner=False)["metadata"]
    assert ("kernel_provisioner" in kernel_json()["metadata"]) == provisioner_available()


def test_install_names_provisioner_for_environments_not_for_the_user(
    tmp_path: Path, monkeypatch
) -> None:
    """Every Jupyter of the user reads a --user spec, also one without corral: there the
    provisioner must be asked for; an environment's own spec gets it when it can load."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))

    def names_it(path: Path) -> bool:
        return "kernel_provisioner" in json.loads((path / "kernel.json").read_text())["metadata"]

    assert not names_it(install_kernelspec(user=True))
    assert names_it(install_kernelspec(user=True, name="fast", provisioner=True))
    assert names_it(install_kernelspec(prefix=tmp_path / "env")) == provisioner_available()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-f", "/k.json"], {"connection_file": "/k.json", "ip": None}),
        (["--connection-file=/k.json", "--ip", "0.0.0.0"], {"ip": "0.0.0.0"}),
        (["--ports", "50000-50100"], {"ports": (50000, 50100)}),
        (["--log-level=DEBUG", "--profile", "p"], {"log_level": "DEBUG", "profile": "p"}),
    ],
)
def test_kernel_command_line(argv: list[str], expected: dict[str, Any]) -> None:
    """The launcher fast path and argparse agree (``--ports`` goes through argparse)."""
    options = parse_args(argv)
    for name, value in expected.items():
        assert getattr(options, name) == value


@pytest.mark.parametrize("argv", [["--bogus"], ["-f"], ["--ports", "9-1"]])
def test_kernel_command_line_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
