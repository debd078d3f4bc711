"""The MPI launcher against Open MPI's real ``mpiexec`` (and MPICH's when installed):
engines are the ranks of one mpiexec, register, and stop with the cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys

import psutil
import pytest

from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.launchers.mpi import mpi_flavour

MPIEXEC = shutil.which("mpiexec")

pytestmark = pytest.mark.skipif(
    MPIEXEC is None, reason="mpiexec not installed (Debian: apt-get install openmpi-bin)"
)


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    # Open MPI refuses to run as root without these (CI runs as root).
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return tmp_path / "corral"


# A lambda travels by value (a module-level function would be imported by name on the
# engines, where this test module is not importable).
_rank = lambda: __import__("os").environ.get(  # noqa: E731
    "OMPI_COMM_WORLD_RANK", __import__("os").environ.get("PMI_RANK", "none")
)


def _implementations() -> list:
    """Every installed mpiexec: Debian's alternatives name Open MPI's and MPICH's."""
    found = []
    for name, flavour, package in (
        ("mpiexec.openmpi", "openmpi", "openmpi-bin"),
        ("mpiexec.mpich", "mpich", "mpich"),
    ):
        path = shutil.which(name)
        reason = f"{name} not installed (Debian: apt-get install {package})"
        found.append(
            pytest.param(path, id=flavour, marks=pytest.mark.skipif(path is None, reason=reason))
        )
    return found


@pytest.mark.parametrize("mpiexec", _implementations())
def test_engines_are_the_ranks_of_one_mpiexec(mpiexec):
    flavour = mpi_flavour(mpiexec)
    assert flavour in ("openmpi", "mpich")
    args = ["--oversubscribe"] if flavour == "openmpi" else []
    cluster = Cluster(
        n=3,
        engines="mpi",
        mpiexec=mpiexec,
        args=args,
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=10,
    )
    assert cluster.engines == []
    rc = cluster.start_and_connect()
    try:
        assert sorted(rc[:].apply_sync(_rank)) == ["0", "1", "2"]
        # Ranks are mpiexec's children, not ours: the parent watch (every 0.5 s) must
        # still see this process as their launcher and leave them running.
        rc[:].apply_sync(lambda: __import__("time").sleep(1.5))
        assert sorted(rc[:].apply_sync(_rank)) == ["0", "1", "2"]
        launcher = cluster.engines[0]
        mpiexec_proc = psutil.Process(launcher.handles[0].pid)
        assert mpiexec_proc.cmdline()[0] == mpiexec
        pids = [info.pid for info in rc.engines.values()]
        descendants = {p.pid for p in mpiexec_proc.children(recursive=True)}
        assert set(pids) <= descendants  # every engine is a rank under this mpiexec
    finally:
        cluster.stop()
    _, alive = psutil.wait_procs([p for p in map(_proc, pids) if p], timeout=30)
    assert not alive


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_missing_mpiexec_fails_before_engines_start():
    cluster = Cluster(n=1, engines="mpi", mpiexec="no-such-mpiexec", controller_mode="threads")
    with pytest.raises(ClusterError, match="no-such-mpiexec.*not on PATH"):
        cluster.start()
    assert cluster.controller is None  # refused before anything started


def _mpi_cluster(n: int, mpiexec: str | None = None) -> Cluster:
    """``n`` engines as the ranks of ``mpiexec`` (default: the profile's), oversubscribed
    under Open MPI (this machine has fewer cores), with a patient heartbeat."""
    chosen = {"mpiexec": mpiexec} if mpiexec is not None else {}
    return Cluster(
        n=n,
        engines="mpi",
        **chosen,
        args=["--oversubscribe"] if mpi_flavour(mpiexec or str(MPIEXEC)) == "openmpi" else [],
        controller_mode="threads",
        hb_period=0.2,
        hb_misses=25,
    )


def test_mpi4py_between_engines_and_ids_that_follow_the_rank():
    """bind_mpi: MPI set up in every engine (mpi4py, MPI_Init in the rank), engine id ==
    rank, and a collective across the engines under a real mpiexec."""
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install mpi4py)")
    from corral.plugins.parallel.mpi import bind_mpi

    cluster = _mpi_cluster(3)
    rc = cluster.start_and_connect()
    try:
        ranks = bind_mpi(rc[:])
        assert ranks == {0: 0, 1: 1, 2: 2}  # engine id follows the rank
        assert rc[:].pull("size", block=True) == [3, 3, 3]
        rc[:].execute("total = comm.allreduce(rank + 1)", block=True)
        assert rc[:].pull("total", block=True) == [6, 6, 6]
        rc[:].execute("token = comm.bcast('from rank 0' if rank == 0 else None)", block=True)
        assert rc[:].pull("token", block=True) == ["from rank 0"] * 3
    finally:
        cluster.stop()


def test_rank_is_read_from_each_launchers_variable():
    from corral.plugins.parallel.mpi import rank_from_environment

    assert rank_from_environment({"OMPI_COMM_WORLD_RANK": "3"}) == 3
    assert rank_from_environment({"PMI_RANK": "5"}) == 5
    assert rank_from_environment({"PMIX_RANK": "0"}) == 0
    assert rank_from_environment({}) is None


def _other_mpiexec() -> str | None:
    """An installed mpiexec of another MPI than the one mpi4py is built against."""
    found = subprocess.run(
        [sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    other = "mpiexec.mpich" if "Open MPI" in found else "mpiexec.openmpi"
    return shutil.which(other) if found else None


def test_mpi4py_of_another_mpi_than_mpiexec_is_refused_not_rank_0_everywhere():
    """mpi4py built against Open MPI, engines started by MPICH's mpiexec (or the
    reverse): each rank was a job of its own, bind_mpi said rank 0 for every engine and
    the collectives ran over one process. Now the ranks that disagree say why."""
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install mpi4py)")
    from corral.plugins.parallel.mpi import bind_mpi

    other = _other_mpiexec()
    if other is None:
        pytest.skip("no mpiexec of another MPI than mpi4py's is installed")
    cluster = _mpi_cluster(2, other)
    rc = cluster.start_and_connect()
    try:
        with pytest.raises(Exception, match="started this engine as rank 1, but mpi4py's MPI"):
            bind_mpi(rc[:])
    finally:
        cluster.stop()
