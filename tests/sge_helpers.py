"""A real single-host (Son of) Grid Engine for the SGE launcher's tests: a cell of its
own under Debian's SGE_ROOT, spool directories in a temporary directory, random ports,
sge_qmaster and sge_execd started here and stopped (and the cell removed) afterwards.

Grid Engine is fussy about names: the qmaster checks that a client's address resolves to
the client's own host name, and in containers 127.0.0.1 often resolves to ``localhost``
rather than the host name. The cell's ``host_aliases`` file makes them one host.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

SGE_ROOT = Path("/var/lib/gridengine")
ADMIN = "sgeadmin"


def _is_sge_qsub() -> bool:
    qsub = shutil.which("qsub")
    return qsub is not None and "gridengine" in os.path.realpath(qsub)


def sge_missing() -> str | None:
    """Why a test Grid Engine cannot run here, or None."""
    for path in ("/usr/sbin/sge_qmaster", "/usr/sbin/sge_execd", "/usr/bin/qconf"):
        if not Path(path).exists():
            return (
                f"{path} not installed (Debian: apt-get install gridengine-master "
                "gridengine-exec gridengine-client)"
            )
    if not _is_sge_qsub():
        return "qsub on PATH is not Grid Engine's (another scheduler's client owns it)"
    if os.geteuid() != 0:
        return "a test Grid Engine starts its daemons as root; not root here"
    try:
        import pwd

        pwd.getpwnam(ADMIN)
    except KeyError:
        return f"no {ADMIN} user (made by Debian's gridengine-common)"
    return None


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SGEForTests:
    """One cell ``corralNNNN`` with one exec host (this one) and queue ``all.q``."""

    def __init__(self, slots: int = 8) -> None:
        self.cell = f"corral{uuid.uuid4().hex[:8]}"
        self.host = socket.gethostname()
        self.dir = Path(tempfile.mkdtemp(prefix="corral-sge-"))
        os.chmod(self.dir, 0o755)
        for sub in ("spooldb", "qmaster", "execd"):
            (self.dir / sub).mkdir()
        subprocess.run(["chown", "-R", f"{ADMIN}:{ADMIN}", str(self.dir)], check=True)
        common = SGE_ROOT / self.cell / "common"
        common.mkdir(parents=True)
        (common / "bootstrap").write_text(
            "\n".join(
                [
                    "# Version: 6.2",
                    f"admin_user              {ADMIN}",
                    "default_domain          none",
                    "ignore_fqdn             true",
                    "spooling_method         berkeleydb",
                    "spooling_lib            libspoolb",
                    f"spooling_params         {self.dir / 'spooldb'}",
                    "binary_path             /usr/sbin",
                    f"qmaster_spool_dir       {self.dir / 'qmaster'}",
                    "security_mode           none",
                    "listener_threads        2",
                    "worker_threads          2",
                    "scheduler_threads       1",
                ]
            )
            + "\n"
        )
        (common / "act_qmaster").write_text(self.host + "\n")
        (common / "host_aliases").write_text(f"{self.host} localhost\n")
        subprocess.run(["chown", "-R", f"{ADMIN}:{ADMIN}", str(SGE_ROOT / self.cell)], check=True)
        self.env = {
            "SGE_ROOT": str(SGE_ROOT),
            "SGE_CELL": self.cell,
            "SGE_QMASTER_PORT": str(_port()),
            "SGE_EXECD_PORT": str(_port()),
        }
        env_line = " ".join(f"{k}={v}" for k, v in self.env.items())
        init = (
            f"env {env_line} /usr/share/gridengine/scripts/init_cluster "
            f"{SGE_ROOT} {self.cell} {self.dir / 'spooldb'} {ADMIN}"
        )
        self._check(["su", "-s", "/bin/sh", "-c", init, ADMIN])
        self._check(["/usr/sbin/sge_qmaster"])
        self._until(lambda: self.run("qconf", "-sh").returncode == 0, "qmaster did not answer")
        self._configure(slots)
        self._check(["/usr/sbin/sge_execd"])
        self._until(self._queue_ready, "the exec host did not report to the qmaster")

    def _check(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env={**os.environ, **self.env}
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv} failed: {result.stdout}{result.stderr}")

    def run(self, *argv: str, editor: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        if editor is not None:
            env["EDITOR"] = editor
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env)

    def _edit(self, *qconf_args: str, sed: str) -> None:
        """qconf's edit commands run $EDITOR on a file: make the editor a sed script."""
        editor = self.dir / f"edit-{uuid.uuid4().hex[:6]}.sh"
        editor.write_text(f"#!/bin/sh\nsed -i '{sed}' \"$1\"\n")
        editor.chmod(0o755)
        result = self.run("qconf", *qconf_args, editor=str(editor))
        if result.returncode != 0:
            raise RuntimeError(f"qconf {qconf_args}: {result.stdout}{result.stderr}")

    def _configure(self, slots: int) -> None:
        self._edit(
            "-mconf",
            sed=f"s|^execd_spool_dir .*|execd_spool_dir {self.dir / 'execd'}|;"
            "s/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/;"
            "s/^load_report_time .*/load_report_time 00:00:05/",
        )
        self._edit("-msconf", sed="s/^schedule_interval .*/schedule_interval 0:0:1/")
        exec_host = self.dir / "exechost"
        exec_host.write_text(
            f"hostname {self.host}\nload_scaling NONE\ncomplex_values NONE\n"
            "user_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\n"
            "usage_scaling NONE\nreport_variables NONE\n"
        )
        for args in (["-Ae", str(exec_host)], ["-as", self.host]):
            result = self.run("qconf", *args)
            if result.returncode != 0:
                raise RuntimeError(f"qconf {args}: {result.stdout}{result.stderr}")
        self._edit(
            "-aq",
            "all.q",
            sed=f"s/^hostlist .*/hostlist {self.host}/; s/^slots .*/slots {slots}/;"
            "s/^pe_list .*/pe_list NONE/; s/^load_thresholds .*/load_thresholds NONE/;"
            "s/^shell_start_mode .*/shell_start_mode unix_behavior/",
        )

    def _queue_ready(self) -> bool:
        out = self.run("qstat", "-f").stdout
        return any(
            line.startswith("all.q@") and len(line.split()) >= 5 and "u" not in line.split()[-1]
            for line in out.splitlines()
        )

    def _until(self, check, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                messages = ""
                for path in self.dir.rglob("messages"):
                    messages += f"--- {path}\n{path.read_text()[-1500:]}\n"
                raise RuntimeError(f"{what}\n{messages}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.run("qdel", "-f", "-u", "root")
        self.run("qconf", "-ke", "all")
        self.run("qconf", "-km")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._daemons():
            time.sleep(0.2)
        for pid in self._daemons():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(SGE_ROOT / self.cell, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _daemons(self) -> list[int]:
        """Pids of this cell's sge_qmaster and sge_execd (by their SGE_CELL)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                name = (proc / "comm").read_text().strip()
                if name not in ("sge_qmaster", "sge_execd"):
                    continue
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if f"SGE_CELL={self.cell}".encode() in environ:
                pids.append(int(proc.name))
        return pids
