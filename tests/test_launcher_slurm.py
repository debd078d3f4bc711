"""The Slurm and PBS launchers against a real single-node Slurm (slurmctld, slurmd,
munge) that this module starts and stops; PBS through Slurm's Torque wrappers
(slurm-wlm-torque's qsub/qstat/qdel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from slurm_helpers import SlurmForTests, slurm_missing

from corral.plugins.parallel.cluster import Cluster, ClusterError
from corral.plugins.parallel.launchers.batch import SchedulerError

pytestmark = pytest.mark.skipif(slurm_missing() is not None, reason=str(slurm_missing()))

REPO = Path(__file__).resolve().parents[1]

_task = lambda: __import__("os").environ.get("SLURM_ARRAY_TASK_ID")  # noqa: E731


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    server = SlurmForTests(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = server.env["SLURM_CONF"]
    yield server
    server.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    return tmp_path / "corral"


def _jobs(slurm: SlurmForTests) -> str:
    return slurm.run("squeue", "-h", "-o", "%i %j %T").stdout


def _until_no_jobs(slurm: SlurmForTests, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name in _jobs(slurm):
        assert time.monotonic() < deadline, _jobs(slurm)
        time.sleep(0.1)


def _gone(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=60)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


def test_engines_are_the_tasks_of_a_job_array(slurm):
    cluster = Cluster(n=3, engines="slurm", queue="debug", time="10:00", controller_mode="threads")
    rc = cluster.start_and_connect()
    try:
        assert sorted(rc[:].apply_sync(_task)) == ["0", "1", "2"]
        job_id = cluster.engines[0].job_ids[0]
        assert f"corral-engines-{cluster.cluster_id}" in _jobs(slurm)
        script = cluster.profile_dir / "run" / f"engine-{cluster.cluster_id}-slurm.sh"
        assert "#SBATCH --array=0-2" in script.read_text()
        assert "#SBATCH --partition=debug" in script.read_text()
        assert oct(script.stat().st_mode & 0o777) == "0o700"
        pids = [info.pid for info in rc.engines.values()]
    finally:
        cluster.stop()
    _until_no_jobs(slurm, job_id)
    _gone(pids)


def test_refused_submission_raises_the_schedulers_message(slurm):
    cluster = Cluster(n=1, engines="slurm", queue="nosuch", controller_mode="threads")
    with pytest.raises(SchedulerError) as info:
        cluster.start()
    assert "Invalid partition name specified" in str(info.value)
    assert info.value.command[0] == "sbatch"
    assert cluster.controller is not None and not cluster.controller.is_running


def test_user_template_and_engines_that_never_arrive(slurm, tmp_path):
    template = tmp_path / "job.sh"
    template.write_text(
        "#!/bin/sh\n#SBATCH --job-name=mine-{cluster_id}\n#SBATCH --array={array}\n"
        "#SBATCH --output={log}\n#SBATCH --begin=now+1hour\n{directives}\nexec {engine}\n"
    )
    cluster = Cluster(
        n=2, engines="slurm", template=str(template), engine_timeout=3, controller_mode="threads"
    )
    with pytest.raises(ClusterError) as info:
        cluster.start_and_connect()
    # The scheduler's own reason for the wait, in the error.
    assert "PENDING (BeginTime)" in str(info.value)
    assert "slurm launcher says" in str(info.value)
    _until_no_jobs(slurm, f"mine-{cluster.cluster_id}")
    with pytest.raises(ValueError, match=r"\[launcher:slurm\] template.*no template file"):
        Cluster(engines="slurm", template=str(tmp_path / "missing.sh"))
    with pytest.raises(ValueError, match=r"\[launcher:slurm\] time.*wall time"):
        Cluster(engines="slurm", time="soon")


def _torque_bin() -> str | None:
    """Where Slurm's Torque wrappers (slurm-wlm-torque) are: on PATH, or unpacked into
    /opt/corral-ci/slurm-torque by .ci/run (the package conflicts with gridengine-client,
    which owns /usr/bin/qsub when both schedulers are tested)."""
    for directory in (
        os.environ.get("CORRAL_TEST_TORQUE_BIN"),
        "/opt/corral-ci/slurm-torque/usr/bin",
        os.path.dirname(shutil.which("qsub") or ""),
    ):
        qsub = os.path.join(directory or "", "qsub")
        # The wrappers run sbatch from their own directory.
        if directory and os.path.isfile(qsub) and os.path.exists(os.path.join(directory, "sbatch")):
            with open(qsub, "rb") as fh:
                if b"Slurm" in fh.read(4096):
                    return directory
    return None


@pytest.mark.skipif(
    _torque_bin() is None,
    reason="Slurm's Torque wrappers not found (Debian: slurm-wlm-torque; see .ci/run)",
)
def test_pbs_through_slurms_torque_wrappers(slurm):
    cluster = Cluster(
        n=2, engines="pbs", time="00:10:00", bin_dir=_torque_bin(), controller_mode="threads"
    )
    rc = cluster.start_and_connect()
    try:
        assert sorted(rc[:].apply_sync(_task)) == ["0", "1"]
        job_id = cluster.engines[0].job_ids[0]
        pids = [info.pid for info in rc.engines.values()]
    finally:
        cluster.stop()
    _until_no_jobs(slurm, job_id)
    _gone(pids)


def test_engines_killed_at_walltime_fail_with_slurms_words(slurm):
    """time = 1 (minute): Slurm kills the job at its limit. The running task fails at
    once; asking for the engines then raises with Slurm's own state and message."""
    from corral.plugins.parallel.client.errors import EngineError, RemoteError

    cluster = Cluster(
        n=1,
        engines="slurm",
        time="1",
        controller_mode="threads",
        hb_period=0.5,
        hb_misses=10,
    )
    rc = cluster.start_and_connect()
    try:
        task = rc[rc.ids[0]].apply_async(lambda: __import__("time").sleep(600))
        # Slurm enforces limits on its own timer (every 30 s or so after the minute). Its
        # SIGTERM interrupts the task (KeyboardInterrupt) if the engine answers before
        # the SIGKILL, else the engine's death fails it (EngineError).
        with pytest.raises((EngineError, RemoteError)):
            task.get(timeout=300)
        assert cluster.engines[0].wait(120)  # squeue no longer lists the job as alive
        with pytest.raises(ClusterError) as info:
            cluster.wait_for_engines(rc, 1)
        text = str(info.value)
        assert "TIMEOUT (TimeLimit)" in text, text  # squeue's state and reason
        assert "DUE TO TIME LIMIT" in text, text  # slurmstepd's line in the engine's log
    finally:
        cluster.stop()


