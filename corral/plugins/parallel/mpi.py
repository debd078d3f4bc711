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
    namespace.update(MPI=MPI, comm=comm, rank=comm.Get_rank(), size=comm.Get_size())
    return int(comm.Get_rank())


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
