"""LSF and HTCondor launchers, checked against recorded scheduler behaviour: no LSF or
HTCondor can run here, so their commands are replaced by a replayer
(tests/data/scheduler_recordings/replay.py) that answers as the real ones did (accepted
and refused submissions, status listings) and records what the launcher sent. What is
checked: the job script / submit description, the command lines, how answers are read
(job ids, states, refusals as SchedulerError with the scheduler's message), and that
stopping cancels the job."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from corral.plugins.parallel.cluster import Cluster
from corral.plugins.parallel.launchers.batch import SchedulerError
from corral.plugins.parallel.launchers.htcondor import _condor_arguments

RECORDINGS = Path(__file__).resolve().parent / "data" / "scheduler_recordings"


@pytest.fixture(autouse=True)
def corral_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "corral"))
    monkeypatch.setenv("CORRAL_SYSTEM_INI", str(tmp_path / "none.ini"))
    return tmp_path / "corral"


def replayer(tmp_path: Path, monkeypatch, scheduler: str, scenario: str, commands: list[str]):
    """A bin_dir whose commands replay ``scenario`` of ``scheduler``'s recording."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(RECORDINGS / "replay.py", bin_dir / "replay.py")
    for command in commands:
        path = bin_dir / command
        path.write_text(f"#!{sys.executable}\nexec(open({str(bin_dir / 'replay.py')!r}).read())\n")
        path.chmod(0o755)
    monkeypatch.setenv("REPLAY_RECORDING", str(RECORDINGS / f"{scheduler}.json"))
    monkeypatch.setenv("REPLAY_SCENARIO", scenario)
    return bin_dir


def calls(bin_dir: Path) -> list[dict]:
    path = bin_dir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_lsf_job_script_states_and_cancel(tmp_path, monkeypatch):
    bin_dir = replayer(tmp_path, monkeypatch, "lsf", "accepted", ["bsub", "bjobs", "bkill"])
    cluster = Cluster(
        n=3,
        engines="lsf",
        bin_dir=str(bin_dir),
        queue="normal",
        account="proj42",
        time="1:30",
        controller_mode="threads",
    )
    cluster.start()
    try:
        launcher = cluster.engines[0]
        assert launcher.job_ids == ["1234"]
        submitted = calls(bin_dir)[0]
        assert submitted["command"] == "bsub" and submitted["argv"] == []
        script = submitted["stdin"]  # LSF reads #BSUB lines only from stdin
        assert f'#BSUB -J "corral-engines-{cluster.cluster_id}[1-3]"' in script
        assert "#BSUB -q normal" in script and "#BSUB -P proj42" in script
        assert "#BSUB -W 1:30" in script  # 1 h 30 min in LSF's [hours:]minutes
        assert "-%I.log" in script and "exec " in script and "--wait-file" in script
        assert launcher.running_count == 3
        assert launcher.describe() == "job 1234: RUNNING, RUNNING, PENDING"
    finally:
        cluster.stop(grace=1)
    assert any(c["command"] == "bkill" and c["argv"] == ["1234"] for c in calls(bin_dir))
    assert launcher.wait(10)  # bjobs: "Job <1234> is not found" -> the job is gone
    assert launcher.poll() == 0


def test_lsf_refusal_carries_lsfs_message(tmp_path, monkeypatch):
    bin_dir = replayer(tmp_path, monkeypatch, "lsf", "refused", ["bsub"])
    cluster = Cluster(n=1, engines="lsf", bin_dir=str(bin_dir), controller_mode="threads")
    with pytest.raises(SchedulerError, match="nosuch: No such queue. Job not submitted.") as info:
        cluster.start()
    assert info.value.returncode == 255


