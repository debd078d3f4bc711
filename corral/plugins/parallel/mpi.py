"""mpi4py for engines that are MPI ranks (``Cluster(engines="mpi")``).

Why: engines started as the ranks of one ``mpiexec`` can talk to each other over MPI
(the interconnect, collectives) while the client drives them over ZeroMQ. What they
need is one call that sets MPI up in every engine and tells the client which engine is
which rank, as ipyparallel's ``bind_kernel`` is one call to make engines kernels::

    cluster = corral.Cluster(n=4, engines="mpi")
    rc = cluster.start_and_connect()
    ranks = corral.plugins.parallel.mpi.bind_mpi(rc[:])   # {engine id: rank}
    rc[:].execute("total = comm.allreduce(rank)")            # MPI between engines

:func:`bind_mpi` imports ``mpi4py`` in each engine (``MPI_Init`` happens there, in the
rank process) and puts ``MPI``, ``comm`` (``COMM_WORLD``), ``rank`` and ``size`` in its
namespace. The MPI launcher also asks the controller for engine id == rank
(``[launcher:mpi] id_from_rank``), read from the launcher's environment by
:func:`rank_from_environment` before any MPI call, so ``rc[k]`` is rank ``k`` when the ids
are free.

mpi4py is imported only inside engines, and only when this is used: corral itself does
not depend on it (``pip install mpi4py``; it is in the ``test`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["RANK_VARIABLES", "bind_mpi", "bind_here", "rank_from_environment"]

#: Where MPI launchers put the rank: Open MPI, PMIx, MPICH/Hydra and Intel MPI, MVAPICH,
#: Slurm's srun. Read without initialising MPI (the engine registers before any MPI call).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def rank_from_environment(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's MPI rank as its launcher announced it, or None outside MPI."""
    env = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def bind_here(namespace: dict[str, Any]) -> int:
    """In an engine: import mpi4py and put ``MPI``, ``comm``, ``rank``, ``size`` in
    ``namespace``; returns the rank.

    :raises ImportError: mpi4py is not installed on the engine's host, saying so.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"mpi4py is needed on the engines for MPI between them ({exc}); "
            "pip install mpi4py where the engines run"
        ) from exc
    comm = MPI.COMM_WORLD
    _check_same_mpi(int(comm.Get_rank()), int(comm.Get_size()), MPI.Get_library_version())
    namespace.update(MPI=MPI, comm=comm, rank=comm.Get_rank(), size=comm.Get_size())
    return int(comm.Get_rank())


def _check_same_mpi(rank: int, size: int, library: str) -> None:
    """Refuse an mpi4py whose MPI is not the one of the ``mpiexec`` that started us.

    Why: mpi4py built against Open MPI, started by MPICH's mpiexec (or the reverse), does
    not find its job: every rank initialises as a job of its own, rank 0 of 1. Nothing
    failed; ``bind_mpi`` returned rank 0 for every engine and the collectives quietly
    ran over one process each.
    """
    announced = rank_from_environment()
    if announced is None or announced == rank:
        return
    raise RuntimeError(
        f"mpiexec started this engine as rank {announced}, but mpi4py's MPI sees rank "
        f"{rank} of {size}: mpi4py is built against another MPI ({library.splitlines()[0]})"
        " than the mpiexec that started the engines; set [launcher:mpi] mpiexec to that "
        "MPI's mpiexec, or install mpi4py against this one"
    )


def bind_mpi(view: Any) -> dict[int, int]:
    """Set MPI up in every engine of ``view`` (see :func:`bind_here`); ``{engine id:
    rank}``. All the view's engines must be ranks of one MPI job."""
    view.execute(
        "from corral.plugins.parallel.mpi import bind_here as _corral_bind\n"
        "_corral_bind(globals())\n"
        "del _corral_bind\n",
        block=True,
    )
    pulled = view.pull("rank", block=False)
    ranks, engines = pulled.get(), pulled.engine_id
    if not isinstance(ranks, list):  # a view on one engine
        ranks, engines = [ranks], [engines]
    return {int(engine): int(rank) for engine, rank in zip(engines, ranks, strict=True)}
