"""Cluster start-up per launcher: corral beside ipyparallel's ``Cluster``, in one run.

Figure: seconds from nothing to a connected client with every engine registered
(``Cluster(...).start_and_connect()`` / ``start_and_connect_sync()``), median of
``--rounds`` starts, for each launcher both tools have:

* local: subprocesses of this machine;
* ssh: engines through OpenSSH to 127.0.0.1 (an sshd this script starts with its own
  keys, as the tests do; root only);
* mpi: one ``mpiexec -n N`` (Open MPI, run as root with ``--oversubscribe``);
* slurm: a job array on a one-node Slurm this script starts (as the tests do; root only).

Prints a table and corral/ipyparallel ratios (goal: <= 0.5); never passes or fails. A
launcher whose service cannot run here, or a peer that fails, is reported and skipped.
Every cluster and service is stopped at the end.

Run: ``python benchmarks/launch.py [--engines 16] [--rounds 3] [--launchers local,ssh]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' sshd and Slurm fixtures

LAUNCHERS = ("local", "ssh", "mpi", "slurm")


class Services:
    """sshd and Slurm for the launchers that need them, started on first use."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sshd: Any = None
        self.ssh_config: Path | None = None
        self.slurm: Any = None

    def ssh(self) -> Path:
        from sshd_helpers import Sshd, client_config, free_port, make_keys, sshd_missing

        if self.ssh_config is None:
            reason = sshd_missing()
            if reason:
                raise RuntimeError(reason)
            host_key, client_key = make_keys(self.dir / "keys")
            port = free_port()
            self.sshd = Sshd(self.dir / "keys", host_key, "127.0.0.1", port)
            self.ssh_config = client_config(self.dir, client_key, {"node-a": ("127.0.0.1", port)})
        return self.ssh_config

    def remote_python(self) -> Path:
        """An interpreter for the far side of ssh that imports this checkout's corral
        (sshd passes no PYTHONPATH on: without it the installed corral would run)."""
        wrapper = self.dir / "python-here"
        if not wrapper.exists():
            wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} "$@"\n')
            wrapper.chmod(0o755)
        return wrapper

    def slurm_conf(self) -> str:
        from slurm_helpers import SlurmForTests, slurm_missing

        if self.slurm is None:
            reason = slurm_missing()
            if reason:
                raise RuntimeError(reason)
            self.slurm = SlurmForTests(self.dir / "slurm", cpus=64)
            os.environ["SLURM_CONF"] = self.slurm.env["SLURM_CONF"]
        return os.environ["SLURM_CONF"]

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
        if self.slurm is not None:
            self.slurm.stop()


def corral_start(kind: str, n: int, services: Services) -> Callable[[], float]:
    import corral

    options: dict[str, Any] = {}
    if kind == "ssh":
        options = {"hosts": [f"node-a:{n}"], "ssh_args": ["-F", str(services.ssh())]}
        options["python"] = str(services.remote_python())
    elif kind == "mpi":
        if shutil.which("mpiexec.openmpi") is None:
            raise RuntimeError("Open MPI not installed")
        options = {"mpiexec": "mpiexec.openmpi", "args": ["--oversubscribe"]}
    elif kind == "slurm":
        services.slurm_conf()

    def once() -> float:
        started = time.perf_counter()
        cluster = corral.Cluster(n=n, engines=kind, profile="bench-launch", **options)
        try:
            rc = cluster.start_and_connect()
            elapsed = time.perf_counter() - started
            assert len(rc.ids) == n
            return elapsed
        finally:
            cluster.stop()

    return once


def ipp_start(kind: str, n: int, services: Services) -> Callable[[], float]:
    import ipyparallel as ipp
    from traitlets.config import Config

    config = Config()
    if kind == "ssh":
        ssh_config = str(services.ssh())
        config.SSHEngineSetLauncher.engines = {"node-a": n}
        config.SSHLauncher.ssh_args = ["-F", ssh_config]
        config.SSHLauncher.scp_args = ["-F", ssh_config]
        config.SSHLauncher.remote_python = sys.executable
        config.SSHLauncher.remote_profile_dir = str(services.dir / "ipp-remote-profile")
    elif kind == "mpi":
        if shutil.which("mpiexec.openmpi") is None:
            raise RuntimeError("Open MPI not installed")
        config.MPILauncher.mpi_cmd = ["mpiexec.openmpi"]
        config.MPILauncher.mpi_args = ["--oversubscribe"]
    elif kind == "slurm":
        services.slurm_conf()

    def once() -> float:
        started = time.perf_counter()
        cluster = ipp.Cluster(n=n, engines=kind, config=config, log_level=40)
        try:
            rc = cluster.start_and_connect_sync()
            elapsed = time.perf_counter() - started
            assert len(rc.ids) == n
            rc.close()
            return elapsed
        finally:
            cluster.stop_cluster_sync()

    return once


def measure(name: str, make: Callable[[], Callable[[], float]], rounds: int) -> float | str:
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    try:
        once = make()
        times = [once() for _ in range(rounds)]
    except Exception as error:  # a peer or service that fails is reported, not fatal
        traceback.print_exc(file=sys.stderr)
        return f"{type(error).__name__}: {str(error).splitlines()[0][:70]}"
    print(f"  {name}: {[round(t, 3) for t in times]}", file=sys.stderr, flush=True)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    args = parser.parse_args(argv)
    kinds = [k for k in args.launchers.split(",") if k]
    # Open MPI as root (CI and this machine run as root).
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    with tempfile.TemporaryDirectory(prefix="corral-bench-launch-") as tmp:
        os.environ["CORRAL_DIR"] = str(Path(tmp) / "corral")
        os.environ["IPYTHONDIR"] = str(Path(tmp) / "ipython")
        cwd = os.getcwd()
        os.chdir(tmp)  # ipyparallel's batch launchers write their job scripts here
        services = Services(Path(tmp))
        rows: dict[str, tuple[float | str, float | str]] = {}
        try:
            for kind in kinds:
                mine = measure(
                    f"corral {kind}",
                    lambda kind=kind: corral_start(kind, args.engines, services),
                    args.rounds,
                )
                try:
                    import ipyparallel  # noqa: F401

                    theirs = measure(
                        f"ipyparallel {kind}",
                        lambda kind=kind: ipp_start(kind, args.engines, services),
                        args.rounds,
                    )
                except ImportError:
                    theirs = "ipyparallel not installed"
                rows[kind] = (mine, theirs)
        finally:
            services.stop()
            os.chdir(cwd)
    print(f"cluster start to {args.engines} engines registered, median of {args.rounds} (s)")
    print(f"{'launcher':<8} {'corral':>10} {'ipyparallel':>12} {'ratio':>7}  [goal <= 0.5]")
    for kind, (mine, theirs) in rows.items():
        ratio = (
            f"{mine / theirs:7.2f}"
            if isinstance(mine, float) and isinstance(theirs, float)
            else "    n/a"
        )
        cell = lambda v: f"{v:10.3f}" if isinstance(v, float) else f"{'-':>10}"  # noqa: E731
        print(f"{kind:<8} {cell(mine)} {cell(theirs):>12} {ratio}")
        for label, value in (("corral", mine), ("ipyparallel", theirs)):
            if isinstance(value, str):
                print(f"         {label}: {value}")


if __name__ == "__main__":
    main()
