"""rc.become_dask(): dask workers inside real corral engines, a real dask computation."""

from __future__ import annotations

import os
from typing import Any

import pytest
from parallel_client_harness import LiveCluster

from corral.plugins.parallel.client import Client

distributed = pytest.importorskip(
    "distributed", reason="dask is an optional extra (pip install 'corral[dask]')"
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = LiveCluster(tmp_path_factory.mktemp("corral"), threads=True)
    yield live.client
    live.stop()


def test_become_dask_runs_work_on_the_engines(rc: Client) -> None:
    import dask.array as da

    dask_client = rc.become_dask()
    try:
        workers = dask_client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(address.startswith("tls://") for address in workers)  # encrypted
        pids = set(dask_client.run(os.getpid).values())
        assert pids == {e.pid for e in rc.engines.values()}
        x = da.arange(1000, chunks=100)
        assert int((x * 2).sum().compute()) == 999 * 1000
        assert dask_client.submit(sum, [1, 2, 3]).result() == 6
        # each engine names its worker as ipyparallel's engines do
        rc[:].execute("kind = type(dask_worker).__name__, dask_worker is distributed_worker")
        assert rc[:].pull("kind", block=True) == [("Worker", True)] * 2
    finally:
        dask_client.close()
        rc.stop_dask()
    # The engines are plain engines again, and a second dask cluster can start.
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
    again = rc.become_dask(targets=[0])
    try:
        assert len(again.scheduler_info()["workers"]) == 1
        assert again.submit(os.getpid).result() == rc.engines[0].pid
    finally:
        again.close()
        rc.stop_dask()
    with pytest.raises(ValueError, match="nanny"):
        rc.become_dask(nanny=True)


def test_stop_dask_closes_the_client_become_dask_returned(rc: Client) -> None:
    """Left open, that distributed.Client would reconnect to the stopped scheduler for
    ever (and log every attempt)."""
    dask_client = rc.become_dask(targets=[0])
    assert dask_client.submit(sum, [1, 2]).result() == 3
    rc.stop_dask()
    assert dask_client.status == "closed"
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
