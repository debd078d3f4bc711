"""A real single-node Slurm for the batch launchers' tests: munged, slurmctld and slurmd
started from a temporary directory (own key, own socket, random ports, state and logs),
so nothing on the machine is touched and nothing is left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def slurm_missing() -> str | None:
    """Why a test Slurm cannot run here, or None."""
    missing = [name for name in NEEDED if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a test Slurm runs its daemons as root (SlurmUser=root); not root here"
    return None


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmForTests:
    """munged + slurmctld + slurmd, one node ``corralnode`` with ``cpus`` CPUs (more than
    the machine has: engines mostly wait), partition ``debug``."""

    def __init__(self, directory: Path, cpus: int = 8) -> None:
        self.dir = directory
        for sub in ("state", "spool"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._start_munge(key)
        self.conf = directory / "slurm.conf"
        self.conf.write_text(self._config(cpus))
        self.env = {"SLURM_CONF": str(self.conf)}
        self._daemon(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld.out")
        self._daemon(["slurmd", "-D", "-N", "corralnode", "-f", str(self.conf)], "slurmd.out")
        self._wait_idle()

    def _start_munge(self, key: Path) -> None:
        try:
            shutil.chown(key, "munge", "munge")  # munged refuses a key it does not own
            shutil.chown(self.dir, "munge", "munge")
        except (LookupError, PermissionError):
            pass
        self.munge_socket = self.dir / "munge.sock"
        self._daemon(
            [
                "munged",
                "-F",
                "--force",
                "-S",
                str(self.munge_socket),
                f"--key-file={key}",
                f"--log-file={self.dir / 'munged.log'}",
                f"--pid-file={self.dir / 'munged.pid'}",
                f"--seed-file={self.dir / 'munged.seed'}",
            ],
            "munged.out",
        )
        self._until(lambda: self.munge_socket.exists(), "munged did not create its socket")

    def _config(self, cpus: int) -> str:
        d = self.dir
        return f"""ClusterName=corraltest
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_port()}
SlurmdPort={_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CryptoType=crypto/munge
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "slurmctld.log"}
SlurmdLogFile={d / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=5
NodeName=corralnode NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=tiny Nodes=ALL MaxTime=1 State=UP
"""

    def _daemon(self, argv: list[str], log: str) -> None:
        with open(self.dir / log, "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **getattr(self, "env", {})},
                )
            )

    def _until(self, check, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.dir.glob("*.log"))
                )
                raise RuntimeError(f"{what} (exited: {dead})\n{logs}")
            time.sleep(0.1)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, env={**os.environ, **self.env}
        )

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = self.run("sinfo", "-h", "-p", "debug", "-o", "%t").stdout.strip()
            return out in ("idle", "mix", "alloc")

        self._until(idle, "the test Slurm's node did not become idle")

    def stop(self) -> None:
        self.run("scancel", "--full", "-u", "root")
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