def test_a_cancelled_job_is_told_as_cancelled_after_slurm_forgot_it(slurm):
    """Slurm forgets an ended job after MinJobAge (5 s here): squeue no longer lists it,
    and a set whose end was described after that said "finished" for a cancelled job
    (seen in CI under load). The words its last polls listed are kept."""
    cluster = Cluster(n=1, engines="slurm", controller_mode="threads")
    cluster.start_and_connect()
    try:
        engines = cluster.engines[0]
        job = engines.job_ids[0]
        assert slurm.run("scancel", job).returncode == 0
        assert engines.wait(120)  # the watch saw the job end
        listed = lambda: slurm.run("squeue", "-h", "-r", "-t", "all", "-j", job).stdout  # noqa: E731
        deadline = time.monotonic() + 120
        while listed().strip():  # purged by slurmctld after MinJobAge
            assert time.monotonic() < deadline, listed()
            time.sleep(0.5)
        said = engines.describe()
        assert f"job {job}: CANCELLED" in said, said
    finally:
        cluster.stop()


def test_slurm_engine_runs_under_its_monitor_which_restarts_it(slurm, tmp_path):
    """Batch engines run under their monitors too: a killed engine's task names the
    signal, and the monitor (inside the Slurm task) starts a new engine."""
    from cluster_waits import announce_then_sleep, await_ids, wait_started

    from corral.plugins.parallel.client.errors import EngineError

    cluster = Cluster(
        n=1,
        engines="slurm",
        controller_mode="threads",
        hb_period=0.5,
        hb_misses=20,
        **{"engine.restart": 1, "engine.restart_backoff": 0.0},
    )
    rc = cluster.start_and_connect()
    try:
        victim = rc.ids[0]
        pid = rc[victim].apply_sync(os.getpid)
        parent = " ".join(psutil.Process(pid).parent().cmdline())
        assert "corral.plugins.parallel.launchers.monitor" in parent
        fifo = tmp_path / "started"
        os.mkfifo(fifo)
        task = rc[victim].apply_async(announce_then_sleep, str(fifo), 60)
        wait_started(fifo)  # running: the death can only fail it with its cause
        os.kill(pid, 9)
        with pytest.raises(EngineError, match="killed by SIGKILL"):
            task.get(timeout=60)
        await_ids(rc, lambda ids: len(ids) == 1 and victim not in ids)
        assert rc[rc.ids[0]].apply_sync(lambda: 6 * 7) == 42
    finally:
        cluster.stop()


def test_a_job_cancelled_under_a_daemon_cluster_is_reported(slurm, corral_dir):
    """scancel of the engines' job under `corral cluster start --daemon`: the controller
    lives on, the engines are gone, and the cluster's log and `status` said nothing.
    The manager now writes the scheduler's words to both. `list` counted local pids: 0
    engines for a running array."""
    from helpers import until

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "corral", "cluster", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    started = corral("start", "--daemon", "-n", "2", "--launcher", "slurm", "--cluster-id", "sc")
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        listed = corral("list").stdout.splitlines()[1].split()
        assert listed[:2] == ["sc", "2"], listed  # the array's engines, not local pids (0)
        jobs = _jobs(slurm).split()
        job = jobs[0].partition("_")[0]
        assert slurm.run("scancel", job).returncode == 0
        said = "engine set "
        until(lambda: said in corral("status").stdout, what="status never said the set ended")
        status = corral("status").stdout
        assert f"(slurm) ended: job {job}: CANCELLED" in status, status
        log = (corral_dir / "profile_default" / "log" / "cluster-sc.log").read_text()
        assert "cluster sc: engine set" in log and f"job {job}: CANCELLED" in log
        assert corral("list").stdout.splitlines()[1].split()[:2] == ["sc", "0"]
    finally:
        assert corral("stop").returncode == 0