def test_htcondor_submit_description_states_and_cancel(tmp_path, monkeypatch):
    commands = ["condor_submit", "condor_q", "condor_rm"]
    bin_dir = replayer(tmp_path, monkeypatch, "htcondor", "accepted", commands)
    cluster = Cluster(
        n=3, engines="htcondor", bin_dir=str(bin_dir), time="2:00:00", controller_mode="threads"
    )
    cluster.start()
    try:
        launcher = cluster.engines[0]
        assert launcher.job_ids == ["42"]
        submitted = calls(bin_dir)[0]
        description = Path(submitted["argv"][-1]).read_text()
        assert description.rstrip().endswith("queue 3")
        assert "universe = vanilla" in description and "getenv = true" in description
        assert f"executable = {sys.executable}" in description
        assert "periodic_remove = (time() - EnteredCurrentStatus) > 7200" in description
        assert "$(Process).log" in description
        assert launcher.describe() == "job 42: RUNNING, RUNNING, PENDING"
    finally:
        cluster.stop(grace=1)
    assert any(c["command"] == "condor_rm" and c["argv"] == ["42"] for c in calls(bin_dir))
    assert launcher.wait(10)


def test_htcondor_refusal_and_argument_quoting(tmp_path, monkeypatch):
    bin_dir = replayer(tmp_path, monkeypatch, "htcondor", "refused", ["condor_submit"])
    cluster = Cluster(n=1, engines="htcondor", bin_dir=str(bin_dir), controller_mode="threads")
    with pytest.raises(SchedulerError, match="Invalid log file"):
        cluster.start()
    # HTCondor's argument syntax: double quotes around all, single around each.
    assert _condor_arguments(["-m", "it's", 'say "hi"']) == "\"'-m' 'it''s' 'say \"\"hi\"\"'\""
    assert os.path.exists(RECORDINGS / "htcondor.json")


def test_windows_hpc_job_xml_command_lines_states_and_cancel(tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    bin_dir = replayer(tmp_path, monkeypatch, "windows_hpc", "accepted", ["job"])
    cluster = Cluster(
        n=4,
        engines="windows_hpc",
        bin_dir=str(bin_dir),
        scheduler="headnode",
        queue="ComputeNodes",
        account="proj & co",
        time="1:30",
        controller_mode="threads",
    )
    cluster.start()
    try:
        launcher = cluster.engines[0]
        assert launcher.job_ids == ["4711"]
        submitted = calls(bin_dir)[0]
        assert submitted["argv"][0] == "submit" and "/scheduler:headnode" in submitted["argv"]
        jobfile = next(a for a in submitted["argv"] if a.startswith("/jobfile:"))
        root = ET.parse(jobfile.removeprefix("/jobfile:")).getroot()  # well-formed XML
        ns = "{http://schemas.microsoft.com/HPCS2008R2/scheduler/}"
        assert root.tag == f"{ns}Job" and root.get("MaxCores") == "4"
        assert root.get("NodeGroups") == "ComputeNodes"
        assert root.get("Project") == "proj & co"  # escaped in the file, intact here
        assert root.get("RuntimeSeconds") == str(90 * 60)
        task = root.find(f"{ns}Tasks/{ns}Task")
        assert task.get("Type") == "ParametricSweep"
        assert (task.get("StartValue"), task.get("EndValue")) == ("0", "3")
        assert "corral.plugins.parallel.engine" in task.get("CommandLine")
        assert "--wait-file" in task.get("CommandLine")
        assert task.get("StdOutFilePath").endswith("-windows_hpc-*.log")
        assert launcher.describe() == "job 4711: RUNNING, RUNNING, RUNNING, RUNNING"
        assert any(c["argv"][:2] == ["view", "4711"] for c in calls(bin_dir))
    finally:
        cluster.stop(grace=1)
    assert any(c["argv"][:2] == ["cancel", "4711"] for c in calls(bin_dir))
    assert launcher.wait(10)  # job view: Canceled -> the engines are gone
    assert launcher.poll() == 0


def test_windows_hpc_queued_job_and_refusal(tmp_path, monkeypatch):
    bin_dir = replayer(tmp_path, monkeypatch, "windows_hpc", "queued", ["job"])
    cluster = Cluster(n=2, engines="windows_hpc", bin_dir=str(bin_dir), controller_mode="threads")
    cluster.start()
    try:
        assert cluster.engines[0].describe() == "job 4712: PENDING, PENDING"
    finally:
        cluster.stop(grace=1)
    monkeypatch.setenv("REPLAY_SCENARIO", "refused")
    refused = Cluster(n=1, engines="windows_hpc", bin_dir=str(bin_dir), controller_mode="threads")
    with pytest.raises(SchedulerError, match="The node group 'nosuch' does not exist."):
        refused.start()
