"""Real OpenSSH servers for the SSH launcher's tests: keys made in a temporary directory,
one ``sshd`` per address (optionally inside a network namespace), and an ssh client
config naming them, so the launcher runs the user's ordinary ``ssh -F config HOST``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_missing() -> str | None:
    """Why sshd cannot be run here, or None."""
    if not Path(SSHD).exists():
        return "sshd not installed (Debian: apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "ssh/ssh-keygen not installed (Debian: openssh-client)"
    if os.geteuid() != 0:
        return "sshd with key authentication for this user needs root to run as a server here"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_keys(directory: Path) -> tuple[Path, Path]:
    """A host key and a client key (with authorized_keys), owner-only."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    host_key = directory / "host_ed25519"
    client_key = directory / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=60,
        )
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(authorized, 0o600)
    return host_key, client_key


class Sshd:
    """One sshd listening on ``address:port``, run in the foreground (``-D``) so the
    test owns its process, optionally inside network namespace ``netns``."""

    def __init__(
        self, directory: Path, host_key: Path, address: str, port: int, netns: str | None = None
    ) -> None:
        self.address, self.port, self.netns = address, port, netns
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.config = directory / f"sshd_{address}_{port}.conf"
        self.log = directory / f"sshd_{address}_{port}.log"
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {address}",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    f"PidFile {directory / f'sshd_{port}.pid'}",
                    "AcceptEnv LANG LC_*",
                    "Subsystem sftp internal-sftp",  # scp (SFTP protocol) for peers
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        argv = [SSHD, "-D", "-e", "-f", str(self.config)]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 30.0) -> None:
        """Until sshd answers its banner (run inside the namespace when there is one)."""
        deadline = time.monotonic() + timeout
        probe = [
            "python3",
            "-c",
            "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 1);"
            "sys.exit(0 if s.recv(4) == b'SSH-' else 1)",
            self.address,
            str(self.port),
        ]
        if self.netns is not None:
            probe = ["ip", "netns", "exec", self.netns, *probe]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.address}:{self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def client_config(directory: Path, client_key: Path, hosts: dict[str, tuple[str, int]]) -> Path:
    """An ssh_config naming each host alias -> (address, port), as a user would write."""
    lines = []
    for alias, (address, port) in hosts.items():
        lines += [
            f"Host {alias}",
            f"    HostName {address}",
            f"    Port {port}",
            f"    IdentityFile {client_key}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null",
            "    BatchMode yes",
            "    LogLevel ERROR",
        ]
    path = directory / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path
