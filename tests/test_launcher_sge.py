"""The SGE launcher against a real (Son of) Grid Engine: a private cell with sge_qmaster
and sge_execd that this module starts and removes again."""

from __future__ import annotations

import time

import psutil
import pytest
from sge_helpers import SGEForTests, sge_missing

from corral.plugins.parallel.cluster import Cluster
from corral.plugins.parallel.launchers.batch import SchedulerError

pytestmark = pytest.mark.skipif(sge_missing() is not None, reason=str(sge_missing()))

_task = lambda: __import__("os").environ.get("SGE_TASK_ID")  # noqa: E731


@pytest.fixture(scope="module")
def sge():
    server = SGEForTests()
    mp = pytest.MonkeyPatch()
    for key, value in server.env.items():
        mp.setenv(key, value)
    yield server
    mp.undo()
    server.stop()
    assert not server._daemons()


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    return tmp_path / "corral"


def test_engines_are_the_tasks_of_an_array_job(sge):
    cluster = Cluster(n=2, engines="sge", queue="all.q", controller_mode="threads")
    rc = cluster.start_and_connect()
    try:
        assert sorted(rc[:].apply_sync(_task)) == ["1", "2"]
        job_id = cluster.engines[0].job_ids[0]
        assert job_id in sge.run("qstat").stdout
        pids = [info.pid for info in rc.engines.values()]
    finally:
        cluster.stop()
    deadline = time.monotonic() + 60
    while job_id in sge.run("qstat").stdout.split():
        assert time.monotonic() < deadline, sge.run("qstat").stdout
        time.sleep(0.2)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], 60)
    assert not alive


def test_refused_submission_raises_grid_engines_message(sge):
    cluster = Cluster(n=1, engines="sge", queue="nosuch.q", controller_mode="threads")
    with pytest.raises(SchedulerError) as info:
        cluster.start()
    assert "nosuch.q" in str(info.value) and info.value.returncode != 0
